"""Sampling: draw poses from a prior, batched, optionally recording the sampling process (spec §5).

The DPoser prior runs one of the `engine.samplers` (SDE-DPM-Solver++(2M) by default, DPM-Solver++(2M), DDIM,
the official Euler–Maruyama EM-1000) from pure noise; a baseline with its own sampler (GMM, VPoser) draws
directly (no network evaluations, no trajectory). Tensors in, tensors out: no paths, no files.

The trajectory is recorded through the samplers' per-step callback (the samplers stay pure functions): at up
to `max_frames - 1` evenly spaced steps it keeps the noisy state x_t and the denoised estimate x̂0 of that
step's own network evaluation, both in raw pose space, and it ends with the returned samples at `t_end`. So
frame 0 is pure noise (step 0, t = 1) and the last frame *is* the result.

Example:
    >>> from dposer_cli import load_prior
    >>> from dposer_cli.tasks.sample import sample
    >>> res = sample(load_prior("body"), 4, sampler="ddim", steps=50, return_trajectory=True)
    >>> res.poses.shape, res.nfe, res.trajectory.denoised.shape  # (4, 63), 50, (51, 4, 63)
    >>> bool((res.trajectory.x[-1] == res.poses).all())  # True: the last frame is the result
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dposer_cli.core.errors import InputError, suggest
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, SamplerStep

DEFAULT_MAX_FRAMES = 100  # trajectory frames (recorded steps + the final samples) unless asked otherwise

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "SAMPLERS",
    "SampleResult",
    "SamplerStep",
    "SamplingPrior",
    "Trajectory",
    "check_sampler",
    "frame_steps",
    "sample",
]


@runtime_checkable
class SamplingPrior(Protocol):
    """A baseline prior that samples on its own (`engine.baselines.GaussianMixturePrior`, `VPoserPrior`)."""

    nfe: int

    def sample(self, n: int, *, generator: torch.Generator | None = ...) -> Float[Tensor, "n D"]: ...


@dataclass(frozen=True)
class Trajectory:
    """The sampling process of (the first rows of) a batch, in raw pose space, frame by frame.

    Frame k shows the state after `step[k]` of `steps` sampler steps, at diffusion time `t[k]`; frame 0 is
    the pure-noise start (step 0, t = 1) and the last frame is the returned samples (step = steps, t = t_end,
    `x[-1] == denoised[-1] == poses`).
    """

    step: Int[Tensor, " F"]  # sampler steps taken before each frame
    t: Float[Tensor, " F"]  # diffusion time of each frame
    x: Float[Tensor, "F N D"]  # noisy state x_t (denormalised)
    denoised: Float[Tensor, "F N D"]  # denoised estimate x̂0 of that step (denormalised)
    steps: int  # total sampler steps

    @property
    def frames(self) -> int:
        return int(self.step.numel())


@dataclass(frozen=True)
class SampleResult:
    """Samples and what they cost. `sampler` is the sampler name, or the baseline's kind (`steps` = 0)."""

    poses: Float[Tensor, "N D"]  # raw axis-angle / coefficient vectors
    nfe: int  # network evaluations (steps × batches for DPoser, 0 for baselines)
    sampler: str
    steps: int
    seconds: float  # wall time of the sampling itself
    trajectory: Trajectory | None = None

    @property
    def samples_per_second(self) -> float:
        return len(self.poses) / max(self.seconds, 1e-9)


def check_sampler(name: str) -> str:
    """Validate a sampler name; returns it.

    Raises:
        InputError: unknown name (with the nearest valid one).
    """
    if name not in SAMPLERS:
        raise InputError(
            f"unknown sampler {name!r}{suggest(name, list(SAMPLERS))}",
            hint="samplers: " + ", ".join(SAMPLERS),
        )
    return name


def frame_steps(steps: int, max_frames: int = DEFAULT_MAX_FRAMES) -> list[int]:
    """The step indices a trajectory records: at most `max_frames - 1`, evenly spaced, first and last included
    (the returned samples add the final frame)."""
    k = max(1, min(steps, max_frames - 1))
    if k == 1:
        return [0]
    return sorted({round(j * (steps - 1) / (k - 1)) for j in range(k)})


class _Recorder:
    """Sampler callback that keeps the first `rows` samples of the chosen steps (on the samples' device)."""

    def __init__(self, keep: list[int], rows: int, forward: Callable[[SamplerStep], None] | None) -> None:
        self.keep, self.rows, self.forward = set(keep), rows, forward
        self.step: list[int] = []
        self.t: list[Tensor] = []
        self.x: list[Tensor] = []
        self.denoised: list[Tensor] = []

    def __call__(self, s: SamplerStep) -> None:
        if s.i in self.keep and self.rows > 0:
            self.step.append(s.i)
            self.t.append(s.t.detach().float().reshape(()))
            self.x.append(s.x[: self.rows].detach().clone())
            self.denoised.append(s.denoised[: self.rows].detach().clone())
        if self.forward is not None:
            self.forward(s)


def sample(
    prior: DPoserPrior | SamplingPrior,
    n: int,
    *,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    callback: Callable[[SamplerStep], None] | None = None,
    return_trajectory: bool = False,
    max_frames: int = DEFAULT_MAX_FRAMES,
    trajectory_samples: int | None = None,
) -> SampleResult:
    """Draw `n` raw poses from `prior`.

    Args:
        prior: a `DPoserPrior` (runs `sampler`) or a baseline with its own `sample` (GMM, VPoser).
        n: number of samples.
        sampler, steps, t_end: DPoser only: a name of `SAMPLERS` (default `DEFAULT_SAMPLER`), its steps
            (= NFE per batch; default `DEFAULT_STEPS[sampler]`) and the last grid time.
        generator: the noise source (batches draw from it one after the other).
        batch_size: samples per sampler run (default: all `n` in one run, which is what reproduces
            `dposer generate` for a seed).
        progress: `progress(done, total)` over all steps of all batches.
        callback: DPoser only: called every step with an `engine.samplers.SamplerStep` in raw pose space
            (`x` = x_t, `denoised` = x̂0; `i` counts within the batch).
        return_trajectory: DPoser only: record a `Trajectory` of at most `max_frames` frames.
        trajectory_samples: record only the first this many samples (memory); default all `n`.

    Returns:
        `SampleResult` with `poses` (n, D), `nfe`, `steps`, `seconds` and the trajectory if asked for.

    Raises:
        InputError: n < 1, steps < 1, bad batch size or frame budget, unknown sampler, or a trajectory /
            callback asked of a baseline.
    """
    if n < 1:
        raise InputError(f"the number of samples must be at least 1 (got {n})")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"the batch size must be at least 1 (got {batch_size})")
    if not isinstance(prior, DPoserPrior):
        return _sample_baseline(prior, n, generator, batch_size, progress, callback, return_trajectory)
    check_sampler(sampler)
    if steps is not None and steps < 1:
        raise InputError(f"the number of sampler steps must be at least 1 (got {steps})")
    if return_trajectory and max_frames < 2:
        raise InputError(f"a trajectory needs at least 2 frames (got max_frames={max_frames})")
    steps = steps or DEFAULT_STEPS[sampler]
    sizes = _batches(n, batch_size)
    rows_left = n if trajectory_samples is None else max(0, min(int(trajectory_samples), n))
    keep = frame_steps(steps, max_frames) if return_trajectory else []
    recorders: list[_Recorder] = []
    chunks: list[Tensor] = []
    nfe0 = prior.nfe
    t0 = time.perf_counter()
    for b, size in enumerate(sizes):

        def step_progress(done: int, total: int, b: int = b) -> None:
            if progress is not None:
                progress(b * steps + done, len(sizes) * steps)

        on_step: Callable[[SamplerStep], None] | None = callback
        if return_trajectory:
            on_step = _Recorder(keep, min(rows_left, size), callback)
            recorders.append(on_step)
            rows_left -= on_step.rows
        chunks.append(
            prior.sample(
                size,
                sampler=sampler,
                steps=steps,
                t_end=t_end,
                generator=generator,
                progress=step_progress if progress is not None else None,
                callback=on_step,
            )
        )
    poses = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    seconds = time.perf_counter() - t0
    trajectory = _trajectory(recorders, chunks, steps, t_end) if return_trajectory else None
    return SampleResult(
        poses=poses,
        nfe=prior.nfe - nfe0,
        sampler=sampler,
        steps=steps,
        seconds=seconds,
        trajectory=trajectory,
    )


def _batches(n: int, batch_size: int | None) -> list[int]:
    size = n if batch_size is None else min(batch_size, n)
    return [min(size, n - start) for start in range(0, n, size)]


def _trajectory(recorders: list[_Recorder], chunks: list[Tensor], steps: int, t_end: float) -> Trajectory:
    """Stack the recorded batches along N and append the returned samples as the final frame."""
    used = [(r, c) for r, c in zip(recorders, chunks, strict=True) if r.rows > 0]
    first = used[0][0]
    final = torch.cat([c[: r.rows] for r, c in used])
    x = torch.stack([torch.cat([r.x[k] for r, _ in used]) for k in range(len(first.step))] + [final])
    denoised = torch.stack(
        [torch.cat([r.denoised[k] for r, _ in used]) for k in range(len(first.step))] + [final]
    )
    device = final.device
    t = torch.stack([*(v.to(device) for v in first.t), torch.tensor(float(t_end), device=device)])
    step = torch.tensor([*first.step, steps], dtype=torch.long, device=device)
    return Trajectory(step=step, t=t, x=x, denoised=denoised, steps=steps)


def _sample_baseline(
    prior: SamplingPrior,
    n: int,
    generator: torch.Generator | None,
    batch_size: int | None,
    progress: Callable[[int, int], None] | None,
    callback: Callable[[SamplerStep], None] | None,
    return_trajectory: bool,
) -> SampleResult:
    kind = str(getattr(prior, "kind", "") or type(prior).__name__)
    if not callable(getattr(prior, "sample", None)):
        raise InputError(f"the {kind} prior cannot generate poses", hint="sample from dposer, gmm or vposer")
    if return_trajectory or callback is not None:
        raise InputError(
            f"the {kind} prior samples in one shot: there is no sampling trajectory to record",
            hint="trajectories come from the DPoser prior's diffusion samplers",
        )
    sizes = _batches(n, batch_size)
    t0 = time.perf_counter()
    chunks = []
    for b, size in enumerate(sizes):
        chunks.append(prior.sample(size, generator=generator))
        if progress is not None:
            progress(b + 1, len(sizes))
    poses = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return SampleResult(poses=poses, nfe=0, sampler=kind, steps=0, seconds=time.perf_counter() - t0)
