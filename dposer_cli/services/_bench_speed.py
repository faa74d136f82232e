"""`benchmark speed`: throughput, network evaluations and peak memory of generation and each task, on this device.

Inputs are synthetic (seeded random poses, a rendered-free keypoint file for fit-image), so no dataset is
needed. Sizes follow the official defaults (spec §11): generation 1000 samples with the chosen sampler;
completion 100 poses × 10 hypotheses × 200 steps; motion denoising one 60-frame clip at σ = 40 mm (180
steps); hand IK 100 targets × 300 steps; face IK 100 × 200 (only with a FLAME model); fit-image 8 people ×
the fit-image default schedule. `--quick` shrinks everything to a few items and steps (tests).

Peak memory: `torch.cuda.max_memory_allocated` per task on CUDA; on the CPU the process's peak resident
set size so far (`ru_maxrss`, a high-water mark over the whole run, not per task).
"""

import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dposer_cli.core.errors import MissingAssetError
from dposer_cli.core.parts import Part, mask_dims
from dposer_cli.core.paths import atomic_write
from dposer_cli.services._bench_common import Context, Outcome, scaled_schedule
from dposer_cli.tasks import denoise_motion as dm
from dposer_cli.tasks import ik
from dposer_cli.tasks.complete import complete
from dposer_cli.tasks.sample import DEFAULT_STEPS, sample

log = logging.getLogger(__name__)

TASKS = ("generation", "completion", "denoise", "hand-ik", "face-ik", "fit-image")
# (full, quick) sizes: items, steps (None = the task's official count), hypotheses
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "generation": ({"n": 1000, "steps": None}, {"n": 8, "steps": 3}),
    "completion": ({"n": 100, "steps": 200, "hypo": 10}, {"n": 3, "steps": 4, "hypo": 2}),
    "denoise": ({"n": 60, "steps": 180}, {"n": 6, "steps": 3}),
    "hand-ik": ({"n": 100, "steps": 300}, {"n": 3, "steps": 3}),
    "face-ik": ({"n": 100, "steps": 200}, {"n": 3, "steps": 3}),
    "fit-image": ({"n": 8, "steps": 100}, {"n": 1, "steps": 1}),
}
UNIT = {"generation": "samples_per_second", "completion": "hypotheses_per_second", "denoise": "frames_per_second",
        "hand-ik": "fits_per_second", "face-ik": "fits_per_second", "fit-image": "fits_per_second"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS (ru_maxrss)"


def _timed(device: torch.device, fn: Callable[[], tuple[int, int]]) -> dict[str, float]:
    """Run `fn` → (items, nfe) with the peak-memory counter reset; seconds, items, nfe and peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    items, nfe = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak, _ = _peak_mb(device)
    return {"seconds": seconds, "items": float(items), "nfe": float(nfe), "peak_memory_mb": peak}


def run(ctx: Context) -> Outcome:
    req = ctx.req
    tasks = tuple(req.settings) or TASKS
    quick = 1 if req.quick else 0
    metrics: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    sizes: dict[str, dict[str, Any]] = {}
    for task in tasks:
        size = dict(SIZES[task][quick])
        if req.n is not None:
            size["n"] = req.n
        if req.steps is not None:
            size["steps"] = req.steps
        sizes[task] = size
        try:
            fn = _TASKS[task](ctx, size)
        except MissingAssetError as exc:  # e.g. face IK without a FLAME model
            skipped[task] = exc.message
            log.warning("speed: %s skipped: %s", task, exc.message)
            continue
        if not req.quick:  # warm-up: first calls pay for lazy initialisation and kernel selection
            _TASKS[task](ctx, dict(SIZES[task][1]))()
        m = _timed(ctx.device, fn)
        m[UNIT[task]] = m["items"] / max(m["seconds"], 1e-9)
        metrics[task] = m
    return Outcome(
        metrics=metrics,
        settings={"tasks": list(tasks), "sizes": sizes, "quick": req.quick, "sampler": req.sampler,
                  "memory": _peak_mb(ctx.device)[1], "threads": torch.get_num_threads()},
        info={"skipped": skipped},
        items=len(metrics),
        lines=[f"{t}: {m[UNIT[t]]:.1f} {UNIT[t].replace('_', ' ')}, {int(m['nfe'])} network evaluations, "
               f"peak {m['peak_memory_mb']:.0f} MiB" for t, m in metrics.items()]
        + [f"{t}: skipped ({why})" for t, why in skipped.items()],
    )


# ---------------------------------------------------------------------------------------------------- tasks
def _poses(ctx: Context, n: int, dim: int, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(ctx.req.seed)
    return (scale * torch.randn(n, dim, generator=g)).to(ctx.device)


def _generation(ctx: Context, size: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    prior = ctx.prior(Part.body)
    sampler = ctx.req.sampler
    steps = size["steps"] or DEFAULT_STEPS.get(sampler, 25)

    def go() -> tuple[int, int]:
        return size["n"], sample(prior, size["n"], sampler=sampler, steps=steps, generator=ctx.generator(0)).nfe

    return go


def _completion(ctx: Context, size: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    prior = ctx.prior(Part.body)
    poses = _poses(ctx, size["n"], 63)
    observed = torch.ones_like(poses, dtype=torch.bool)
    observed[:, list(mask_dims(Part.body, ["legs"]))] = False

    def go() -> tuple[int, int]:
        res = complete(prior, poses, observed, hypo=size["hypo"], steps=size["steps"], generator=ctx.generator(0))
        return size["n"] * size["hypo"], res.nfe

    return go


def _denoise(ctx: Context, size: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    prior = ctx.prior(Part.body)
    body = ctx.body("body")
    b22 = body.joint_set("body22")
    with torch.no_grad():
        gt = body(body_pose=_poses(ctx, size["n"], 63, 0.1), return_vertices=False).joints[:, b22]
    obs = gt + 0.04 * torch.randn(gt.shape, generator=ctx.generator(0), device=ctx.device)
    visible = torch.ones(gt.shape[:2], dtype=torch.bool, device=ctx.device)
    schedule = scaled_schedule(dm.SCHEDULES[0.04], size["steps"])

    def go() -> tuple[int, int]:
        fit = dm.denoise_motion(prior, body, obs, visible, schedule=schedule, generator=ctx.generator(0))
        return size["n"], fit.nfe

    return go


def _ik(part: Part) -> Callable[[Context, dict[str, Any]], Callable[[], tuple[int, int]]]:
    def build(ctx: Context, size: dict[str, Any]) -> Callable[[], tuple[int, int]]:
        spec = ik.IK[part]
        body = ctx.body(spec.body)
        prior = ik.ik_prior(part, {p: ctx.prior(p) for p in spec.prior_parts})
        params = {k: _poses(ctx, size["n"], d, 0.2 if k.endswith("pose") else 0.5) for k, d in spec.gt_keys
                  if k not in dict(spec.known)}
        problem = ik.problem_from_params(part, body, params)
        kind = "sparse" if part is Part.hand else "noisy"
        problem = ik.apply_type(problem, kind, generator=ctx.generator(0))

        def go() -> tuple[int, int]:
            result = ik.solve_ik(problem, body, prior, ik_type=kind, steps=size["steps"],
                                 generator=ctx.generator(0))
            return size["n"], result.nfe

        return go

    return build


def _fit_image(ctx: Context, size: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    from dposer_cli.services import fit_image

    tmp = ctx.tempdir()
    images, keypoints = write_synthetic_people(ctx, tmp, size["n"])
    req = fit_image.FitImageRequest(images=tuple(images), keypoints=tuple(keypoints), out=tmp / "out",
                                    part=Part.body, steps=size["steps"], prior="dposer", overlay=False,
                                    checkpoint=ctx.req.checkpoint, normalizer=ctx.req.normalizer,
                                    body_model=ctx.req.body_model, device=str(ctx.device), seed=ctx.req.seed)

    def go() -> tuple[int, int]:
        result = fit_image.run(req)
        return int(result.info["persons"]), int(result.info["nfe"])

    return go


def write_synthetic_people(ctx: Context, folder: Path, n: int, width: int = 640, height: int = 480
                           ) -> tuple[list[Path], list[Path]]:
    """`n` images, each with one upright body's projected OpenPose-25 keypoints (OpenPose JSON)."""
    from dposer_cli.bodies import camera as cam
    from dposer_cli.io.media import save_image

    body = ctx.body("body")
    pose = _poses(ctx, n, 63, 0.1)
    with torch.no_grad():
        out = body(body_pose=pose, global_orient=cam.camera_orient(n, device=ctx.device),
                   transl=torch.tensor([0.0, 0.2, 3.0], device=ctx.device).expand(n, 3), return_vertices=False)
    focal = torch.full((n,), float(cam.estimate_focal(width, height)), device=ctx.device)
    center = torch.tensor([width / 2, height / 2], device=ctx.device).expand(n, 2)
    uv = cam.perspective_project(out.joints[:, body.joint_set("openpose25")], focal, center).cpu().numpy()
    images, files = [], []
    blank = np.full((height, width, 3), 128, dtype=np.uint8)
    for i in range(n):
        images.append(save_image(folder / f"person{i:03d}.png", blank))
        flat = np.concatenate([uv[i], np.ones((25, 1))], 1).reshape(-1).tolist()
        path = folder / f"person{i:03d}.json"
        with atomic_write(path, "w") as fh:
            json.dump({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]}, fh)
        files.append(path)
    return images, files


_TASKS: dict[str, Callable[[Context, dict[str, Any]], Callable[[], tuple[int, int]]]] = {
    "generation": _generation,
    "completion": _completion,
    "denoise": _denoise,
    "hand-ik": _ik(Part.hand),
    "face-ik": _ik(Part.face),
    "fit-image": _fit_image,
}
