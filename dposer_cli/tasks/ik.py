"""Hand and face inverse kinematics from 3D keypoints with a pose prior (spec §7.9, §7.10).

    problem = problem_from_params(Part.hand, body, {"hand_pose": poses})   # targets from known poses
    problem = apply_type(problem, "sparse", generator=gen)                  # official corruption
    result = solve_ik(problem, body, load_prior("hand"), ik_type="sparse", generator=gen)
    evaluate_ik(problem, body, result)                                      # errors in mm

All N targets are solved in one batched Adam run through `engine.optimize.optimize`: the official 10 outer
iterations are 10 `Stage`s with `reset=False` (one Adam run whose data/prior weights change per iteration).
The data term is the official masked MSE (mean over N·J·3 entries, hidden joints contribute zero); the prior
term is the prior's loss at the truncated, annealed diffusion time of `T_RANGES["ik-<part>-<masked|noisy>"]`.
The face has two priors (jaw + expression, and shape): `ik_prior` sums them on their slices of one vector.

Joint orders (targets (N, J, 3), metres):
    hand  hand21  — OpenPose hand: wrist, thumb1–3, thumb tip, index1–3, tip, middle…, ring…, pinky1–3, tip
    face  flame73 — FLAME: root, neck, jaw, left eye, right eye, 51 landmarks, 17 contour landmarks
"""

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dposer_cli.bodies import BodyModel
from dposer_cli.bodies.base import step_inputs
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.rotations import matrix_to_axis_angle, rigid_registration
from dposer_cli.engine.optimize import (
    T_RANGES,
    PosePrior,
    PriorPlan,
    PriorSchedule,
    Stage,
    StageWeights,
    Step,
    optimize,
)
from dposer_cli.metrics import mpjpe

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

PRIORS = ("dposer", "none", "l2")  # the --prior kinds IK offers (engine.priors builds them)
# IK's "l2" is 0.5·‖θ‖² of the raw parameters (engine.baselines.L2Prior is ‖θ‖²): `ik_prior(..., scale=...)`
PRIOR_SCALES: Mapping[str, float] = {"l2": 0.5}
HAND_TYPES = ("full", "sparse", "fingertip", "partial", "noisy")
FACE_TYPES = ("full", "noisy", "left_face", "right_face", "half_face")
OUTER_ITERATIONS = 10  # official: the weights change once per outer iteration

# hand21 (OpenPose) indices: wrist 0, finger f ∈ 0..4 owns joints 1+4f … 4+4f, tip last
HAND_TIPS = (4, 8, 12, 16, 20)
HAND_SPARSE_HIDDEN = 13  # of 21 joints (≈60 %), spec §7.9
# FLAME Jtr ids of the landmarks hidden by left_face / right_face (spec §7.10)
LEFT_FACE = (10, 11, 12, 13, 14, 22, 23, 30, 31, 32, 33, 34, 35, 40, 41, 42, 43, 44, 51, 52, 53, 65, 66, 67, 68,
             69, 70, 71, 72)  # fmt: skip
RIGHT_FACE = (5, 6, 7, 8, 9, 19, 20, 24, 25, 26, 27, 28, 29, 36, 37, 38, 46, 47, 48, 49, 55, 56, 57, 58, 59, 60,
              61, 62, 63)  # fmt: skip


# ------------------------------------------------------------------------------------------- the settings table
@dataclass(frozen=True, slots=True)
class Weights:
    """Loss weights of one setting: data·(1+i if grows) and prior/(1+i if decays) × scale at outer iteration i
    (spec §7.9–7.10)."""

    t_range: str  # key of engine.optimize.T_RANGES: (t_min, t_max) of the truncated linear schedule
    data: float
    data_grows: bool
    prior: float
    prior_decays: bool
    scale: float = 1.0
    by_noise: Mapping[float, float] = field(default_factory=dict)  # noise std → prior scale (noisy only)

    def prior_scale(self, noise_std: float) -> float:
        for std, w in self.by_noise.items():
            if abs(std - noise_std) < 1e-9:
                return w
        return 1.0 if self.by_noise else self.scale

    def data_weight(self, iteration: int) -> float:
        return self.data * (1 + iteration) if self.data_grows else self.data

    def prior_weight(self, iteration: int, noise_std: float = 0.0) -> float:
        base = self.prior / (1 + iteration) if self.prior_decays else self.prior
        return base * self.prior_scale(noise_std)


@dataclass(frozen=True, slots=True)
class Variable:
    """A free parameter of the solve: parameter name, size, Adam learning rate, init std (0 = zeros)."""

    key: str
    dim: int
    lr: float
    init_std: float


# free with `solve_orient` (initialised by a weighted Kabsch fit, not by `init_std`)
ORIENT_VARIABLES = (Variable("global_orient", 3, 0.05, 0.0), Variable("transl", 3, 0.01, 0.0))


@dataclass(frozen=True, slots=True)
class PartIK:
    """Everything part-specific about IK (looked up, never branched on)."""

    body: str  # load_body kind
    joint_set: str
    num_joints: int
    types: tuple[str, ...]
    variables: tuple[Variable, ...]
    known: tuple[tuple[str, int], ...]  # parameters taken from the targets and kept fixed
    gt_keys: tuple[tuple[str, int], ...]  # ground-truth parameter keys (evaluation mode)
    priors: tuple[tuple[Part, tuple[str, ...]], ...]  # prior part ← concatenated variable keys
    weighting: str  # DPoser weight w(t), spec §6.1
    per_dim: bool  # prior reduction: mean over B·D (True; one prior per part) or mean over B (False)
    steps: int  # official 10 × steps_per_iter
    noise_std: float  # default --noise-std (m)
    masked: Weights
    noisy: Weights

    @property
    def prior_parts(self) -> tuple[Part, ...]:
        return tuple(p for p, _ in self.priors)

    @property
    def prior_keys(self) -> tuple[str, ...]:
        """The variables the prior sees, in the order of its concatenated input."""
        return tuple(k for _, keys in self.priors for k in keys)

    def weights(self, ik_type: str) -> Weights:
        return self.noisy if ik_type == "noisy" else self.masked

    def noise(self, ik_type: str, noise_std: float | None = None) -> float:
        """The noise std (m) of a setting: `noise_std`, else the part's default, for `noisy`; 0 otherwise."""
        if ik_type != "noisy":
            return 0.0
        return self.noise_std if noise_std is None else noise_std


IK: Mapping[Part, PartIK] = {
    Part.hand: PartIK(
        body="hand", joint_set="hand21", num_joints=21, types=HAND_TYPES,
        variables=(Variable("hand_pose", 45, 0.05, 0.01),),
        known=(("global_orient", 3), ("betas", 10)),
        gt_keys=(("hand_pose", 45), ("global_orient", 3), ("betas", 10)),
        priors=((Part.hand, ("hand_pose",)),), weighting="none", per_dim=True,
        steps=300, noise_std=0.002,
        masked=Weights("ik-hand-masked", data=100.0, data_grows=True, prior=0.1, prior_decays=True),
        noisy=Weights("ik-hand-noisy", data=10.0, data_grows=False, prior=0.1, prior_decays=False,
                      by_noise={0.002: 0.1, 0.005: 0.5, 0.01: 1.0}),
    ),
    Part.face: PartIK(
        body="face", joint_set="flame73", num_joints=73, types=FACE_TYPES,
        variables=(Variable("betas", 100, 0.05, 0.0), Variable("expression", 100, 0.05, 0.0),
                   Variable("jaw_pose", 3, 0.1, 0.0)),
        known=(),
        gt_keys=(("jaw_pose", 3), ("expression", 100), ("betas", 100)),
        priors=((Part.face, ("jaw_pose", "expression")), (Part.face_shape, ("betas",))),
        weighting="snr2", per_dim=False,
        steps=200, noise_std=0.002,
        masked=Weights("ik-face-masked", data=100.0, data_grows=True, prior=0.001, prior_decays=True, scale=0.1),
        noisy=Weights("ik-face-noisy", data=500.0, data_grows=False, prior=0.001, prior_decays=True,
                      by_noise={0.0: 0.1, 0.001: 0.5, 0.002: 1.0, 0.005: 2.0}),
    ),
}  # fmt: skip


def part_ik(part: Part | str) -> PartIK:
    """The IK settings of `part`.

    Raises:
        InputError: a part without IK (only hand and face have one).
    """
    spec = IK.get(Part(part))
    if spec is None:
        raise InputError(f"dposer ik supports --part hand or face, not {Part(part).value}")
    return spec


def check_type(part: Part | str, ik_type: str) -> str:
    """Validate an IK type for `part`; returns it.

    Raises:
        InputError: a type that does not exist for this part (with the nearest valid one).
    """
    types = part_ik(part).types
    if ik_type not in types:
        raise InputError(
            f"--type {ik_type} is not available for --part {Part(part).value}{suggest(ik_type, list(types))}",
            hint="types: " + ", ".join(types),
        )
    return ik_type


# ------------------------------------------------------------------------------------------------ the problem
@dataclass(frozen=True)
class IKProblem:
    """Targets of one batched solve. `gt` holds ground-truth parameters/joints in evaluation mode."""

    part: Part
    targets: Float[Tensor, "B J 3"]  # metres; hidden entries may hold anything (they never enter the loss)
    visible: Bool[Tensor, "B J"]
    known: dict[str, Tensor] = field(default_factory=dict)  # fixed parameters (hand: global_orient, betas)
    gt: dict[str, Tensor] | None = None  # parameters + "joints" (B, J, 3) + "vertices" when available

    @property
    def n(self) -> int:
        return self.targets.shape[0]


@dataclass(frozen=True)
class IKResult:
    """Recovered parameters (a complete set: fixed-at-zero ones too), the posed joints and the prior's NFE."""

    params: dict[str, Tensor]  # variables + known (+ global_orient, transl with solve_orient), (B, dim) each
    joints: Float[Tensor, "B J 3"]
    nfe: int  # network evaluations made by the prior (0 for the baselines)
    steps: int  # Adam iterations


def problem_from_params(part: Part | str, body: BodyModel, params: Mapping[str, Tensor]) -> IKProblem:
    """Evaluation problem: all joints of the posed ground truth visible; the hand's orient/betas stay known."""
    part = Part(part)
    spec = part_ik(part)
    gt = dict(params)
    with torch.no_grad():
        out = body(**gt, return_vertices=True)
    gt["joints"] = out.joints[..., body.joint_set(spec.joint_set), :]
    if out.vertices is not None:
        gt["vertices"] = out.vertices
    n, dev = gt["joints"].shape[0], gt["joints"].device
    known = {k: gt[k] for k, _ in spec.known if k in gt}
    return IKProblem(
        part, gt["joints"].clone(), torch.ones(n, spec.num_joints, dtype=torch.bool, device=dev), known, gt
    )


def apply_type(
    problem: IKProblem,
    ik_type: str,
    *,
    noise_std: float | None = None,
    generator: torch.Generator | None = None,
) -> IKProblem:
    """Hide joints / add noise for one official setting, with a seeded mask drawn per sample (spec §7.9–7.10).

    Raises:
        InputError: a type that does not exist for this part, or a sample left with no visible joint.
    """
    spec = part_ik(problem.part)
    check_type(problem.part, ik_type)
    n, j = problem.visible.shape
    dev = problem.targets.device
    hide = torch.zeros(n, j, dtype=torch.bool, device=dev)
    rows = torch.arange(n, device=dev)[:, None]
    targets = problem.targets
    if ik_type == "sparse":  # 13 random joints of 21 per sample
        order = torch.rand(n, j, generator=generator, device=dev).argsort(-1)
        hide[rows, order[:, :HAND_SPARSE_HIDDEN]] = True
    elif ik_type == "fingertip":  # only the wrist and the five tips stay visible
        hide[:] = True
        hide[:, [0, *HAND_TIPS]] = False
    elif ik_type == "partial":  # two random fingers, all 4 joints each
        fingers = torch.rand(n, 5, generator=generator, device=dev).argsort(-1)[:, :2]
        ids = (1 + 4 * fingers[:, :, None] + torch.arange(4, device=dev)).reshape(n, 8)
        hide[rows, ids] = True
    elif ik_type in ("left_face", "right_face"):
        hide[:, list(LEFT_FACE if ik_type == "left_face" else RIGHT_FACE)] = True
    elif ik_type == "half_face":  # a random side per sample
        left = torch.rand(n, generator=generator, device=dev) < 0.5
        hide[:, list(LEFT_FACE)] = left[:, None]
        hide[:, list(RIGHT_FACE)] = ~left[:, None]
    elif ik_type == "noisy":
        std = spec.noise(ik_type, noise_std)
        targets = targets + std * torch.randn(targets.shape, generator=generator, device=dev)
    visible = problem.visible & ~hide
    empty = (~visible.any(-1)).nonzero()
    if len(empty):
        raise InputError(
            f"sample {int(empty[0])} has no visible joints after --type {ik_type} "
            f"({len(empty)} sample(s) in all)",
            hint="mark at least one joint visible per sample",
        )
    return replace(problem, targets=targets, visible=visible)


# -------------------------------------------------------------------------------------------------- priors
class ConcatPrior:
    """Several priors on consecutive slices of one vector, summed per sample (`engine.optimize.PosePrior`).

    The face's prior input is [jaw_pose, expression | betas]: the pose/expression prior sees the first 103
    dims and the shape prior the last 100, both at the same diffusion time; each prior's width is its part's
    dim. `scale` multiplies every term (IK's l2 is 0.5·‖θ‖²).
    """

    def __init__(self, part: Part, priors: tuple[PosePrior, ...], *, scale: float = 1.0) -> None:
        self.part = part
        self.priors = priors
        self.scale = scale
        self.widths = tuple(PARTS[p.part].dim for p in priors)
        self.nfe_per_call = sum(int(getattr(p, "nfe_per_call", 1)) for p in priors)

    @property
    def parts(self) -> tuple[Part, ...]:
        return tuple(p.part for p in self.priors)

    def prepare_times(self, times: Sequence[float] | None) -> None:
        """Pass an optimisation's diffusion times on to the priors that prepare for them
        (`DPoserPrior.prepare_times`); `None` makes them forget."""
        for prior in self.priors:
            prepare = getattr(prior, "prepare_times", None)
            if prepare is not None:
                prepare(times)

    def prepared_tensors(self, t: float, weighting: str, dtype: torch.dtype) -> tuple[Tensor, ...] | None:
        """Every part prior's `prepared_tensors` (None unless all have them): a replayed step's inputs."""
        out: list[Tensor] = []
        for prior in self.priors:
            tensors = getattr(prior, "prepared_tensors", None)
            part = tensors(t, weighting, dtype) if callable(tensors) else None
            if part is None:
                return None
            out.extend(part)
        return tuple(out)

    def draw_noise(self, pose: Tensor, generator: torch.Generator | None) -> Tensor:
        """The noise `loss` draws, drawn in advance: part by part, in order (the same numbers)."""
        draws = [
            torch.randn((*pose.shape[:-1], width), generator=generator, device=pose.device, dtype=pose.dtype)
            for width in self.widths
        ]
        return torch.cat(draws, -1)

    def loss(
        self,
        pose: Float[Tensor, "*batch D"],
        t: float | Tensor = 0.1,
        *,
        weighting: str = "snr",
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Float[Tensor, "*batch"]:
        """Σ_k scale·prior_k.loss(pose[..., slice_k], t) per sample (same t, weighting and noise source, or
        `noise` from `draw_noise`)."""
        total: Tensor | None = None
        start = 0
        for prior, width in zip(self.priors, self.widths, strict=True):
            part = pose[..., start : start + width]
            if noise is None:
                value = prior.loss(part, t, weighting=weighting, generator=generator)
            else:
                z = noise[..., start : start + width]
                value = prior.loss(part, t, weighting=weighting, noise=z)  # type: ignore[call-arg]
            if self.scale != 1.0:
                value = self.scale * value
            total = value if total is None else total + value
            start += width
        assert total is not None
        return total


def ik_prior(part: Part | str, priors: Mapping[Part, PosePrior], *, scale: float = 1.0) -> ConcatPrior:
    """The prior of a `part`'s solve from its per-part priors (face: `Part.face` and `Part.face_shape`).

    `scale`: `PRIOR_SCALES.get(kind, 1.0)` for a `--prior` kind (0.5 for l2).

    Raises:
        InputError: a prior of the part's prior parts is missing.
    """
    part = Part(part)
    spec = part_ik(part)
    missing = [p.value for p in spec.prior_parts if p not in priors]
    if missing:
        raise InputError(f"IK of --part {part.value} needs a prior for {', '.join(missing)}")
    return ConcatPrior(part, tuple(priors[p] for p in spec.prior_parts), scale=scale)


def _check_prior(spec: PartIK, part: Part, prior: PosePrior) -> None:
    parts = prior.parts if isinstance(prior, ConcatPrior) else (prior.part,)
    if tuple(parts) != spec.prior_parts:
        want = " + ".join(p.value for p in spec.prior_parts)
        raise InputError(
            f"IK of --part {part.value} needs a prior of {want}, got {' + '.join(p.value for p in parts)}",
            hint="combine the part priors with tasks.ik.ik_prior(part, {part: prior, ...})",
        )


# --------------------------------------------------------------------------------------------------- solving
def ik_stages(
    part: Part | str,
    ik_type: str = "full",
    *,
    noise_std: float | None = None,
    steps: int | None = None,
    solve_orient: bool = False,
) -> list[Stage]:
    """The official outer iterations as optimiser stages (spec §7.9–7.10).

    `min(10, steps)` stages with `reset=False` (one Adam run); Adam step k belongs to outer iteration
    `k · iterations // steps`, whose data/prior weights the stage carries as `weights["data"|"prior"]`.
    """
    spec = part_ik(part)
    steps = steps or spec.steps
    w = spec.weights(ik_type)
    noise = spec.noise(ik_type, noise_std)
    iterations = min(OUTER_ITERATIONS, steps)
    counts = [0] * iterations
    for k in range(steps):
        counts[k * iterations // steps] += 1
    variables = spec.variables + (ORIENT_VARIABLES if solve_orient else ())
    lrs = {v.key: v.lr for v in variables}
    return [
        Stage(
            f"iteration {i}",
            iters,
            lrs,
            {"data": w.data_weight(i), "prior": w.prior_weight(i, noise)},
            reset=False,
            uses_prior=True,
        )
        for i, iters in enumerate(counts)
    ]


def ik_prior_schedule(
    part: Part | str, ik_type: str, prior: PosePrior, *, generator: torch.Generator | None = None
) -> PriorSchedule:
    """The prior as a loss term of a solve: the part's weighting and the setting's `T_RANGES` entry."""
    spec = part_ik(part)
    return PriorSchedule(
        prior, T_RANGES[spec.weights(ik_type).t_range], weighting=spec.weighting, generator=generator
    )


def _init_orient(
    problem: IKProblem,
    joints_of: Callable[[Mapping[str, Tensor]], Tensor],
    params: Mapping[str, Tensor],
    targets: Tensor,
) -> dict[str, Tensor]:
    """global_orient by a weighted Kabsch fit of the visible joints, then the weighted mean's translation."""
    with torch.no_grad():
        rest = joints_of(params)
        w = problem.visible.to(rest.dtype)
        rot, _, _ = rigid_registration(rest, targets, w)
        orient = matrix_to_axis_angle(rot)
        rotated = joints_of({**params, "global_orient": orient})
        transl = ((targets - rotated) * w[..., None]).sum(-2) / w.sum(-1, keepdim=True)
    return {"global_orient": orient.clone(), "transl": transl.clone()}


def solve_ik(
    problem: IKProblem,
    body: BodyModel,
    prior: PosePrior | None,
    *,
    ik_type: str = "full",
    noise_std: float | None = None,
    steps: int | None = None,
    solve_orient: bool = False,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> IKResult:
    """Batched Adam IK (spec §7.9–7.10) of all targets of `problem` with the official weights of `ik_type`.

    `prior`: the part's prior (`DPoserPrior` / a baseline for the hand; `ik_prior(...)` for the face's two
    priors), or None for no prior term. `generator` draws the initial pose and the prior's noise. With
    `solve_orient`, `global_orient` and `transl` are free too, initialised by a weighted Kabsch fit of the
    initial pose's visible joints to the targets (the official setting fixes them at zero).

    Raises:
        InputError: a type that does not exist for the part, or a prior of the wrong part(s).
    """
    part = problem.part
    spec = part_ik(part)
    check_type(part, ik_type)
    if prior is not None:
        _check_prior(spec, part, prior)
    steps = steps or spec.steps
    n, dev = problem.n, problem.targets.device
    jset = body.joint_set(spec.joint_set)
    mask = problem.visible[..., None].to(problem.targets.dtype)
    targets = torch.where(problem.visible[..., None], problem.targets, torch.zeros_like(problem.targets))
    fixed = dict(problem.known)
    free: dict[str, Tensor] = {}
    for v in spec.variables:
        free[v.key] = (
            v.init_std * torch.randn(n, v.dim, generator=generator, device=dev)
            if v.init_std
            else torch.zeros(n, v.dim, device=dev)
        )

    def joints_of(params: Mapping[str, Tensor]) -> Tensor:
        return body(**params, return_vertices=False).joints[..., jset, :]

    if solve_orient:
        fixed.pop("global_orient", None)
        free.update(_init_orient(problem, joints_of, {**fixed, **free}, targets))
    else:
        with torch.no_grad():
            start = joints_of({**fixed, **free})
            far = ((start - targets).norm(dim=-1) * problem.visible).sum() / problem.visible.sum()
        if far > 0.1:
            log.warning(
                "targets are %.0f mm from the model on average: are they in the model frame "
                "(%s, wrist/root at the origin)? --solve-orient also solves rotation and translation",
                1000 * float(far),
                spec.joint_set,
            )

    numel = targets.numel()
    prior_keys = spec.prior_keys

    weights = StageWeights(lambda w: (w["data"], w["prior"]), dev)

    def loss_fn(params: dict[str, Tensor], step: Step) -> Tensor:
        # official data term: mean over all N·J·3 entries, hidden ones are zero on both sides
        w = weights(step.stage)
        data = ((joints_of({**fixed, **params}) - targets) ** 2 * mask).sum() / numel
        loss = w[0] * data
        if step.stage.weights["prior"] and prior is not None:
            x = torch.cat([params[k] for k in prior_keys], -1)
            value = step.prior(x).mean()  # the batch mean; per_dim: also over the prior's D dims
            loss = loss + w[1] * (value / x.shape[-1] if spec.per_dim else value)
        return loss

    def prior_pose(params: Mapping[str, Tensor], step: Step) -> Tensor | None:
        if not step.stage.weights["prior"] or prior is None:
            return None
        return torch.cat([params[k] for k in prior_keys], -1)

    def hold(params: Mapping[str, Tensor]) -> AbstractContextManager[tuple[Tensor, ...] | None]:
        betas = params.get("betas")  # free (the face's shape) or fixed
        return step_inputs(body, betas if betas is not None and betas.requires_grad else None)

    def step_key(step: Step) -> Hashable:
        return bool(step.stage.weights["prior"]) and prior is not None

    schedule = None if prior is None else ik_prior_schedule(part, ik_type, prior, generator=generator)
    stages = ik_stages(part, ik_type, noise_std=noise_std, steps=steps, solve_orient=solve_orient)
    plan = PriorPlan(weights.inputs, prior_pose, step_key, hold)
    run = optimize(free, stages, loss_fn, prior=schedule, progress=progress, plan=plan)
    with torch.no_grad():
        params = {k: v.detach() for k, v in {**fixed, **free}.items()}
        joints = joints_of(params)
    for key, dim in spec.gt_keys:  # a complete parameter set: fixed-at-zero ones too (e.g. global_orient)
        params.setdefault(key, torch.zeros(n, dim, device=dev))
    return IKResult(params, joints, run.nfe, steps)


# -------------------------------------------------------------------------------------------------- metrics
def evaluate_ik(problem: IKProblem, body: BodyModel, result: IKResult) -> dict[str, float]:
    """Errors in mm (paper Table 4): visible / occluded / all joints vs ground truth, MPVPE; and the fit to the
    (possibly noisy) targets on visible joints. Per-sample means, then averaged over samples."""
    vis = problem.visible
    pred = result.joints
    err = (pred - problem.targets).norm(dim=-1)
    out = {"target_error_mm": 1000 * float(((err * vis).sum(-1) / vis.sum(-1)).mean())}
    if problem.gt is None:
        return out
    gt_err = (pred - problem.gt["joints"]).norm(dim=-1)
    out["mpjpe_visible_mm"] = 1000 * float(((gt_err * vis).sum(-1) / vis.sum(-1)).mean())
    hidden = ~vis
    has = hidden.any(-1)
    if has.any():
        per = (gt_err * hidden).sum(-1)[has] / hidden.sum(-1)[has]
        out["mpjpe_occluded_mm"] = 1000 * float(per.mean())
    out["mpjpe_all_mm"] = 1000 * float(mpjpe(pred, problem.gt["joints"]).mean())
    if "vertices" in problem.gt:
        keys = {k for k, _ in part_ik(problem.part).gt_keys} | {"transl"}
        with torch.no_grad():
            verts = body(
                **{k: v for k, v in result.params.items() if k in keys}, return_vertices=True
            ).vertices
        if verts is not None:
            out["mpvpe_mm"] = 1000 * float(mpjpe(verts, problem.gt["vertices"]).mean())
    return out
