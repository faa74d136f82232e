"""Mesh recovery from 2D keypoints: `benchmark ehf` (body, spec §7.6), `benchmark freihand` (hand, §7.7) and
`benchmark arctic` (whole body, §7.8).

Both run `dposer fit-image` on the dataset's images in batches of `--batch-size` (each batch one batched
fit, seeded `seed + batch`), read back the fitted parameters and score them against the ground truth:

- **EHF** (100 frames): `NN_img.jpg`, ViTPose COCO-WholeBody keypoints in
  `vitpose_keypoints/predictions/NN_img.json`, ground-truth SMPL-X mesh `NN_align.ply` rotated into the
  camera by the EHF camera rotation. Joints = the SMPL-X joint regressor applied to both meshes, first 22;
  PA-MPJPE (similarity Procrustes) and MPJPE after pelvis alignment, mm (spec §8.2). Needs SMPL-X.
- **FreiHAND** (evaluation split, 3,960 images): 2D keypoints are the ground-truth joints projected with
  the per-image intrinsics (the "GT 2D keypoints" column of Table S-9); PA-MPJPE over the 21 joints,
  PA-MPVPE over the 778 MANO vertices, and the F-score at 5 mm and 15 mm of the aligned vertices. fit-image
  takes one focal length per run, so each batch uses its images' median focal length (fx+fy)/2 and the
  image centre as principal point. Needs MANO.
- **ARCTIC** (subject s05, camera 4, every 20th frame; spec §8.3): whole-body fits from the MMPose
  COCO-WholeBody keypoints, scored against `processed_verts/seqs/s05/<action>.npy` (`cam_coord` →
  `verts.smplx`, camera 4; row = image number − `ioi_offset` of meta/misc.json, ARCTIC's convention).
  Metrics of `eval_arctic_wholebody` (§8.2): PA-MPVPE and pelvis-aligned MPVPE of all vertices; of each hand's
  vertices (MANO_SMPLX_vertex_ids.pkl, PA per hand or aligned at its wrist, mean of the two); of the face
  (SMPL-X__FLAME_vertex_ids.npy, PA or aligned at the neck); PA-MPJPE of the 14 body joints of
  SMPLX_to_J14.pkl (reported only when that regressor is found) and of 2×21 hand joints (J_regressor rows
  plus finger-tip vertices). Focal length as fit-image estimates it, or `--setting gt-intrinsic` for
  camera 4's (fx+fy)/2 from misc.json. Needs SMPL-X and its MANO/FLAME vertex-index files.

Priors: `dposer`, `gmm` and `vposer` are built once per run (`Context.prior`) and handed to every batch's fit
as `prior_model`; the baselines' terms get the same per-stage weights as DPoser's. `none` and `l2` are
fit-image's own.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dposer_cli.core.errors import InputError, MissingAssetError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import atomic_write
from dposer_cli.io.datasets import ARCTIC_EVERY, read_arctic, read_ehf, read_freihand, read_ply_vertices
from dposer_cli.io.poses import load_key, open_npz
from dposer_cli.metrics import mpjpe, procrustes_align
from dposer_cli.services._bench_common import (
    Context,
    Outcome,
    concat,
    eval_file_folders,
    find_eval_file,
    mean_of,
    to_numpy,
)
from dposer_cli.services._bench_paper import paper_for

log = logging.getLogger(__name__)

EHF_CAMERA_ROTATION = (-2.98747896, 0.01172457, -0.05704687)  # axis-angle (spec §8.2)
FIT_STEPS = 100  # fit-image iterations per stage (spec §7.6, §7.7)
F_THRESHOLDS_MM = (5.0, 15.0)


def _rodrigues(aa: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(aa, dtype=np.float64)
    theta = float(np.linalg.norm(v))
    k = v / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def _fit(ctx: Context, part: Part, images: list[Path], keypoints: list[Path], out: Path, b: int,
         focal: float | None = None) -> dict[str, dict[str, np.ndarray]]:
    """One batched fit-image run → {image stem: fitted arrays}."""
    from dposer_cli.services import fit_image

    req = ctx.req
    prior_model = ctx.prior(part) if req.prior in ("dposer", "gmm", "vposer") else None
    fit_req = fit_image.FitImageRequest(
        images=tuple(images), keypoints=tuple(keypoints), out=out, part=part, person="0", focal=focal,
        steps=ctx.steps(FIT_STEPS), prior=req.prior, prior_model=prior_model, body_model=req.body_model,
        checkpoint=req.checkpoint, normalizer=req.normalizer, overlay=False, device=str(ctx.device),
        seed=req.seed + b)
    result = fit_image.run(fit_req)
    ctx.nfe += int(result.info["nfe"])
    fitted = {}
    for img in images:
        path = out / f"{img.stem}.npz"
        with open_npz(path, "fit-image result") as npz:
            fitted[img.stem] = {k: load_key(npz, k, path) for k in npz.files}
    return fitted


def _pose(body: Any, arrays: dict[str, np.ndarray], keys: tuple[str, ...], device: torch.device) -> Any:
    params = {k: torch.as_tensor(np.asarray(arrays[k], np.float32), device=device) for k in keys if k in arrays}
    with torch.no_grad():
        return body(**params, return_vertices=True)


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
        raise InputError(f"benchmark ehf needs an SMPL-X model (the {body.kind} body has no joint regressor)",
                         hint="pass --body-model with smplx/SMPLX_NEUTRAL.npz")
    rot = torch.as_tensor(_rodrigues(EHF_CAMERA_ROTATION), dtype=torch.float32, device=ctx.device)
    scratch = ctx.tempdir()

    def batch(b: int, sl: slice) -> dict[str, np.ndarray]:
        chunk = items[sl]
        fitted = _fit(ctx, Part.body, [it.image for it in chunk], [it.keypoints for it in chunk],
                      scratch / f"batch{b}", b)
        rows: dict[str, list[float]] = {"pa_mpjpe_mm": [], "mpjpe_mm": []}
        for it in chunk:
            gt_v = torch.as_tensor(read_ply_vertices(it.mesh), dtype=torch.float32, device=ctx.device) @ rot.T
            out = _pose(body, fitted[it.image.stem], ("global_orient", "body_pose", "betas", "transl"), ctx.device)
            pred_v = out.vertices[0]
            if pred_v.shape != gt_v.shape:
                raise InputError(f"{it.mesh}: {gt_v.shape[0]} vertices, but the body model has {pred_v.shape[0]}; "
                                 "EHF meshes are SMPL-X (10,475 vertices)", hint="pass --body-model (SMPL-X)")
            reg = regressor.to(pred_v)
            pj, gj = (reg @ pred_v)[:22], (reg @ gt_v)[:22]
            rows["pa_mpjpe_mm"].append(float(mpjpe(pj, gj, align="procrustes")) * 1000)
            rows["mpjpe_mm"].append(float(mpjpe(pj, gj, align="root")) * 1000)
        return {k: np.array(v) for k, v in rows.items()}

    per = concat(ctx.map_batches(n, batch))
    entry = paper_for("ehf", "ehf")
    return Outcome(
        metrics={"ehf": mean_of(per)}, paper={"ehf": entry} if entry else {}, items=n,
        info={"nfe": ctx.nfe},
        settings={"images": n, "steps_per_stage": ctx.steps(FIT_STEPS), "keypoints": "vitpose_keypoints/predictions",
                  "joints": "SMPL-X J_regressor on both meshes, first 22", "mpjpe_alignment": "pelvis",
                  "camera_rotation": list(EHF_CAMERA_ROTATION), "body_model": body.kind,
                  "data_dir": str(req.data_dir)},
        lines=[f"fitted {n} EHF images with --prior {req.prior}"],
    )


# ---------------------------------------------------------------------------------------------------- FreiHAND
def _project(xyz: np.ndarray, k: np.ndarray) -> np.ndarray:
    uvw = xyz @ k.T
    return uvw[:, :2] / uvw[:, 2:3]


def f_score(pred: torch.Tensor, gt: torch.Tensor, threshold: float) -> torch.Tensor:
    """F-score of two point sets (FreiHAND): harmonic mean of the fractions of each set's points within
    `threshold` of the other set; (..., V, 3) → (...)."""
    d = torch.cdist(pred, gt)
    precision = (d.min(-1).values < threshold).double().mean(-1)
    recall = (d.min(-2).values < threshold).double().mean(-1)
    return torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                       torch.zeros_like(precision))


def run_freihand(ctx: Context) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    data = read_freihand(req.data_dir)
    n = ctx.limit(len(data.images))
    body = ctx.body("hand")
    scratch = ctx.tempdir()

    def batch(b: int, sl: slice) -> dict[str, np.ndarray]:
        folder = scratch / f"batch{b}"
        kp_files = []
        for i in range(sl.start, sl.stop):  # MMPose hand JSON with the projected ground-truth joints
            uv = _project(data.xyz[i], data.K[i])
            path = folder / "keypoints" / f"{data.images[i].stem}.json"
            with atomic_write(path, "w") as fh:
                json.dump([{"keypoints": uv.tolist(), "keypoint_scores": [1.0] * 21,
                            "bbox": [[*uv.min(0).tolist(), *uv.max(0).tolist()]], "bbox_score": 1.0}], fh)
            kp_files.append(path)
        focal = float(np.median((data.K[sl, 0, 0] + data.K[sl, 1, 1]) / 2))
        fitted = _fit(ctx, Part.hand, data.images[sl], kp_files, folder / "fits", b, focal=focal)
        stems = [p.stem for p in data.images[sl]]
        arrays = {k: np.concatenate([fitted[s][k] for s in stems]) for k in ("hand_pose", "global_orient", "betas",
                                                                              "transl")}
        out = _pose(body, arrays, tuple(arrays), ctx.device)
        gt_v = torch.as_tensor(data.verts[sl], dtype=torch.float32, device=ctx.device)
        gt_j = torch.as_tensor(data.xyz[sl], dtype=torch.float32, device=ctx.device)
        if out.vertices is None or out.vertices.shape[1:] != gt_v.shape[1:]:
            got = "no mesh" if out.vertices is None else f"{out.vertices.shape[1]} vertices"
            raise InputError(f"FreiHAND vertices are MANO's 778, but the {body.kind} hand has {got}",
                             hint="pass --body-model with mano/MANO_RIGHT.pkl")
        pj = out.joints[:, body.joint_set("hand21")]
        aligned_v = procrustes_align(out.vertices, gt_v)
        res = {"pa_mpjpe_mm": mpjpe(pj, gt_j, align="procrustes") * 1000,
               "pa_mpvpe_mm": mpjpe(aligned_v, gt_v) * 1000}
        for th in F_THRESHOLDS_MM:
            res[f"f_at_{th:g}mm"] = f_score(aligned_v, gt_v, th / 1000)
        return {k: to_numpy(v) for k, v in res.items()}

    per = concat(ctx.map_batches(n, batch))
    entry = paper_for("freihand", "freihand")
    return Outcome(
        metrics={"freihand": mean_of(per)}, paper={"freihand": entry} if entry else {}, items=n,
        info={"nfe": ctx.nfe},
        settings={"images": n, "steps_per_stage": ctx.steps(FIT_STEPS), "keypoints": "ground truth projected with K",
                  "focal": "median (fx+fy)/2 per batch; principal point at the image centre",
                  "f_score_thresholds_mm": list(F_THRESHOLDS_MM), "body_model": body.kind,
                  "data_dir": str(req.data_dir)},
        lines=[f"fitted {n} FreiHAND images with --prior {req.prior}"],
    )


# ------------------------------------------------------------------------------------------------------ ARCTIC
ARCTIC_SETTINGS = ("gt-intrinsic",)
SMPLX_VERTICES = 10475
PELVIS, NECK, WRIST = 0, 12, {"left": 20, "right": 21}
# 21-joint hand regressors of the official evaluator (spec §8.2): wrist, then per finger (thumb, index, middle,
# ring, pinky) three SMPL-X joints and the finger-tip vertex
_FINGER_JOINTS = {"left": ((37, 38, 39), (25, 26, 27), (28, 29, 30), (34, 35, 36), (31, 32, 33)),
                  "right": ((52, 53, 54), (40, 41, 42), (43, 44, 45), (49, 50, 51), (46, 47, 48))}
FINGER_TIPS = {"left": (5361, 4933, 5058, 5169, 5286), "right": (8079, 7669, 7794, 7905, 8022)}
HAND_IDS_FILE, FACE_IDS_FILE, J14_FILE = "MANO_SMPLX_vertex_ids.pkl", "SMPL-X__FLAME_vertex_ids.npy", "SMPLX_to_J14.pkl"


def hand_regressor(j_regressor: torch.Tensor, side: str) -> torch.Tensor:
    """(21, V) regressor of one hand's joints: J_regressor rows and one-hot finger-tip vertices."""
    v = j_regressor.shape[-1]
    tips = torch.zeros(5, v, dtype=j_regressor.dtype, device=j_regressor.device)
    tips[torch.arange(5), torch.tensor(FINGER_TIPS[side])] = 1.0
    rows = [j_regressor[WRIST[side]][None]]
    for finger, joints in enumerate(_FINGER_JOINTS[side]):
        rows += [j_regressor[list(joints)], tips[finger][None]]
    return torch.cat(rows)


def smplx_eval_files(body: Any, data_dir: Path | None, device: torch.device) -> dict[str, Any]:
    """The SMPL-X evaluation files: hand and face vertex ids (required) and the J14 regressor (optional).

    Looked for beside the SMPL-X model file, then in `data_dir`.

    Raises:
        MissingAssetError: a required file is in none of those folders.
        AssetMismatchError / InputError: a file is unreadable or holds the wrong arrays.
    """
    from dposer_cli.bodies.pickle_compat import load_npy_object, load_pickle

    folders = eval_file_folders(body, data_dir)
    where = " or ".join(str(f) for f in folders)
    found = {name: find_eval_file(name, body, data_dir) for name in (HAND_IDS_FILE, FACE_IDS_FILE, J14_FILE)}
    missing = [n for n in (HAND_IDS_FILE, FACE_IDS_FILE) if found[n] is None]
    if missing:
        raise MissingAssetError(f"benchmark arctic needs {' and '.join(missing)} (looked in {where})",
                                hint="download 'MANO and FLAME vertex indices' from https://smpl-x.is.tue.mpg.de "
                                     "and put them beside SMPLX_NEUTRAL.npz")
    hand = load_pickle(found[HAND_IDS_FILE])
    out: dict[str, Any] = {"files": {k: str(v) for k, v in found.items() if v is not None}}

    def ids(value: Any, path: Path, what: str) -> torch.Tensor:
        arr = np.asarray(value)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) \
                or arr.min() < 0 or arr.max() >= SMPLX_VERTICES:
            raise InputError(f"{path}: {what} must be a list of SMPL-X vertex indices (0–{SMPLX_VERTICES - 1})")
        return torch.as_tensor(arr.astype(np.int64), device=device)

    if not isinstance(hand, dict) or not {"left_hand", "right_hand"} <= set(hand):
        raise InputError(f"{found[HAND_IDS_FILE]}: expected a dict with 'left_hand' and 'right_hand' vertex ids")
    out["hand"] = {side: ids(hand[f"{side}_hand"], found[HAND_IDS_FILE], f"{side}_hand") for side in WRIST}
    out["face"] = ids(load_npy_object(found[FACE_IDS_FILE]), found[FACE_IDS_FILE], "the face ids")
    out["j14"] = None
    if found[J14_FILE] is not None:
        j14 = np.asarray(load_pickle(found[J14_FILE]), dtype=np.float64)
        if j14.ndim != 2 or j14.shape[1] != SMPLX_VERTICES or not np.isfinite(j14).all():
            raise InputError(f"{found[J14_FILE]}: expected a (14, {SMPLX_VERTICES}) joint regressor, "
                             f"got shape {j14.shape}")
        out["j14"] = torch.as_tensor(j14, dtype=torch.float32, device=device)
    return out


def wholebody_mesh_errors(pred: torch.Tensor, gt: torch.Tensor, j_regressor: torch.Tensor,
                          files: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per-sample errors (mm) of `eval_arctic_wholebody` (spec §8.2) for SMPL-X meshes (B, V, 3)."""
    mm = 1000.0
    reg = j_regressor.to(pred)
    jp, jg = reg @ pred, reg @ gt  # (B, J, 3)

    def at(points_p: torch.Tensor, points_g: torch.Tensor, joint: int) -> torch.Tensor:
        return mpjpe(points_p - jp[:, joint, None] + jg[:, joint, None], points_g)

    out = {"pa_mpvpe_all_mm": mpjpe(pred, gt, align="procrustes") * mm, "mpvpe_all_mm": at(pred, gt, PELVIS) * mm}
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
        from dposer_cli.bodies.pickle_compat import load_npy_object

        path = self.files[action]
        if action != self._action:
            data = load_npy_object(path)
            try:
                verts = data["cam_coord"]["verts.smplx"]
            except (KeyError, TypeError, IndexError):
                raise InputError(f"{path}: expected a dict with cam_coord → verts.smplx (ARCTIC processed "
                                 "vertices; scripts_data/process_seqs.py --export_verts)") from None
            verts = np.asarray(verts)
            if verts.ndim != 4 or verts.shape[1] <= self.view or verts.shape[2:] != (SMPLX_VERTICES, 3):
                raise InputError(f"{path}: verts.smplx has shape {verts.shape}; expected (frames, cameras, "
                                 f"{SMPLX_VERTICES}, 3) with camera {self.view}")
            self._action, self._verts = action, verts[:, self.view]
        assert self._verts is not None
        if not 0 <= frame < len(self._verts):
            raise InputError(f"{path}: no frame {frame} (it has {len(self._verts)}); check meta/misc.json ioi_offset")
        return self._verts[frame]


def _link(src: Path, dst: Path) -> Path:
    """`dst` pointing at `src` (a symbolic link, or a copy where links are not allowed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        import shutil

        shutil.copyfile(src, dst)
    return dst


def run_arctic(ctx: Context) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    data = read_arctic(req.data_dir)
    items = data.items[:ctx.limit(len(data.items))]
    n = len(items)
    body = ctx.body("body")
    regressor = getattr(getattr(body, "model", None), "J_regressor", None)
    if regressor is None or getattr(body, "kind", "") != "smplx":
        raise InputError(f"benchmark arctic needs an SMPL-X model (the {body.kind} body cannot be compared with "
                         "ARCTIC's SMPL-X meshes)", hint="pass --body-model with smplx/SMPLX_NEUTRAL.npz")
    files = smplx_eval_files(body, req.data_dir, ctx.device)
    gt_verts = _ArcticVertices(data.verts, data.view)
    gt_intrinsic = "gt-intrinsic" in req.settings
    focal = float(data.intrinsics[0, 0] + data.intrinsics[1, 1]) / 2 if gt_intrinsic else None
    scratch = ctx.tempdir()
    keys = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "expression", "betas",
            "transl")

    def batch(b: int, sl: slice) -> dict[str, np.ndarray]:
        chunk = items[sl]
        # every action numbers its frames from 00001: link the inputs under unique names for one batched fit
        folder = scratch / f"batch{b}"
        images = [_link(it.image, folder / "in" / f"{it.action}-{it.image.name}") for it in chunk]
        kps = [_link(it.keypoints, folder / "in" / f"{it.action}-{it.image.stem}.json") for it in chunk]
        fitted = _fit(ctx, Part.wholebody, images, kps, folder / "fits", b, focal=focal)
        stems = [p.stem for p in images]
        arrays = {k: np.concatenate([fitted[s][k] for s in stems]) for k in keys if k in fitted[stems[0]]}
        pred = _pose(body, arrays, tuple(arrays), ctx.device).vertices
        gt = torch.as_tensor(np.stack([gt_verts(it.action, it.frame) for it in chunk]), dtype=torch.float32,
                             device=ctx.device)
        return {k: to_numpy(v) for k, v in wholebody_mesh_errors(pred, gt, regressor, files).items()}

    per = concat(ctx.map_batches(n, batch))
    entry = paper_for("arctic", "arctic")
    lines = [f"fitted {n} ARCTIC frames ({len({it.action for it in items})} actions) with --prior {req.prior}"]
    if files["j14"] is None:
        note = f"pa_mpjpe_body_mm not reported: {J14_FILE} not found beside the SMPL-X model or in --data-dir"
        ctx.notes.append(note)
        lines.append(note)
    return Outcome(
        metrics={"arctic": mean_of(per)}, paper={"arctic": entry} if entry else {}, items=n,
        info={"nfe": ctx.nfe},
        settings={"frames": n, "subject": data.subject, "camera": data.view,
                  "frames_per_action": f"sorted(jpgs)[1:][{ARCTIC_EVERY - 1}::{ARCTIC_EVERY}]",
                  "ioi_offset": data.ioi_offset, "steps_per_stage": ctx.steps(FIT_STEPS),
                  "focal": f"misc.json camera {data.view}: {focal:.1f} px (principal point at the image centre)"
                  if focal is not None else "estimated from the image size (fit-image default)",
                  "keypoints": "keypoints/mmpose_keypoints (COCO-WholeBody 133)", "body_model": body.kind,
                  "evaluation_files": files["files"], "data_dir": str(req.data_dir)},
        lines=lines,
    )
