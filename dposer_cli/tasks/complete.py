"""Pose completion (spec §6.4, §7.2–7.3): fill the hidden entries of poses with a prior, H hypotheses each.

    from dposer_cli.tasks.complete import complete, resolve_masking
    masking = resolve_masking(Part.body, poses, masks=("legs",))       # or joints=(0, 3), or NaN entries
    res = complete(prior, poses, masking.observed, hypo=5, generator=torch.Generator().manual_seed(0))
    res.poses                                                          # (N, 5, 63), visible entries unchanged
    res.nfe                                                            # 200 network evaluations

Every input × hypothesis is completed in one batched run, in the prior's normalised space. Modes of the
DPoser prior: `dposer` is DPoserComp, the prior as a loss through the one optimiser (`engine.optimize`);
`scoresde`, `dps` and `mcg` are the inpainting samplers of `engine.inpaint`. A baseline prior
(`engine.baselines`, `engine.vposer`) completes with its own method (`prior.complete`).
Also here: the completion metrics of spec §8.2 on a given body model (`completion_metrics`).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import PARTS, Part, mask_dims
from dposer_cli.engine import inpaint
from dposer_cli.engine.baselines import BaselinePrior
from dposer_cli.engine.loss import EpsFn, dposer_loss
from dposer_cli.engine.optimize import T_RANGES, PriorPlan, PriorSchedule, Stage, StageWeights, Step, optimize
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.sde import SDE
from dposer_cli.metrics import apd, mpjpe
from dposer_cli.tasks.export import part_params

Progress = Callable[[int, int], None] | None

MODES = ("dposer", "scoresde", "dps", "mcg")
DEFAULT_STEPS = {"dposer": 200, "scoresde": 1000, "dps": 1000, "mcg": 1000}  # spec §11
ITERATIONS = 2  # DPoserComp outer iterations; the steps are split evenly over them (spec §6.4)
CHUNK = 1 << 16  # vectors per batched run: bounds memory for very large inputs, not a per-sample loop
# which body model scores each part's joint errors (load_body kind); other parts are scored per dim
METRIC_BODY = {Part.body: "body", Part.wholebody: "body", Part.hand: "hand"}


# ---- masks ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Masking:
    observed: Bool[Tensor, "N D"]  # True = visible
    has_truth: bool  # a named mask over a complete input: the input is the ground truth
    dims: tuple[int, ...]  # masked dims (named masks) or () for NaN masks
    source: str  # "mask" | "nan"


def joint_mask_dims(part: Part, joints: tuple[int, ...]) -> tuple[int, ...]:
    """Vector dims of joint indices into `PARTS[part].joint_names` (3 axis-angle dims per joint).

    Raises:
        InputError: a part without joints, or an index out of range.
    """
    names = PARTS[part].joint_names
    if not names:
        raise InputError(
            f"--mask-joints: --part {part.value} has no joints (it is a coefficient vector)",
            hint="use NaN entries in the input to mark missing coefficients",
        )
    bad = [j for j in joints if not 0 <= j < len(names)]
    if bad:
        raise InputError(
            f"--mask-joints: joint index {bad[0]} is out of range for --part {part.value} "
            f"(0..{len(names) - 1})",
            hint="joints: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)),
        )
    return tuple(3 * j + k for j in joints for k in range(3))


def resolve_masking(
    part: Part,
    poses: Float[Tensor, "N D"],
    masks: tuple[str, ...] = (),
    joints: tuple[int, ...] = (),
    where: str = "input",
    keys: tuple[str, ...] = (),
) -> Masking:
    """Observed entries from mask group names / joint indices, else from the NaN entries of `poses`.

    `where` and `keys` (the input file's key names) only make the error messages name the entry.

    Raises:
        InputError: unknown mask name, out-of-range joint, NaN outside a given mask, nothing masked,
            everything masked.
    """
    n, dim = poses.shape
    nan = torch.isnan(poses)
    if masks or joints:
        dims = tuple(
            sorted(set(mask_dims(part, list(masks)) if masks else ()) | set(joint_mask_dims(part, joints)))
        )
        if len(dims) == dim:
            raise InputError(
                f"the mask covers all {dim} dims of --part {part.value}: nothing is left to condition on",
                hint="mask fewer joints, or use `dposer generate` for unconditional poses",
            )
        hidden = torch.zeros(dim, dtype=torch.bool, device=poses.device)
        hidden[list(dims)] = True
        stray = nan & ~hidden
        if stray.any():
            row, d = (int(v) for v in stray.nonzero()[0])
            raise InputError(
                f"{where}: row {row}, {_entry_name(part, d, keys)} is NaN but outside the mask "
                f"({int(stray.sum())} such entries)",
                hint="add the joint to --mask/--mask-joints, or leave out --mask to use NaN entries as the mask",
            )
        return Masking(
            ~hidden.expand(n, dim).clone(), has_truth=not bool(nan.any()), dims=dims, source="mask"
        )
    if not nan.any():
        raise InputError(
            f"{where}: nothing to complete: no --mask/--mask-joints given and no NaN entries",
            hint="pass --mask NAME (e.g. "
            + ", ".join(sorted(PARTS[part].mask_groups)[:4])
            + ") or mark missing entries with NaN",
        )
    full = nan.all(dim=1)
    if full.any():
        row = int(full.nonzero()[0])
        raise InputError(
            f"{where}: row {row} is entirely NaN ({int(full.sum())} such rows): nothing to condition on"
        )
    return Masking(~nan, has_truth=False, dims=(), source="nan")


def _entry_name(part: Part, dim: int, keys: tuple[str, ...]) -> str:
    """`key[col]` of a vector dim, with the input file's own key names where they map one-to-one."""
    segments = list(PARTS[part].slices().items())
    if len(keys) == 1 and len(segments) > 1:
        return f"{keys[0]}[{dim}]"
    for i, (key, sl) in enumerate(segments):
        if sl.start <= dim < sl.stop:
            name = keys[i] if len(keys) == len(segments) else key
            return f"{name}[{dim - sl.start}]"
    raise AssertionError(dim)


# ---- completion -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompleteResult:
    poses: Float[Tensor, "N H D"]  # raw poses; visible entries are the input's own values
    nfe: int  # network evaluations (0 for baseline priors)
    steps: (
        int  # solver steps per hypothesis (DPoserComp: rounded up to a multiple of ITERATIONS; 0: baseline)
    )
    mode: str


def check_options(mode: str = "dposer", hypo: int = 1, steps: int | None = None) -> None:
    """Validate the completion options.

    Raises:
        InputError: unknown mode (with the nearest one), hypo < 1, steps < 1.
    """
    if mode not in MODES:
        raise InputError(
            f"unknown --mode {mode!r}{suggest(mode, list(MODES))}", hint="modes: " + ", ".join(MODES)
        )
    if hypo < 1:
        raise InputError(f"--hypo must be at least 1 (got {hypo})")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1 (got {steps})")


def solver_steps(mode: str = "dposer", steps: int | None = None) -> int:
    """The steps a mode runs: its default when None; DPoserComp splits them evenly over its outer iterations."""
    steps = steps or DEFAULT_STEPS[mode]
    return ITERATIONS * math.ceil(steps / ITERATIONS) if mode == "dposer" else steps


def complete(
    prior: DPoserPrior | BaselinePrior,
    poses: Float[Tensor, "N D"],
    observed: Bool[Tensor, "*#batch D"],
    *,
    hypo: int = 1,
    mode: str = "dposer",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress = None,
) -> CompleteResult:
    """Complete raw poses (N, D) (NaN allowed where not observed) → (N, H, D) raw, visible entries unchanged.

    `mode="dposer"` is DPoserComp (spec §6.4: Adam lr 0.1, betas (0.9, 0.99), 2 × steps/2 iterations,
    t 0.15 → 0.05, weighting snr; default 200 steps); `scoresde`, `dps`, `mcg` are diffusion inpainting
    samplers (spec §5; default 1000 steps). Every step is one batched network evaluation for all N·H
    vectors. A baseline prior uses its own `complete` (mode "dposer" only; `steps` is not used).

    Raises:
        InputError: bad options, a sampler mode with a baseline prior, or poses of the wrong width.
    """
    check_options(mode, hypo, steps)
    dim = PARTS[prior.part].dim
    if poses.ndim != 2 or poses.shape[1] != dim:
        raise InputError(
            f"poses have shape {tuple(poses.shape)}; expected (N, {dim}) for --part {prior.part.value}"
        )
    observed = observed.to(device=poses.device, dtype=torch.bool).expand_as(poses)
    if isinstance(prior, BaselinePrior):
        if mode != "dposer":
            raise InputError(
                f"--mode {mode} needs the DPoser prior; the {prior.kind} baseline has its own completion",
                hint="leave out --mode",
            )
        return CompleteResult(_baseline_complete(prior, poses, observed, hypo, generator), 0, 0, mode)
    steps = solver_steps(mode, steps)
    filled = torch.where(observed, poses, torch.zeros((), dtype=poses.dtype, device=poses.device))
    y = prior.normalize(filled)
    n = poses.shape[0]
    rows = max(1, CHUNK // hypo)
    total_chunks = math.ceil(n / rows)
    outs, nfe = [], 0
    for c, start in enumerate(range(0, n, rows)):  # one chunk unless N·H > CHUNK (memory bound only)
        sl = slice(start, start + rows)
        yc, oc = y[sl, None, :], observed[sl, None, :]
        shape = (yc.shape[0], hypo, dim)
        cb = _chunk_progress(progress, c, total_chunks)
        if mode == "dposer":
            noise = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
            x = torch.where(oc, yc, noise)  # masked dims start from N(0, 1) in normalised space (spec §6.4)
            out, used = dposer_complete(
                prior.eps,
                x,
                oc,
                yc,
                sde=prior.sde,
                steps_per_iter=steps // ITERATIONS,
                generator=generator,
                progress=cb,
            )
        else:
            x = prior.sde.prior_sampling(shape, generator, y.device)
            out = inpaint.INPAINTERS[mode](
                prior.eps, x, oc, yc, sde=prior.sde, steps=steps, generator=generator, callback=cb
            )
            used = steps  # one batched network evaluation per sampler step
        nfe += used
        with torch.no_grad():
            raw = prior.denormalize(out.detach())
            outs.append(torch.where(oc, poses[sl, None, :], raw))  # visible entries: the input's own values
    return CompleteResult(torch.cat(outs, 0), nfe, steps, mode)


def _baseline_complete(
    prior: BaselinePrior, poses: Tensor, observed: Tensor, hypo: int, generator: torch.Generator | None
) -> Tensor:
    """`prior.complete` once per distinct observed pattern (baselines take one (D,) mask per call)."""
    filled = torch.where(observed, poses, torch.zeros((), dtype=poses.dtype, device=poses.device))
    patterns, owner = torch.unique(observed, dim=0, return_inverse=True)
    if len(patterns) == 1:
        return prior.complete(filled, patterns[0], hypo=hypo, generator=generator)
    out = poses.new_empty(poses.shape[0], hypo, poses.shape[1])
    for g, pattern in enumerate(patterns):
        rows = owner == g
        out[rows] = prior.complete(filled[rows], pattern, hypo=hypo, generator=generator)
    return out


def _chunk_progress(progress: Progress, chunk: int, chunks: int) -> Progress:
    if progress is None:
        return None
    return lambda done, total: progress(chunk * total + done, chunks * total)


# ---- DPoserComp -----------------------------------------------------------------------------------------
class _NormalisedPrior:
    """The DPoser loss of *normalised* vectors, mean over dims, with the `PosePrior` interface of the optimiser."""

    nfe_per_call = 1

    def __init__(self, eps_fn: EpsFn, sde: SDE, part: Part | None = None) -> None:
        self.eps_fn, self.sde, self.part = eps_fn, sde, part
        # `DPoserPrior.eps` (the usual case): its prior's loss, which can prepare the annealed times and hand
        # a replayed step its tensors (`engine.optimize.StepPlan`); the same values as `dposer_loss` here
        owner = getattr(eps_fn, "__self__", None)
        self.owner = owner if isinstance(owner, DPoserPrior) and owner.sde is sde else None
        self.priors = () if self.owner is None else (self.owner,)

    def prepare_times(self, times: Sequence[float] | None) -> None:
        if self.owner is not None:
            self.owner.prepare_times(times)

    def prepared_tensors(self, t: float, weighting: str, dtype: torch.dtype) -> tuple[Tensor, ...] | None:
        return None if self.owner is None else self.owner.prepared_tensors(t, weighting, dtype)

    def loss(
        self,
        x: Float[Tensor, "*batch D"],
        t: float | Tensor = 0.1,
        *,
        weighting: str = "snr",
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Float[Tensor, "*batch"]:
        if self.owner is not None:
            value = self.owner.loss(
                x, t, weighting=weighting, generator=generator, normalized=True, noise=noise
            )
        else:
            value = dposer_loss(
                self.eps_fn, x, t, sde=self.sde, weighting=weighting, generator=generator, noise=noise
            )
        return value / x.shape[-1]


def completion_stages(
    iterations: int = ITERATIONS,
    steps_per_iter: int = 100,
    lr: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
) -> list[Stage]:
    """DPoserComp's outer iterations as one Adam run (spec §6.4): iteration `it` weighs the data term
    100/(1+it) and the prior 0.1·(1+it); the prior's time is annealed over all of them."""
    return [
        Stage(
            f"iteration {it}",
            steps_per_iter,
            {"x": lr},
            {"data": 100.0 / (1 + it), "prior": 0.1 * (1 + it)},
            reset=False,
            uses_prior=True,
            betas=betas,
        )
        for it in range(iterations)
    ]


def dposer_complete(
    eps_fn: EpsFn,
    x: Float[Tensor, "*batch D"],
    mask: Bool[Tensor, "*#batch D"],
    y: Float[Tensor, "*#batch D"],
    *,
    sde: SDE,
    iterations: int = ITERATIONS,
    steps_per_iter: int = 100,
    t_range: tuple[float, float] = T_RANGES["completion"],
    lr: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
    weighting: str = "snr",
    generator: torch.Generator | None = None,
    progress: Progress = None,
) -> tuple[Float[Tensor, "*batch D"], int]:
    """DPoserComp (spec §6.4) of every vector in `x` at once, in normalised space; returns (x, NFE) with x = y on
    observed dims.

    `x` is the start point (observed dims = y, masked dims = N(0,1) noise in the official setting). Per step
    k of S = iterations·steps_per_iter, with outer iteration `it`: t_k from the truncated linear schedule,
    loss = 100/(1+it)·mean_d(m⊙(x−y))² + 0.1(1+it)·w(t)·mean_d(x − sg[x̂0])². The per-vector losses are
    *summed* over the batch, so every vector follows the same Adam trajectory it would follow alone
    (the official mean over the batch only rescales the gradient, which Adam undoes). NFE = S.
    """
    mask = mask.to(torch.bool)
    y = torch.where(mask, y, 0.0)
    m = mask.to(x.dtype)

    weights = StageWeights(lambda w: (w["data"], w["prior"]), x.device)

    def loss_fn(params: Mapping[str, Tensor], step: Step) -> Tensor:
        var, w = params["x"], weights(step.stage)
        data = (m * (var - y)).square().mean(-1)
        return w[0] * data + w[1] * step.prior(var)

    params = {"x": x.detach().clone()}
    schedule = PriorSchedule(_NormalisedPrior(eps_fn, sde), t_range, weighting, generator)
    with torch.enable_grad():
        res = optimize(
            params,
            completion_stages(iterations, steps_per_iter, lr, betas),
            loss_fn,
            prior=schedule,
            progress=progress,
            plan=PriorPlan(weights.inputs, lambda params, step: params["x"], lambda step: "completion"),
        )
    return torch.where(mask, y, params["x"].detach()), res.nfe


# ---- metrics (spec §8.2) --------------------------------------------------------------------------------
_HAND_SETS = {"left_hand_pose": "lhand21", "right_hand_pose": "rhand21"}


def metric_body(part: Part, dims: tuple[int, ...]) -> str | None:
    """The body model kind (`load_body`) `completion_metrics` needs for these masked dims; None: none needed."""
    return METRIC_BODY[part] if _joint_dims(part, dims) else None


def completion_metrics(
    part: Part,
    completed: Float[Tensor, "N H D"],
    truth: Float[Tensor, "N D"],
    dims: tuple[int, ...],
    body: BodyModel | None = None,
) -> tuple[dict[str, float], dict]:
    """MPJPE (mm, min/mean over hypotheses) and APD (cm) on the masked part's joints; per-dim L2 where no joints.

    Joints: body → the masked body joints among body22 (official protocol: BodyPartIndices + 1); whole-body
    hands → the 21 joints of each masked hand; hand → the hand model's 21 joints. Jaw / expression / face-shape
    dims have no joints here: their error is the L2 norm over the masked dims (radians / coefficients).
    `body` is the model of kind `metric_body(part, dims)` (required when that is not None).
    Returns (metrics, info).
    """
    joint_dims = _joint_dims(part, dims)
    param_dims = [d for d in dims if d not in set(joint_dims)]
    metrics: dict[str, float] = {}
    info: dict = {}
    if joint_dims:
        if body is None:
            raise ValueError(f"completion_metrics needs a {METRIC_BODY[part]} body model for these dims")
        idx, names = _metric_joints(part, body, joint_dims)
        moving = _moving_joints(part, body, truth, joint_dims)
        if not bool(moving[idx].any()):
            # the masked rotations move none of the protocol's joints (e.g. the body's `hands` mask rotates the
            # wrists: the hands move, the wrist joints do not): score the joints they do move, never a perfect 0
            idx = torch.nonzero(moving).flatten()
            names = [body.joint_names[i] for i in idx.tolist()]
            info["metric_note"] = (
                "the masked rotations move none of the masked joints themselves; the error is taken over the "
                "joints they move"
                if len(idx)
                else "the masked rotations move no joint of this body model: no joint error can be measured"
            )
        info["body_model"] = body.kind
        if len(idx):
            with torch.no_grad():
                pred = body(**part_params(part, completed), return_vertices=False).joints[..., idx, :]
                gt = body(**part_params(part, truth), return_vertices=False).joints[..., idx, :]
            err = mpjpe(pred, gt[:, None].expand_as(pred)) * 1000.0  # (N, H) mm
            metrics["mpjpe_min_mm"] = float(err.min(1).values.mean())
            metrics["mpjpe_mean_mm"] = float(err.mean())
            if completed.shape[1] > 1:
                metrics["apd_cm"] = float(apd(pred).mean() * 100.0)
            info["metric_joints"] = names
    if param_dims:
        sel = torch.tensor(param_dims, device=completed.device)
        err = (completed[..., sel] - truth[:, None, sel]).norm(dim=-1)  # (N, H)
        metrics["param_l2_min"] = float(err.min(1).values.mean())
        metrics["param_l2_mean"] = float(err.mean())
        if completed.shape[1] > 1:
            x, h = completed[..., sel], completed.shape[1]
            pair = (x[:, :, None] - x[:, None]).norm(dim=-1)  # (N, H, H), zero diagonal
            metrics["param_apd"] = float((pair.sum((1, 2)) / (h * (h - 1))).mean())
        info["param_metric"] = (
            f"L2 norm over {len(param_dims)} masked dims without joints "
            "(axis-angle radians / expression or shape coefficients)"
        )
    return metrics, info


def _joint_dims(part: Part, dims: tuple[int, ...]) -> list[int]:
    """Masked dims whose error is measured through joint positions (body and hand rotations; not the jaw)."""
    if part not in METRIC_BODY:
        return []
    n = 3 * len(PARTS[part].joint_names)
    return [d for d in dims if d < n and not (part is Part.wholebody and d >= 153)]


def _moving_joints(part: Part, body: BodyModel, poses: Float[Tensor, "N D"], dims: list[int]) -> Tensor:
    """(J,) bool: the body model's joints that move when the masked `dims` of the first pose change."""
    x = poses[:1].detach().clone().repeat(2, 1)
    x[1, dims] += 0.5  # radians: any joint driven by these rotations moves by millimetres or more
    with torch.no_grad():
        joints = body(**part_params(part, x), return_vertices=False).joints
    return (joints[1] - joints[0]).norm(dim=-1) > 1e-5


def _metric_joints(part: Part, body: BodyModel, dims: list[int]) -> tuple[Tensor, list[str]]:
    """Indices into the body model's joints (and their names) for the masked joint dims."""
    if part is Part.hand:
        idx = body.joint_set("hand21")
        return idx, [body.joint_names[i] for i in idx.tolist()]
    spec = PARTS[part]
    slices = spec.slices()
    picked: list[int] = []
    body22 = body.joint_set("body22").tolist()
    b22_names = [body.joint_names[i] for i in body22]
    for key, set_name in _HAND_SETS.items():
        sl = slices.get(key)
        if sl is not None and any(sl.start <= d < sl.stop for d in dims):
            picked += body.joint_set(set_name).tolist()
    for j in sorted({d // 3 for d in dims if d < 63}):
        name = spec.joint_names[j]
        picked.append(body22[b22_names.index(name)])
    ids = list(dict.fromkeys(picked))
    return torch.tensor(ids, device=body.joint_set("body22").device), [body.joint_names[i] for i in ids]
