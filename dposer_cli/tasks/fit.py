"""Fitting a body, hand or whole-body model to 2D keypoints with a pose prior (spec §7.6–§7.8).

Tensors in, tensors out (no paths, no files): `fit(body, prior, FitInput(...), part=...)` fits every row
(person) of the batch in ONE batched optimisation through `engine.optimize.optimize` — per-row focal
length and principal point, staged Adam (camera translation → orientation → pose with the prior annealed
across the pose stages), per-row choice between hypotheses (the side-view flip for bodies, the two
mirror-ambiguous palm orientations for hands) and an optional temporal pass for video tracks.

    from dposer_cli import load_body, load_prior
    from dposer_cli.tasks.fit import FitInput, fit
    inputs = FitInput.for_image(keypoints, image_size=(1200, 1600))  # (B, 135, 3) OpenPose-135: px, px, conf
    result = fit(load_body("body"), load_prior("body"), inputs, steps=100)
    result.params["body_pose"], result.joints, result.reprojection_px        # one row per person

Everything part-specific is one row of `FIT_SPECS` (looked up, never branched on).

Differences from the official code (spec §14.1): the side-view second pass is chosen per person, not
for the whole batch; x/y of the initial translation come from the keypoints (not 0); the pose starts
from the prior's mean pose (the official SMPL mean-pose file is not redistributed); hands get a
closed-form orientation init instead of the mean MANO orientation.
"""

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies.base import BodyModel, BodyOutput, step_inputs
from dposer_cli.bodies.kinematics import batch_rodrigues
from dposer_cli.core.errors import DposerError, InputError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.optimize import (
    T_RANGES,
    PosePrior,
    PriorPlan,
    PriorSchedule,
    Stage,
    StageWeights,
    Step,
    angle_prior,
    best_rows,
    gmof,
    optimize,
    prior_steps,
    temporal_smoothness,
)
from dposer_cli.io.keypoints import HAND21_EDGES, OPENPOSE25_EDGES

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

SIGMA_PX = 100.0  # GMoF scale (spec §7.6)
DEPTH_WEIGHT = 100.0  # camera stages: 100²·(tz − tz_anchor)² (spec §7.6–§7.8)
# shoulders closer than SIDE_VIEW_PX in the image (or than SIDE_VIEW_RATIO·torso) → try both facings
SIDE_VIEW_PX = 25.0
SIDE_VIEW_RATIO = 0.35
TEMPORAL_WEIGHT = 1.0e4  # video temporal pass: per-metre weight of the joint-acceleration term
CONF_THRESHOLD = 0.2  # detector keypoints below this confidence are ignored
PRIOR_WEIGHTING = "snr2"  # DPoser weight w(t) of the fitting tasks (spec §6.1)

# OpenPose-25 indices (spec §7.6)
OP_RSHOULDER, OP_LSHOULDER, OP_RHIP, OP_LHIP, OP_NECK, OP_MIDHIP = 2, 5, 9, 12, 1, 8


# ------------------------------------------------------------------------------------ the per-part table
@dataclass(frozen=True, slots=True)
class KeypointGroup:
    """A block of the keypoint layout and the model joints it corresponds to."""

    name: str  # "body", "lhand", "rhand", "face", "hand"
    joint_set: str  # model joint set (BodyModel.joint_set)
    start: int  # first keypoint of the block in the read layout
    size: int
    edges: tuple[tuple[int, int], ...] = ()  # skeleton drawn on overlays, block-local indices
    optional: bool = False  # skipped (with a log line) when the model has no such joints


@dataclass(frozen=True, slots=True)
class RelativeTerm:
    """Root-relative keypoint term of a group: scale·(w[weight][stage]² if weight else 1)·Σ c²·GMoF(Δ)."""

    group: str
    weight: str | None
    scale: float


@dataclass(frozen=True, slots=True)
class FitSpec:
    """Everything part-specific about fitting (spec §7.6 body, §7.7 hand, §7.8 whole body)."""

    body: str  # load_body kind
    keypoint_layout: str  # the layout the keypoints must be in ("openpose135" | "hand21")
    keypoint_what: str  # ... in words, for errors
    layout_hint: str  # the fix when they are not
    groups: tuple[KeypointGroup, ...]
    core_joints: str  # joint set reported as `FitResult.joints`
    smooth_joints: int  # first native model joints of the temporal acceleration term
    pose_keys: tuple[tuple[str, int], ...]  # fitted pose parameters and their widths
    face_keys: bool  # also fit jaw_pose and expression when the model has expressions (SMPL-X)
    min_keypoints: int  # confident keypoints a person needs
    counted_keypoints: int | None  # only the first n keypoints count towards min_keypoints (None: all)
    camera_joints: tuple[int, ...]  # keypoints of the camera stages (torso / palm)
    depth_edges: tuple[tuple[int, int], ...]  # keypoint pairs whose image length gives the initial depth
    ignored: tuple[int, ...]  # keypoints left out of the data term (detectors place them elsewhere)
    conf_scale: tuple[tuple[int, float], ...]  # keypoint → confidence multiplier
    orientation: str  # "upright": facing the camera (flipped if seen from behind); "palm": two palm solutions
    palm: tuple[int, ...]  # keypoints of the palm plane ("palm" orientation)
    side_view: bool  # fit both facings of persons seen from the side
    translation_lr: float  # camera stage 1
    orientation_lrs: Mapping[str, float]  # camera stage 2
    stage_prefix: str
    pose_lr: float  # every free parameter of the pose stages
    last_stage_lrs: Mapping[str, float]  # overrides of the last pose stage
    weights: Mapping[str, tuple[float, ...]]  # per pose stage: prior, shape, angle, hands, face (squared)
    absolute_weight: float  # weight of the absolute reprojection term
    group_weights: Mapping[str, str]  # keypoint group → per-stage weight scaling its confidences
    relative: tuple[RelativeTerm, ...]
    temporal_weights: Mapping[str, float]  # the temporal pass (its data term uses the last pose stage's)


# per-stage weights (spec §7.6 body, §7.7 hand, §7.8 whole body); prior/shape/angle weights are squared
BODY_WEIGHTS = {
    "prior": (50.0, 20.0, 10.0, 5.0, 2.0),
    "shape": (50.0, 20.0, 10.0, 5.0, 2.0),
    "angle": (150.0, 50.0, 30.0, 15.0, 5.0),
}


def _body_fit_spec(
    *,
    groups: tuple[KeypointGroup, ...],
    pose_keys: tuple[tuple[str, int], ...],
    face_keys: bool,
    counted_keypoints: int | None,
    weights: Mapping[str, tuple[float, ...]],
    group_weights: Mapping[str, str],
    relative: tuple[RelativeTerm, ...],
) -> FitSpec:
    """The FitSpec of an SMPL-X body fit (body, wholebody): the shared fields plus the given ones."""
    return FitSpec(
        body="body", keypoint_layout="openpose135", keypoint_what="body keypoints", layout_hint="use --part hand for 21-point hand keypoints",
        groups=groups, core_joints="body22", smooth_joints=22, pose_keys=pose_keys, face_keys=face_keys,
        min_keypoints=4, counted_keypoints=counted_keypoints,
        camera_joints=(OP_RSHOULDER, OP_LSHOULDER, OP_RHIP, OP_LHIP),
        depth_edges=((OP_LSHOULDER, OP_LHIP), (OP_RSHOULDER, OP_RHIP)),
        ignored=(OP_NECK, OP_RHIP, OP_LHIP),  # SMPL-X hips/neck sit elsewhere than detectors put them
        conf_scale=(), orientation="upright", palm=(), side_view=True,
        translation_lr=0.02, orientation_lrs={"global_orient": 1e-2, "transl": 1e-2},
        stage_prefix="body", pose_lr=1e-2, last_stage_lrs={}, weights=weights, absolute_weight=1.0,
        group_weights=group_weights, relative=relative,
        temporal_weights={"prior": 2.0, "shape": 2.0, "angle": 5.0},
    )  # fmt: skip


_BODY25 = KeypointGroup("body", "openpose25", 0, 25, tuple(OPENPOSE25_EDGES))
_HAND21 = tuple(HAND21_EDGES)

FIT_SPECS: Mapping[Part, FitSpec] = {
    Part.body: _body_fit_spec(
        groups=(_BODY25,), pose_keys=(("body_pose", 63),), face_keys=False, counted_keypoints=25,
        weights=BODY_WEIGHTS, group_weights={}, relative=(),
    ),
    Part.wholebody: _body_fit_spec(
        groups=(_BODY25, KeypointGroup("lhand", "lhand21", 25, 21, _HAND21),
                KeypointGroup("rhand", "rhand21", 46, 21, _HAND21),
                KeypointGroup("face", "face68", 67, 68, optional=True)),
        pose_keys=(("body_pose", 63), ("left_hand_pose", 45), ("right_hand_pose", 45)), face_keys=True,
        counted_keypoints=None,
        weights={"prior": (50.0, 20.0, 10.0, 5.0, 2.0), "shape": (50.0, 20.0, 10.0, 5.0, 2.0),
                 "angle": (50.0, 20.0, 10.0, 5.0, 2.0), "hands": (0.0, 0.0, 0.0, 0.2, 0.5),
                 "face": (0.0, 0.0, 0.0, 0.0, 0.2)},
        group_weights={"lhand": "hands", "rhand": "hands", "face": "face"},
        # root-relative hand/face keypoints, 5 × (the stage's hand/face weight)². Spec §7.8 applies 5× from
        # the first stage on; before the arms are placed that pulls the whole chain (torso twisted to turn a
        # wrist), so here it follows the same stage weights as the absolute hand/face keypoints.
        relative=(RelativeTerm("lhand", "hands", 5.0), RelativeTerm("rhand", "hands", 5.0),
                  RelativeTerm("face", "face", 5.0)),
    ),
    Part.hand: FitSpec(
        body="hand", keypoint_layout="hand21", keypoint_what="21 hand keypoints",
        layout_hint="use MMPose hand JSON, or --part wholebody for whole-body keypoints",
        groups=(KeypointGroup("hand", "hand21", 0, 21, _HAND21),), core_joints="hand21", smooth_joints=21,
        pose_keys=(("hand_pose", 45),), face_keys=False, min_keypoints=4, counted_keypoints=None,
        camera_joints=(0, 1, 5, 9, 13, 17), depth_edges=((0, 1), (0, 5), (0, 9), (0, 13), (0, 17)),
        ignored=(), conf_scale=((0, 2.0),),  # wrist confidence ×2 (spec §7.7)
        orientation="palm", palm=(0, 5, 9, 13, 17), side_view=False,
        # spec §7.7/§7.8: 50 × translation (lr 0.1), then 100 × orientation + translation. The official lr 0.1
        # (metres per Adam step) suits its x = y = 0 start; ours starts within a few percent, where steps of
        # 0.1 m would first throw a hand at 0.5 m far off, so translation steps are smaller here.
        translation_lr=0.005, orientation_lrs={"global_orient": 0.05, "transl": 0.005},
        stage_prefix="hand", pose_lr=5e-2,
        last_stage_lrs={"global_orient": 0.01, "transl": 0.002},  # spec: transl 0.01 (see above)
        weights={"prior": (30.0, 10.0, 10.0, 5.0, 5.0), "shape": (50.0, 20.0, 10.0, 5.0, 5.0)},
        absolute_weight=0.8, group_weights={}, relative=(RelativeTerm("hand", None, 0.2),),  # spec §7.7
        temporal_weights={"prior": 5.0, "shape": 5.0},
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------- inputs and outputs
@dataclass
class FitInput:
    """The batch: one row per person (or hand)."""

    keypoints: Float[Tensor, "B K 3"]  # x px, y px, confidence (0 = unused), in the part's keypoint layout
    focal: Float[Tensor, " B"]  # pixels
    center: Float[Tensor, "B 2"]  # principal point (cx, cy), pixels
    image_size: Float[Tensor, "B 2"]  # (H, W) pixels
    track: Int[Tensor, " B"] | None = None  # rows with the same track share one body shape (video)
    frame: Int[Tensor, " B"] | None = None  # frame index along the track (temporal pass)

    @classmethod
    def for_image(
        cls,
        keypoints: Float[Tensor, "B K 3"],
        image_size: tuple[int, int],
        focal: float | None = None,
        conf_threshold: float = CONF_THRESHOLD,
    ) -> "FitInput":
        """All rows from one (H, W) image, keypoints as detected (`confident_keypoints` applied); focal
        length default: the image diagonal (spec §7.6)."""
        h, w = image_size
        n, dev = keypoints.shape[0], keypoints.device
        f = float(focal) if focal is not None else float(cam.estimate_focal(float(w), float(h)))
        return cls(
            confident_keypoints(keypoints, conf_threshold),
            torch.full((n,), f, device=dev),
            torch.tensor([[w / 2, h / 2]], device=dev).expand(n, 2).clone(),
            torch.tensor([[float(h), float(w)]], device=dev).expand(n, 2).clone(),
        )

    @classmethod
    def for_images(
        cls,
        keypoints: Float[np.ndarray, "B K 3"],
        image_size: Int[np.ndarray, "B 2"],
        *,
        focal: float | None = None,
        conf_threshold: float = CONF_THRESHOLD,
        track: Int[np.ndarray, " B"] | None = None,
        frame: Int[np.ndarray, " B"] | None = None,
        device: torch.device | str = "cpu",
    ) -> "FitInput":
        """Rows from several images: keypoints as detected (`confident_keypoints` applied), each row's (H, W)
        image size; focal length default: each image's diagonal (spec §7.6)."""
        kp = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
        sizes = np.asarray(image_size).tolist()
        focals = [focal if focal is not None else cam.estimate_focal(float(w), float(h)) for h, w in sizes]
        return cls(
            keypoints=confident_keypoints(kp, conf_threshold),
            focal=torch.tensor([float(f) for f in focals], dtype=torch.float32, device=device),
            center=torch.tensor([(w / 2, h / 2) for h, w in sizes], dtype=torch.float32, device=device),
            image_size=torch.tensor(sizes, dtype=torch.float32, device=device),
            track=torch.as_tensor(track, device=device) if track is not None else None,
            frame=torch.as_tensor(frame, device=device) if frame is not None else None,
        )


def confident_keypoints(
    keypoints: Float[Tensor, "*batch K 3"], threshold: float = CONF_THRESHOLD
) -> Float[Tensor, "*batch K 3"]:
    """Float32 copy with confidences below `threshold` set to 0 (unused) and NaN/inf coordinates made finite."""
    kp = keypoints.to(torch.float32).clone()
    kp[..., 2] = torch.where(kp[..., 2] >= threshold, kp[..., 2], torch.zeros_like(kp[..., 2]))
    return torch.nan_to_num(kp)


@dataclass
class KeypointLayout:
    """How keypoints map to model joints for a part and a model."""

    model_idx: Tensor  # (K,) model joint per kept keypoint
    groups: dict[str, slice]  # positions of each group among the kept keypoints
    kp_keep: Tensor  # (K,) which of the given keypoints are used, in order
    edges: list[tuple[int, int]] = field(default_factory=list)  # skeleton over the kept keypoints


@dataclass
class FitResult:
    """One row per input row, in input order."""

    params: dict[str, Tensor]  # pose keys, global_orient, transl, betas — (B, ...) each, betas per row
    joints: Float[Tensor, "B J 3"]  # metres, camera coordinates: body22 joints (hand21 for hands)
    reprojection_px: Float[Tensor, " B"]  # mean pixel error over the keypoints used
    data_loss: Float[Tensor, " B"]  # the final robust reprojection term
    stage_losses: dict[str, float]  # "<stage>_loss": summed loss after the stage's last step
    nfe: int  # network evaluations of the prior
    fit_seconds: float
    # of which in the prior, in steps not replayed whole (`OptimizeResult.prior_seconds`)
    prior_seconds: float
    layout: KeypointLayout


# --------------------------------------------------------------------------------------- set-up helpers
def check_keypoint_layout(part: Part, keypoint_layout: str) -> None:
    """Raises InputError when keypoints in `keypoint_layout` cannot be fitted with `part`."""
    spec = fit_spec(part)
    if keypoint_layout != spec.keypoint_layout:
        raise InputError(
            f"--part {Part(part).value} needs {spec.keypoint_what}; these keypoints are {keypoint_layout}",
            hint=spec.layout_hint,
        )


def fit_spec(part: Part | str) -> FitSpec:
    """The `FIT_SPECS` row of `part`.

    Raises:
        InputError: a part that cannot be fitted to 2D keypoints.
    """
    part = Part(part)
    if part not in FIT_SPECS:
        raise InputError(f"fit-image fits body, hand or wholebody, not --part {part.value}")
    return FIT_SPECS[part]


def build_layout(part: Part, body: BodyModel, layout: str) -> KeypointLayout:
    """Keypoint ↔ model-joint correspondence for the part and model (spec §7.6–§7.8).

    Raises:
        InputError: keypoints in a layout the part cannot use.
    """
    check_keypoint_layout(part, layout)
    idx: list[Tensor] = []
    groups: dict[str, slice] = {}
    keep: list[int] = []
    edges: list[tuple[int, int]] = []
    for g in fit_spec(part).groups:
        try:
            joints = body.joint_set(g.joint_set)
        except DposerError:
            if not g.optional:
                raise
            log.info("%s keypoints skipped: the %s body model has no %s", g.name, body.kind, g.joint_set)
            continue
        at = len(keep)
        idx.append(joints)
        groups[g.name] = slice(at, at + g.size)
        keep += range(g.start, g.start + g.size)
        edges += [(a + at, b + at) for a, b in g.edges]
    return KeypointLayout(torch.cat(idx), groups, torch.tensor(keep), edges)


def prior_mean_pose(prior: PosePrior | None) -> Tensor | None:
    """The prior's mean pose in its raw layout (baselines: `mean_pose`; DPoser: the normaliser mean)."""
    if prior is None:
        return None
    mean = getattr(prior, "mean_pose", None)
    return mean if mean is not None else getattr(getattr(prior, "normalizer", None), "mean", None)


def body_vertices(body: BodyModel, params: Mapping[str, Tensor], *, vertices: bool = True) -> BodyOutput:
    """The model at per-row fitted parameters (`FitResult.params`, betas per row)."""
    return body(**params, return_vertices=vertices)


def side_view(kp: Float[Tensor, "B K 3"]) -> Tensor:
    """Per person: shoulders too close in the image to tell facing from turned away (spec §7.6 step 2)."""
    ls, rs = kp[:, OP_LSHOULDER], kp[:, OP_RSHOULDER]
    both = (ls[:, 2] > 0) & (rs[:, 2] > 0)
    dist = (ls[:, :2] - rs[:, :2]).norm(dim=-1)
    hips = kp[:, [OP_LHIP, OP_RHIP, OP_MIDHIP]]
    hw = hips[..., 2:]
    hip_c = (hips[..., :2] * hw).sum(1) / hw.sum(1).clamp(min=1e-9)
    torso = torch.where(
        hw.sum((1, 2)) > 0, ((ls[:, :2] + rs[:, :2]) / 2 - hip_c).norm(dim=-1), torch.zeros_like(dist)
    )
    return both & ((dist < SIDE_VIEW_PX) | (dist < SIDE_VIEW_RATIO * torso))


def facing_away(kp: Float[Tensor, "B K 3"]) -> Tensor:
    """Per person: left shoulder/hip left of the right ones in the image, i.e. the back is to the camera.

    Gradient descent cannot turn a body half-way round, so the facing is chosen at the start; ambiguous
    (side) views get both facings later.
    """
    total = torch.zeros(kp.shape[0], device=kp.device)
    for left, right in ((OP_LSHOULDER, OP_RSHOULDER), (OP_LHIP, OP_RHIP)):
        seen = (kp[:, left, 2] > 0) & (kp[:, right, 2] > 0)
        total = total + torch.where(seen, kp[:, left, 0] - kp[:, right, 0], torch.zeros_like(total))
    return total < 0


def track_neighbours(track: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
    """Previous and next row of each row along its track in frame order (itself at the ends)."""
    order = torch.argsort(track * (int(frame.max()) + 1) + frame)
    t = track[order]
    pos = torch.arange(len(order), device=order.device)
    first = torch.cat([torch.ones(1, dtype=torch.bool, device=t.device), t[1:] != t[:-1]])
    last = torch.cat([t[:-1] != t[1:], torch.ones(1, dtype=torch.bool, device=t.device)])
    prev, nxt = torch.empty_like(order), torch.empty_like(order)
    prev[order] = order[torch.where(first, pos, pos - 1)]
    nxt[order] = order[torch.where(last, pos, pos + 1)]
    return prev, nxt


# ---------------------------------------------------------------------------------------------------- the fit
@dataclass
class FitState:
    """Free parameters and row bookkeeping. Rows are hypotheses; several rows may share a sample."""

    params: dict[str, Tensor]  # per-row parameters, plus "betas": one row per track
    row: Tensor  # (R,) sample (batch person) of each row
    track: Tensor  # (R,) betas row of each row
    anchor: Tensor  # (R,) depth (m) the camera stages are held near

    def take(self, rows: Tensor, shared_shape: bool) -> "FitState":
        """Rows `rows` (selected or duplicated) as a new state; betas follow rows unless shared per track."""
        params = {k: v.detach()[rows].clone() for k, v in self.params.items() if k != "betas"}
        betas = self.params["betas"].detach()
        if shared_shape:
            params["betas"], track = betas.clone(), self.track[rows]
        else:
            params["betas"] = betas[self.track[rows]].clone()
            track = torch.arange(len(rows), device=rows.device)
        return FitState(params, self.row[rows], track, self.anchor[rows])


class Fitter:
    """Loss terms and stage schedules of one part, read from its `FitSpec`."""

    def __init__(
        self,
        part: Part,
        model: BodyModel,
        layout: KeypointLayout,
        inputs: FitInput,
        steps: int,
        free_keys: tuple[str, ...],
        shared_shape: bool,
    ) -> None:
        self.part, self.spec = part, FIT_SPECS[part]
        self.model, self.layout, self.inputs = model, layout, inputs
        self.steps, self.free_keys, self.shared_shape = steps, free_keys, shared_shape
        self.kp = inputs.keypoints[:, layout.kp_keep]  # (B, K, 3)
        k, dev = self.kp.shape[1], self.kp.device
        self.conf_scale = torch.ones(k, device=dev)
        for i, s in self.spec.conf_scale:
            self.conf_scale[i] = s
        self.body_mask = torch.ones(k, device=dev)
        self.body_mask[list(self.spec.ignored)] = 0.0
        self.neighbours: tuple[Tensor, Tensor] | None = None  # temporal pass: previous / next row per row
        # camera stages of a `rigid_root` model: the joints at zero orientation and translation
        self.unturned: Tensor | None = None
        self._rows: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # `rows()` cache
        # per pose stage: prior², shape², angle², temporal (inputs of a replayed step)
        self.stage_weights = StageWeights(
            lambda w: (*(w.get(k, 0.0) ** 2 for k in ("prior", "shape", "angle")), w.get("temporal", 0.0)),
            dev,
        )
        self._data_weights: dict[int, tuple[Tensor | None, Tensor]] = {}

    def rows(self, state: FitState) -> tuple[Tensor, Tensor]:
        """Per row of `state`: its keypoints, and how many rows share its betas — constant while the rows are
        (one optimisation), so computed once rather than every step."""
        cached = self._rows
        if cached is None or cached[0] is not state.row or cached[1] is not state.track:
            nb = state.params["betas"].shape[0]
            share = torch.bincount(state.track, minlength=nb).to(state.params["betas"].dtype)[state.track]
            cached = (state.row, state.track, self.kp[state.row], share)
            self._rows = cached
        return cached[2], cached[3]

    # ---- model and camera
    def forward(self, state: FitState) -> BodyOutput:
        p = {k: v for k, v in state.params.items() if k != "betas"}
        # index_select: its backward is one index_add (advanced indexing's is an accumulating index_put)
        return self.model(
            **p, betas=state.params["betas"].index_select(0, state.track), return_vertices=False
        )

    def project(self, state: FitState, joints: Tensor) -> Tensor:
        b = state.row
        points = joints.index_select(1, self.layout.model_idx)  # cheaper backward than indexing
        return cam.perspective_project(points, self.inputs.focal[b], self.inputs.center[b])

    # ---- loss terms, per row
    def freeze_pose(self, state: FitState) -> None:
        """Camera stages (pose and shape fixed) of a `rigid_root` model: joints once, then turned per step."""
        if not getattr(self.model, "rigid_root", False):
            return
        with torch.no_grad():
            p = dict(state.params)
            p["global_orient"] = torch.zeros_like(p["global_orient"])
            p["transl"] = torch.zeros_like(p["transl"])
            self.unturned = self.forward(FitState(p, state.row, state.track, state.anchor)).joints

    def camera_joints(self, state: FitState) -> Tensor:
        if self.unturned is None:
            return self.forward(state).joints
        root = self.unturned[:, :1]
        turn = batch_rodrigues(state.params["global_orient"])
        return (self.unturned - root) @ turn.transpose(-1, -2) + root + state.params["transl"][:, None]

    def camera_loss(self, state: FitState) -> Tensor:
        """Σ conf²·‖proj − kp‖² over torso (palm) keypoints + 100²·(tz − anchor)² (spec §7.6 stage 1)."""
        sel = list(self.spec.camera_joints)
        proj = self.project(state, self.camera_joints(state))[:, sel]
        kp = self.rows(state)[0][:, sel]
        conf = kp[..., 2] * self.conf_scale[sel]
        err = ((proj - kp[..., :2]) ** 2).sum(-1)
        depth = DEPTH_WEIGHT**2 * (state.params["transl"][:, 2] - state.anchor) ** 2
        return (conf**2 * err).sum(-1) + depth

    def data_term(self, state: FitState, proj: Tensor, stage: int) -> Tensor:
        """Robust reprojection term Σ (w·c)²·GMoF(proj − kp) + root-relative terms (hands, face)."""
        spec, groups = self.spec, self.layout.groups
        kp = self.rows(state)[0]
        conf = kp[..., 2] * self.conf_scale
        res = gmof(proj - kp[..., :2], SIGMA_PX).sum(-1)  # (R, K)
        w = conf * self.body_mask
        scale, relative = self.data_weights(stage)
        if scale is not None:
            w = w * scale
        total = spec.absolute_weight * (w**2 * res).sum(-1)
        terms = [term for term in spec.relative if term.group in groups]
        for i, term in enumerate(terms):  # articulation of hands and face, independent of their placement
            total = total + relative[i] * self._relative(proj, kp, conf, groups[term.group])
        return total

    def data_weights(self, stage: int) -> tuple[Tensor | None, Tensor]:
        """The data term's weights of pose stage `stage`, built once: per keypoint, the group weight scaling its
        confidence (None when the part has none), and per root-relative term (of the groups present) its
        weight — tensors, so a replayed step takes them as inputs and one recording serves every stage (a term
        weighted 0 adds exactly 0)."""
        cached = self._data_weights.get(stage)
        if cached is None:
            spec, groups, dev = self.spec, self.layout.groups, self.kp.device
            scale = None
            if spec.group_weights:
                scale = torch.ones(self.kp.shape[1], device=dev)
                for g, key in spec.group_weights.items():
                    if g in groups:
                        scale[groups[g]] = spec.weights[key][stage]
            relative = [
                term.scale * (spec.weights[term.weight][stage] ** 2 if term.weight else 1.0)
                for term in spec.relative
                if term.group in groups
            ]
            cached = (scale, torch.tensor(relative, device=dev))
            self._data_weights[stage] = cached
        return cached

    @staticmethod
    def _relative(proj: Tensor, kp: Tensor, conf: Tensor, sl: slice) -> Tensor:
        p, k, c = proj[:, sl], kp[:, sl, :2], conf[:, sl]
        res = gmof((p - p[:, :1]) - (k - k[:, :1]), SIGMA_PX).sum(-1)
        c = c * (c[:, :1] > 0)  # relative to the root only where the root was seen
        return (c**2 * res).sum(-1)

    def prior_input(self, params: Mapping[str, Tensor]) -> Tensor:
        """The prior's vector: the part's segments from the parameters (zeros for ones not fitted)."""
        slices = PARTS[self.part].slices()
        first = params[self.spec.pose_keys[0][0]]
        if len(slices) == 1:
            return first
        cols = []
        for key, sl in slices.items():
            width = sl.stop - sl.start
            value = params.get(key)
            cols.append(value[:, :width] if value is not None else first.new_zeros(first.shape[0], width))
        return torch.cat(cols, -1)

    def pose_loss(self, state: FitState, step: Step) -> Tensor:
        w = step.stage.weights
        sq = self.stage_weights(step.stage)  # prior², shape², angle², temporal: inputs of a replayed step
        out = self.forward(state)
        loss = self.data_term(state, self.project(state, out.joints), int(w["index"]))
        p = state.params
        loss = loss + sq[0] * step.prior(self.prior_input(p))
        # shape penalty once per track: rows sharing betas split it
        share = self.rows(state)[1]
        loss = loss + sq[1] * p["betas"].index_select(0, state.track).pow(2).sum(-1) / share
        if w.get("angle", 0):
            loss = loss + sq[2] * angle_prior(p["body_pose"])
        if w.get("temporal", 0) and self.neighbours is not None:
            loss = loss + sq[3] * self._acceleration(out.joints)
        return loss

    def step_key(self, step: Step) -> Hashable:
        """What a pose step's operations depend on besides its inputs (`engine.optimize.StepPlan.key`): which
        terms are on (every weight is an input)."""
        w = step.stage.weights
        return (bool(w.get("angle", 0)), bool(w.get("temporal", 0)) and self.neighbours is not None)

    def stage_inputs(self, stage: Stage) -> tuple[Tensor, ...]:
        """A pose stage's weights as a replayed step's inputs (`engine.optimize.PriorPlan`): the loss terms' and
        the data term's."""
        scale, relative = self.data_weights(int(stage.weights["index"]))
        return (self.stage_weights(stage), *(() if scale is None else (scale,)), relative)

    def plan(self, state: FitState) -> PriorPlan:
        """The `StepPlan` of the pose stages: the body model's inputs (its linearised shape), the prior's (noise,
        time) and the stage's weights; eager steps for body models or priors that cannot hand theirs over."""

        def hold(params: Mapping[str, Tensor]) -> AbstractContextManager[tuple[Tensor, ...] | None]:
            with torch.no_grad():
                return step_inputs(self.model, params["betas"].index_select(0, state.track))

        def pose(params: Mapping[str, Tensor], step: Step) -> Tensor:
            with torch.no_grad():
                return self.prior_input(params)

        return PriorPlan(self.stage_inputs, pose, self.step_key, hold)

    def _acceleration(self, joints: Tensor) -> Tensor:
        """Per row ‖J_next − 2J + J_prev‖ averaged over the core joints; 0 at the ends of a track."""
        assert self.neighbours is not None
        prev, nxt = self.neighbours
        core = joints[:, : self.spec.smooth_joints]
        rows = torch.arange(len(prev), device=prev.device)
        acc = temporal_smoothness(torch.stack([core[prev], core, core[nxt]], dim=1), order=2)
        return torch.where((prev != rows) & (nxt != rows), acc, torch.zeros_like(acc))

    # ---- schedules
    def camera_stages(self) -> tuple[Stage, Stage]:
        """Translation (half the steps), then orientation + translation (spec §7.6–§7.8)."""
        n, spec = self.steps, self.spec
        return (
            Stage("translation", max(1, n // 2), {"transl": spec.translation_lr}),
            Stage("orientation", n, dict(spec.orientation_lrs)),
        )

    def pose_stages(self) -> list[Stage]:
        """Five pose stages, one Adam run with changing weights (the last may change learning rates)."""
        spec, n = self.spec, self.steps
        lrs = dict.fromkeys(("global_orient", *self.free_keys, "betas"), spec.pose_lr)
        count = len(spec.weights["prior"])
        stages = []
        for i in range(count):
            weights = {"index": float(i)}
            weights.update({k: v[i] for k, v in spec.weights.items() if k in ("prior", "shape", "angle")})
            stage_lrs = {**lrs, **spec.last_stage_lrs} if i == count - 1 else lrs
            stages.append(
                Stage(f"{spec.stage_prefix}-{i + 1}", n, stage_lrs, weights, reset=i == 0, uses_prior=True)
            )
        return stages

    def temporal_stage(self) -> Stage:
        lrs = dict.fromkeys(("global_orient", *self.free_keys, "betas"), 1e-2)
        lrs["transl"] = 1e-3
        weights = {
            "index": float(len(self.spec.weights["prior"]) - 1),
            **self.spec.temporal_weights,
            "temporal": TEMPORAL_WEIGHT,
        }
        return Stage("temporal", self.steps, lrs, weights, uses_prior=True)

    def reprojection(self, state: FitState) -> tuple[Tensor, Tensor, Tensor]:
        """Per row: the final data term, the mean pixel error over the keypoints used, and the joints."""
        with torch.no_grad():
            joints = self.forward(state).joints
            proj = self.project(state, joints)
            data = self.data_term(state, proj, len(self.spec.weights["prior"]) - 1)
            kp = self.kp[state.row]
            used = (kp[..., 2] > 0) & (self.body_mask > 0)
            err = (proj - kp[..., :2]).norm(dim=-1)
            px = (err * used).sum(-1) / used.sum(-1).clamp(min=1)
        return data, px, joints


def init_widths(part: Part | str, body: BodyModel | None = None) -> dict[str, int]:
    """Values per row of each starting parameter `fit(init=...)` uses for `part` (others are ignored); with
    `body`, also its shape (`betas`) and, for whole bodies with expressions, `expression` widths."""
    spec = fit_spec(part)
    widths = {"global_orient": 3, **dict(spec.pose_keys), "transl": 3}
    if spec.face_keys:
        widths["jaw_pose"] = 3
    if body is not None:
        widths["betas"] = int(body.num_betas)
        expressions = int(getattr(body, "num_expression", 0) or 0)
        if spec.face_keys and expressions > 0:
            widths["expression"] = expressions
    return widths


def _initial_params(
    spec: FitSpec,
    part: Part,
    model: BodyModel,
    mean: Tensor | None,
    n: int,
    init: Mapping[str, Tensor],
    device: torch.device,
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Per-sample starting parameters and the names of the fitted pose parameters.

    Body pose: `init`, else the prior's mean pose, else zeros; hands, jaw and expression start at zero
    (= the mean hand, as flat_hand_mean=False). Orientation and translation are set by `_initial_state`
    unless `init` gives them.
    """
    widths = dict(spec.pose_keys)
    num_expression = int(getattr(model, "num_expression", 0) or 0)
    if spec.face_keys and num_expression > 0:  # SMPL-X, not the mannequin
        widths.update({"jaw_pose": 3, "expression": num_expression})
    params = {k: torch.zeros(n, w, device=device) for k, w in widths.items()}
    if mean is not None and "body_pose" in params:
        sl = PARTS[part].slices().get("body_pose")
        if sl is not None and mean.shape[-1] >= sl.stop:
            params["body_pose"] += mean[sl].to(device=device, dtype=torch.float32)
    params["global_orient"] = torch.zeros(n, 3, device=device)
    params["transl"] = torch.zeros(n, 3, device=device)
    for key, value in init.items():
        if key in params:  # widths checked by `fit` (`init_widths`)
            params[key] = value.to(params[key]).clone()
    return params, tuple(widths)


def _initial_state(
    fitter: Fitter, params: dict[str, Tensor], init: Mapping[str, Tensor], track: Tensor
) -> FitState:
    """Orientation hypotheses (upright facing the camera for bodies, two palm solutions for hands) and the
    translation from the keypoints (spec §7.6/§7.7 camera init)."""
    spec, model, layout, inputs = fitter.spec, fitter.model, fitter.layout, fitter.inputs
    kp = fitter.kp
    n, device = len(inputs.focal), kp.device
    tracks = int(track.max()) + 1
    nb = int(model.num_betas)
    betas = torch.zeros(tracks, nb, device=device)
    if "betas" in init:  # first row of each track
        first = torch.full((tracks,), n, dtype=torch.long, device=device)
        first = first.scatter_reduce(0, track, torch.arange(n, device=device), reduce="amin")
        betas[:] = init["betas"][first].to(betas)
    rows = torch.arange(n, device=device)
    depth = None  # from the torso / palm edges unless the palm plane gives it
    if "global_orient" not in init:
        if spec.orientation == "palm":
            with torch.no_grad():
                rest = model(
                    **{k: v for k, v in params.items() if k not in ("global_orient", "transl")},
                    betas=betas[track],
                    return_vertices=False,
                ).joints
            palm = list(spec.palm)
            pts = rest[:, layout.model_idx[palm]] - rest[:, layout.model_idx[:1]]
            cands, scale, ok = cam.planar_orientations(pts, kp[:, palm])
            depth = torch.where(ok, inputs.focal / scale.clamp(min=1e-6), torch.zeros_like(scale))
            fallback = torch.stack(
                [torch.zeros(n, 3, device=device), cam.flip_about_up_axis(torch.zeros(n, 3, device=device))],
                1,
            )
            cands = torch.where(ok[:, None, None], cands, fallback)
            rows = torch.arange(n, device=device).repeat_interleave(2)
            depth = depth[rows]
            params = {k: v[rows].clone() for k, v in params.items()}
            params["global_orient"] = cands.reshape(-1, 3)
        else:
            params["global_orient"] = cam.camera_orient(n, device=device)
            away = facing_away(kp)
            params["global_orient"][away] = cam.flip_about_up_axis(params["global_orient"][away])
    track = track[rows]
    if not fitter.shared_shape:
        betas, track = betas[track], torch.arange(len(rows), device=device)
    state = FitState({**params, "betas": betas}, rows, track, torch.zeros(len(rows), device=device))
    if "transl" not in init:
        with torch.no_grad():
            zero = dict(state.params)
            zero["transl"] = torch.zeros_like(zero["transl"])
            out = fitter.forward(FitState(zero, state.row, state.track, state.anchor))
            joints = out.joints[:, layout.model_idx]
        edges = torch.tensor(spec.depth_edges, device=device)
        r = state.row
        limbs = torch.tensor(layout.edges, device=device)
        state.params["transl"] = cam.init_translation(
            joints,
            kp[r],
            edges,
            inputs.focal[r],
            inputs.center[r],
            inputs.image_size[r],
            depth=depth,
            fallback_edges=limbs,
        )
    return state


def _run_stages(
    fitter: Fitter,
    state: FitState,
    schedule: PriorSchedule | None,
    *,
    temporal: bool,
    hypotheses: bool,
    progress: Progress | None,
) -> tuple[FitState, dict[str, float], int, float]:
    """All stages on the batch. Returns one row per sample (best hypothesis), the stage losses, NFE and the
    seconds spent in the prior."""
    n = len(fitter.inputs.focal)
    cam_stages, pose_stages = fitter.camera_stages(), fitter.pose_stages()
    total = sum(s.iters for s in (*cam_stages, *pose_stages)) + (fitter.steps if temporal else 0)
    done, losses = 0, {}

    def cam_loss(params: dict[str, Tensor], step: Step) -> Tensor:  # no prior in the camera stages
        return fitter.camera_loss(FitState(params, state.row, state.track, state.anchor))

    class CameraPlan:  # camera steps of a model whose joints are computed once: nothing changes but the camera
        @staticmethod
        @contextmanager
        def inputs(params: Mapping[str, Tensor], step: Step) -> Iterator[tuple[Tensor, ...] | None]:
            yield () if fitter.unturned is not None else None

        @staticmethod
        def key(step: Step) -> Hashable:
            return "camera"

    def pose_loss(params: dict[str, Tensor], step: Step) -> Tensor:
        return fitter.pose_loss(FitState(params, state.row, state.track, state.anchor), step)

    # camera: translation held near its depth estimate, then orientation (depth re-anchored)
    fitter.freeze_pose(state)
    for stage in cam_stages:
        state.anchor = state.params["transl"][:, 2].detach().clone()
        res = optimize(
            state.params, [stage], cam_loss, progress=progress, done=done, total=total, plan=CameraPlan()
        )
        done += stage.iters
        losses[f"{stage.name}_loss"] = res.logs[0].loss
    fitter.unturned = None
    if hypotheses and len(state.row) > n:  # hands: keep the better of the two palm orientations
        with torch.no_grad():
            win = best_rows(fitter.camera_loss(state), state.row, n)
        state = state.take(win, fitter.shared_shape)
    elif hypotheses and fitter.spec.side_view:  # bodies seen from the side: also try turned round
        extra = torch.nonzero(side_view(fitter.kp)[state.row]).flatten()
        if len(extra):
            log.info("%d person(s) seen from the side: fitting both facings, keeping the better", len(extra))
            state = state.take(
                torch.cat([torch.arange(len(state.row), device=extra.device), extra]), fitter.shared_shape
            )
            state.params["global_orient"][-len(extra) :] = cam.flip_about_up_axis(
                state.params["global_orient"][-len(extra) :]
            )
    res = optimize(
        state.params,
        pose_stages,
        pose_loss,
        prior=schedule,
        progress=progress,
        done=done,
        total=total,
        plan=fitter.plan(state),
    )
    nfe, prior_seconds = res.nfe, res.prior_seconds
    done += sum(s.iters for s in pose_stages)
    losses.update({f"{lg.name}_loss": lg.loss for lg in res.logs})
    if len(state.row) > n:
        data, _, _ = fitter.reprojection(state)
        win = best_rows(data, state.row, n)
        state = state.take(win, fitter.shared_shape)
    if temporal:
        assert fitter.inputs.frame is not None
        fitter.neighbours = track_neighbours(state.track, fitter.inputs.frame[state.row])
        # the prior stays at the end of its annealing (t_min)
        res = optimize(
            state.params,
            [fitter.temporal_stage()],
            pose_loss,
            prior=schedule,
            prior_offset=res.prior_steps,
            progress=progress,
            done=done,
            total=total,
            plan=fitter.plan(state),
        )
        nfe, prior_seconds = nfe + res.nfe, prior_seconds + res.prior_seconds
        losses["temporal_loss"] = res.logs[0].loss
        fitter.neighbours = None
    return state, losses, nfe, prior_seconds


def fit(
    body: BodyModel,
    prior: PosePrior | None,
    inputs: FitInput,
    *,
    part: Part = Part.body,
    keypoint_layout: str = "openpose135",
    steps: int = 100,
    init: Mapping[str, Tensor] | None = None,
    temporal: bool = False,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    mean_pose: Tensor | None = None,
) -> FitResult:
    """Fit `body` to the keypoints of every row of `inputs` in one batched optimisation (spec §7.6–§7.8).

    Args:
        body: the part's body model (`load_body("hand")` for hands, `load_body("body")` otherwise).
        prior: any `PosePrior` of `part` (DPoser or a baseline), or None for no prior term.
        inputs: the batch; `track` (rows of one person along a video share one shape) and `frame` (needed
            by `temporal`) are optional.
        keypoint_layout: the layout of `inputs.keypoints`: "openpose135" (body, wholebody; K = 135, or K = 25
            for body) or "hand21".
        steps: Adam iterations per stage (2 camera stages, the first gets half, and 5 pose stages).
        init: starting parameters, one row per input row (e.g. an earlier fit or a regressor's output),
            of the widths `init_widths(part, body)`; a given `global_orient` turns off the orientation
            hypotheses.
        temporal: a last pass with a joint-acceleration term along each track (needs `track` and `frame`).
        generator: noise source of the DPoser prior term.
        progress: called as progress(done, total) once per iteration.
        mean_pose: starting body pose in the prior's layout (default: the prior's mean pose).

    Raises:
        InputError: an unfittable part, keypoints in the wrong layout, a prior of another part, bad steps,
            `init` of the wrong width.
    """
    part = Part(part)
    spec = fit_spec(part)
    if steps < 1:
        raise InputError(f"--steps must be at least 1 (got {steps})")
    prior_part = getattr(prior, "part", None)
    if prior_part is not None and Part(prior_part) is not part:
        raise InputError(
            f"the given prior is a {Part(prior_part).value} prior, but the fit is --part {part.value}"
        )
    if temporal and (inputs.track is None or inputs.frame is None):
        raise InputError("the temporal pass needs a track and a frame index per row (a video)")
    layout = build_layout(part, body, keypoint_layout)
    if inputs.keypoints.shape[1] <= int(layout.kp_keep.max()):
        raise InputError(
            f"--part {part.value} needs {int(layout.kp_keep.max()) + 1} keypoints per person in "
            f"the {keypoint_layout} layout, got {inputs.keypoints.shape[1]}"
        )
    device = inputs.keypoints.device
    n = len(inputs.focal)
    init = {k: v.to(device) for k, v in (init or {}).items()}
    widths = init_widths(part, body)
    for key, value in init.items():
        if key in widths and (value.ndim != 2 or value.shape[-1] != widths[key]):
            raise InputError(f"init {key!r} has shape {tuple(value.shape)}; the fit takes (B, {widths[key]})")
    shared = inputs.track is not None
    track = inputs.track if inputs.track is not None else torch.arange(n, device=device)
    mean = mean_pose if mean_pose is not None else prior_mean_pose(prior)
    params, free_keys = _initial_params(spec, part, body, mean, n, init, device)
    fitter = Fitter(part, body, layout, inputs, steps, free_keys, shared)
    state = _initial_state(fitter, params, init, track)
    schedule = None
    if prior is not None:
        schedule = PriorSchedule(
            prior,
            T_RANGES["fitting"],
            weighting=PRIOR_WEIGHTING,
            generator=generator,
            horizon=prior_steps(fitter.pose_stages()),
        )
    t0 = time.perf_counter()
    state, losses, nfe, prior_seconds = _run_stages(
        fitter, state, schedule, temporal=temporal, hypotheses="global_orient" not in init, progress=progress
    )
    fit_seconds = time.perf_counter() - t0
    data, px, joints = fitter.reprojection(state)
    order = torch.argsort(state.row)  # one row per sample already; input order
    params = {k: v.detach()[order] for k, v in state.params.items() if k != "betas"}
    params["betas"] = state.params["betas"].detach()[state.track[order]]
    core = body.joint_set(spec.core_joints)
    return FitResult(
        params,
        joints[order][:, core],
        px[order],
        data[order],
        losses,
        nfe,
        fit_seconds,
        prior_seconds,
        layout,
    )
