"""The one annealed-prior optimiser: Adam stages over named tensors with a pose prior as a loss term.

Every task that uses a prior as a loss (fitting to 2D keypoints, IK, motion denoising, DPoser completion)
runs `optimize`: a list of `Stage`s (iterations, free parameters and their learning rates, loss weights,
Adam settings), a task loss function that returns **per-sample** values (B,) — their sum is minimised, so a
sample's gradient does not depend on the batch it is in — and an optional `PriorSchedule`: a prior with
DPoser's `loss(pose, t, *, weighting, generator)` interface and the truncated linear time schedule
(spec §6.2) annealed over the steps of the stages that use it. The loss function evaluates the prior
through `Step.prior(pose)`, which applies the step's annealed time; `optimize` counts those evaluations
and returns the count (`OptimizeResult.nfe`) instead of reading a counter on the prior.

Also here: the one table of per-task time ranges (`T_RANGES`) and the shared fitting terms (GMoF, the
SMPLify angle prior, temporal smoothness) and `best_rows` (keep the best of several hypotheses).
"""

import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from dposer_cli.core.parts import Part
from dposer_cli.core.trace import TraceCache, record_step
from dposer_cli.engine.loss import time_schedule

# per-task (t_min, t_max) of the truncated linear schedule (spec §6.2, §7, §11). Names are looked up by the
# tasks; a task never keeps its own copy of a range.
T_RANGES: dict[str, tuple[float, float]] = {
    "completion": (0.05, 0.15),  # DPoserComp (spec §6.4)
    "fitting": (0.08, 0.12),  # fit-image, all parts (spec §7.6-§7.8)
    "ik-hand-masked": (0.05, 0.20),  # spec §7.9
    "ik-hand-noisy": (0.05, 0.15),
    "ik-face-masked": (0.05, 0.20),  # spec §7.10
    "ik-face-noisy": (0.05, 0.20),
    # motion denoising by noise level (spec §7.4)
    "motion-0.02": (0.05, 0.20),
    "motion-0.04": (0.05, 0.25),
    "motion-0.1": (0.10, 0.25),
    # partial-visibility motion denoising by occluded part (spec §7.5)
    "motion-partial": (0.01, 0.30),  # any other part
    "motion-partial-legs": (0.01, 0.20),
    "motion-partial-left_arm": (0.01, 0.30),
    "motion-partial-right_body": (0.01, 0.30),
}


@runtime_checkable
class LossPrior(Protocol):
    """What the optimiser needs of a prior: a per-sample, differentiable loss of poses at diffusion time t.

    `nfe_per_call` is the number of network evaluations one `loss` call costs (0 for the baselines).
    """

    nfe_per_call: int

    def loss(
        self,
        pose: Float[Tensor, "*batch D"],
        t: float | Tensor = ...,
        *,
        weighting: str = ...,
        generator: torch.Generator | None = ...,
    ) -> Float[Tensor, "*batch"]: ...


@runtime_checkable
class PosePrior(LossPrior, Protocol):
    """A `LossPrior` of one part over raw poses: `DPoserPrior` and the baselines of `engine.baselines` (none, l2,
    gmm, vposer) all satisfy it; tasks read `part` to check the prior fits the data."""

    part: Part


@dataclass(frozen=True)
class PriorSchedule:
    """A prior as a loss term: the prior, its time range, weighting and noise source.

    `horizon` is the number of prior steps S the time is annealed over (default: the iterations of the
    stages that use the prior in this `optimize` call); steps past the horizon keep t_min.
    """

    prior: LossPrior
    t_range: tuple[float, float] = T_RANGES["fitting"]
    weighting: str = "snr"
    generator: torch.Generator | None = None
    horizon: int | None = None

    def t(self, step: int, horizon: int) -> float:
        """Annealed diffusion time of prior step `step` of `horizon` (spec §6.2)."""
        horizon = max(1, horizon)
        return time_schedule(min(step, horizon - 1), horizon, *self.t_range)


@dataclass(frozen=True)
class Stage:
    """One block of Adam iterations.

    `lrs` names the free parameters of the stage and their learning rates (the others are held fixed);
    `weights` are the stage's loss weights, read by the task's loss function; `reset=False` keeps the
    previous stage's Adam state when the free parameters are the same (spec §7.6 "optimizer not reset
    between stages"; several stages with `reset=False` behave as one Adam run whose weights change);
    `uses_prior` marks stages whose iterations advance the prior's annealed time; `betas`/`eps` are Adam's.
    """

    name: str
    iters: int
    lrs: Mapping[str, float]
    weights: Mapping[str, float] = field(default_factory=dict)
    reset: bool = True
    uses_prior: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class StageLog:
    name: str
    iters: int
    loss: float  # summed over samples, after the stage's last step


@dataclass
class Step:
    """What the loss function is told about the current iteration."""

    stage: Stage
    stage_index: int  # position of the stage in this optimize call
    it: int  # iteration within the stage
    k: int  # iteration within this optimize call
    t: float | None  # the prior's annealed time at this step (None: no prior, or the stage does not use it)
    _term: "_PriorTerm"

    def prior(self, pose: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch"]:
        """Per-sample prior loss of raw `pose` at this step's annealed time (zeros without a prior)."""
        return self._term(pose, self.t)

    def prior_inputs(self, pose: Tensor) -> tuple[Tensor, ...] | None:
        """For a `StepPlan`: this step's prior noise draw for poses like `pose` (B, D) — the draw `prior` will
        use, the same an eager step makes — and the prior's tensors at this time; () without a prior term this
        step, None when the prior has none (the step then runs eagerly)."""
        return self._term.inputs(self.t, pose)


class _PriorTerm:
    """Evaluates the schedule's prior and counts network evaluations and time spent."""

    def __init__(self, schedule: PriorSchedule | None) -> None:
        self.schedule = schedule
        self.nfe = 0
        self.seconds = 0.0
        self.noise: Tensor | None = None  # drawn in advance by `inputs` for this step's evaluation

    def inputs(self, t: float | None, pose: Tensor) -> tuple[Tensor, ...] | None:
        s = self.schedule
        if s is None or t is None:
            return ()
        tensors = getattr(s.prior, "prepared_tensors", None)
        prepared = tensors(t, s.weighting, pose.dtype) if callable(tensors) else None
        if prepared is None:
            return None
        draw = getattr(s.prior, "draw_noise", None)  # a prior of several parts draws part by part
        self.noise = (
            draw(pose, s.generator)
            if callable(draw)
            else torch.randn(pose.shape, generator=s.generator, device=pose.device, dtype=pose.dtype)
        )
        return (self.noise, *prepared)

    def counters(self) -> list[tuple[object, int]]:
        """The priors' own evaluation counters (`DPoserPrior.nfe`; a prior of several parts: its parts')."""
        if self.schedule is None:
            return []
        prior = self.schedule.prior
        found = [(p, getattr(p, "nfe", None)) for p in (prior, *getattr(prior, "priors", ()))]
        return [(p, n) for p, n in found if isinstance(n, int)]

    def planned(self, counters: list[tuple[object, int]]) -> None:
        """Count the one evaluation of a planned step (whether its loss ran, ran twice because a recording
        failed, or was replayed without running), setting the priors' own counters from `counters` (their
        values before the step)."""
        if self.noise is None or self.schedule is None:
            return
        self.nfe += int(getattr(self.schedule.prior, "nfe_per_call", 1))
        for prior, before in counters:
            prior.nfe = before + int(getattr(prior, "nfe_per_call", 1))  # type: ignore[attr-defined]

    def __call__(self, pose: Tensor, t: float | None) -> Tensor:
        if self.schedule is None:
            return pose.new_zeros(pose.shape[:-1])
        if t is None:
            raise ValueError("the prior was evaluated in a stage that does not use it (uses_prior=False)")
        t0 = time.perf_counter()
        s = self.schedule
        if self.noise is None:
            value = s.prior.loss(pose, t, weighting=s.weighting, generator=s.generator)
            self.nfe += int(getattr(s.prior, "nfe_per_call", 1))
        else:  # a planned step (counted once by `planned`, however often its loss runs or is replayed)
            value = s.prior.loss(pose, t, weighting=s.weighting, noise=self.noise)  # type: ignore[call-arg]
        self.seconds += time.perf_counter() - t0
        return value


@runtime_checkable
class StepPlan(Protocol):
    """How a task's loss can be replayed as one recording per step: forward, backward and all (`record_step`).

    A batch-1 fit pays per operator, not per flop; a replayed step runs the same operators without autograd's
    bookkeeping or Python in between, the gradients bit for bit those of `loss.backward()`.

    `inputs(params, step)` is a context (held for the step) that yields what the recording needs besides the
    free parameters: every tensor the loss reads that may change between steps — the prior's
    (`Step.prior_inputs`), the body model's, the stage's weights — as the very tensor objects the loss function
    will read, or None to run this step eagerly. `key(step)` names what else the loss's operations depend on
    (weights baked in as numbers, which terms are on): steps with equal keys share a recording.
    """

    def inputs(
        self, params: Mapping[str, Tensor], step: Step
    ) -> AbstractContextManager[tuple[Tensor, ...] | None]: ...

    def key(self, step: Step) -> Hashable: ...


class Adam:
    """Adam (Kingma & Ba, ICLR 2015) with `torch.optim.Adam`'s arithmetic (its single-tensor path, no weight
    decay: the same values bit for bit), one learning rate per tensor in `lrs`.

    Here rather than `torch.optim.Adam` because building any torch optimiser imports torch._dynamo, ≈ 1.5 s of
    a one-photo fit-image run. As in torch, a tensor without a gradient is skipped and keeps its step count.
    """

    def __init__(self, tensors: Sequence[Tensor], *, betas: tuple[float, float], eps: float) -> None:
        self.tensors = list(tensors)
        self.lrs = [0.0] * len(self.tensors)
        self.betas, self.eps = betas, eps
        self.steps = [0] * len(self.tensors)
        self.m = [torch.zeros_like(x, memory_format=torch.preserve_format) for x in self.tensors]
        self.v = [torch.zeros_like(x, memory_format=torch.preserve_format) for x in self.tensors]

    def zero_grad(self) -> None:
        for x in self.tensors:
            x.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every tensor with a gradient: the single-tensor arithmetic, as `_foreach` calls (one
        dispatch per operation for all tensors instead of one per tensor)."""
        b1, b2 = self.betas
        live, grads = [], []
        for i, x in enumerate(self.tensors):
            if x.grad is not None:
                live.append(i)
                grads.append(x.grad)
                self.steps[i] += 1
        if not live:
            return
        xs = [self.tensors[i] for i in live]
        ms, vs = [self.m[i] for i in live], [self.v[i] for i in live]
        torch._foreach_lerp_(ms, grads, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [(1 - b2 ** self.steps[i]) ** 0.5 for i in live])
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(xs, ms, denom, [-self.lrs[i] / (1 - b1 ** self.steps[i]) for i in live])


@dataclass
class OptimizeResult:
    logs: list[StageLog]
    nfe: int  # network evaluations made by the prior term
    prior_steps: int  # iterations that used the prior (pass as `prior_offset` to continue an annealing)
    # wall time spent in the prior's Python calls; a step replayed whole (`StepPlan`) runs its prior inside the
    # recording, not counted here (`DPOSER_TRACE=0` for the split)
    prior_seconds: float


LossFn = Callable[[dict[str, Tensor], Step], Tensor]


def prior_steps(stages: Sequence[Stage]) -> int:
    """Number of iterations that use the prior (the default annealing horizon S)."""
    return sum(s.iters for s in stages if s.uses_prior)


def optimize(
    params: dict[str, Tensor],
    stages: Sequence[Stage],
    loss_fn: LossFn,
    *,
    prior: PriorSchedule | None = None,
    prior_offset: int = 0,
    progress: Callable[[int, int], None] | None = None,
    done: int = 0,
    total: int | None = None,
    plan: StepPlan | None = None,
) -> OptimizeResult:
    """Run `stages` in order on the leaf tensors `params` (updated in place).

    `loss_fn(params, step)` returns per-sample losses (B,) (or a scalar); their sum is minimised. It must read
    the parameters from its `params` argument. `prior_offset` continues an annealing started by an earlier
    call (its `prior_steps`); `done`/`total` offset the progress callback when several calls make up one run.
    `plan`: replay whole steps from recordings (`StepPlan`; the same values as without it).
    """
    total = total if total is not None else done + sum(s.iters for s in stages)
    horizon = (
        prior.horizon
        if prior is not None and prior.horizon is not None
        else prior_offset + prior_steps(stages)
    )
    term = _PriorTerm(prior)
    k_prior = prior_offset
    prepare = getattr(prior.prior, "prepare_times", None) if prior is not None else None
    if prior is not None and prepare is not None:
        count = prior_steps(stages)
        prepare(sorted({prior.t(k, horizon) for k in range(prior_offset, prior_offset + count)}))
    logs: list[StageLog] = []
    steps = TraceCache(recorder=record_step)  # one optimisation's recordings: what they froze holds only here
    opt: Adam | None = None
    opt_keys: tuple[str, ...] = ()
    opt_adam: tuple[tuple[float, float], float] = ((0.0, 0.0), 0.0)
    k = 0
    try:
        for s_idx, stage in enumerate(stages):
            unknown = [name for name in stage.lrs if name not in params]
            if unknown:
                raise ValueError(f"stage {stage.name!r} optimises unknown parameters {unknown}")
            for name, tensor in params.items():
                tensor.requires_grad_(name in stage.lrs)
            keys = tuple(stage.lrs)
            adam = (stage.betas, stage.eps)
            if opt is None or stage.reset or keys != opt_keys or adam != opt_adam:
                opt = Adam([params[name] for name in keys], betas=stage.betas, eps=stage.eps)
                opt_keys, opt_adam = keys, adam
            opt.lrs = [stage.lrs[name] for name in keys]  # a kept optimiser state takes this stage's rates
            last: Tensor | None = None
            for it in range(stage.iters):
                t = prior.t(k_prior, horizon) if prior is not None and stage.uses_prior else None
                opt.zero_grad()
                step = Step(stage, s_idx, it, k, t, term)
                try:
                    with plan.inputs(params, step) if plan is not None else nullcontext() as extra:
                        if extra is None:
                            loss = loss_fn(params, step).sum()
                            loss.backward()
                        else:
                            assert plan is not None
                            counted = term.counters()
                            free = [params[name] for name in keys]
                            with torch.no_grad():
                                loss, *grads = steps.run(
                                    (plan.key(step), keys),
                                    _StepGrad(loss_fn, params, keys, step),
                                    *free,
                                    *extra,
                                )
                            for x, g in zip(free, grads, strict=True):
                                x.grad = g
                            term.planned(counted)
                finally:
                    term.noise = None
                opt.step()
                last = loss.detach()  # read once per stage: no device sync per iteration
                if stage.uses_prior:
                    k_prior += 1
                k += 1
                done += 1
                if progress is not None:
                    progress(done, total)
            logs.append(StageLog(stage.name, stage.iters, float(last) if last is not None else math.nan))
    finally:
        for tensor in params.values():
            tensor.requires_grad_(False)
        if prepare is not None:
            prepare(None)
    return OptimizeResult(logs, term.nfe, k_prior, term.seconds)


class StageWeights:
    """Per stage, the loss weights a task's loss multiplies by, as one tensor built once — a replayed step's input
    (`StepPlan`), so the stages of one optimisation share one recording. `values(weights)` lists the numbers
    from `Stage.weights`; as float32 tensors they are the numbers a Python float gives in a product."""

    def __init__(
        self, values: Callable[[Mapping[str, float]], Sequence[float]], device: torch.device
    ) -> None:
        self.values, self.device = values, device
        self._cache: dict[str, Tensor] = {}

    def __call__(self, stage: Stage) -> Tensor:
        cached = self._cache.get(stage.name)
        if cached is None:
            cached = torch.tensor([float(v) for v in self.values(stage.weights)], device=self.device)
            self._cache[stage.name] = cached
        return cached

    def inputs(self, stage: Stage) -> tuple[Tensor]:
        """The stage's tensor as a step's inputs (`PriorPlan`)."""
        return (self(stage),)


class PriorPlan:
    """The `StepPlan` of a task whose steps change only by the prior's inputs, the stage's (`stage(stage)`: its
    weights, e.g. `StageWeights`) and, optionally, what the body model hands over (`hold(params)`, a context
    yielding tensors or None: `bodies.base.step_inputs`).

    `pose(params, step)` is the prior's input of the step (for its shape: the noise drawn for it), or None when
    the step's loss does not evaluate the prior; `key(step)` as `StepPlan.key`.
    """

    def __init__(
        self,
        stage: Callable[[Stage], tuple[Tensor, ...]],
        pose: Callable[[Mapping[str, Tensor], Step], Tensor | None],
        key: Callable[[Step], Hashable],
        hold: Callable[[Mapping[str, Tensor]], AbstractContextManager[tuple[Tensor, ...] | None]]
        | None = None,
    ) -> None:
        self.stage, self.pose, self.key, self.hold = stage, pose, key, hold

    @contextmanager
    def inputs(self, params: Mapping[str, Tensor], step: Step) -> Iterator[tuple[Tensor, ...] | None]:
        with self.hold(params) if self.hold is not None else nullcontext(()) as body:
            pose = self.pose(params, step) if body is not None else None
            prior = step.prior_inputs(pose.detach()) if pose is not None else ()
            yield None if body is None or prior is None else (*body, *prior, *self.stage(step.stage))


class _StepGrad:
    """(summed loss, gradient of each free parameter) of one step, as a pure function of the free parameters
    and the step's plan inputs (these are read by the loss function itself, by identity)."""

    def __init__(
        self, loss_fn: LossFn, params: Mapping[str, Tensor], keys: tuple[str, ...], step: Step
    ) -> None:
        self.loss_fn, self.params, self.keys, self.step = loss_fn, params, keys, step

    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        free = [x.detach().requires_grad_(True) for x in tensors[: len(self.keys)]]
        params = {**self.params, **dict(zip(self.keys, free, strict=True))}
        with torch.enable_grad():
            loss = self.loss_fn(params, self.step).sum()
            # a parameter the loss does not reach keeps no gradient (Adam skips it), as after backward(); the
            # recorder refuses such a step (its results must be tensors)
            grads = torch.autograd.grad(loss, free, allow_unused=True)
        return (loss.detach(), *grads)


# ---------------------------------------------------------------- shared loss terms
# body-pose dims of the elbow/knee bending prior and their signs (spec §7.6 angle prior, SMPLify)
ANGLE_DIMS = (52, 55, 9, 12)
ANGLE_SIGNS = (1.0, -1.0, -1.0, -1.0)


def gmof(residual: Tensor, sigma: float) -> Tensor:
    """Geman–McClure robust penalty σ²x²/(σ² + x²), elementwise (spec §7.6, σ = 100 px)."""
    sq = residual**2
    return sigma**2 * sq / (sigma**2 + sq)


def angle_prior(body_pose: Float[Tensor, "*batch 63"]) -> Float[Tensor, "*batch"]:
    """Per-sample Σ exp(s_i·θ_i)² over elbow and knee bending angles: penalises unnatural bends (SMPLify)."""
    dims, signs = _angle_tensors(body_pose.device, body_pose.dtype)
    # index_select: a cheaper backward than indexing (an accumulating index_put)
    return torch.exp(body_pose.index_select(-1, dims) * signs).pow(2).sum(-1)


@lru_cache(maxsize=8)
def _angle_tensors(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """`ANGLE_DIMS` and `ANGLE_SIGNS` as tensors, built once per device and dtype."""
    return torch.tensor(ANGLE_DIMS, device=device), torch.tensor(ANGLE_SIGNS, device=device, dtype=dtype)


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
