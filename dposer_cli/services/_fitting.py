"""Staged optimisation shared by the fitting tasks (fit-image now, ik later): Adam stages over named
parameters, robust data terms, the pose-prior term with its annealed diffusion time, and helpers to
keep the best of several hypotheses per sample.

The loss function of a task returns **per-sample** values (B,); the optimiser minimises their sum, so
each sample's gradient is independent of the batch (a person fitted alone or among 127 others gets the
same update). The DPoser prior term follows spec §6.1–§6.3: one network evaluation per step, a
stop-gradient target, t annealed linearly over the steps of the stages that use it.
"""

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from dposer_cli.core.errors import InputError, suggest
from dposer_cli.engine.prior import DPoserPrior

log = logging.getLogger(__name__)

PRIOR_KINDS = ("dposer", "none", "l2")


class PosePrior(Protocol):
    """What a fit needs of a prior object: the per-sample prior value of raw poses and its part."""

    part: Any

    def loss(self, pose: Tensor, t: float | Tensor = ..., *, weighting: str = ...,
             generator: torch.Generator | None = ...) -> Tensor: ...
# body-pose dims of the elbow/knee bending prior and their signs (spec §7.6 angle prior, SMPLify)
ANGLE_DIMS = (52, 55, 9, 12)
ANGLE_SIGNS = (1.0, -1.0, -1.0, -1.0)


def gmof(residual: Tensor, sigma: float) -> Tensor:
    """Geman–McClure robust penalty σ²x²/(σ² + x²), elementwise (spec §7.6, σ = 100 px)."""
    sq = residual**2
    return sigma**2 * sq / (sigma**2 + sq)


def angle_prior(body_pose: Tensor) -> Tensor:
    """Per-sample Σ exp(s_i·θ_i)² over elbow and knee bending angles: penalises unnatural bends (SMPLify)."""
    idx = torch.tensor(ANGLE_DIMS, device=body_pose.device)
    signs = torch.tensor(ANGLE_SIGNS, dtype=body_pose.dtype, device=body_pose.device)
    return torch.exp(body_pose[..., idx] * signs).pow(2).sum(-1)


def temporal_smoothness(points: Tensor, order: int = 1) -> Tensor:
    """Mean Euclidean norm of the `order`-th frame difference, per track: (N, T, ..., 3) → (N,).

    order 1 is the motion-denoising term (mean ‖v_f − v_{f+1}‖, spec §7.4); order 2 penalises jitter
    (acceleration) but not steady motion.
    """
    diff = points
    for _ in range(order):
        if diff.shape[1] < 2:
            return points.new_zeros(points.shape[0])
        diff = diff[:, 1:] - diff[:, :-1]
    return diff.norm(dim=-1).reshape(points.shape[0], -1).mean(-1)


class PriorTerm:
    """The pose-prior term of a fit, per sample: DPoser (annealed t), L2 on the pose, or nothing.

    `step` counts the optimisation steps that used the prior so far; `advance()` moves the annealed time
    t_k = t_min + (S − k − 1)/S·(t_max − t_min) on by one (spec §6.2), S = `total_steps`.

    Any other object with DPoserPrior's `loss(pose, t, weighting=, generator=)` — e.g. the baselines of
    `engine.baselines` — can stand in for the DPoser prior; `kind` is then just its label.
    """

    def __init__(
        self,
        kind: str,
        prior: "DPoserPrior | PosePrior | None",
        *,
        total_steps: int,
        t_range: str | tuple[float, float] = "fitting",
        weighting: str = "snr2",
        generator: torch.Generator | None = None,
    ) -> None:
        if kind not in PRIOR_KINDS and prior is None:
            raise InputError(f"unknown --prior {kind!r}{suggest(kind, list(PRIOR_KINDS))}",
                             hint="priors: " + ", ".join(PRIOR_KINDS))
        if kind == "dposer" and prior is None:
            raise ValueError("the dposer prior term needs a loaded DPoserPrior")
        self.kind = kind
        self.prior = prior
        self.total_steps = max(1, int(total_steps))
        self.t_range = t_range
        self.weighting = weighting
        self.generator = generator
        self.step = 0
        self.seconds = 0.0  # wall time spent in the prior (benchmarks: its share of an iteration)

    @property
    def t(self) -> float:
        return DPoserPrior.time_at(min(self.step, self.total_steps - 1), self.total_steps, self.t_range)

    def advance(self) -> None:
        self.step += 1

    def __call__(self, pose: Tensor) -> Tensor:
        """Per-sample prior value of raw poses (B, D) (axis-angle / coefficients in the prior's layout)."""
        if self.prior is None:
            if self.kind == "none":
                return pose.new_zeros(pose.shape[:-1])
            return pose.pow(2).sum(-1)  # l2
        t0 = time.perf_counter()
        assert self.prior is not None
        value = self.prior.loss(pose, self.t, weighting=self.weighting, generator=self.generator)
        self.seconds += time.perf_counter() - t0
        return value


@dataclass(frozen=True)
class Stage:
    """One block of Adam iterations.

    `lrs` names the free parameters of the stage and their learning rates (the others are held fixed);
    `weights` are the stage's loss weights, read by the task's loss function; `reset=False` keeps the
    previous stage's Adam state (same parameters required, spec §7.6 "optimizer not reset between stages");
    `uses_prior` marks stages whose iterations advance the prior's annealed time.
    """

    name: str
    iters: int
    lrs: Mapping[str, float]
    weights: Mapping[str, float] = field(default_factory=dict)
    reset: bool = True
    uses_prior: bool = False


LossFn = Callable[[dict[str, Tensor], Stage, int], Tensor]


@dataclass
class StageLog:
    name: str
    iters: int
    loss: float  # summed over samples, after the stage's last step


def prior_steps(stages: Sequence[Stage]) -> int:
    """Number of iterations that use the prior (the annealing horizon S)."""
    return sum(s.iters for s in stages if s.uses_prior)


def optimize(
    params: dict[str, Tensor],
    stages: Sequence[Stage],
    loss_fn: LossFn,
    *,
    prior: PriorTerm | None = None,
    progress: Callable[[int, int], None] | None = None,
    done: int = 0,
    total: int | None = None,
) -> list[StageLog]:
    """Run `stages` in order on the leaf tensors `params` (updated in place); returns one log per stage.

    `loss_fn(params, stage, iteration)` returns per-sample losses (B,); their sum is minimised.
    `done`/`total` offset the progress callback when several calls make up one run.
    """
    total = total if total is not None else done + sum(s.iters for s in stages)
    logs: list[StageLog] = []
    opt: torch.optim.Optimizer | None = None
    opt_keys: tuple[str, ...] = ()
    for stage in stages:
        unknown = [k for k in stage.lrs if k not in params]
        if unknown:
            raise ValueError(f"stage {stage.name!r} optimises unknown parameters {unknown}")
        for name, tensor in params.items():
            tensor.requires_grad_(name in stage.lrs)
        keys = tuple(stage.lrs)
        if opt is None or stage.reset or keys != opt_keys:
            groups = [{"params": [params[k]], "lr": lr, "name": k} for k, lr in stage.lrs.items()]
            opt = torch.optim.Adam(groups)
            opt_keys = keys
        else:  # same optimiser, new learning rates
            for group in opt.param_groups:
                group["lr"] = stage.lrs[group["name"]]
        value = math.nan
        for it in range(stage.iters):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(params, stage, it).sum()
            loss.backward()
            opt.step()
            value = float(loss.detach())
            if stage.uses_prior and prior is not None:
                prior.advance()
            done += 1
            if progress is not None:
                progress(done, total)
        logs.append(StageLog(stage.name, stage.iters, value))
    for tensor in params.values():
        tensor.requires_grad_(False)
    return logs


# ---------------------------------------------------------------- several hypotheses per sample
def best_rows(loss: Tensor, owner: Tensor, num_samples: int) -> Tensor:
    """For each sample, the row (hypothesis) with the lowest loss; ties go to the lowest row index.

    `owner[r]` is the sample that row r belongs to (0..num_samples−1, every sample present).
    """
    loss = loss.detach()
    best = torch.full((num_samples,), torch.finfo(loss.dtype).max, dtype=loss.dtype, device=loss.device)
    best = best.scatter_reduce(0, owner, loss, reduce="amin")
    rows = torch.arange(len(owner), device=owner.device)
    cand = torch.where(loss <= best[owner], rows, torch.full_like(rows, len(owner)))
    win = torch.full((num_samples,), len(owner), dtype=rows.dtype, device=rows.device)
    return win.scatter_reduce(0, owner, cand, reduce="amin")
