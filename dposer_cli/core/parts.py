"""The parts table: every per-part fact lives here (spec §1.1, §1.3, §2.1, §7.2–7.3, §12.1).

Code never branches on `part == ...`; it looks the answer up in `PARTS[part]`.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType


class Part(str, Enum):
    """A pose prior: which parameter vector it models."""

    body = "body"
    hand = "hand"
    face = "face"
    face_shape = "face-shape"
    wholebody = "wholebody"


@dataclass(frozen=True, slots=True)
class Segment:
    """A named slice of a part vector, stored under `key` in pose npz files."""

    key: str  # npz key / SMPL-X parameter name
    dim: int
    normalizer: str  # official normaliser folder, relative to the official repo root
    mirror: bool = False  # left hand: mirrored into right-hand convention before normalising (spec §1.1)


@dataclass(frozen=True, slots=True)
class PartSpec:
    """Static description of one part (dims, joints, masks, files, default network widths)."""

    part: Part
    segments: tuple[Segment, ...]
    joint_names: tuple[str, ...]  # 3-dof joints in vector order; empty for coefficient parts
    mask_groups: Mapping[str, tuple[int, ...]]  # name -> vector dims (0-based)
    official_ckpt: str  # file inside the Hub repo Moon-bow/DPoser-X
    official_hidden: int  # TimeFC HIDDEN_DIM of the released model (spec §2.1)
    official_embed: int
    demo_hidden: int  # widths of the bundled demo prior
    demo_embed: int
    body_kind: str  # "smplx" | "mano" | "flame": which body model poses this part
    reference: str  # shared/data/poses file used for demo training and FID
    statistics: str  # official FID statistics file (relative to the official repo root)
    mask_aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return sum(s.dim for s in self.segments)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.segments)

    def slices(self) -> dict[str, slice]:
        """npz key -> slice of the flat part vector."""
        out, start = {}, 0
        for seg in self.segments:
            out[seg.key] = slice(start, start + seg.dim)
            start += seg.dim
        return out


def _dims(joints: "list[int] | tuple[int, ...] | range", offset: int = 0) -> tuple[int, ...]:
    """Expand 3-dof joint indices to vector dims."""
    return tuple(offset + 3 * j + k for j in joints for k in range(3))


BODY_JOINTS = (
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
HAND_JOINTS = (
    "index1", "index2", "index3", "middle1", "middle2", "middle3", "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
)  # fmt: skip

# body masks: indices into the 21 body joints (spec §7.2, BodyPartIndices)
_BODY_JOINT_GROUPS: dict[str, tuple[int, ...]] = {
    "left_leg": (0, 3, 6, 9),
    "right_leg": (1, 4, 7, 10),
    "legs": (0, 1, 3, 4, 6, 7, 9, 10),
    "left_arm": (12, 15, 17, 19),
    "right_arm": (13, 16, 18, 20),
    "arms": (12, 13, 15, 16, 17, 18, 19, 20),
    "trunk": (2, 5, 8, 15, 16),
    "head": (11, 14),
    "hands": (19, 20),
    "left_body": (0, 3, 6, 9, 12, 15, 17, 19),
    "right_body": (1, 4, 7, 10, 13, 16, 18, 20),
}
_HAND_JOINT_GROUPS: dict[str, tuple[int, ...]] = {
    "index": (0, 1, 2),
    "middle": (3, 4, 5),
    "pinky": (6, 7, 8),
    "ring": (9, 10, 11),
    "thumb": (12, 13, 14),
    "pinky_ring_finger": (6, 7, 8, 9, 10, 11),
    "fingertips": (2, 5, 8, 11, 14),
}

_BODY_NORM = "data/body_data/body_normalizer"
_HAND_NORM = "data/hand_data/hand_normalizer"
_JAW_NORM = "data/face_data/jaw_normalizer"
_EXPR_NORM = "data/face_data/expression_normalizer"
_BETAS_NORM = "data/face_data/betas_normalizer"

PARTS: Mapping[Part, PartSpec] = MappingProxyType({
    Part.body: PartSpec(
        part=Part.body,
        segments=(Segment("body_pose", 63, _BODY_NORM),),
        joint_names=BODY_JOINTS,
        mask_groups={k: _dims(v) for k, v in _BODY_JOINT_GROUPS.items()},
        mask_aliases={"torso": "trunk"},
        official_ckpt="body/BaseMLP/last.ckpt",
        official_hidden=1024, official_embed=512, demo_hidden=512, demo_embed=256,
        body_kind="smplx",
        reference="poses/body_reference_train.npz",
        statistics="data/body_data/version1/statistics.npz",
    ),
    Part.hand: PartSpec(
        part=Part.hand,
        segments=(Segment("hand_pose", 45, _HAND_NORM),),
        joint_names=HAND_JOINTS,
        mask_groups={k: _dims(v) for k, v in _HAND_JOINT_GROUPS.items()},
        official_ckpt="hand/BaseMLP/last.ckpt",
        official_hidden=1024, official_embed=512, demo_hidden=512, demo_embed=256,
        body_kind="mano",
        reference="poses/hand_reference_train.npz",
        statistics="data/hand_data/statistics.npz",
    ),
    Part.face: PartSpec(
        part=Part.face,
        segments=(Segment("jaw_pose", 3, _JAW_NORM), Segment("expression", 100, _EXPR_NORM)),
        joint_names=("jaw",),
        mask_groups={"jaw": tuple(range(0, 3)), "expression": tuple(range(3, 103))},
        official_ckpt="face/BaseMLP/last.ckpt",
        official_hidden=1024, official_embed=512, demo_hidden=256, demo_embed=128,
        body_kind="flame",
        reference="poses/face_expression_reference_train.npz",
        statistics="data/face_data/statistics_expression.npz",
    ),
    Part.face_shape: PartSpec(
        part=Part.face_shape,
        segments=(Segment("betas", 100, _BETAS_NORM),),
        joint_names=(),
        mask_groups={},
        official_ckpt="face_shape/BaseMLP/last.ckpt",
        official_hidden=512, official_embed=256, demo_hidden=256, demo_embed=128,
        body_kind="flame",
        reference="poses/face_shape_reference_train.npz",
        statistics="data/face_data/statistics_shape.npz",
    ),
    Part.wholebody: PartSpec(
        part=Part.wholebody,
        segments=(
            Segment("body_pose", 63, _BODY_NORM),
            Segment("left_hand_pose", 45, _HAND_NORM, mirror=True),
            Segment("right_hand_pose", 45, _HAND_NORM),
            Segment("jaw_pose", 3, _JAW_NORM),
            Segment("expression", 100, _EXPR_NORM),
        ),
        joint_names=BODY_JOINTS + tuple(f"left_{j}" for j in HAND_JOINTS)
        + tuple(f"right_{j}" for j in HAND_JOINTS) + ("jaw",),
        # spec §7.3: hand masks include the wrist joint of the body (mask_root=True)
        mask_groups={
            "body": tuple(range(0, 63)),
            "lhand": tuple(range(63, 108)) + _dims([19]),
            "rhand": tuple(range(108, 153)) + _dims([20]),
            "hands": tuple(range(63, 153)) + _dims([19, 20]),
            "face": tuple(range(153, 256)),
            **{f"body_{k}": _dims(v) for k, v in _BODY_JOINT_GROUPS.items()},
        },
        mask_aliases={"left_hand": "lhand", "right_hand": "rhand"},
        official_ckpt="wholebody/mixed/last.ckpt",
        official_hidden=512, official_embed=256, demo_hidden=256, demo_embed=128,
        body_kind="smplx",
        reference="official/examples/toy_wholebody_data.npz",
        statistics="data/wholebody_data/statistics.npz",
    ),
})  # fmt: skip

# whole-body vector layout (spec §1.1) reused by the whole-body network
WHOLEBODY_SPLIT = (63, 45, 45, 103)


def mask_dims(part: Part, names: "list[str] | tuple[str, ...]") -> tuple[int, ...]:
    """Union of the vector dims of named mask groups; unknown names raise InputError with a suggestion."""
    from dposer_cli.core.errors import InputError, suggest

    spec = PARTS[part]
    dims: set[int] = set()
    for raw in names:
        name = spec.mask_aliases.get(raw, raw)
        if name not in spec.mask_groups:
            valid = sorted(spec.mask_groups) + sorted(spec.mask_aliases)
            if not valid:
                raise InputError(f"--part {part.value} has no named masks")
            raise InputError(
                f"unknown mask {raw!r} for --part {part.value}{suggest(raw, valid)}",
                hint="valid masks: " + ", ".join(valid),
            )
        dims.update(spec.mask_groups[name])
    return tuple(sorted(dims))


# ------------------------------------------------------------------------------------------- choice lists
# What the command line accepts, kept here (pure Python) so `dposer` rejects an unknown choice with exit 2
# before torch is imported. Each list mirrors the registry named beside it;
# tests/cli/test_consistency.py keeps them equal.
SAMPLER_NAMES = ("em", "ddim", "dpm2m", "dpm2m-sde")  # engine.samplers.SAMPLERS
COMPLETE_MODES = ("dposer", "scoresde", "dps", "mcg")  # tasks.complete.MODES
BENCHMARK_NAMES = (
    "generation",
    "speed",
    "completion",
    "denoise",
    "hand-ik",
    "face-ik",
    "ehf",
    "freihand",
    "arctic",
    "wholebody-completion",
)  # evaluation.runner.EVALUATIONS
PRIOR_KINDS = ("dposer", "none", "l2", "gmm", "vposer")  # engine.priors.PRIORS
FIT_PRIORS = ("dposer", "none", "l2")  # services.fit_image.FIT_PRIORS and tasks.ik.PRIORS
FIT_PARTS = (Part.body, Part.hand, Part.wholebody)  # what fit-image fits
IK_PARTS = (Part.hand, Part.face)  # what ik solves
IK_TYPES: Mapping[Part, tuple[str, ...]] = MappingProxyType({
    Part.hand: ("full", "sparse", "fingertip", "partial", "noisy"),  # tasks.ik.HAND_TYPES
    Part.face: ("full", "noisy", "left_face", "right_face", "half_face"),  # tasks.ik.FACE_TYPES
})  # fmt: skip
TEMPORAL_TERMS = ("auto", "vertices", "joints")  # tasks.denoise_motion.TEMPORAL_TERMS
KEYPOINT_FORMATS = ("auto", "vitpose", "coco-wholebody", "openpose", "mmpose-hand", "coco17")  # io.keypoints
RENDERERS = ("auto", "pyrender", "soft")  # render.scene.RENDERERS
T_WEIGHTINGS = ("uniform", "adaptive")  # tasks.train.T_WEIGHTINGS
# FLAME 2020: the model and both landmark embeddings, in one folder (bodies.smplx_family reads all three)
FLAME_FILES = ("FLAME_NEUTRAL.pkl", "flame_static_embedding.pkl", "flame_dynamic_embedding.npy")


def mask_names(part: Part) -> tuple[str, ...]:
    """The mask names `--mask` accepts for `part`: its groups, then their aliases."""
    spec = PARTS[part]
    return (*spec.mask_groups, *spec.mask_aliases)
