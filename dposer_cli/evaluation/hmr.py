"""Mesh recovery from 2D keypoints: `benchmark ehf` (body, spec §7.6), `benchmark freihand` (hand, §7.7) and
`benchmark arctic` (whole body, §7.8).

The dataset's keypoints (and image sizes) are read with `io/` and fitted with `tasks.fit.fit` in batches of
`--batch-size` (each batch one batched fit, seeded `seed + batch`, person 0 of each keypoint file, focal
length from the image size unless given), and the fitted parameters are scored against the ground truth:

- **EHF** (100 frames): `NN_img.jpg`, ViTPose COCO-WholeBody keypoints in
  `vitpose_keypoints/predictions/NN_img.json`, ground-truth SMPL-X mesh `NN_align.ply` rotated into the
  camera by the EHF camera rotation. Joints = the SMPL-X joint regressor applied to both meshes, first 22;
  PA-MPJPE (similarity Procrustes) and MPJPE after pelvis alignment, mm (spec §8.2). Needs SMPL-X.
- **FreiHAND** (evaluation split, 3,960 images): 2D keypoints are the ground-truth joints projected with
  the per-image intrinsics (the "GT 2D keypoints" column of Table S-9); PA-MPJPE over the 21 joints,
  PA-MPVPE over the 778 MANO vertices, and the F-score at 5 mm and 15 mm of the aligned vertices. Each batch
  uses its images' median focal length (fx+fy)/2 and the image centre as principal point. Needs MANO.
- **ARCTIC** (subject s05, camera 4, every 20th frame; spec §8.3): whole-body fits from the MMPose
  COCO-WholeBody keypoints, scored against `processed_verts/seqs/s05/<action>.npy` (`cam_coord` →
  `verts.smplx`, camera 4; row = image number − `ioi_offset` of meta/misc.json, ARCTIC's convention).
  Metrics of `eval_arctic_wholebody` (§8.2): PA-MPVPE and pelvis-aligned MPVPE of all vertices; of each hand's
  vertices (MANO_SMPLX_vertex_ids.pkl, PA per hand or aligned at its wrist, mean of the two); of the face
  (SMPL-X__FLAME_vertex_ids.npy, PA or aligned at the neck); PA-MPJPE of the 14 body joints of
  SMPLX_to_J14.pkl (reported only when that regressor is found) and of 2×21 hand joints (J_regressor rows
  plus finger-tip vertices). Focal length from the image size, or `--setting gt-intrinsic` for camera 4's
  (fx+fy)/2 from misc.json. Needs SMPL-X and its MANO/FLAME vertex-index files.

Priors: every `--prior` is built once per run (`Context.prior`) and given to every batch's fit; `none` and
`l2` start from the DPoser prior's mean pose when one is found, as `dposer fit-image` does.
"""

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies.base import BodyModel, BodyOutput
from dposer_cli.bodies.pickle_compat import load_npy_object
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.evaluation.common import (
    J14_FILE,
    SMPLX_VERTICES,
    Context,
    Outcome,
    concat,
    mean_of,
    smplx_eval_files,
    to_numpy,
)
from dposer_cli.evaluation.paper import paper_for
from dposer_cli.io.datasets import ARCTIC_EVERY, read_arctic, read_ehf, read_freihand, read_ply_vertices
from dposer_cli.io.frames import Frame, read_persons
from dposer_cli.io.media import read_image
from dposer_cli.metrics import mpjpe, procrustes_align
from dposer_cli.tasks.fit import CONF_THRESHOLD, FitInput, FitResult, confident_keypoints, fit, fit_spec

log = logging.getLogger(__name__)

EHF_CAMERA_ROTATION = (-2.98747896, 0.01172457, -0.05704687)  # axis-angle (spec §8.2)
FIT_STEPS = 100  # fit-image iterations per stage (spec §7.6, §7.7)
F_THRESHOLDS_MM = (5.0, 15.0)
PERSON = 0  # the person of each keypoint file that is fitted (one per image)


def _rodrigues(aa: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(aa, dtype=np.float64)
    theta = float(np.linalg.norm(v))
    k = v / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def fit_input(
    keypoints: np.ndarray, image_size: np.ndarray, device: torch.device, focal: float | None = None
) -> FitInput:
    """One row per image: keypoints (B, K, 3) as read, (H, W) sizes (B, 2); focal length `focal`, else the
    image diagonal (spec §7.6); principal point at the image centre; low-confidence keypoints unused."""
    kp = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
    sizes = np.asarray(image_size).tolist()
    focals = [focal if focal is not None else cam.estimate_focal(float(w), float(h)) for h, w in sizes]
    return FitInput(
        keypoints=confident_keypoints(kp, CONF_THRESHOLD),
        focal=torch.tensor([float(f) for f in focals], dtype=torch.float32, device=device),
        center=torch.tensor([(w / 2, h / 2) for h, w in sizes], dtype=torch.float32, device=device),
        image_size=torch.tensor(sizes, dtype=torch.float32, device=device),
        frame=torch.arange(len(sizes), device=device),
    )


def _fit(
    ctx: Context,
    part: Part,
    keypoints: np.ndarray,
    layout: str,
    image_size: np.ndarray,
    b: int,
    focal: float | None = None,
) -> FitResult:
    """One batched fit of batch `b` (seeded seed + b) with the prior under test."""
    inputs = fit_input(keypoints, image_size, ctx.device, focal)
    result = fit(
        ctx.body(fit_spec(part).body),
        ctx.prior(part),
        inputs,
        part=part,
        keypoint_layout=layout,
        steps=ctx.steps(FIT_STEPS),
        generator=ctx.generator(b),
        mean_pose=ctx.mean_pose(part),
    )
    ctx.nfe += result.nfe
    return result


def _fit_files(
    ctx: Context,
    part: Part,
    images: Sequence[Path],
    keypoints: Sequence[Path],
    b: int,
    focal: float | None = None,
) -> FitResult:
    """Person 0 of each keypoint file (read with `io.frames`, image sizes from the images), fitted in one batch."""
    spec = fit_spec(part)
    frames = [
        Frame(Path(img), Path(kp), f"{i}", -1)
        for i, (img, kp) in enumerate(zip(images, keypoints, strict=True))
    ]
    persons = read_persons(
        frames,
        part=part.value,
        person=PERSON,
        conf_threshold=CONF_THRESHOLD,
        min_keypoints=spec.min_keypoints,
        counted_keypoints=spec.counted_keypoints,
    )
    return _fit(ctx, part, persons.keypoints, persons.layout, persons.image_size, b, focal)


def _pose(
    body: BodyModel, params: dict[str, Tensor], keys: Sequence[str], rows: slice | None = None
) -> BodyOutput:
    picked = {k: v if rows is None else v[rows] for k, v in params.items() if k in keys}
    with torch.no_grad():
        return body(**picked, return_vertices=True)


# --------------------------------------------------------------------------------------------------------- EHF
def run_ehf(ctx: Context) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    items = read_ehf(req.data_dir)
    n = ctx.limit(len(items))
    items = items[:n]
    body = ctx.body("body")
    regressor = getattr(getattr(body, "model", None), "J_regressor", None)
    if regressor is None:
        raise InputError(
            f"benchmark ehf needs an SMPL-X model (the {body.kind} body has no joint regressor)",
            hint="pass --body-model with smplx/SMPLX_NEUTRAL.npz",
        )
    rot = torch.as_tensor(_rodrigues(EHF_CAMERA_ROTATION), dtype=torch.float32, device=ctx.device)
    ctx.nfe = 0

    def batch(b: int, sl: slice) -> dict[str, np.ndarray]:
        chunk = items[sl]
        fitted = _fit_files(ctx, Part.body, [it.image for it in chunk], [it.keypoints for it in chunk], b)
        rows: dict[str, list[float]] = {"pa_mpjpe_mm": [], "mpjpe_mm": []}
        for i, it in enumerate(chunk):
            gt_v = torch.as_tensor(read_ply_vertices(it.mesh), dtype=torch.float32, device=ctx.device) @ rot.T
            out = _pose(
                body, fitted.params, ("global_orient", "body_pose", "betas", "transl"), slice(i, i + 1)
            )
            assert out.vertices is not None
            pred_v = out.vertices[0]
            if pred_v.shape != gt_v.shape:
                raise InputError(
                    f"{it.mesh}: {gt_v.shape[0]} vertices, but the body model has {pred_v.shape[0]}; "
                    "EHF meshes are SMPL-X (10,475 vertices)",
                    hint="pass --body-model (SMPL-X)",
                )
            reg = regressor.to(pred_v)
            pj, gj = (reg @ pred_v)[:22], (reg @ gt_v)[:22]
            rows["pa_mpjpe_mm"].append(float(mpjpe(pj, gj, align="procrustes")) * 1000)
            rows["mpjpe_mm"].append(float(mpjpe(pj, gj, align="root")) * 1000)
        return {k: np.array(v) for k, v in rows.items()}

    per = concat(ctx.map_batches(n, batch))
    entry = paper_for("ehf", "ehf")
    return Outcome(
        metrics={"ehf": mean_of(per)},
        paper={"ehf": entry} if entry else {},
        items=n,
        info={"nfe": ctx.nfe},
        body_model=body.kind,
        settings={
            "images": n,
            "steps_per_stage": ctx.steps(FIT_STEPS),
            "keypoints": "vitpose_keypoints/predictions",
            "joints": "SMPL-X J_regressor on both meshes, first 22",
            "mpjpe_alignment": "pelvis",
            "camera_rotation": list(EHF_CAMERA_ROTATION),
            "body_model": body.kind,
            "data_dir": str(req.data_dir),
        },
        lines=[f"fitted {n} EHF images with --prior {req.prior}"],
    )


# ---------------------------------------------------------------------------------------------------- FreiHAND
def _project(xyz: np.ndarray, k: np.ndarray) -> np.ndarray:
    uvw = xyz @ k.T
    return uvw[:, :2] / uvw[:, 2:3]


def f_score(pred: Tensor, gt: Tensor, threshold: float) -> Tensor:
    """F-score of two point sets (FreiHAND): harmonic mean of the fractions of each set's points within
    `threshold` of the other set; (..., V, 3) → (...)."""
    d = torch.cdist(pred, gt)
    precision = (d.min(-1).values < threshold).double().mean(-1)
    recall = (d.min(-2).values < threshold).double().mean(-1)
    return torch.where(
        precision + recall > 0,
        2 * precision * recall / (precision + recall).clamp_min(1e-12),
        torch.zeros_like(precision),
    )


def run_freihand(ctx: Context) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    data = read_freihand(req.data_dir)
    n = ctx.limit(len(data.images))
    body = ctx.body("hand")
    ctx.nfe = 0

    def batch(b: int, sl: slice) -> dict[str, np.ndarray]:
        # the ground-truth joints projected with each image's K, confidence 1 (hand21 layout)
        uv = np.stack([_project(data.xyz[i], data.K[i]) for i in range(sl.start, sl.stop)])
        kp = np.concatenate([uv, np.ones(uv.shape[:2] + (1,))], -1).astype(np.float32)
        sizes = np.array([read_image(p).shape[:2] for p in data.images[sl]], dtype=np.int64)
        focal = float(np.median((data.K[sl, 0, 0] + data.K[sl, 1, 1]) / 2))
        fitted = _fit(ctx, Part.hand, kp, "hand21", sizes, b, focal=focal)
        out = _pose(body, fitted.params, ("hand_pose", "global_orient", "betas", "transl"))
        gt_v = torch.as_tensor(data.verts[sl], dtype=torch.float32, device=ctx.device)
        gt_j = torch.as_tensor(data.xyz[sl], dtype=torch.float32, device=ctx.device)
        if out.vertices is None or out.vertices.shape[1:] != gt_v.shape[1:]:
            got = "no mesh" if out.vertices is None else f"{out.vertices.shape[1]} vertices"
            raise InputError(
                f"FreiHAND vertices are MANO's 778, but the {body.kind} hand has {got}",
                hint="pass --body-model with mano/MANO_RIGHT.pkl",
            )
        pj = out.joints[:, body.joint_set("hand21")]
        aligned_v = procrustes_align(out.vertices, gt_v)
        res = {
            "pa_mpjpe_mm": mpjpe(pj, gt_j, align="procrustes") * 1000,
            "pa_mpvpe_mm": mpjpe(aligned_v, gt_v) * 1000,
        }
        for th in F_THRESHOLDS_MM:
            res[f"f_at_{th:g}mm"] = f_score(aligned_v, gt_v, th / 1000)
        return {k: to_numpy(v) for k, v in res.items()}

    per = concat(ctx.map_batches(n, batch))
    entry = paper_for("freihand", "freihand")
    return Outcome(
        metrics={"freihand": mean_of(per)},
        paper={"freihand": entry} if entry else {},
        items=n,
        info={"nfe": ctx.nfe},
        body_model=body.kind,
        body_role="hand",
        settings={
            "images": n,
            "steps_per_stage": ctx.steps(FIT_STEPS),
            "keypoints": "ground truth projected with K",
            "focal": "median (fx+fy)/2 per batch; principal point at the image centre",
            "f_score_thresholds_mm": list(F_THRESHOLDS_MM),
            "body_model": body.kind,
            "data_dir": str(req.data_dir),
        },
        lines=[f"fitted {n} FreiHAND images with --prior {req.prior}"],
    )


# ------------------------------------------------------------------------------------------------------ ARCTIC
ARCTIC_SETTINGS = ("gt-intrinsic",)
PELVIS, NECK, WRIST = 0, 12, {"left": 20, "right": 21}
# 21-joint hand regressors of the official evaluator (spec §8.2): wrist, then per finger (thumb, index, middle,
# ring, pinky) three SMPL-X joints and the finger-tip vertex
_FINGER_JOINTS = {
    "left": ((37, 38, 39), (25, 26, 27), (28, 29, 30), (34, 35, 36), (31, 32, 33)),
    "right": ((52, 53, 54), (40, 41, 42), (43, 44, 45), (49, 50, 51), (46, 47, 48)),
}
FINGER_TIPS = {"left": (5361, 4933, 5058, 5169, 5286), "right": (8079, 7669, 7794, 7905, 8022)}
WHOLEBODY_KEYS = (
    "global_orient",
    "body_pose",
    "left_hand_pose",
    "right_hand_pose",
    "jaw_pose",
    "expression",
    "betas",
    "transl",
)


def hand_regressor(j_regressor: Tensor, side: str) -> Tensor:
    """(21, V) regressor of one hand's joints: J_regressor rows and one-hot finger-tip vertices."""
    v = j_regressor.shape[-1]
    tips = torch.zeros(5, v, dtype=j_regressor.dtype, device=j_regressor.device)
    tips[torch.arange(5), torch.tensor(FINGER_TIPS[side])] = 1.0
    rows = [j_regressor[WRIST[side]][None]]
    for finger, joints in enumerate(_FINGER_JOINTS[side]):
        rows += [j_regressor[list(joints)], tips[finger][None]]
    return torch.cat(rows)


def wholebody_mesh_errors(
    pred: Tensor, gt: Tensor, j_regressor: Tensor, files: dict[str, Any]
) -> dict[str, Tensor]:
    """Per-sample errors (mm) of `eval_arctic_wholebody` (spec §8.2) for SMPL-X meshes (B, V, 3)."""
    mm = 1000.0
    reg = j_regressor.to(pred)
    jp, jg = reg @ pred, reg @ gt  # (B, J, 3)

    def at(points_p: Tensor, points_g: Tensor, joint: int) -> Tensor:
        return mpjpe(points_p - jp[:, joint, None] + jg[:, joint, None], points_g)

    out = {
        "pa_mpvpe_all_mm": mpjpe(pred, gt, align="procrustes") * mm,
        "mpvpe_all_mm": at(pred, gt, PELVIS) * mm,
    }
    pa_hand, hand, pa_joints = [], [], []
    for side, wrist in WRIST.items():
        ids = files["hand"][side]
        pa_hand.append(mpjpe(pred[:, ids], gt[:, ids], align="procrustes"))
        hand.append(at(pred[:, ids], gt[:, ids], wrist))
        hreg = hand_regressor(reg, side)
        pa_joints.append(mpjpe(hreg @ pred, hreg @ gt, align="procrustes"))
    out["pa_mpvpe_hand_mm"] = (pa_hand[0] + pa_hand[1]) / 2 * mm
    out["mpvpe_hand_mm"] = (hand[0] + hand[1]) / 2 * mm
    face = files["face"]
    out["pa_mpvpe_face_mm"] = mpjpe(pred[:, face], gt[:, face], align="procrustes") * mm
    out["mpvpe_face_mm"] = at(pred[:, face], gt[:, face], NECK) * mm
    if files["j14"] is not None:
        j14 = files["j14"].to(pred)
        out["pa_mpjpe_body_mm"] = mpjpe(j14 @ pred, j14 @ gt, align="procrustes") * mm
    out["pa_mpjpe_hand_mm"] = (pa_joints[0] + pa_joints[1]) / 2 * mm
    return out


class _ArcticVertices:
    """Ground-truth SMPL-X vertices of one camera, read per action (the last action kept in memory)."""

    def __init__(self, files: dict[str, Path], view: int) -> None:
        self.files, self.view = files, view
        self._action: str | None = None
        self._verts: np.ndarray | None = None

    def __call__(self, action: str, frame: int) -> np.ndarray:
        path = self.files[action]
        if action != self._action:
            data = load_npy_object(path)
            try:
                verts = data["cam_coord"]["verts.smplx"]
            except (KeyError, TypeError, IndexError):
                raise InputError(
                    f"{path}: expected a dict with cam_coord → verts.smplx (ARCTIC processed "
                    "vertices; scripts_data/process_seqs.py --export_verts)"
                ) from None
            verts = np.asarray(verts)
            if verts.ndim != 4 or verts.shape[1] <= self.view or verts.shape[2:] != (SMPLX_VERTICES, 3):
                raise InputError(
                    f"{path}: verts.smplx has shape {verts.shape}; expected (frames, cameras, "
                    f"{SMPLX_VERTICES}, 3) with camera {self.view}"
                )
            self._action, self._verts = action, verts[:, self.view]
        assert self._verts is not None
        if not 0 <= frame < len(self._verts):
            raise InputError(
                f"{path}: no frame {frame} (it has {len(self._verts)}); check meta/misc.json ioi_offset"
            )
        return self._verts[frame]


def run_arctic(ctx: Context) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    data = read_arctic(req.data_dir)
    items = data.items[: ctx.limit(len(data.items))]
    n = len(items)
    body = ctx.body("body")
    regressor = getattr(getattr(body, "model", None), "J_regressor", None)
    if regressor is None or getattr(body, "kind", "") != "smplx":
        raise InputError(
            f"benchmark arctic needs an SMPL-X model (the {body.kind} body cannot be compared with "
            "ARCTIC's SMPL-X meshes)",
            hint="pass --body-model with smplx/SMPLX_NEUTRAL.npz",
        )
    files = smplx_eval_files(body, req.data_dir, ctx.device)
    gt_verts = _ArcticVertices(data.verts, data.view)
    gt_intrinsic = "gt-intrinsic" in req.settings
    focal = float(data.intrinsics[0, 0] + data.intrinsics[1, 1]) / 2 if gt_intrinsic else None
    ctx.nfe = 0

    def batch(b: int, sl: slice) -> dict[str, np.ndarray]:
        chunk = items[sl]
        fitted = _fit_files(
            ctx, Part.wholebody, [it.image for it in chunk], [it.keypoints for it in chunk], b, focal=focal
        )
        out = _pose(body, fitted.params, WHOLEBODY_KEYS)
        assert out.vertices is not None
        gt = torch.as_tensor(
            np.stack([gt_verts(it.action, it.frame) for it in chunk]), dtype=torch.float32, device=ctx.device
        )
        return {k: to_numpy(v) for k, v in wholebody_mesh_errors(out.vertices, gt, regressor, files).items()}

    per = concat(ctx.map_batches(n, batch))
    entry = paper_for("arctic", "arctic")
    lines = [
        f"fitted {n} ARCTIC frames ({len({it.action for it in items})} actions) with --prior {req.prior}"
    ]
    if files["j14"] is None:
        note = f"pa_mpjpe_body_mm not reported: {J14_FILE} not found beside the SMPL-X model or in --data-dir"
        ctx.notes.append(note)
        lines.append(note)
    return Outcome(
        metrics={"arctic": mean_of(per)},
        paper={"arctic": entry} if entry else {},
        items=n,
        info={"nfe": ctx.nfe},
        body_model=body.kind,
        settings={
            "frames": n,
            "subject": data.subject,
            "camera": data.view,
            "frames_per_action": f"sorted(jpgs)[1:][{ARCTIC_EVERY - 1}::{ARCTIC_EVERY}]",
            "ioi_offset": data.ioi_offset,
            "steps_per_stage": ctx.steps(FIT_STEPS),
            "focal": f"misc.json camera {data.view}: {focal:.1f} px (principal point at the image centre)"
            if focal is not None
            else "estimated from the image size (fit-image default)",
            "keypoints": "keypoints/mmpose_keypoints (COCO-WholeBody 133)",
            "body_model": body.kind,
            "evaluation_files": files["files"],
            "data_dir": str(req.data_dir),
        },
        lines=lines,
    )
