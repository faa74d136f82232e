"""Mesh recovery from 2D keypoints: `benchmark ehf` (body, spec §7.6) and `benchmark freihand` (hand, §7.7).

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

Priors: `dposer` and `gmm` are built once per run (`Context.prior`) and handed to every batch's fit as
`prior_model`; the GMM term gets the same per-stage weights as DPoser's. `none` and `l2` are fit-image's own.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import atomic_write
from dposer_cli.io.datasets import read_ehf, read_freihand, read_ply_vertices
from dposer_cli.io.poses import load_key, open_npz
from dposer_cli.metrics import mpjpe, procrustes_align
from dposer_cli.services._bench_common import Context, Outcome, concat, mean_of, to_numpy
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
    prior_model = ctx.prior(part) if req.prior in ("dposer", "gmm") else None
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
