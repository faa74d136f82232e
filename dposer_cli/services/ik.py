"""`dposer ik`: hand and face inverse kinematics from 3D keypoints with the DPoser prior (spec §7.9, §7.10).

All N targets are solved in one batched Adam optimisation. The data term is the official masked MSE (mean
over N·J·3 entries, hidden joints contribute zero); the prior term is the DPoser loss at a truncated,
annealed diffusion time, or an L2 / no prior for comparison.

Joint orders (targets file `joints` (N, J, 3), metres):
    hand  hand21  — OpenPose hand: wrist, thumb1–3, thumb tip, index1–3, tip, middle…, ring…, pinky1–3, tip
    face  flame73 — FLAME: root, neck, jaw, left eye, right eye, 51 landmarks, 17 contour landmarks
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.core.rotations import matrix_to_axis_angle
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.poses import write_poses
from dposer_cli.metrics import mpjpe

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# (params, t) -> scalar prior loss; t is the annealed diffusion time of this step
PriorTerm = Callable[[Mapping[str, Tensor], float], Tensor]

PRIORS = ("dposer", "none", "l2")
HAND_TYPES = ("full", "sparse", "fingertip", "partial", "noisy")
FACE_TYPES = ("full", "noisy", "left_face", "right_face", "half_face")

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
    """Loss weights of one setting: data·(1+it if grows) and prior/(1+it if decays) × scale (spec §7.9–7.10)."""

    t_range: tuple[float, float]  # (t_min, t_max) of the truncated linear schedule
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


@dataclass(frozen=True, slots=True)
class Variable:
    """A free parameter of the solve: npz key, size, Adam learning rate, init std (0 = zeros)."""

    key: str
    dim: int
    lr: float
    init_std: float


@dataclass(frozen=True, slots=True)
class PartIK:
    """Everything part-specific about IK (looked up, never branched on)."""

    body: str  # load_body kind
    joint_set: str
    num_joints: int
    types: tuple[str, ...]
    variables: tuple[Variable, ...]
    known: tuple[tuple[str, int], ...]  # parameters taken from the targets file and kept fixed
    gt_keys: tuple[tuple[str, int], ...]  # ground-truth parameter keys (evaluation mode)
    priors: tuple[tuple[Part, tuple[str, ...]], ...]  # prior part ← concatenated variable keys
    weighting: str  # DPoser weight w(t), spec §6.1
    per_dim: bool  # reduction: mean over B·D (True) or sum/B (False)
    steps: int  # official 10 × steps_per_iter
    noise_std: float  # default --noise-std
    masked: Weights
    noisy: Weights


IK: Mapping[Part, PartIK] = {
    Part.hand: PartIK(
        body="hand", joint_set="hand21", num_joints=21, types=HAND_TYPES,
        variables=(Variable("hand_pose", 45, 0.05, 0.01),),
        known=(("global_orient", 3), ("betas", 10)),
        gt_keys=(("hand_pose", 45), ("global_orient", 3), ("betas", 10)),
        priors=((Part.hand, ("hand_pose",)),), weighting="none", per_dim=True,
        steps=300, noise_std=0.002,
        masked=Weights((0.05, 0.20), data=100.0, data_grows=True, prior=0.1, prior_decays=True),
        noisy=Weights((0.05, 0.15), data=10.0, data_grows=False, prior=0.1, prior_decays=False,
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
        masked=Weights((0.05, 0.20), data=100.0, data_grows=True, prior=0.001, prior_decays=True, scale=0.1),
        noisy=Weights((0.05, 0.20), data=500.0, data_grows=False, prior=0.001, prior_decays=True,
                      by_noise={0.0: 0.1, 0.001: 0.5, 0.002: 1.0, 0.005: 2.0}),
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Schedule:
    """Step count, outer iterations and weights of one solve."""

    steps: int
    weights: Weights
    noise_std: float = 0.0

    @property
    def iterations(self) -> int:
        return min(10, self.steps)  # official: 10 outer iterations; weights change once per iteration

    def iteration(self, step: int) -> int:
        return step * self.iterations // self.steps

    def data_weight(self, step: int) -> float:
        w = self.weights
        return w.data * (1 + self.iteration(step)) if w.data_grows else w.data

    def prior_weight(self, step: int) -> float:
        w = self.weights
        base = w.prior / (1 + self.iteration(step)) if w.prior_decays else w.prior
        return base * w.prior_scale(self.noise_std)

    def t(self, step: int) -> float:
        return DPoserPrior.time_at(step, self.steps, self.weights.t_range)


def make_schedule(part: Part, ik_type: str, *, noise_std: float | None = None, steps: int | None = None) -> Schedule:
    """The official weights / time range / step count for `part` and `ik_type` (spec §7.9, §7.10)."""
    spec = IK[part]
    noisy = ik_type == "noisy"
    return Schedule(steps=steps or spec.steps, weights=spec.noisy if noisy else spec.masked,
                    noise_std=(spec.noise_std if noise_std is None else noise_std) if noisy else 0.0)


# ------------------------------------------------------------------------------------------------ the problem
@dataclass
class IKProblem:
    """Targets of one batched solve. `gt` holds ground-truth parameters/joints in evaluation mode."""

    part: Part
    targets: Tensor  # (N, J, 3) metres; hidden entries may hold anything (they never enter the loss)
    visible: Tensor  # (N, J) bool
    known: dict[str, Tensor] = field(default_factory=dict)  # fixed parameters (hand: global_orient, betas)
    gt: dict[str, Tensor] | None = None  # parameters + "joints" (N, J, 3) + "vertices" when available

    @property
    def n(self) -> int:
        return self.targets.shape[0]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"targets file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"targets file {path} is not a readable .npz ({str(exc).splitlines()[0]})") from None


def _array(data: Mapping[str, np.ndarray], key: str, path: Path, dim: int | None, n: int | None,
           *, up_to: bool = False) -> np.ndarray:
    arr = np.asarray(data[key])
    if arr.ndim == 1 and dim is not None and n is None:
        arr = arr[None]
    ok = arr.ndim == 2 and (n is None or arr.shape[0] == n) and (
        dim is None or arr.shape[1] == dim or (up_to and 0 < arr.shape[1] <= dim))
    if not ok or not np.issubdtype(arr.dtype, np.number):
        want = f"(N, {'≤' if up_to else ''}{dim})" if n is None else f"({n}, {'≤' if up_to else ''}{dim})"
        raise InputError(f"{path}: {key} has shape {arr.shape}; expected {want}")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: {key} contains NaN or infinite values")
    return arr.astype(np.float32)


def load_problem(path: Path, part: Part, body: BodyModel, device: torch.device) -> IKProblem:
    """Read a targets file: `joints` (N,J,3) [+ `visible` (N,J)] or ground-truth parameters (evaluation).

    Raises:
        InputError: missing/unreadable file, wrong shapes, NaNs at visible joints, no usable keys.
    """
    spec = IK[part]
    data = _read_npz(path)
    known_keys = dict(spec.known)
    if "joints" in data:
        joints = np.asarray(data["joints"])
        if joints.ndim != 3 or joints.shape[1:] != (spec.num_joints, 3) or joints.shape[0] == 0:
            raise InputError(f"{path}: joints has shape {joints.shape}; expected (N, {spec.num_joints}, 3) for "
                             f"--part {part.value} ({spec.joint_set} joint order)")
        if not np.issubdtype(joints.dtype, np.number):
            raise InputError(f"{path}: joints must be numbers, got dtype {joints.dtype}")
        n = joints.shape[0]
        if "visible" in data:
            visible = np.asarray(data["visible"])
            if visible.shape != (n, spec.num_joints):
                raise InputError(f"{path}: visible has shape {visible.shape}; expected ({n}, {spec.num_joints})")
            visible = visible.astype(bool)
        else:
            visible = np.ones((n, spec.num_joints), dtype=bool)
        bad = ~np.isfinite(joints).all(-1) & visible
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(f"{path}: joints has NaN or infinite values at sample {i}, joint {j} "
                             f"({int(bad.sum())} visible joint(s) in all)",
                             hint="fix the values or mark those joints False in `visible`")
        known = {k: torch.as_tensor(_array(data, k, path, d, n, up_to=k == "betas"), device=device)
                 for k, d in known_keys.items() if k in data}
        targets = torch.as_tensor(np.nan_to_num(joints.astype(np.float32)), device=device)
        return IKProblem(part, targets, torch.as_tensor(visible, device=device), known)

    # evaluation mode: ground-truth parameters → targets through the body model
    gt_dims = dict(spec.gt_keys)
    params: dict[str, np.ndarray] = {}
    if "poses" in data:  # the shared reference files: hand (N,45), face (N,103 = jaw 3 + expression 100)
        pose_keys = spec.priors[0][1]
        width = sum(gt_dims[k] for k in pose_keys)
        poses = _array(data, "poses", path, width, None)
        start = 0
        for k in pose_keys:
            params[k] = poses[:, start:start + gt_dims[k]]
            start += gt_dims[k]
    for k, d in gt_dims.items():
        if k in data and k not in params:
            params[k] = _array(data, k, path, d, None, up_to=k in ("betas", "expression"))
    if not params:
        keys = ", ".join(["joints", "poses", *gt_dims])
        raise InputError(f"{path} holds none of the keys {keys} (found: {', '.join(data) or 'nothing'})",
                         hint=f"give `joints` (N, {spec.num_joints}, 3) in {spec.joint_set} order, or "
                              "ground-truth parameters")
    sizes = {v.shape[0] for v in params.values()}
    if len(sizes) != 1 or 0 in sizes:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in params.items())
        raise InputError(f"{path}: parameter arrays disagree on N or are empty: {shapes}")
    return problem_from_params(part, body, {k: torch.as_tensor(v, device=device) for k, v in params.items()})


def problem_from_params(part: Part, body: BodyModel, params: Mapping[str, Tensor]) -> IKProblem:
    """Evaluation problem: all joints of the posed ground truth visible; the hand's orient/betas stay known."""
    spec = IK[part]
    gt = dict(params)
    with torch.no_grad():
        out = body(**gt, return_vertices=True)
    gt["joints"] = out.joints[..., body.joint_set(spec.joint_set), :]
    if out.vertices is not None:
        gt["vertices"] = out.vertices
    n, dev = gt["joints"].shape[0], gt["joints"].device
    known = {k: gt[k] for k, _ in spec.known if k in gt}
    return IKProblem(part, gt["joints"].clone(), torch.ones(n, spec.num_joints, dtype=torch.bool, device=dev),
                     known, gt)


def apply_type(problem: IKProblem, ik_type: str, *, noise_std: float | None = None,
               generator: torch.Generator | None = None) -> IKProblem:
    """Hide joints / add noise for one official setting, with a seeded mask drawn per sample.

    Raises:
        InputError: a type that does not exist for this part, or a sample left with no visible joint.
    """
    spec = IK[problem.part]
    if ik_type not in spec.types:
        raise InputError(f"--type {ik_type} is not available for --part {problem.part.value}"
                         f"{suggest(ik_type, list(spec.types))}", hint="types: " + ", ".join(spec.types))
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
        std = spec.noise_std if noise_std is None else noise_std
        targets = targets + std * torch.randn(targets.shape, generator=generator, device=dev)
    visible = problem.visible & ~hide
    empty = (~visible.any(-1)).nonzero()
    if len(empty):
        raise InputError(f"sample {int(empty[0])} has no visible joints after --type {ik_type} "
                         f"({len(empty)} sample(s) in all)", hint="mark at least one joint visible per sample")
    return replace(problem, targets=targets, visible=visible)


# -------------------------------------------------------------------------------------------------- priors
def prior_term(kind: str, part: Part, priors: Mapping[Part, DPoserPrior] | None = None,
               generator: torch.Generator | None = None) -> PriorTerm:
    """The prior loss of a solve: "dposer" (spec §6.1 with the call site's weight/reduction), "l2" or "none".

    "l2" is 0.5·‖θ‖² of the raw parameters (axis-angle / coefficients; zero = mean hand / neutral face) with
    the DPoser term's reduction, so both baselines share the weight schedule.
    """
    spec = IK[part]

    def reduce(per_sample: Tensor, dim: int) -> Tensor:
        return per_sample.mean() / dim if spec.per_dim else per_sample.mean()

    if kind == "none":
        return lambda params, t: next(iter(params.values())).new_zeros(())
    if kind == "l2":
        def l2(params: Mapping[str, Tensor], t: float) -> Tensor:
            terms = [torch.cat([params[k] for k in keys], -1) for _, keys in spec.priors]
            return sum(reduce(0.5 * (x**2).sum(-1), x.shape[-1]) for x in terms)  # type: ignore[return-value]

        return l2
    if kind == "dposer":
        if priors is None:
            raise ValueError("the dposer prior term needs loaded priors")

        def dposer(params: Mapping[str, Tensor], t: float) -> Tensor:
            total = 0.0
            for p, keys in spec.priors:
                x = torch.cat([params[k] for k in keys], -1)
                total = total + reduce(priors[p].loss(x, t, weighting=spec.weighting, generator=generator),
                                       x.shape[-1])
            return total  # type: ignore[return-value]

        return dposer
    raise InputError(f"unknown --prior {kind!r}{suggest(kind, list(PRIORS))}", hint="priors: " + ", ".join(PRIORS))


def load_priors(part: Part, checkpoint: Path | None = None, *, shape_checkpoint: Path | None = None,
                normalizer: Path | None = None, device: torch.device | str = "cpu") -> dict[Part, DPoserPrior]:
    """The DPoser prior(s) a part's IK needs (face: the pose/expression prior and the shape prior)."""
    out = {}
    for i, (p, _) in enumerate(IK[part].priors):
        ckpt = checkpoint if i == 0 else shape_checkpoint
        out[p] = DPoserPrior.load(p, ckpt, normalizer=normalizer if i == 0 else None, device=device)
    return out


# --------------------------------------------------------------------------------------------------- solving
def _weighted_kabsch(src: Tensor, dst: Tensor, w: Tensor) -> Tensor:
    """Per-sample rotation R minimising Σ w‖R(src − c_src) − (dst − c_dst)‖²; (N,J,3),(N,J,3),(N,J) → (N,3,3)."""
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    cs = (w[..., None] * src).sum(-2, keepdim=True)
    cd = (w[..., None] * dst).sum(-2, keepdim=True)
    h = ((src - cs) * w[..., None]).transpose(-1, -2) @ (dst - cd)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), torch.where(d == 0, 1.0, d)], -1))
    return vt.transpose(-1, -2) @ fix @ u.transpose(-1, -2)


def solve(problem: IKProblem, body: BodyModel, prior: PriorTerm, schedule: Schedule, *,
          solve_orient: bool = False, generator: torch.Generator | None = None,
          progress: Progress | None = None) -> dict[str, Tensor]:
    """Batched Adam IK (spec §7.9–7.10): returns the recovered parameters and `joints` (N,J,3).

    With `solve_orient`, `global_orient` and `transl` are free too, initialised by a weighted Kabsch fit of
    the initial pose's visible joints to the targets (the official setting fixes them at zero).
    """
    spec = IK[problem.part]
    n, dev = problem.n, problem.targets.device
    jset = body.joint_set(spec.joint_set)
    mask = problem.visible[..., None].to(problem.targets.dtype)
    targets = torch.where(problem.visible[..., None], problem.targets, torch.zeros_like(problem.targets))
    fixed = dict(problem.known)
    free: dict[str, Tensor] = {}
    groups = []
    for v in spec.variables:
        init = (v.init_std * torch.randn(n, v.dim, generator=generator, device=dev) if v.init_std
                else torch.zeros(n, v.dim, device=dev))
        free[v.key] = init.requires_grad_()
        groups.append({"params": [free[v.key]], "lr": v.lr})

    def joints_of(params: Mapping[str, Tensor]) -> Tensor:
        return body(**params, return_vertices=False).joints[..., jset, :]

    if solve_orient:
        fixed.pop("global_orient", None)
        with torch.no_grad():
            rest = joints_of({**fixed, **free})
            w = problem.visible.to(rest.dtype)
            orient = matrix_to_axis_angle(_weighted_kabsch(rest, targets, w))
            rotated = joints_of({**fixed, **free, "global_orient": orient})
            transl = ((targets - rotated) * w[..., None]).sum(-2) / w.sum(-1, keepdim=True)
        free["global_orient"] = orient.clone().requires_grad_()
        free["transl"] = transl.clone().requires_grad_()
        groups += [{"params": [free["global_orient"]], "lr": 0.05}, {"params": [free["transl"]], "lr": 0.01}]
    else:
        with torch.no_grad():
            start = joints_of({**fixed, **free})
            far = ((start - targets).norm(dim=-1) * problem.visible).sum() / problem.visible.sum()
        if far > 0.1:
            log.warning("targets are %.0f mm from the model on average: are they in the model frame "
                        "(%s, wrist/root at the origin)? --solve-orient also solves rotation and translation",
                        1000 * float(far), spec.joint_set)

    opt = torch.optim.Adam(groups, lr=0.05, betas=(0.9, 0.999))
    numel = targets.numel()
    for step in range(schedule.steps):
        opt.zero_grad(set_to_none=True)
        params = {**fixed, **free}
        # official data term: mean over all N·J·3 entries, hidden ones are zero on both sides
        data = ((joints_of(params) - targets) ** 2 * mask).sum() / numel
        loss = schedule.data_weight(step) * data
        w_prior = schedule.prior_weight(step)
        if w_prior:
            loss = loss + w_prior * prior(free, schedule.t(step))
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, schedule.steps)
    with torch.no_grad():
        params = {k: v.detach() for k, v in {**fixed, **free}.items()}
        params["joints"] = joints_of(params)
    for key, dim in spec.gt_keys:  # a complete parameter set: fixed-at-zero ones too (e.g. global_orient)
        params.setdefault(key, torch.zeros(n, dim, device=dev))
    return params


# -------------------------------------------------------------------------------------------------- metrics
def evaluate(problem: IKProblem, body: BodyModel, result: Mapping[str, Tensor]) -> dict[str, float]:
    """Errors in mm (paper Table 4): visible / occluded / all joints vs ground truth, MPVPE; and the fit to the
    (possibly noisy) targets on visible joints. Per-sample means, then averaged over samples."""
    vis = problem.visible
    pred = result["joints"]
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
        keys = {k for k, _ in IK[problem.part].gt_keys} | {"transl"}
        with torch.no_grad():
            verts = body(**{k: v for k, v in result.items() if k in keys}, return_vertices=True).vertices
        if verts is not None:
            out["mpvpe_mm"] = 1000 * float(mpjpe(verts, problem.gt["vertices"]).mean())
    return out


# ---------------------------------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class IKRequest:
    part: Part
    targets: Path
    out: Path = Path("dposer_out")
    ik_type: str = "full"
    noise_std: float | None = None
    steps: int | None = None
    prior: str = "dposer"
    solve_orient: bool = False
    body_model: Path | None = None
    checkpoint: Path | None = None
    shape_checkpoint: Path | None = None
    normalizer: Path | None = None
    device: str = "auto"
    seed: int = 0


def _validate(req: IKRequest) -> None:
    if req.part not in IK:
        raise InputError(f"dposer ik supports --part hand or face, not {req.part.value}")
    if req.prior not in PRIORS:
        raise InputError(f"unknown --prior {req.prior!r}{suggest(req.prior, list(PRIORS))}",
                         hint="priors: " + ", ".join(PRIORS))
    types = IK[req.part].types
    if req.ik_type not in types:
        raise InputError(f"--type {req.ik_type} is not available for --part {req.part.value}"
                         f"{suggest(req.ik_type, list(types))}", hint="types: " + ", ".join(types))
    if req.steps is not None and req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    if req.noise_std is not None:
        if req.ik_type != "noisy":
            raise InputError(f"--noise-std applies to --type noisy only (got --type {req.ik_type})")
        if not (req.noise_std >= 0 and np.isfinite(req.noise_std)):
            raise InputError(f"--noise-std must be a finite number ≥ 0 m (got {req.noise_std})")


def run(req: IKRequest, progress: Progress | None = None) -> Result:
    """Solve all targets of `req.targets` in one batch and write `req.out/ik.npz`."""
    t0 = time.perf_counter()
    _validate(req)
    spec = IK[req.part]
    device = resolve_device(req.device)
    body = load_body(spec.body, req.body_model, device)  # a face without FLAME raises MissingAssetError here
    problem = load_problem(req.targets, req.part, body, device)
    out_dir = ensure_out_dir(req.out)
    gen = make_generator(req.seed, device)
    problem = apply_type(problem, req.ik_type, noise_std=req.noise_std, generator=gen)
    priors = load_priors(req.part, req.checkpoint, shape_checkpoint=req.shape_checkpoint,
                         normalizer=req.normalizer, device=device) if req.prior == "dposer" else {}
    sources = [p.source for p in priors.values()]
    for p in priors.values():
        log.info("using %s prior (%s)", p.part.value, p.source)
        p.nfe = 0
    schedule = make_schedule(req.part, req.ik_type, noise_std=req.noise_std, steps=req.steps)
    t_solve = time.perf_counter()
    result = solve(problem, body, prior_term(req.prior, req.part, priors, gen), schedule,
                   solve_orient=req.solve_orient, generator=gen, progress=progress)
    solve_seconds = time.perf_counter() - t_solve
    if not all(torch.isfinite(v).all() for v in result.values()):
        raise InputError("the IK solve produced non-finite values; check the targets' units (metres)")
    metrics = evaluate(problem, body, result)
    metrics["solves_per_second"] = problem.n / max(solve_seconds, 1e-9)

    # pose keys of the part (hand_pose | jaw_pose + expression) via the pose-file writer; the rest as extras
    pose_keys = spec.priors[0][1]
    poses = torch.cat([result[k] for k in pose_keys], -1).cpu().numpy()
    extras = {k: v.cpu().numpy() for k, v in result.items() if k not in pose_keys}
    extras["target_joints"] = problem.targets.cpu().numpy()
    extras["visible"] = problem.visible.cpu().numpy()
    path = write_poses(out_dir / "ik.npz", req.part, poses, extras=extras)
    nfe = sum(p.nfe for p in priors.values())
    summary = (f"solved {problem.n} {req.part.value} IK target set(s) (--type {req.ik_type}, prior {req.prior}, "
               f"{schedule.steps} steps, {nfe} network evaluations) with the {body.kind} model")
    return Result(
        command="ik",
        outputs={"ik": path},
        metrics=metrics,
        info={"part": req.part.value, "type": req.ik_type, "n": problem.n, "prior": req.prior,
              "checkpoint": sources, "body_model": body.kind, "joint_order": spec.joint_set,
              "steps": schedule.steps, "nfe": nfe, "noise_std": schedule.noise_std if req.ik_type == "noisy" else None,
              "solve_orient": req.solve_orient, "evaluation": problem.gt is not None, "seed": req.seed,
              "device": str(device)},
        seconds=time.perf_counter() - t0,
        lines=[summary],
    )
