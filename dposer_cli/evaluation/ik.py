"""`benchmark hand-ik` and `benchmark face-ik` (spec §7.9, §7.10, §8.2).

`--data-dir` is a folder of pose npz files with ground-truth parameters: hand poses (`hand_pose` (N, 45),
AMASS, or `poses`) — the ReInterHand test split converted to npz — or faces (`jaw_pose` + `expression`, and
`betas` when present, else zero shape) — the WCPA valid split. Targets are the posed model's joints
(hand21 / flame73) with the official corruption of each setting (`sparse`: 13 of 21 joints hidden;
`fingertip`: only wrist and tips visible; `partial`: two fingers hidden; `noisy-Xmm`: Gaussian noise;
`half_face` / `left_face` / `right_face`: half the landmarks hidden), solved by `tasks.ik.solve_ik` with the
official weights and step counts.

Metrics per sample (mm), averaged: MPJPE over visible / occluded / all joints against the ground truth, and
MPVPE over all vertices. Settings that hide no joint report no occluded MPJPE.
"""

import logging
from typing import Any

import numpy as np
import torch

from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.evaluation.common import Context, Outcome, concat, mean_of, to_numpy
from dposer_cli.evaluation.paper import paper_for
from dposer_cli.io.datasets import read_amass_poses
from dposer_cli.metrics import mpjpe
from dposer_cli.tasks import ik

log = logging.getLogger(__name__)

HAND_SETTINGS = ("sparse", "fingertip", "partial", "noisy-2mm", "noisy-5mm", "noisy-10mm")
HAND_DEFAULT = ("sparse", "fingertip")
FACE_SETTINGS = ("noisy-1mm", "noisy-2mm", "noisy-5mm", "half_face", "left_face", "right_face")
FACE_DEFAULT = ("noisy-1mm", "noisy-2mm", "noisy-5mm", "half_face")


def parse_setting(setting: str) -> tuple[str, float | None]:
    """`noisy-5mm` → ("noisy", 0.005); other names are IK types without noise."""
    if setting.startswith("noisy-") and setting.endswith("mm"):
        return "noisy", float(setting[len("noisy-") : -2]) / 1000
    return setting, None


def run_hand(ctx: Context) -> Outcome:
    return _run(ctx, Part.hand, tuple(ctx.req.settings) or HAND_DEFAULT, "hand-ik")


def run_face(ctx: Context) -> Outcome:
    return _run(ctx, Part.face, tuple(ctx.req.settings) or FACE_DEFAULT, "face-ik")


def _ground_truth(ctx: Context, part: Part) -> dict[str, torch.Tensor]:
    req = ctx.req
    assert req.data_dir is not None
    poses = read_amass_poses(req.data_dir, part, stride=req.stride)
    n = ctx.limit(len(poses))
    dev = ctx.device
    if part is Part.hand:
        return {"hand_pose": torch.as_tensor(poses[:n], device=dev)}
    params = {
        "jaw_pose": torch.as_tensor(poses[:n, :3], device=dev),
        "expression": torch.as_tensor(poses[:n, 3:], device=dev),
    }
    try:
        betas = read_amass_poses(req.data_dir, Part.face_shape, stride=req.stride)
    except InputError:
        betas = None
    if betas is not None and len(betas) >= n:
        params["betas"] = torch.as_tensor(betas[:n], device=dev)
    else:
        ctx.notes.append("no face shape (betas) in the data: ground-truth faces use the mean shape")
        params["betas"] = torch.zeros(n, 100, device=dev)
    return params


def _run(ctx: Context, part: Part, settings: tuple[str, ...], name: str) -> Outcome:
    req = ctx.req
    spec = ik.IK[part]
    body = ctx.body(spec.body)  # a face without FLAME raises MissingAssetError here
    gt = _ground_truth(ctx, part)
    n = len(next(iter(gt.values())))
    priors = {p: ctx.prior(p) for p in spec.prior_parts}
    # the gmm plugs in as a prior object; IK's l2 is 0.5·‖θ‖² (PRIOR_SCALES)
    scale = ik.PRIOR_SCALES.get(req.prior, 1.0)
    prior = None if req.prior == "none" else ik.ik_prior(part, priors, scale=scale)
    metrics: dict[str, dict[str, float]] = {}
    paper: dict[str, Any] = {}
    steps: dict[str, int] = {}
    nfe = 0
    for k, setting in enumerate(settings):
        ik_type, noise = parse_setting(setting)
        steps[setting] = req.steps or spec.steps

        def batch(
            b: int, sl: slice, k: int = k, ik_type: str = ik_type, noise: float | None = noise
        ) -> dict[str, np.ndarray]:
            gen = ctx.generator(b + 1_000_003 * k)
            problem = ik.problem_from_params(part, body, {key: v[sl] for key, v in gt.items()})
            problem = ik.apply_type(problem, ik_type, noise_std=noise, generator=gen)
            result = ik.solve_ik(
                problem, body, prior, ik_type=ik_type, noise_std=noise, steps=req.steps, generator=gen
            )
            return per_sample(problem, body, result)

        for p in priors.values():
            p.nfe = 0
        per = concat(ctx.map_batches(n, batch))
        nfe += sum(p.nfe for p in priors.values())
        metrics[setting] = mean_of(per)
        entry = paper_for(name, setting)
        if entry:
            paper[setting] = entry
    return Outcome(
        metrics=metrics,
        paper=paper,
        items=n,
        info={"nfe": nfe},
        body_model=body.kind,
        body_role=spec.body,
        settings={
            "part": part.value,
            "ik_settings": list(settings),
            "steps": steps,
            "body_model": body.kind,
            "joint_order": spec.joint_set,
            "data_dir": str(req.data_dir),
            "source": [p.source for p in priors.values()],
        },
        lines=[f"solved {n} {part.value} IK targets per setting ({', '.join(settings)})"],
    )


def per_sample(problem: ik.IKProblem, body: BodyModel, result: ik.IKResult) -> dict[str, np.ndarray]:
    """Errors against the ground truth per sample (mm); the occluded MPJPE is NaN where nothing is hidden."""
    assert problem.gt is not None
    vis = problem.visible
    hidden = ~vis
    err = (result.joints - problem.gt["joints"]).norm(dim=-1) * 1000  # (N, J)
    occluded = torch.where(
        hidden.any(-1),
        (err * hidden).sum(-1) / hidden.sum(-1).clamp_min(1),
        torch.full_like(err[:, 0], float("nan")),
    )
    out = {
        "mpjpe_visible_mm": to_numpy((err * vis).sum(-1) / vis.sum(-1)),
        "mpjpe_occluded_mm": to_numpy(occluded),
        "mpjpe_all_mm": to_numpy(err.mean(-1)),
    }
    if "vertices" in problem.gt:
        keys = {key for key, _ in ik.IK[problem.part].gt_keys} | {"transl"}
        with torch.no_grad():
            verts = body(
                **{key: v for key, v in result.params.items() if key in keys}, return_vertices=True
            ).vertices
        if verts is not None:
            out["mpvpe_mm"] = to_numpy(mpjpe(verts, problem.gt["vertices"]) * 1000)
    return out
