"""Motion denoising: recover a clean body-pose sequence from noisy body22 joints (spec §7.4, §7.5).

The variable is the body pose of every frame (and, for observations in a world frame, the per-frame global
orientation and translation), optimised in one batch with Adam (lr 0.03) through `engine.optimize.optimize`
on data (mean Euclidean joint error) + temporal smoothness (mean ‖v_f − v_{f+1}‖ over vertices, or joints)
+ the prior (sum over dims / T). The official recipe's outer iterations are `Stage`s with `reset=False`
(one Adam run whose weights change per iteration); the time ranges are `engine.optimize.T_RANGES` entries.

Schedules by noise std (iterations × steps): 0.02 → 3×40 (`motion-0.02`), 0.04 → 3×60 (`motion-0.04`),
0.1 → 3×80 (`motion-0.1`); other levels use the nearest of the three on a log scale (boundaries at 28 mm and
63 mm; 0 → the 0.02 schedule). Weights at outer iteration i: temporal 10(1+i), data 100/(1+i²), prior
0.1(1+i)·sds; start: the prior's own mean pose (`denormalize(0)`, the role of the official SMPL mean pose)
+ N(0, 0.01²).

Partial visibility (§7.5; hidden or NaN joints): hidden joints get no data term, start N(0, 0.01²), weighting
snr, Adam eps 1e-6, weights data 100, prior (1+i)·sds, temporal 20 from outer iteration 2 on, with the
official per-part schedules (legs sds 0.4; left_arm sds 0.2; right_body sds 0.3; anything else sds 0.3),
all 3×80, then Gaussian post-smoothing (window 5, σ 3, the first two and last two frames kept).

Example:
    >>> from dposer_cli import load_prior, load_body
    >>> from dposer_cli.tasks.denoise_motion import denoise_motion
    >>> fit = denoise_motion(load_prior("body"), load_body("body"), noisy_joints, noise_std=0.04)
    >>> fit.params["body_pose"].shape, fit.joints.shape, fit.nfe  # (T, 63), (T, 22, 3), 180
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part, mask_dims
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

BODY22 = ("pelvis", *PARTS[Part.body].joint_names)  # observation joint order: pelvis + the 21 body joints
TORSO = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "spine2",
    "spine3",
    "neck",
)  # rigid-ish, for the rigid init
DEFAULT_NOISE_STD = 0.04  # metres: the paper's headline setting
LR = 0.03
TEMPORAL_VERTICES = 3000  # vertices used by the temporal term (a uniform subsample of the mesh)
TEMPORAL_TERMS = ("auto", "vertices", "joints")


class MotionPrior(PosePrior, Protocol):
    """A pose prior with a mean pose: `denormalize(0)` is where a fully visible sequence starts."""

    def denormalize(self, x: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch D"]: ...


@dataclass(frozen=True)
class MotionSchedule:
    """One optimisation recipe (spec §7.4 / §7.5); `name` is its time range's key in `T_RANGES`."""

    name: str
    iterations: int
    steps_per_iter: int
    partial: bool = False
    sds: float = 1.0  # prior weight factor

    def __post_init__(self) -> None:
        if self.name not in T_RANGES:
            raise ValueError(f"no time range named {self.name!r} in engine.optimize.T_RANGES")

    @property
    def t_range(self) -> tuple[float, float]:
        """(t_min, t_max) of the annealed diffusion time."""
        return T_RANGES[self.name]

    @property
    def steps(self) -> int:
        return self.iterations * self.steps_per_iter

    def stages(self, free: tuple[str, ...] = ("body_pose",)) -> list[Stage]:
        """The outer iterations as `Stage`s sharing one Adam state; their weights are the recipe's."""
        stages = []
        for it in range(self.iterations):
            if self.partial:
                weights = {"temporal": 20.0 if it >= 2 else 0.0, "data": 100.0, "prior": self.sds * (1 + it)}
            else:
                weights = {
                    "temporal": 10.0 * (1 + it),
                    "data": 100.0 / (1 + it**2),
                    "prior": 0.1 * (1 + it) * self.sds,
                }
            stages.append(
                Stage(
                    f"{self.name}/{it + 1}",
                    self.steps_per_iter,
                    dict.fromkeys(free, LR),
                    weights,
                    reset=False,
                    uses_prior=True,
                    eps=1e-6 if self.partial else 1e-8,
                )
            )
        return stages


# official noise levels (metres) → schedule (spec §7.4)
SCHEDULES: dict[float, MotionSchedule] = {
    0.02: MotionSchedule("motion-0.02", 3, 40),
    0.04: MotionSchedule("motion-0.04", 3, 60),
    0.1: MotionSchedule("motion-0.1", 3, 80),
}
# occluded part → schedule (spec §7.5)
PARTIAL_SCHEDULES: dict[str, MotionSchedule] = {
    "legs": MotionSchedule("motion-partial-legs", 3, 80, partial=True, sds=0.4),
    "left_arm": MotionSchedule("motion-partial-left_arm", 3, 80, partial=True, sds=0.2),
    "right_body": MotionSchedule("motion-partial-right_body", 3, 80, partial=True, sds=0.3),
}
PARTIAL_DEFAULT = MotionSchedule("motion-partial", 3, 80, partial=True, sds=0.3)


@dataclass(frozen=True)
class MotionResult:
    """A denoised sequence."""

    params: dict[str, Tensor]  # body_pose (T, 63) [+ global_orient (T, 3), transl (T, 3) with `world`]
    joints: Float[Tensor, "T 22 3"]  # body22 joints of the result, metres
    visible: Bool[Tensor, "T 22"]  # the observations used (given mask ∧ finite ∧ not occluded)
    schedule: MotionSchedule
    nfe: int  # network evaluations of the prior
    temporal_term: str  # "vertices" | "joints"

    @property
    def partial(self) -> bool:
        return not bool(self.visible.all())


def pick_schedule(noise_std: float, occluded: tuple[str, ...] | None = None) -> MotionSchedule:
    """The official schedule for a noise level (nearest on a log scale; 0 → the 0.02 one), or, with
    `occluded` (hidden body mask groups; empty = hidden joints of no named part), the partial one."""
    if occluded is not None:
        name = occluded[0] if len(occluded) == 1 else ""
        return PARTIAL_SCHEDULES.get(PARTS[Part.body].mask_aliases.get(name, name), PARTIAL_DEFAULT)
    if noise_std <= 0:
        return SCHEDULES[0.02]
    return min(SCHEDULES.items(), key=lambda kv: abs(math.log(noise_std / kv[0])))[1]


def hidden_joints(
    occluded: tuple[str, ...] = (), visible: tuple[str, ...] = (), device: torch.device | str = "cpu"
) -> Bool[Tensor, "22"]:
    """Body22 joints hidden by body mask groups: those of `occluded`, or all but the pelvis and `visible`'s.

    Body joint k is body22 joint k + 1. Unknown group names raise `InputError` with a suggestion.
    """
    hidden = torch.zeros(22, dtype=torch.bool, device=device)
    if occluded:
        hidden[sorted({d // 3 + 1 for d in mask_dims(Part.body, list(occluded))})] = True
    elif visible:
        hidden[1:] = True
        hidden[sorted({d // 3 + 1 for d in mask_dims(Part.body, list(visible))})] = False
    return hidden


def denoise_motion(
    prior: MotionPrior,
    body: BodyModel,
    observations: Float[Tensor, "T J 3"],  # J = 22, checked below (an InputError naming the shape)
    visible: Bool[Tensor, "T 22"] | Bool[Tensor, "22"] | None = None,
    *,
    noise_std: float = DEFAULT_NOISE_STD,
    occluded: tuple[str, ...] = (),
    world: bool = False,
    temporal: str = "auto",
    schedule: MotionSchedule | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MotionResult:
    """Denoise body22 joint observations (metres) into body poses (spec §7.4, §7.5).

    Args:
        prior: a body prior (`DPoserPrior` or a baseline of `engine.baselines`).
        body: the body model whose body22 joints the observations are.
        observations: (T, 22, 3) joints, T ≥ 2; NaN joints count as hidden.
        visible: which joints are observed, per frame or for all frames (default: all finite ones).
        noise_std: expected noise level in metres; picks the schedule of a fully visible sequence.
        occluded: body mask groups hidden from the observations (e.g. `("legs",)`); picks the partial schedule.
        world: the observations are in their own world frame: also fit per-frame global orientation and
            translation (started by a rigid fit of the torso); otherwise they are in the body frame.
        temporal: "vertices" (spec), "joints", or "auto" (vertices when the body model has a mesh).
        schedule: a recipe to use instead of the one picked from `noise_std` / the hidden joints.
        generator: the noise source of the start pose and the prior.
        progress: called with (steps done, total steps).

    Raises:
        InputError: wrong shapes, fewer than 2 frames, every joint hidden, a non-body prior, an unknown
            temporal term or mask group, or a non-finite result.
    """
    if prior.part is not Part.body:
        raise InputError(f"the prior is for part {prior.part.value}; motion denoising needs a body prior")
    if temporal not in TEMPORAL_TERMS:
        raise InputError(f"unknown temporal term {temporal!r} ({', '.join(TEMPORAL_TERMS)})")
    if observations.ndim != 3 or observations.shape[1:] != (22, 3):
        raise InputError(
            f"observations have shape {tuple(observations.shape)}; expected (T, 22, 3) in metres"
        )
    frames = observations.shape[0]
    if frames < 2:
        raise InputError(
            f"the sequence has {frames} frame; denoising needs at least 2 "
            "(the temporal term compares neighbouring frames)"
        )
    device = observations.device
    vis = ~torch.isnan(observations).any(-1)
    if visible is not None:
        vis = vis & visible.to(device=device, dtype=torch.bool).expand(frames, 22)
    if occluded:
        vis = vis & ~hidden_joints(occluded, device=device)
    if not bool(vis.any()):
        raise InputError("every joint is occluded; nothing to fit")
    obs = torch.where(vis[..., None], observations, torch.zeros((), device=device, dtype=observations.dtype))
    partial = not bool(vis.all())
    if schedule is None:
        schedule = pick_schedule(noise_std, occluded if partial else None)
    use_vertices = temporal == "vertices" or (temporal == "auto" and body.faces is not None)

    b22 = body.joint_set("body22")
    with torch.no_grad():
        start = torch.randn(frames, 63, generator=generator, device=device) * 0.01
        if not schedule.partial:  # the prior's mean pose (role of the SMPL mean pose, see module docstring)
            start = start + prior.denormalize(torch.zeros(63, device=device))
    params = {"body_pose": start.clone()}
    if world:
        params["global_orient"], params["transl"] = rigid_init(body, start, obs, vis)
    weight = vis.to(obs.dtype)

    weights = StageWeights(lambda w: (w["data"], w["temporal"], w["prior"]), device)
    subset = temporal_vertices(body) if use_vertices else None

    def loss(p: dict[str, Tensor], step: Step) -> Tensor:
        w, wt = step.stage.weights, weights(step.stage)
        out = body(
            body_pose=p["body_pose"],
            global_orient=p.get("global_orient"),
            transl=p.get("transl"),
            return_vertices=subset is not None,
            vertex_ids=subset,
        )
        # mean over frames and the 22 joints (hidden ones contribute 0, as the official 1e-20 mask)
        data = ((out.joints[:, b22] - obs).norm(dim=-1) * weight).mean()
        value = wt[0] * data
        if w["temporal"]:  # (a zero weight skips the term: the partial recipe's first iterations)
            # contiguous: sparse skinning returns vertices frame-minor, where a norm over xyz runs ~8× slower
            pts = out.joints if out.vertices is None else out.vertices.contiguous()
            value = value + wt[1] * (pts[1:] - pts[:-1]).norm(dim=-1).mean()
        return value + wt[2] * step.prior(p["body_pose"]).mean()  # prior: sum over dims / T

    weighting = "snr" if schedule.partial else "none"
    run = optimize(
        params,
        schedule.stages(tuple(params)),
        loss,
        prior=PriorSchedule(prior, schedule.t_range, weighting=weighting, generator=generator),
        progress=progress,
        plan=PriorPlan(
            weights.inputs, lambda p, step: p["body_pose"], lambda step: bool(step.stage.weights["temporal"])
        ),
    )
    if schedule.partial:
        params["body_pose"] = gaussian_smooth(params["body_pose"], window=5, sigma=3.0, keep=2)
    if not torch.isfinite(params["body_pose"]).all():
        raise InputError("denoising produced non-finite poses; check the input joints (units must be metres)")
    with torch.no_grad():
        joints = body(
            body_pose=params["body_pose"],
            global_orient=params.get("global_orient"),
            transl=params.get("transl"),
            return_vertices=False,
        ).joints[:, b22]
    return MotionResult(params, joints, vis, schedule, run.nfe, "vertices" if use_vertices else "joints")


def rigid_init(
    body: BodyModel,
    pose: Float[Tensor, "T 63"],
    observations: Float[Tensor, "T 22 3"],
    visible: Bool[Tensor, "T 22"],
) -> tuple[Float[Tensor, "T 3"], Float[Tensor, "T 3"]]:
    """Per-frame global orientation and translation that place `pose` on the observations.

    Orientation: weighted Kabsch of the visible torso joints (`TORSO`; identity where fewer than 3 are
    visible); translation: the mean offset of all visible joints. Hidden observations must be finite.
    """
    b22 = body.joint_set("body22")
    torso = torch.tensor([BODY22.index(n) for n in TORSO], device=observations.device)
    eye = torch.eye(3, device=observations.device, dtype=observations.dtype)
    with torch.no_grad():
        tmpl = body(body_pose=pose, return_vertices=False).joints[:, b22][:, torso]  # (T, K, 3)
        w = visible[:, torso].to(observations.dtype)
        ok = (w.sum(1) >= 3)[:, None, None]
        rot, _, _ = rigid_registration(tmpl, observations[:, torso], torch.where(ok[..., 0], w, 1.0))
        orient = matrix_to_axis_angle(torch.where(ok, rot, eye))
        placed = body(body_pose=pose, global_orient=orient, return_vertices=False).joints[:, b22]
        vis = visible.to(observations.dtype)[..., None]
        transl = ((observations - placed) * vis).sum(1) / vis.sum(1).clamp_min(1.0)
    return orient.clone(), transl.clone()


def gaussian_smooth(
    x: Float[Tensor, "T D"], *, window: int = 5, sigma: float = 3.0, keep: int = 2
) -> Float[Tensor, "T D"]:
    """Gaussian filter along time (dim 0) with edge padding; the first and last `keep` frames are kept."""
    if x.shape[0] <= 2 * keep:
        return x
    half = window // 2
    k = torch.exp(-0.5 * (torch.arange(-half, half + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    padded = torch.cat([x[:1].expand(half, -1), x, x[-1:].expand(half, -1)], 0)
    smooth = torch.stack([padded[i : i + x.shape[0]] for i in range(window)], 0)  # (window, T, D)
    out = (k[:, None, None] * smooth).sum(0)
    out[:keep], out[-keep:] = x[:keep], x[-keep:]
    return out


def motion_metrics(
    obs: Float[Tensor, "T 22 3"],
    pred: Float[Tensor, "T 22 3"],
    gt: Float[Tensor, "T 22 3"],
    visible: Bool[Tensor, "T 22"],
    partial: bool,
) -> dict[str, float]:
    """MPJPE in mm over frames × joints (spec §7.4 reports cm; ×10 to compare): of the observations
    (visible joints), of the result, and with `partial` of its visible and hidden joints."""
    vis = visible.to(obs.dtype)
    err_in = torch.where(visible, (obs - gt).norm(dim=-1), 0.0)  # hidden observations may be NaN
    err = (pred - gt).norm(dim=-1)
    out = {"mpjpe_input_mm": float(err_in.sum() / vis.sum() * 1000), "mpjpe_mm": float(err.mean() * 1000)}
    if partial:
        out["mpjpe_visible_mm"] = float((err * vis).sum() / vis.sum() * 1000)
        hid = 1 - vis
        out["mpjpe_occluded_mm"] = float((err * hid).sum() / hid.sum().clamp_min(1) * 1000)
    return out


def temporal_vertices(body: BodyModel) -> Tensor | None:
    """The vertices of the smoothness term: every k-th one (≈ TEMPORAL_VERTICES; the mean over a uniform
    subsample estimates the mean over all vertices at a fraction of the cost), None when the model has no
    mesh. Only these are skinned (`BodyModel` `vertex_ids`): the whole mesh cost ~8× more per step."""
    with torch.no_grad():
        mesh = body(return_vertices=True).vertices
    if mesh is None:
        return None
    stride = max(1, mesh.shape[-2] // TEMPORAL_VERTICES)
    return torch.arange(0, mesh.shape[-2], stride, device=mesh.device)
