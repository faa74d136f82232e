"""`benchmark speed`, and the one speed harness: throughput, network evaluations and peak memory of generation
and each task, on this device.

The measuring code lives here once: `timed` / `best_of` (device-synchronised wall time, peak memory) and one
workload builder per task (`sampling`, `completion`, `denoising`, `ik_solve`, `fitting`, `fitting_files`),
each a zero-argument callable returning (items, network evaluations) that calls `tasks/` on tensors. The
`bench/bench_*.py` sweeps (batch sizes, batched vs looped, samplers) time these same workloads.

Inputs are synthetic (seeded random poses; upright bodies projected into 640×480 images for fitting), so no
dataset is needed. Sizes follow the official defaults (spec §11): generation 1000 samples with the chosen
sampler; completion 100 poses × 10 hypotheses × 200 steps; motion denoising one 60-frame clip at σ = 40 mm
(180 steps); hand IK 100 targets × 300 steps; face IK 100 × 200 (only with a FLAME model); fit-image 8 people
× the fit-image default schedule. `--quick` shrinks everything to a few items and steps (tests).

fit-image reports two figures: `fits_per_second` of the fit task itself (tensors in, tensors out), and
`fits_per_second_with_io` of the fit-image service on files — reading the images and keypoint JSON, loading
the body model, fitting, writing the npz files (no overlays) — when the caller provides that service
(`dposer benchmark` does).

Peak memory: `torch.cuda.max_memory_allocated` per task on CUDA; on the CPU the process's peak resident
set size so far (`ru_maxrss`, a high-water mark over the whole run, not per task).
"""

import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.device import make_generator
from dposer_cli.core.errors import MissingAssetError
from dposer_cli.core.parts import Part, mask_dims
from dposer_cli.core.paths import atomic_write
from dposer_cli.engine.baselines import BaselinePrior
from dposer_cli.engine.optimize import PosePrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.samplers import DEFAULT_SAMPLER
from dposer_cli.evaluation.common import Context, FileFit, FitFiles, Outcome, scaled_schedule
from dposer_cli.io.media import save_image
from dposer_cli.tasks import denoise_motion as dm
from dposer_cli.tasks import ik
from dposer_cli.tasks.complete import complete
from dposer_cli.tasks.fit import FitInput, fit
from dposer_cli.tasks.sample import DEFAULT_STEPS, SamplingPrior, sample

log = logging.getLogger(__name__)

Workload = Callable[[], tuple[int, int]]  # runs once → (items done, network evaluations)

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
UNIT = {
    "generation": "samples_per_second",
    "completion": "hypotheses_per_second",
    "denoise": "frames_per_second",
    "hand-ik": "fits_per_second",
    "face-ik": "fits_per_second",
    "fit-image": "fits_per_second",
}
IMAGE_SIZE = (480, 640)  # (H, W) of the synthetic fitting images
OPENPOSE_KEYPOINTS = 135  # the layout fit-image reads OpenPose JSON into (25 body keypoints + hands + face)


# ------------------------------------------------------------------------------------------------ measuring
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB and what it measures."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS (ru_maxrss)"


def timed(device: torch.device, fn: Workload) -> dict[str, float]:
    """Run `fn` once with the peak-memory counter reset: seconds, items, nfe and peak memory (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    items, nfe = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak, _ = peak_memory_mb(device)
    return {"seconds": seconds, "items": float(items), "nfe": float(nfe), "peak_memory_mb": peak}


def best_of(device: torch.device, fn: Workload, *, repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """`timed` of the fastest of `repeat` runs after `warmup` untimed ones (for shared, noisy machines)."""
    for _ in range(warmup):
        fn()
    return min((timed(device, fn) for _ in range(max(1, repeat))), key=lambda m: m["seconds"])


def rate(m: dict[str, float], unit: str) -> dict[str, float]:
    """`m` with `unit` = items per second added."""
    return {**m, unit: m["items"] / max(m["seconds"], 1e-9)}


# ------------------------------------------------------------------------------------------------ workloads
def synthetic_poses(
    n: int, dim: int, *, seed: int = 0, scale: float = 0.3, device: torch.device | str = "cpu"
) -> Float[Tensor, "B D"]:
    """`n` seeded Gaussian pose vectors (drawn on the CPU, so every device gets the same poses)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, dim, generator=g)).to(device)


def sampling(
    prior: DPoserPrior | SamplingPrior,
    n: int,
    *,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Workload:
    """Draw `n` samples in one batch (`tasks.sample`)."""
    steps = steps or DEFAULT_STEPS.get(sampler, 25)

    def go() -> tuple[int, int]:
        res = sample(
            prior, n, sampler=sampler, steps=steps, generator=make_generator(seed, torch.device(device))
        )
        return n, res.nfe

    return go


def completion(
    prior: DPoserPrior | BaselinePrior,
    poses: Float[Tensor, "B D"],
    observed: Bool[Tensor, "*#batch D"],
    *,
    hypo: int = 10,
    steps: int | None = None,
    seed: int = 0,
    out: list[Tensor] | None = None,
) -> Workload:
    """Complete every pose with `hypo` hypotheses in one batched run (`tasks.complete`); items = hypotheses.
    The completed poses are appended to `out` when given."""

    def go() -> tuple[int, int]:
        res = complete(
            prior, poses, observed, hypo=hypo, steps=steps, generator=make_generator(seed, poses.device)
        )
        if out is not None:
            out.append(res.poses)
        return len(poses) * hypo, res.nfe

    return go


def denoising(
    prior: dm.MotionPrior,
    body: BodyModel,
    observations: Float[Tensor, "T 22 3"],
    visible: Bool[Tensor, "T 22"],
    *,
    schedule: dm.MotionSchedule,
    temporal: str = "auto",
    seed: int = 0,
    out: list[dm.MotionResult] | None = None,
) -> Workload:
    """Denoise one sequence (`tasks.denoise_motion`); items = frames."""

    def go() -> tuple[int, int]:
        res = dm.denoise_motion(
            prior,
            body,
            observations,
            visible,
            schedule=schedule,
            temporal=temporal,
            generator=make_generator(seed, observations.device),
        )
        if out is not None:
            out.append(res)
        return len(observations), res.nfe

    return go


def ik_solve(
    problem: ik.IKProblem,
    body: BodyModel,
    prior: PosePrior | None,
    *,
    ik_type: str = "full",
    steps: int | None = None,
    seed: int = 0,
    out: list[ik.IKResult] | None = None,
) -> Workload:
    """Solve every target of `problem` in one batched run (`tasks.ik.solve_ik`); items = targets."""

    def go() -> tuple[int, int]:
        res = ik.solve_ik(
            problem,
            body,
            prior,
            ik_type=ik_type,
            steps=steps,
            generator=make_generator(seed, problem.targets.device),
        )
        if out is not None:
            out.append(res)
        return problem.n, res.nfe

    return go


def fitting(
    body: BodyModel,
    prior: PosePrior | None,
    inputs: FitInput,
    *,
    part: Part = Part.body,
    steps: int = 100,
    seed: int = 0,
    out: list[Any] | None = None,
) -> Workload:
    """Fit every row of `inputs` in one batched run (`tasks.fit.fit`, OpenPose-135 keypoints); items = persons."""

    def go() -> tuple[int, int]:
        res = fit(
            body,
            prior,
            inputs,
            part=part,
            steps=steps,
            generator=make_generator(seed, inputs.keypoints.device),
        )
        if out is not None:
            out.append(res)
        return len(inputs.focal), res.nfe

    return go


def fitting_files(fit_files: FitFiles, job: FileFit) -> Workload:
    """The fit-image service on files (reading, fitting, writing npz); items = persons."""
    return lambda: fit_files(job)


# ------------------------------------------------------------------------------------------------ inputs
def synthetic_people(
    body: BodyModel,
    n: int,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = IMAGE_SIZE,
    device: torch.device | str = "cpu",
) -> FitInput:
    """`n` upright bodies (seeded poses, 3 m in front of the camera), each in its own (H, W) image with the
    default focal length: their projected OpenPose-25 joints as keypoints (confidence 1) in the OpenPose-135
    layout fit-image reads OpenPose JSON into."""
    h, w = image_size
    pose = synthetic_poses(n, 63, seed=seed, scale=0.1, device=device)
    with torch.no_grad():
        out = body(
            body_pose=pose,
            global_orient=cam.camera_orient(n, device=pose.device),
            transl=torch.tensor([0.0, 0.2, 3.0], device=pose.device).expand(n, 3),
            return_vertices=False,
        )
    focal = torch.full((n,), float(cam.estimate_focal(w, h)), device=pose.device)
    center = torch.tensor([w / 2, h / 2], device=pose.device).expand(n, 2)
    uv = cam.perspective_project(out.joints[:, body.joint_set("openpose25")], focal, center)
    kp = torch.zeros(n, OPENPOSE_KEYPOINTS, 3, device=pose.device)
    kp[:, :25, :2] = uv
    kp[:, :25, 2] = 1.0
    return FitInput(
        kp,
        focal,
        center.clone(),
        torch.tensor([[float(h), float(w)]], device=pose.device).expand(n, 2).clone(),
    )


def write_people(folder: Path, inputs: FitInput) -> tuple[list[Path], list[Path]]:
    """One blank image and one OpenPose JSON (the 25 body keypoints) per row of `inputs`."""
    images, files = [], []
    for i in range(len(inputs.focal)):
        h, w = (int(v) for v in inputs.image_size[i].tolist())
        images.append(save_image(folder / f"person{i:03d}.png", np.full((h, w, 3), 128, dtype=np.uint8)))
        flat = inputs.keypoints[i, :25].cpu().double().reshape(-1).tolist()
        path = folder / f"person{i:03d}.json"
        with atomic_write(path, "w") as fh:
            json.dump({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]}, fh)
        files.append(path)
    return images, files


# ------------------------------------------------------------------------------------------------ the evaluation
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
            fn = _BUILDERS[task](ctx, size)
        except MissingAssetError as exc:  # e.g. face IK without a FLAME model
            skipped[task] = exc.message
            log.warning("speed: %s skipped: %s", task, exc.message)
            continue
        if not req.quick:  # warm-up: first calls pay for lazy initialisation and kernel selection
            _BUILDERS[task](ctx, dict(SIZES[task][1]))()
        metrics[task] = rate(timed(ctx.device, fn), UNIT[task])
        if ctx.progress is not None:
            ctx.progress(len(metrics) + len(skipped), len(tasks))
    if "fit-image" in metrics:
        metrics["fit-image"].update(_fit_with_io(ctx, sizes["fit-image"]))
    return Outcome(
        metrics=metrics,
        settings={
            "tasks": list(tasks),
            "sizes": sizes,
            "quick": req.quick,
            "sampler": req.sampler,
            "memory": peak_memory_mb(ctx.device)[1],
            "threads": torch.get_num_threads(),
            "fit_image_io": "fits_per_second_with_io: the fit-image service on files (read images and "
            "keypoint JSON, load the body model, fit, write npz; no overlays)",
        },
        info={"skipped": skipped},
        items=len(metrics),
        lines=[
            f"{t}: {m[UNIT[t]]:.1f} {UNIT[t].replace('_', ' ')}, {int(m['nfe'])} network evaluations, "
            f"peak {m['peak_memory_mb']:.0f} MiB"
            for t, m in metrics.items()
        ]
        + (
            [
                f"fit-image with file I/O: {metrics['fit-image']['fits_per_second_with_io']:.2f} fits per second"
            ]
            if "fits_per_second_with_io" in metrics.get("fit-image", {})
            else []
        )
        + [f"{t}: skipped ({why})" for t, why in skipped.items()],
    )


def _generation(ctx: Context, size: dict[str, Any]) -> Workload:
    return sampling(
        ctx.prior(Part.body),
        size["n"],
        sampler=ctx.req.sampler,
        steps=size["steps"],
        seed=ctx.req.seed,
        device=ctx.device,
    )


def _completion(ctx: Context, size: dict[str, Any]) -> Workload:
    poses = synthetic_poses(size["n"], 63, seed=ctx.req.seed, device=ctx.device)
    observed = torch.ones_like(poses, dtype=torch.bool)
    observed[:, list(mask_dims(Part.body, ["legs"]))] = False
    return completion(
        ctx.prior(Part.body), poses, observed, hypo=size["hypo"], steps=size["steps"], seed=ctx.req.seed
    )


def _denoise(ctx: Context, size: dict[str, Any]) -> Workload:
    body = ctx.body("body")
    b22 = body.joint_set("body22")
    with torch.no_grad():
        pose = synthetic_poses(size["n"], 63, seed=ctx.req.seed, scale=0.1, device=ctx.device)
        gt = body(body_pose=pose, return_vertices=False).joints[:, b22]
    obs = gt + 0.04 * torch.randn(gt.shape, generator=ctx.generator(0), device=ctx.device)
    visible = torch.ones(gt.shape[:2], dtype=torch.bool, device=ctx.device)
    return denoising(
        ctx.prior(Part.body),
        body,
        obs,
        visible,
        schedule=scaled_schedule(dm.SCHEDULES[0.04], size["steps"]),
        seed=ctx.req.seed,
    )


def _ik(part: Part) -> Callable[[Context, dict[str, Any]], Workload]:
    def build(ctx: Context, size: dict[str, Any]) -> Workload:
        spec = ik.IK[part]
        body = ctx.body(spec.body)
        prior = ik.ik_prior(part, {p: ctx.prior(p) for p in spec.prior_parts})
        params = {
            k: synthetic_poses(
                size["n"], d, seed=ctx.req.seed, scale=0.2 if k.endswith("pose") else 0.5, device=ctx.device
            )
            for k, d in spec.gt_keys
            if k not in dict(spec.known)
        }
        kind = "sparse" if part is Part.hand else "noisy"
        problem = ik.apply_type(ik.problem_from_params(part, body, params), kind, generator=ctx.generator(0))
        return ik_solve(problem, body, prior, ik_type=kind, steps=size["steps"], seed=ctx.req.seed)

    return build


def _fit_image(ctx: Context, size: dict[str, Any]) -> Workload:
    body = ctx.body("body")
    inputs = synthetic_people(body, size["n"], seed=ctx.req.seed, device=ctx.device)
    return fitting(body, ctx.prior(Part.body), inputs, steps=size["steps"], seed=ctx.req.seed)


def _fit_with_io(ctx: Context, size: dict[str, Any]) -> dict[str, float]:
    """The fit-image service on the same people written to files (when the caller provides the service)."""
    if ctx.fit_files is None:
        ctx.notes.append(
            "fit-image with file I/O not measured: evaluation.run was given no fit_files service"
        )
        return {}
    folder = ctx.tempdir()
    images, keypoints = write_people(folder, synthetic_people(ctx.body("body"), size["n"], seed=ctx.req.seed))
    job = FileFit(
        tuple(images),
        tuple(keypoints),
        folder / "out",
        Part.body,
        size["steps"],
        ctx.prior(Part.body),
        ctx.req.body_model,
        str(ctx.device),
        ctx.req.seed,
    )
    if not ctx.req.quick:  # warm-up (body model load, allocator) with one step per stage
        fitting_files(ctx.fit_files, replace(job, steps=1, out=folder / "warm-up"))()
    m = timed(ctx.device, fitting_files(ctx.fit_files, job))
    return {"seconds_with_io": m["seconds"], "fits_per_second_with_io": m["items"] / max(m["seconds"], 1e-9)}


_BUILDERS: dict[str, Callable[[Context, dict[str, Any]], Workload]] = {
    "generation": _generation,
    "completion": _completion,
    "denoise": _denoise,
    "hand-ik": _ik(Part.hand),
    "face-ik": _ik(Part.face),
    "fit-image": _fit_image,
}
