"""The built-in body: mannequin-x's skinned "wooden" mannequin as a differentiable, batched torch model.

mannequin-x (Apache-2.0, import name `mannequin`) is NumPy-only and takes one body shape per call. This
module reads its bundled assets (`wooden.npz`, `smplx_calibration.npz`) and reproduces
`mannequin.Mannequin("wooden")` — `joint_transforms` and `vertices` — in torch:

* **skeleton**: rest joints are linear in the ten SMPL-X betas (`joint_rest + joint_dirs @ betas`); the
  SMPL-X body rotations drive joints 1–21, the hand rotations (plus SMPL-X's mean hand, as
  `flat_hand_mean=False`) drive the 30 finger joints; the two palm joints (`left_hand`, `right_hand`)
  sit on the wrists and never turn.
* **mesh identity** (what `Mannequin._prepare_shape` computes per shape, in NumPy): the wooden mesh is
  re-fitted to the shaped skeleton — per-bone similarity transforms, head box fit, rigid torso, forefoot
  tilt and floor contact, mirrored ball joints. Here it is a batched function of `betas`, so meshes are
  differentiable in the shape as well (mannequin-x allows a single shape per batch).
* **skinning**: linear blend with mannequin-x's four strongest influences per vertex.

Conventions (as SMPL-X): `global_orient` turns the body about the pelvis, `transl` is added last, zero
hand parameters give the SMPL-X mean hand. `jaw_pose` and `expression` are accepted and ignored (the
mannequin has no face). Joint list: the 54 mannequin joints (0–21 in SMPL-X body order), then
landmark vertices named as smplx's extra joints (nose, eyes, ears, toes, heels, finger tips); see
`LANDMARKS` for how each vertex is chosen. `MannequinHand` is one hand of the same mannequin, posed by
`hand_pose` with `global_orient` as the wrist rotation and expressed with the wrist at the origin.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from dposer_cli.bodies.base import (
    OPENPOSE25_NAMES,
    BodyOutput,
    build_joint_sets,
    check_vertex_ids,
    expand_param,
    gather_params,
    hand21_names,
    lookup_joint_set,
)
from dposer_cli.bodies.kinematics import (
    SkinMatrix,
    batch_rodrigues,
    forward_kinematics,
    lbs,
    lbs_apply,
    lbs_matrix,
    make_transforms,
)
from dposer_cli.core.errors import AssetMismatchError, UnavailableError
from dposer_cli.core.parts import BODY_JOINTS, HAND_JOINTS
from dposer_cli.core.trace import TraceCache

log = logging.getLogger(__name__)

NUM_BETAS = 10
_INFLUENCES = 4  # mannequin-x keeps the four strongest skin weights per vertex
_FOREFOOT_ANGLE = 0.1  # rad, mannequin-x `_reshape_forefeet`
_FOREFOOT_LENGTH = 1.2
_CANDIDATES = 4  # vertices per region statistic evaluated with autograd (`WoodenRig._stats`)
_MATRIX_CACHE = 4  # sparse skinning operators of vertex subsets `MannequinBody` keeps (beside the whole mesh)
_CACHE_VALUES = 1 << 22  # most shaped-point coordinates `WoodenRig.shaped` keeps from one call to the next
# betas that need gradients (fitting): shaped points exact at an anchor, first-order (secant Jacobian) within
# this ∞-distance of it, re-anchored per row beyond it. Measured: ≤ 0.08 mm from exact at 0.1.
LINEAR_RADIUS = 0.1
_SECANT = LINEAR_RADIUS / 4  # half-width of the Jacobian's central differences
_LINEAR_VALUES = 1 << 20  # most Jacobian entries the linearisation keeps (larger subsets use autograd)
_REFLECT = (-1.0, 1.0, 1.0)  # mirror about the x = 0 plane (left ↔ right)
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")  # smplx order of finger-tip joints
_SMPLX_NAMES = {  # mannequin-x joint names → body-models SMPL-X names (mannequin-x `SMPLX_JOINT_NAMES`)
    "Torso": "Spine1", "Spine": "Spine2", "Chest": "Spine3", "L_Toe": "L_Foot", "R_Toe": "R_Foot",
    "L_Thorax": "L_Collar", "R_Thorax": "R_Collar",
}  # fmt: skip

# Landmark vertices of the neutral rest mesh standing in for SMPL-X's vertex joints (OpenPose BODY_25
# nose/eyes/ears/feet and finger tips). Each is the mesh vertex nearest to a target point, searched only
# among vertices skinned mostly to the named joint; targets are offsets (metres, SMPL-X frame: x = body
# left, y = up, z = forward) from the joint's mirror-symmetric rest position, placed where SMPL-X's
# vertices sit on a face and a foot. The wooden head is featureless: nose and eyes are points on the
# front of the egg at nose and eye height, ears are the sides of the head at ear height.
LANDMARKS: dict[str, tuple[str, tuple[float, float, float]]] = {
    # name: (joint whose region is searched and whose rest position the offset starts from, offset)
    "nose": ("Head", (0.0, 0.03, 0.13)),
    "right_eye": ("Head", (-0.032, 0.065, 0.10)),
    "left_eye": ("Head", (0.032, 0.065, 0.10)),
    "right_ear": ("Head", (-0.1, 0.035, -0.01)),
    "left_ear": ("Head", (0.1, 0.035, -0.01)),
    # big toe: front medial corner of the sole; small toe: lateral, a little behind; heel: back of the sole
    "left_big_toe": ("L_Toe", (-0.025, -0.01, 0.08)),
    "left_small_toe": ("L_Toe", (0.035, -0.01, 0.05)),
    "left_heel": ("L_Ankle", (0.0, -0.06, -0.06)),
    "right_big_toe": ("R_Toe", (0.025, -0.01, 0.08)),
    "right_small_toe": ("R_Toe", (-0.035, -0.01, 0.05)),
    "right_heel": ("R_Ankle", (0.0, -0.06, -0.06)),
}  # fmt: skip
# finger tips: the vertex of the distal segment furthest along the bone (joint 2 → joint 3)


def _asset(name: str) -> dict[str, np.ndarray]:
    try:
        resource = resources.files("mannequin") / "assets" / name
        with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ModuleNotFoundError:
        raise UnavailableError(
            "the built-in body needs the mannequin-x package, which is not installed",
            hint="pip install mannequin-x",
        ) from None
    except (OSError, ValueError) as exc:
        raise AssetMismatchError(f"cannot read mannequin-x asset {name}: {exc}") from None


def _snake(name: str) -> str:
    """mannequin-x joint name → smplx-style name ("L_Index1" → "left_index1")."""
    name = _SMPLX_NAMES.get(name, name)
    for short, long in (("L_", "left_"), ("R_", "right_")):
        if name.startswith(short):
            name = long + name[2:]
    return name.lower()


class _Terms(NamedTuple):
    """Which per-vertex terms of the shape pipeline are non-zero somewhere in a vertex set."""

    head: bool  # head box fit
    rigid: bool  # rigid torso
    fwl: bool  # left forefoot tilt and floor lift
    fwr: bool  # right forefoot tilt and floor lift
    sym: bool = False  # mirrored ball-joint vertices

    @classmethod
    def of(cls, pack: "_Pack", sym: bool = False) -> "_Terms":
        return cls(
            bool(pack.head.any()), bool(pack.rigid.any()), bool(pack.fwl.any()), bool(pack.fwr.any()), sym
        )


class _Pack(NamedTuple):
    """Per-vertex constants of the shape pipeline, shared (n, …) or gathered per batch row (B, n, …)."""

    x0: Tensor  # wooden mesh positions, (…, 3)
    w: Tensor  # skin weights of the mesh-to-skeleton map, (…, J)
    head: Tensor  # head influence (head box fit)
    rigid: Tensor  # bool: the vertex moves with the rigid torso
    fwl: Tensor  # left-foot influence (forefoot tilt, floor contact)
    fwr: Tensor  # right-foot influence

    def take(self, ids: Tensor | slice) -> "_Pack":
        return _Pack(*(t[ids] for t in self))


class WoodenRig(nn.Module):
    """Constants of the wooden mannequin and its shape pipeline (`Mannequin._prepare_shape` in torch).

    Shape-dependent quantities are computed for a batch of betas and for a named vertex subset only, so
    joints-only calls never touch the 24k-vertex mesh.
    """

    # buffers (registered in `_build`, `_derive`, `__init__`; declared here for type checkers)
    joint_rest: Tensor
    joint_dirs: Tensor
    sole_rest: Tensor
    sole_dirs: Tensor
    head_min_rest: Tensor
    head_max_rest: Tensor
    head_min_dirs: Tensor
    head_max_dirs: Tensor
    hand_mean: Tensor
    parent_idx: Tensor
    mirror: Tensor
    reflect: Tensor
    source_joints: Tensor
    align_joint: Tensor
    align_vec: Tensor
    align_src: Tensor
    align_flip: Tensor
    fit_joint: Tensor
    fit_child: Tensor
    fit_group: Tensor
    fit_src: Tensor
    fit_den: Tensor
    rigid_axis: Tensor
    rest_vertices: Tensor
    stats_is_head: Tensor
    stats_is_fl: Tensor
    stats_is_fr: Tensor
    regions_cols: Tensor
    regions_sources: Tensor
    regions_kt: Tensor
    align_len: Tensor
    align_axis: Tensor
    align_outer: Tensor
    rigid_len: Tensor
    rigid_dir: Tensor
    neutral_points: Tensor
    neutral_joints: Tensor
    # per-subset buffers of `add_subset` read by name (the others go through `_sub`)
    sub_stats_head: Tensor
    sub_stats_fwl: Tensor
    sub_stats_fwr: Tensor
    sub_full_w: Tensor
    sub_landmarks_w: Tensor
    sub_landmarks_pos: Tensor

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self._shape_cache: tuple[Tensor, dict[str, Tensor]] | None = None
        # `linear_anchor`: anchor betas (U, 10) and per subset (points (U, n, 3), Jacobian (U, n, 3, 10))
        self._anchor: tuple[Tensor, dict[str, tuple[Tensor, Tensor]]] | None = None
        self._held: tuple[Tensor, dict[str, tuple[Tensor, Tensor]]] | None = None  # `holding_anchor`
        self.linearise = True  # False: betas with gradients go through the exact shape pipeline
        wood, cal = _asset("wooden.npz"), _asset("smplx_calibration.npz")
        try:
            self._build(wood, cal)
        except KeyError as exc:
            raise AssetMismatchError(
                f"mannequin-x asset lacks key {exc}; this mannequin-x version is not supported",
                hint="pip install 'mannequin-x>=0.3,<0.4'",
            ) from None
        self.to(dtype)
        self._derive()
        with torch.no_grad():  # neutral identity, cached: most calls use betas = 0
            ctx = self.context(torch.zeros(1, NUM_BETAS, dtype=torch.float64).to(dtype))
            self.register_buffer("neutral_points", self.points(ctx, "full")[0], persistent=False)
            self.register_buffer("neutral_joints", ctx["rest"][0], persistent=False)

    # ---------------------------------------------------------------- assets → buffers
    def _build(self, wood: dict[str, np.ndarray], cal: dict[str, np.ndarray]) -> None:
        self.asset_names: tuple[str, ...] = tuple(str(n) for n in wood["joint_names"])
        self.parents: tuple[int, ...] = tuple(int(p) for p in wood["parents"])
        names = self.asset_names
        nj = len(names)
        self.index = {n: i for i, n in enumerate(names)}

        # skin binding exactly as mannequin-x `_bind_skin` (float32 sort and normalisation)
        weights32 = wood["skin_weights"].astype(np.float32)
        joint_idx = wood["skin_joint_indices"].astype(np.int64)
        strongest = np.argsort(weights32, axis=1)[:, -min(_INFLUENCES, weights32.shape[1]) :]
        joint_idx = np.take_along_axis(joint_idx, strongest, axis=1)
        w = np.take_along_axis(weights32, strongest, axis=1)
        w /= w.sum(axis=1, keepdims=True)
        rigid_owner = wood["skin_rigid_joint_indices"].astype(np.int64)
        rigid = rigid_owner >= 0
        joint_idx[rigid] = rigid_owner[rigid, None]
        w[rigid] = 0.0
        w[rigid, 0] = 1.0
        nv = joint_idx.shape[0]
        dense = np.zeros((nv, nj))
        np.add.at(
            dense,
            (np.repeat(np.arange(nv), joint_idx.shape[1]), joint_idx.ravel()),
            w.astype(np.float64).ravel(),
        )
        self.skin_idx, self.skin_w = joint_idx, w.astype(np.float64)  # numpy copies for set-up work

        def region(joints: Sequence[str]) -> np.ndarray:
            ids = [self.index[j] for j in joints]
            return np.where(np.isin(joint_idx, ids), self.skin_w, 0.0).sum(axis=1)

        head_infl, foot_l, foot_r = (
            region(["Head"]),
            region(["L_Ankle", "L_Toe"]),
            region(["R_Ankle", "R_Toe"]),
        )

        # ball-joint parts joint_L* / joint_R* are mirrored vertex for vertex (`_symmetrize_skin_joints`)
        partner = np.arange(nv)
        sym = np.zeros(nv, dtype=bool)
        parts = {
            str(n): (int(s), int(c))
            for n, s, c in zip(
                wood["skin_part_names"],
                wood["skin_part_vertex_starts"],
                wood["skin_part_vertex_counts"],
                strict=True,
            )
        }
        for name, (start, count) in parts.items():
            if name.startswith("joint_L"):
                rstart, rcount = parts[name.replace("joint_L", "joint_R")]
                assert rcount == count
                partner[start : start + count] = np.arange(rstart, rstart + count)
                partner[rstart : rstart + count] = np.arange(start, start + count)
                sym[start : start + count] = sym[rstart : rstart + count] = True
        mirror = np.array(
            [
                self.index.get(
                    ("R_" + n[2:]) if n.startswith("L_") else ("L_" + n[2:]) if n.startswith("R_") else n, j
                )
                for j, n in enumerate(names)
            ]
        )

        # per-joint bone fits of `skin_shape_transforms`: align one vector (single child, or a leaf's own
        # bone) or a similarity fit to all children; the head keeps the identity (mannequin-x override)
        neutral_offsets = wood["local_offsets"].astype(np.float32).astype(np.float64)
        children: list[list[int]] = [[] for _ in range(nj)]
        for j, p in enumerate(self.parents):
            if p >= 0:
                children[p].append(j)
        align_joint, align_vec, fit_joint, fit_child, fit_group = [], [], [], [], []
        for j, ch in enumerate(children):
            if j == self.index["Head"]:
                continue
            if len(ch) > 1:
                fit_joint.append(j)
                fit_child += ch
                fit_group += [len(fit_joint) - 1] * len(ch)
                continue
            vec = ch[0] if ch else (j if self.parents[j] >= 0 else None)
            if vec is not None and np.linalg.norm(neutral_offsets[vec]) > 0.0:  # zero bones keep the identity
                align_joint.append(j)
                align_vec.append(vec)
        src = neutral_offsets[align_vec]
        src_axis = src / np.linalg.norm(src, axis=1, keepdims=True)
        basis = np.eye(3)[np.argmin(np.abs(src_axis), axis=1)]
        flip_axis = np.cross(src_axis, basis)
        flip_axis /= np.linalg.norm(flip_axis, axis=1, keepdims=True)
        flip = 2.0 * flip_axis[:, :, None] * flip_axis[:, None, :] - np.eye(3)  # antiparallel-bone fallback
        fit_src = neutral_offsets[fit_child]
        fit_den = np.zeros(len(fit_joint))
        np.add.at(fit_den, fit_group, (fit_src**2).sum(axis=1))

        source_joints = wood["skin_source_joint_positions"].astype(np.float32).astype(np.float64)
        pelvis, chest = self.index["Pelvis"], self.index["Chest"]
        self._ids = {
            "head": self.index["Head"],
            "pelvis": pelvis,
            "chest": chest,
            "l_ankle": self.index["L_Ankle"],
            "r_ankle": self.index["R_Ankle"],
        }
        rigid_axis = source_joints[chest] - source_joints[pelvis]

        def buf(name: str, value: np.ndarray, dtype: torch.dtype | None = None) -> None:
            self.register_buffer(
                name, torch.as_tensor(np.ascontiguousarray(value), dtype=dtype), persistent=False
            )

        f64 = torch.float64
        buf("joint_rest", cal["joint_rest"], f64)
        buf("joint_dirs", cal["joint_dirs"], f64)
        buf("sole_rest", cal["sole_y_rest"], f64)
        buf("sole_dirs", cal["sole_y_dirs"], f64)
        buf("head_min_rest", cal["head_min_rest"], f64)
        buf("head_max_rest", cal["head_max_rest"], f64)
        buf("head_min_dirs", cal["head_min_dirs"], f64)
        buf("head_max_dirs", cal["head_max_dirs"], f64)
        buf("hand_mean", cal["hand_mean"].reshape(2, 45), f64)  # left, right (SMPL-X hands_mean)
        buf("parent_idx", np.maximum(np.array(self.parents), 0), torch.long)
        buf("mirror", mirror, torch.long)
        buf("reflect", np.array(_REFLECT), f64)
        buf("source_joints", source_joints, f64)
        buf("align_joint", np.array(align_joint), torch.long)
        buf("align_vec", np.array(align_vec), torch.long)
        buf("align_src", src, f64)
        buf("align_flip", flip, f64)
        buf("fit_joint", np.array(fit_joint), torch.long)
        buf("fit_child", np.array(fit_child), torch.long)
        buf("fit_group", np.array(fit_group), torch.long)
        buf("fit_src", fit_src, f64)
        buf("fit_den", fit_den, f64)
        buf("rigid_axis", rigid_axis, f64)
        buf("rest_vertices", wood["vertices"].astype(np.float32).astype(np.float64), f64)
        self.faces_np = wood["faces"].astype(np.int64)

        # per-vertex arrays, sliced per named subset (see `add_subset`)
        self._vert = {
            "w": dense,
            "x0": self.rest_vertices.numpy(),
            "head": head_infl,
            "rigid": rigid,
            "fwl": foot_l,
            "fwr": foot_r,
        }
        self._partner, self._sym = partner, sym
        self._subsets: dict[str, _Terms] = {}
        self.add_subset("full", np.arange(nv))
        stats = np.flatnonzero((head_infl > 0.5) | (foot_l > 0.5) | (foot_r > 0.5))
        self.add_subset("stats", stats)
        # masks over the subset's own vertex list (which also holds mirror partners)
        self.register_buffer("stats_is_head", self.sub_stats_head > 0.5, persistent=False)
        self.register_buffer("stats_is_fl", self.sub_stats_fwl > 0.5, persistent=False)
        self.register_buffer("stats_is_fr", self.sub_stats_fwr > 0.5, persistent=False)
        # the statistics are extremes over three regions (head, left foot, right foot): `_stats` searches the
        # regions grad-free with one product by a blend matrix over their own joints, then evaluates with
        # autograd only the candidate vertices
        full = _Pack(*(self._sub("stats", key) for key in _Pack._fields))
        members = [torch.nonzero(m)[:, 0] for m in (self.stats_is_head, self.stats_is_fl, self.stats_is_fr)]
        pack = full.take(torch.cat(members))
        cols = torch.nonzero(pack.w.abs().sum(0) > 0)[:, 0]
        pack = pack._replace(w=pack.w[:, cols])
        buf("regions_cols", cols.numpy(), torch.long)
        buf("regions_sources", source_joints[cols.numpy()], f64)
        for key, value in pack._asdict().items():
            self.register_buffer(f"regions_{key}", value, persistent=False)
        # mapped[c, v] = Σ_(j,d) [R_j | t_j − R_j s_j][c, d] · kt[(j,d), v]  (x_v homogeneous)
        homog = torch.cat([pack.x0, torch.ones_like(pack.x0[:, :1])], dim=-1)
        self.register_buffer(
            "regions_kt", (pack.w[:, :, None] * homog[:, None, :]).flatten(1).T.contiguous(), persistent=False
        )
        ends = np.cumsum([len(member) for member in members]).tolist()
        self._region_slices = {
            r: slice(a, b) for r, a, b in zip(("head", "fl", "fr"), [0, *ends[:-1]], ends, strict=True)
        }
        self._regions = {r: _Terms.of(pack.take(sl)) for r, sl in self._region_slices.items()}

    def _derive(self) -> None:
        """Constants derived from the asset buffers (in the model's dtype, as the per-call code had them)."""
        align_len = self.align_src.norm(dim=-1)
        align_axis = self.align_src / align_len[:, None]
        for name, value in (
            ("align_len", align_len),
            ("align_axis", align_axis),
            ("align_outer", align_axis[:, :, None] * align_axis[:, None, :]),
            ("rigid_len", self.rigid_axis.norm()),
            ("rigid_dir", self.rigid_axis / self.rigid_axis.norm()),
        ):
            self.register_buffer(name, value, persistent=False)

    def add_subset(self, name: str, vertex_ids: np.ndarray) -> None:
        """Register buffers to shape only `vertex_ids` (plus their mirror partners)."""
        vertex_ids = np.asarray(vertex_ids, dtype=np.int64)
        need = np.unique(np.concatenate([vertex_ids, self._partner[vertex_ids]]))
        for key, arr in self._vert.items():
            sub = arr[need]
            t = torch.as_tensor(np.ascontiguousarray(sub))
            if t.is_floating_point():
                t = t.to(self.rest_vertices.dtype)
            self.register_buffer(f"sub_{name}_{key}", t, persistent=False)
        self.register_buffer(
            f"sub_{name}_pos", torch.as_tensor(np.searchsorted(need, vertex_ids)), persistent=False
        )
        self.register_buffer(
            f"sub_{name}_ppos",
            torch.as_tensor(np.searchsorted(need, self._partner[vertex_ids])),
            persistent=False,
        )
        self.register_buffer(f"sub_{name}_sym", torch.as_tensor(self._sym[vertex_ids]), persistent=False)
        # skin columns of the joints that move the subset (all of them: None)
        w = self._sub(name, "w")
        cols = torch.nonzero(w.abs().sum(0) > 0)[:, 0]
        if len(cols) < w.shape[1]:
            self.register_buffer(f"sub_{name}_cols", cols, persistent=False)
            self.register_buffer(f"sub_{name}_wc", w[:, cols].contiguous(), persistent=False)
        pack = _Pack(*(self._sub(name, key) for key in _Pack._fields))
        self._subsets[name] = _Terms.of(pack, sym=bool(self._sym[vertex_ids].any()))

    def _sub(self, name: str, key: str) -> Tensor:
        return getattr(self, f"sub_{name}_{key}")

    def _pack(self, name: str) -> tuple["_Pack", Tensor | None]:
        """Per-vertex constants of subset `name` (its own vertex list, mirror partners included), with skin
        weights over the columns that move it, and those columns (None: all joints)."""
        pack = _Pack(*(self._sub(name, key) for key in _Pack._fields))
        cols = getattr(self, f"sub_{name}_cols", None)
        return (pack, None) if cols is None else (pack._replace(w=self._sub(name, "wc")), cols)

    def _regions_pack(self) -> "_Pack":
        return _Pack(*(getattr(self, f"regions_{key}") for key in _Pack._fields))

    # ---------------------------------------------------------------- shape pipeline
    def rest_joints(self, betas: Float[Tensor, "*b 10"]) -> Float[Tensor, "*b J 3"]:
        """Calibrated SMPL-X rest joints (exactly linear in the first ten betas)."""
        # (10, 3J): one matrix product (an einsum costs six operations)
        dirs = self.joint_dirs.flatten(0, 1).T
        return self.joint_rest + (betas @ dirs).unflatten(-1, self.joint_rest.shape)

    def _skin_transforms(self, display_offsets: Tensor) -> Tensor:
        """Per-joint bind transforms fitted to the shaped skeleton (`skin_shape_transforms`)."""
        batch = display_offsets.shape[:-2]
        eye = torch.eye(3, dtype=display_offsets.dtype, device=display_offsets.device)
        out = eye.expand(*batch, len(self.parents), 3, 3).clone()
        # one bone: the rotation taking the source bone onto the shaped one, scaled along it
        # (`_align_and_scale`)
        tgt = display_offsets[..., self.align_vec, :]
        tgt_len = tgt.norm(dim=-1)
        rot = _rotation_between(self.align_axis, tgt / tgt_len[..., None], self.align_flip)
        scale = eye + (tgt_len / self.align_len - 1.0)[..., None, None] * self.align_outer
        out[..., self.align_joint, :, :] = rot @ scale
        # similarity fit to several children (pelvis, chest, palms): Procrustes with reflection guard
        fit_t = display_offsets[..., self.fit_child, :]
        outer = fit_t[..., :, None] * self.fit_src[:, None, :]
        cov = torch.zeros(*batch, len(self.fit_joint), 3, 3, dtype=outer.dtype, device=outer.device)
        cov = cov.index_add(-3, self.fit_group, outer)
        u, _, vh = torch.linalg.svd(cov)
        with torch.no_grad():  # the sign is piecewise constant: no gradient (det's backward is costly)
            sign = torch.sign(torch.linalg.det(u @ vh))
        rot = u @ torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1)) @ vh
        rotated = (rot[..., self.fit_group, :, :] @ self.fit_src[:, :, None])[..., 0]
        num = torch.zeros(*batch, len(self.fit_joint), dtype=outer.dtype, device=outer.device)
        num = num.index_add(-1, self.fit_group, (fit_t * rotated).sum(-1))
        out[..., self.fit_joint, :, :] = rot * (num / self.fit_den)[..., None, None]
        return out

    def context(
        self, betas: Float[Tensor, "B 10"], *, all_vertices: bool = False, searched: int | None = None
    ) -> dict[str, Tensor]:
        """Everything shape-dependent that per-vertex shaping needs, for a batch of betas.

        The head box and the foot floor shifts are extremes over a region's vertices. By default only a
        few candidate vertices are evaluated with autograd (found grad-free first): the same values and
        the same gradients, since an extreme depends on its arg-extreme vertex alone. `all_vertices=True`
        evaluates every region vertex with autograd (the direct transcription, kept as the reference).
        `searched=u`: the candidates are searched on the first u rows only, and row i + k·u evaluates row i's
        (`_jacobian`'s shapes shifted by ±`_SECANT` from their anchor: the extremes' vertices do not change
        over such steps, and the search is ~40 % of a context).
        """
        rest = self.rest_joints(betas)
        display = 0.5 * (rest + self.reflect * rest[..., self.mirror, :])  # `symmetric_joints`
        display_offsets = display - display[..., self.parent_idx, :]
        display_offsets = torch.cat([display[..., :1, :], display_offsets[..., 1:, :]], dim=-2)
        ctx = {"rest": rest, "display": display, "betas": betas}
        ctx["map"] = make_transforms(self._skin_transforms(display_offsets), display)
        ctx["head_min"] = self.head_min_rest + betas @ self.head_min_dirs.T
        ctx["head_max"] = self.head_max_rest + betas @ self.head_max_dirs.T
        ctx["floor"] = (self.sole_rest + betas @ self.sole_dirs.T).amin(-1)
        # region statistics: head bounding box after mapping, and the floor shift of each foot
        if all_vertices:
            self._stats_all(ctx)
        else:
            self._stats(ctx, searched)
        return ctx

    def _torso(self, ctx: dict[str, Tensor]) -> Tensor:
        """The rigid torso's similarity, taking the source pelvis→chest axis onto the shaped one.

        Computed on first use and kept in `ctx`: most vertex sets have no rigid vertex.
        """
        if "rigid" not in ctx:
            display = ctx["display"]
            tgt = display[..., self._ids["chest"], :] - display[..., self._ids["pelvis"], :]
            tgt_len = tgt.norm(dim=-1)
            rot = _rotation_between(self.rigid_dir, tgt / tgt_len[..., None], None)
            ctx["rigid"] = rot * (tgt_len / self.rigid_len)[..., None, None]
        return ctx["rigid"]

    def _stats_all(self, ctx: dict[str, Tensor]) -> None:
        pack = _Pack(*(self._sub("stats", key) for key in _Pack._fields))
        v1 = self._map(ctx, pack)
        ctx["head_src_min"] = v1[..., self.stats_is_head, :].amin(-2)
        ctx["head_src_max"] = v1[..., self.stats_is_head, :].amax(-2)
        v3 = self._rigid(ctx, pack, self._head_fit(ctx, pack, v1))
        fwl, fwr = pack.fwl, pack.fwr
        dl, dr = self._forefoot(ctx, v3, fwl, "l_ankle"), self._forefoot(ctx, v3, fwr, "r_ankle")
        y = v3[..., 1] + dl[..., 1]
        ctx["shift_l"] = ((ctx["floor"][..., None] - y[..., self.stats_is_fl]) / fwl[self.stats_is_fl]).amax(
            -1
        )
        y = y + fwl * ctx["shift_l"][..., None] + dr[..., 1]
        ctx["shift_r"] = ((ctx["floor"][..., None] - y[..., self.stats_is_fr]) / fwr[self.stats_is_fr]).amax(
            -1
        )

    def _stats(self, ctx: dict[str, Tensor], searched: int | None = None) -> None:
        """`_stats_all` evaluated with autograd on the `_CANDIDATES` most extreme vertices per statistic.

        Keeping a few candidates rather than the arg-extreme alone resolves ties, and last-bit differences
        between the grad-free search and the exact evaluation, as `amin`/`amax` over the region would.
        """
        pack, cols, sl = self._regions_pack(), self.regions_cols, self._region_slices
        if any(self._regions[r].head or self._regions[r].rigid for r in ("fl", "fr")):
            self._stats_in_order(ctx)  # foot heights depend on the head box or the torso
            return
        with torch.no_grad():
            rows = ctx if searched is None else {k: t[:searched] for k, t in ctx.items()}
            v = self._search(rows)  # (B, 3, n): x, y, z of every region vertex
            head = self._head_candidates(v[..., sl["head"]]) + sl["head"].start
            y, z = v[..., 1, :], v[..., 2, :]
            gap = self._floor_gap(rows, y[..., sl["fl"]], z[..., sl["fl"]], pack.take(sl["fl"]), "fl", None)
            left = gap.topk(min(_CANDIDATES, gap.shape[-1]), dim=-1).indices + sl["fl"].start
            gap = self._floor_gap(
                rows, y[..., sl["fr"]], z[..., sl["fr"]], pack.take(sl["fr"]), "fr", gap.amax(-1)
            )
            right = gap.topk(min(_CANDIDATES, gap.shape[-1]), dim=-1).indices + sl["fr"].start
        ids = torch.cat([head.flatten(-2), left, right], dim=-1)
        if searched is not None:  # row i + k·searched evaluates row i's candidates
            ids = ids.repeat(ctx["betas"].shape[0] // searched, 1)
        v = self._map(ctx, pack.take(ids), cols)  # every candidate at once
        n_head, n_left = head.shape[-2] * head.shape[-1], left.shape[-1]
        self._head_box(ctx, v[..., :n_head, :].unflatten(-2, head.shape[-2:]))
        for key, region, part in (
            ("shift_l", "fl", slice(n_head, n_head + n_left)),
            ("shift_r", "fr", slice(n_head + n_left, None)),
        ):
            shift_l = ctx.get("shift_l")
            gap = self._floor_gap(
                ctx, v[..., part, 1], v[..., part, 2], pack.take(ids[..., part]), region, shift_l
            )
            ctx[key] = gap.amax(-1)

    def _stats_in_order(self, ctx: dict[str, Tensor]) -> None:
        """`_stats` for foot regions with head-fitted or rigid vertices: head box first, then each foot."""
        pack, cols, sl = self._regions_pack(), self.regions_cols, self._region_slices
        with torch.no_grad():
            head = self._head_candidates(self._search(ctx)[..., sl["head"]]) + sl["head"].start
        self._head_box(ctx, self._map(ctx, pack.take(head.flatten(-2)), cols).unflatten(-2, head.shape[-2:]))
        for key, region in (("shift_l", "fl"), ("shift_r", "fr")):
            shift_l = ctx.get("shift_l")
            with torch.no_grad():
                gap = self._foot_gap(ctx, pack.take(sl[region]), region, cols, shift_l)
                ids = gap.topk(min(_CANDIDATES, gap.shape[-1]), dim=-1).indices + sl[region].start
            ctx[key] = self._foot_gap(ctx, pack.take(ids), region, cols, shift_l).amax(-1)

    @staticmethod
    def _head_candidates(v: Tensor) -> Tensor:
        """(B, 6, k) vertex indices: the k smallest x, y, z, then the k largest x, y, z of v (B, 3, n)."""
        k = min(_CANDIDATES, v.shape[-1])
        return torch.cat([v.topk(k, dim=-1, largest=False).indices, v.topk(k, dim=-1).indices], dim=-2)

    @staticmethod
    def _head_box(ctx: dict[str, Tensor], v: Tensor) -> None:
        """Head box from the mapped candidates (B, 6, k, 3) of `_head_candidates`."""
        ctx["head_src_min"] = torch.diagonal(v[..., :3, :, :], dim1=-3, dim2=-1).amin(-2)
        ctx["head_src_max"] = torch.diagonal(v[..., 3:, :, :], dim1=-3, dim2=-1).amax(-2)

    def _search(self, ctx: dict[str, Tensor]) -> Tensor:
        """Mapped positions of every region vertex, coordinate-major (B, 3, n): one matrix product."""
        maps = ctx["map"].index_select(-3, self.regions_cols)
        rot = maps[..., :3, :3]
        trans = maps[..., :3, 3] - (rot * self.regions_sources[..., None, :]).sum(-1)
        affine = torch.cat([rot, trans[..., None]], dim=-1)  # (B, k, 3, 4)
        return affine.transpose(-3, -2).flatten(-2) @ self.regions_kt

    def _foot_gap(
        self, ctx: dict[str, Tensor], pack: "_Pack", region: str, cols: Tensor | None, shift_l: Tensor | None
    ) -> Tensor:
        """`_floor_gap` of foot-region vertices from their mesh positions (with head fit and torso)."""
        terms = self._regions[region]
        v = self._map(ctx, pack, cols)
        if terms.head:
            v = self._head_fit(ctx, pack, v)
        if terms.rigid:
            v = self._rigid(ctx, pack, v)
        return self._floor_gap(ctx, v[..., 1], v[..., 2], pack, region, shift_l)

    def _floor_gap(
        self, ctx: dict[str, Tensor], y: Tensor, z: Tensor, pack: "_Pack", region: str, shift_l: Tensor | None
    ) -> Tensor:
        """Per vertex of foot region "fl" / "fr" (B, n): the lift that puts it on the floor, from its height
        y and depth z after mapping (as `_stats_all`; terms that are zero in the whole region skipped)."""
        terms = self._regions[region]
        height = y + self._forefoot_dy(ctx, y, z, pack.fwl, "l_ankle") if terms.fwl else y
        if region == "fl":
            return (ctx["floor"][..., None] - height) / pack.fwl
        if terms.fwl:
            assert shift_l is not None
            height = height + pack.fwl * shift_l[..., None]
        if terms.fwr:
            height = height + self._forefoot_dy(ctx, y, z, pack.fwr, "r_ankle")
        return (ctx["floor"][..., None] - height) / pack.fwr

    def _map(self, ctx: dict[str, Tensor], pack: "_Pack", cols: Tensor | None = None) -> Tensor:
        # `_map_skin_to_skeleton` is itself a blend: Σ w (T_j (x − s_j) + d_j); `cols`: the joints of `pack.w`
        maps, sources = ctx["map"], self.source_joints
        if cols is not None:
            maps, sources = maps.index_select(-3, cols), sources.index_select(-2, cols)
        return lbs(pack.x0, maps, sources, pack.w)

    def _head_fit(self, ctx: dict[str, Tensor], pack: "_Pack", v: Tensor) -> Tensor:
        lo, hi = ctx["head_src_min"][..., None, :], ctx["head_src_max"][..., None, :]
        tlo, thi = ctx["head_min"][..., None, :], ctx["head_max"][..., None, :]
        fitted = tlo + (v - lo) * ((thi - tlo) / (hi - lo))
        return v + pack.head[..., None] * (fitted - v)

    def _rigid(self, ctx: dict[str, Tensor], pack: "_Pack", v: Tensor) -> Tensor:
        pelvis = self._ids["pelvis"]
        rel = pack.x0 - self.source_joints[pelvis]
        moved = rel @ self._torso(ctx).transpose(-1, -2) + ctx["display"][..., pelvis, None, :]
        return torch.where(pack.rigid[..., None], moved, v)

    def _forefoot(self, ctx: dict[str, Tensor], v: Tensor, weight: Tensor, ankle: str) -> Tensor:
        """Displacement of `_reshape_forefeet`'s tilt about the ankle (before the floor shift)."""
        rel = v - ctx["rest"][..., self._ids[ankle], None, :]
        c, s = np.cos(_FOREFOOT_ANGLE), np.sin(_FOREFOOT_ANGLE)
        dy = c * rel[..., 1] - s * _FOREFOOT_LENGTH * rel[..., 2] - rel[..., 1]
        dz = s * rel[..., 1] + c * _FOREFOOT_LENGTH * rel[..., 2] - rel[..., 2]
        return torch.stack([torch.zeros_like(dy), dy, dz], dim=-1) * weight[..., None]

    def _forefoot_dy(
        self, ctx: dict[str, Tensor], y: Tensor, z: Tensor, weight: Tensor, ankle: str
    ) -> Tensor:
        """The height part of `_forefoot` (same arithmetic), from heights and depths (B, n)."""
        a = ctx["rest"][..., self._ids[ankle], :]
        rel_y, rel_z = y - a[..., 1, None], z - a[..., 2, None]
        c, s = np.cos(_FOREFOOT_ANGLE), np.sin(_FOREFOOT_ANGLE)
        return (c * rel_y - s * _FOREFOOT_LENGTH * rel_z - rel_y) * weight

    def points(self, ctx: dict[str, Tensor], name: str) -> Tensor:
        """Shaped bind-pose positions of subset `name`'s vertices, (B, n, 3).

        Terms that are zero for every vertex of the subset (head fit, rigid torso, forefoot tilt and
        floor lift, mirror symmetrisation) are skipped: adding or blending in exact zeros changes nothing.
        """
        pack, cols = self._pack(name)
        terms = self._subsets[name]
        v = self._map(ctx, pack, cols)
        if terms.head:
            v = self._head_fit(ctx, pack, v)
        if terms.rigid:
            v = self._rigid(ctx, pack, v)
        if terms.fwl or terms.fwr:
            tilted = v
            if terms.fwl:
                tilted = tilted + self._forefoot(ctx, v, pack.fwl, "l_ankle")
            if terms.fwr:
                tilted = tilted + self._forefoot(ctx, v, pack.fwr, "r_ankle")
            lift = pack.fwl * ctx["shift_l"][..., None] + pack.fwr * ctx["shift_r"][..., None]
            v = torch.cat([tilted[..., :1], tilted[..., 1:2] + lift[..., None], tilted[..., 2:]], dim=-1)
        own = v[..., self._sub(name, "pos"), :]
        if not terms.sym:
            return own
        other = v[..., self._sub(name, "ppos"), :]
        return torch.where(self._sub(name, "sym")[:, None], 0.5 * (own + self.reflect * other), own)

    def shaped(self, betas: Tensor | None, names: Sequence[str]) -> tuple[Tensor, list[Tensor], bool]:
        """Rest joints (*b, J, 3), shaped subset points [(*b, n, 3)] and whether this is the neutral shape.

        `betas=None` uses the cached neutral shape. Betas that need no gradient are de-duplicated (a
        batch sharing one body shape costs one shape evaluation) and the last shapes' points are cached,
        so repeated calls with unchanged betas (IK, motion denoising) skip the shape pipeline.
        """
        if betas is None:
            return self.neutral_joints, [self.neutral_points[self._full_ids(n)] for n in names], True
        lead = betas.shape[:-1]
        flat = betas.reshape(-1, NUM_BETAS)
        rest = self.rest_joints(betas)
        if not flat.requires_grad:
            uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
            if uniq.shape[0] == 1 and not bool(uniq.any()):
                return self.shaped(None, names)
            pts = self._cached_points(uniq, names)
            return rest, [p[inverse].reshape(*lead, -1, 3) for p in pts], False
        if self.linearise and self._linear_size(flat, names) <= _LINEAR_VALUES:
            pts = linear_points(flat, *self.linear_anchor(flat, names))
        else:
            ctx = self.context(flat)
            pts = [self.points(ctx, n) for n in names]
        return rest, [p.reshape(*lead, -1, 3) for p in pts], False

    def linear_for(self, betas: Tensor, names: Sequence[str]) -> bool:
        """Whether `shaped` linearises these betas (they need gradients and the Jacobians stay small)."""
        return self.linearise and self._linear_size(betas.reshape(-1, NUM_BETAS), names) <= _LINEAR_VALUES

    def _linear_size(self, flat: Tensor, names: Sequence[str]) -> int:
        points = sum(len(self._sub(n, "pos")) for n in names)  # `points` returns one row per position
        return flat.shape[0] * points * 3 * NUM_BETAS

    def linear_anchor(self, flat: Tensor, names: Sequence[str]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The anchors β₀ (rows of `flat`) and per subset the exact points there and their Jacobian, for
        `linear_points`: shaped points of betas that need gradients are `p(β₀) + J(β₀)(β − β₀)` per row, with
        the Jacobian from `_jacobian`, re-anchored for rows farther than `LINEAR_RADIUS`.

        The shape pipeline costs ~⅔ of a joints-only forward + backward at batch 1, and a fit moves betas by
        ≤ 0.01 per step: re-anchoring every ≥ 10 steps keeps values within 0.1 mm of exact and the gradient
        within 0.1 % of the exact model's at the anchor.
        """
        held = self._held
        if held is not None and held[0].shape == flat.shape and all(n in held[1] for n in names):
            return held[0], [held[1][n] for n in names]  # checked by `holding_anchor`: no operations here
        anchor = self._anchor
        beta = flat.detach()
        fresh = (
            anchor is None
            or anchor[0].shape != beta.shape
            or anchor[0].dtype != beta.dtype
            or anchor[0].device != beta.device
            or any(n not in anchor[1] for n in names)
        )
        if fresh:
            anchor = (beta.clone(), dict(zip(names, self._jacobian(beta, names), strict=True)))
        else:
            assert anchor is not None
            far = torch.nonzero((beta - anchor[0]).abs().amax(-1) > LINEAR_RADIUS).flatten()
            if len(far):  # new tensors, not in-place: a graph built on the old anchor may still need it
                terms = dict(anchor[1])
                for n, (p, j) in zip(names, self._jacobian(beta[far], names), strict=True):
                    terms[n] = (terms[n][0].index_copy(0, far, p), terms[n][1].index_copy(0, far, j))
                anchor = (anchor[0].index_copy(0, far, beta[far]), terms)
        self._anchor = anchor
        return anchor[0], [anchor[1][n] for n in names]

    @contextmanager
    def holding_anchor(self, betas: Tensor, names: Sequence[str]) -> Iterator[tuple[Tensor, ...] | None]:
        """For a replayed optimisation step (`engine.optimize.StepPlan`): check the anchor of these betas (and
        re-anchor) now, and within the block hand it out without checking, so the step's loss runs no
        value-dependent operations. Yields the anchor tensors (the step's inputs), or None when these betas
        are not linearised."""
        flat = betas.detach().reshape(-1, NUM_BETAS)
        if not self.linear_for(flat, names):
            yield None
            return
        anchor, terms = self.linear_anchor(flat, names)
        self._held = (anchor, dict(zip(names, terms, strict=True)))
        try:
            yield (anchor, *(x for pair in terms for x in pair))
        finally:
            self._held = None

    def _jacobian(self, beta: Tensor, names: Sequence[str]) -> list[tuple[Tensor, Tensor]]:
        """Per subset: exact shaped points (U, n, 3) and their Jacobian in betas (U, n, 3, 10), the latter by
        central differences over ±`_SECANT` (a secant of the ±`LINEAR_RADIUS` window; float32 round-off
        keeps smaller steps less exact: 1e-5 m per unit beta here), all 21 shapes per row in one grad-free
        call, the region extremes searched on the anchors only (`context(searched=)`: 2–4× faster, the same
        values). (Forward-mode AD would be exact, but `torch.func` imports torch._dynamo on first use, ≈ 2 s,
        and `forward_ad` falls back to slow reference decompositions in this pipeline.)"""
        u = beta.shape[0]
        step = _SECANT * torch.eye(NUM_BETAS, dtype=beta.dtype, device=beta.device)
        shapes = torch.cat(
            [beta, (beta[None] + step[:, None]).flatten(0, 1), (beta[None] - step[:, None]).flatten(0, 1)]
        )
        with torch.no_grad():
            ctx = self.context(shapes, searched=u)
            out = []
            for n in names:
                pts = self.points(ctx, n)
                plus, minus = pts[u : u * (NUM_BETAS + 1)], pts[u * (NUM_BETAS + 1) :]
                jac = ((plus - minus) / (2 * _SECANT)).unflatten(0, (NUM_BETAS, u)).permute(1, 2, 3, 0)
                out.append((pts[:u].clone(), jac.contiguous()))
        return out

    def _cached_points(self, uniq: Tensor, names: Sequence[str]) -> list[Tensor]:
        """Shaped points of constant betas `uniq` (U, 10), from the cache of the last shapes when they match."""
        cached = self._shape_cache
        if (
            cached is None
            or cached[0].shape != uniq.shape
            or cached[0].dtype != uniq.dtype
            or cached[0].device != uniq.device
            or not torch.equal(cached[0], uniq)
        ):
            cached = (uniq.clone(), {})
        store = cached[1]
        missing = [n for n in names if n not in store]
        if missing:
            with torch.no_grad():
                ctx = self.context(uniq)
                store.update({n: self.points(ctx, n) for n in missing})
        if sum(p.numel() for p in store.values()) <= _CACHE_VALUES:
            self._shape_cache = cached
        return [store[n] for n in names]

    def _full_ids(self, name: str) -> Tensor | slice:
        return getattr(self, f"ids_{name}") if name != "full" else slice(None)

    def add_named_subset(self, name: str, vertex_ids: np.ndarray) -> None:
        """A subset plus its vertex ids (for slicing the cached neutral mesh)."""
        self.add_subset(name, vertex_ids)
        self.register_buffer(
            f"ids_{name}", torch.as_tensor(np.asarray(vertex_ids, dtype=np.int64)), persistent=False
        )


def _rotation_between(src: Tensor, tgt: Tensor, flip: Tensor | None) -> Tensor:
    """R with R·src = tgt for unit vectors (Rodrigues form of mannequin-x `_align_and_scale`)."""
    cross = torch.linalg.cross(src.expand_as(tgt), tgt, dim=-1)
    cos = (src * tgt).sum(-1)
    ok = cos > -0.999999
    x, y, z = cross.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
    denom = torch.where(ok, 1.0 + cos, torch.ones_like(cos))  # safe: the other branch is used there
    eye = torch.eye(3, dtype=src.dtype, device=src.device)
    rot = eye + k + (k @ k) / denom[..., None, None]
    if flip is not None:
        rot = torch.where(ok[..., None, None], rot, flip)
    return rot


def _landmark_vertices(rig: WoodenRig, points: np.ndarray, joints: np.ndarray) -> dict[str, int]:
    """Pick the landmark vertices of `LANDMARKS` and the finger tips on the neutral rest mesh.

    `joints` are the mirror-symmetric rest joints the mesh is built around (left/right picks mirror).
    """
    out: dict[str, int] = {}
    dominant = rig.skin_idx[np.arange(len(points)), np.argmax(rig.skin_w, axis=1)]
    for name, (owner, offset) in LANDMARKS.items():
        cand = np.flatnonzero(dominant == rig.index[owner])
        target = joints[rig.index[owner]] + np.array(offset)
        out[name] = int(cand[np.argmin(np.linalg.norm(points[cand] - target, axis=1))])
    for side, prefix in (("L", "left_"), ("R", "right_")):
        for finger in _FINGERS:
            j2, j3 = rig.index[f"{side}_{finger.capitalize()}2"], rig.index[f"{side}_{finger.capitalize()}3"]
            cand = np.flatnonzero(dominant == j3)
            direction = joints[j3] - joints[j2]
            out[prefix + finger] = int(cand[np.argmax((points[cand] - joints[j3]) @ direction)])
    return out


def linear_points(flat: Tensor, anchor: Tensor, terms: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """Linearised shaped points `p + J(β − β₀)` per row from `WoodenRig.linear_anchor` (a pure function)."""
    delta = (flat - anchor).unsqueeze(-1)
    return [p + torch.bmm(j.flatten(1, 2), delta).view_as(p) for p, j in terms]


def replayed_joints(
    rig: WoodenRig,
    trace: TraceCache,
    pose: Callable[..., tuple[Tensor, Tensor]],
    names: tuple[str, ...],
    betas: Tensor | None,
    subset: str,
    values: Sequence[Tensor],
) -> Tensor:
    """Joints of a joints-only call, replayed by `trace`: `pose(rest joints, subset points, *values)` returns
    (joints, ...). Betas that need gradients are linearised (`WoodenRig.linear_anchor`) with the anchor passed
    as inputs, so re-anchoring never invalidates a recording."""
    if betas is not None and betas.requires_grad and rig.linear_for(betas, [subset]):
        anchor, ((p0, jac),) = rig.linear_anchor(betas.reshape(-1, NUM_BETAS), [subset])
        linear = partial(_linear_pose, rig, pose)
        return trace.run(("linear", names), linear, betas, anchor, p0, jac, *values)[0]
    rest, (points,), _ = rig.shaped(betas, [subset])
    return trace.run(names, pose, rest, points, *values)[0]


def _linear_pose(
    rig: WoodenRig,
    pose: Callable[..., tuple[Tensor, Tensor]],
    betas: Tensor,
    anchor: Tensor,
    p0: Tensor,
    jac: Tensor,
    *values: Tensor,
) -> tuple[Tensor, Tensor]:
    """`pose` of betas that need gradients, their subset points linearised around `anchor`."""
    (points,) = linear_points(betas.reshape(-1, NUM_BETAS), anchor, [(p0, jac)])
    return pose(rig.rest_joints(betas), points.reshape(*betas.shape[:-1], -1, 3), *values)


class MannequinBody(nn.Module):
    """The built-in whole body (kind "mannequin"): SMPL-X body and hand rotations → wooden mannequin."""

    kind = "mannequin"
    rigid_root = True  # global_orient turns every output joint rigidly about joint 0 (see BodyModel)
    num_betas = NUM_BETAS
    num_expression = 0
    # buffers (registered in `__init__`)
    parents: Tensor
    faces: Tensor
    mean_hand_rot: Tensor
    fixed_rot: Tensor
    landmark_cols: Tensor
    landmark_weights: Tensor

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        rig = WoodenRig(dtype)
        self.rig = rig
        with torch.no_grad():
            zero = torch.zeros(1, NUM_BETAS, dtype=rig.joint_rest.dtype)
            joints_np = rig.context(zero)["display"][0].double().numpy()
        points_np = rig.neutral_points.double().numpy()
        self.landmarks = _landmark_vertices(rig, points_np, joints_np)
        rig.add_named_subset("landmarks", np.array(list(self.landmarks.values())))
        rig.to(dtype)
        self.skeleton_names = tuple(_snake(n) for n in rig.asset_names)
        if self.skeleton_names[:22] != ("pelvis", *BODY_JOINTS):
            raise AssetMismatchError(
                f"mannequin-x joint order changed ({self.skeleton_names[:22]}); "
                "this mannequin-x version is not supported"
            )
        self.joint_names = self.skeleton_names + tuple(self.landmarks)
        self.register_buffer("parents", torch.tensor(rig.parents), persistent=False)
        self.register_buffer("faces", torch.as_tensor(rig.faces_np), persistent=False)
        self._sets = build_joint_sets(self.joint_names, _BODY_SETS)
        first_l, first_r = self.skeleton_names.index("left_index1"), self.skeleton_names.index("right_index1")
        if self.skeleton_names[first_l : first_l + 15] != tuple(f"left_{j}" for j in HAND_JOINTS):
            raise AssetMismatchError(
                "mannequin-x finger order changed; this mannequin-x version is not supported"
            )
        self._left, self._right = slice(first_l, first_l + 15), slice(first_r, first_r + 15)
        # local rotations are assembled as [root + body (22), left fingers, right fingers, unposed joints]
        # (the palms): constant blocks (the mean hand when no hand pose is given) are computed once here
        left, right = range(first_l, first_l + 15), range(first_r, first_r + 15)
        fixed = [j for j in range(22, len(self.skeleton_names)) if j not in left and j not in right]
        order = torch.argsort(torch.tensor([*range(22), *left, *right, *fixed]))
        self._rot_order = None if bool((order == torch.arange(len(order))).all()) else order
        with torch.no_grad():
            self.register_buffer(
                "mean_hand_rot", batch_rodrigues(rig.hand_mean.reshape(2, 15, 3)), persistent=False
            )
        eye = torch.eye(3, dtype=rig.joint_rest.dtype)
        self.register_buffer("fixed_rot", eye.expand(len(fixed), 3, 3).clone(), persistent=False)
        # landmark skinning over the joints that move landmarks only
        w_land = rig.sub_landmarks_w[rig.sub_landmarks_pos]
        cols = torch.nonzero(w_land.abs().sum(0) > 0)[:, 0]
        self.register_buffer("landmark_cols", cols, persistent=False)
        self.register_buffer("landmark_weights", w_land[:, cols].clone(), persistent=False)
        # sparse skinning operators of the neutral mesh (key None) and of vertex subsets (`_neutral_matrix`)
        self._matrices: dict[bytes | None, SkinMatrix] = {}
        self._trace = TraceCache()

    def _neutral_matrix(self, vertex_ids: Tensor | None = None) -> SkinMatrix:
        """The cached sparse skinning operator of the neutral mesh, or of its vertices `vertex_ids` (the same
        rows: the same values). Sparse tensors are not module buffers: `_apply` (`.to()`) drops the cache."""
        key = None if vertex_ids is None else vertex_ids.cpu().numpy().tobytes()
        matrix = self._matrices.get(key)
        if matrix is None:
            points, weights = self.rig.neutral_points, self.rig.sub_full_w
            if vertex_ids is not None:
                points, weights = points[vertex_ids], weights[vertex_ids]
            matrix = self._matrices[key] = lbs_matrix(points, weights)
            if len(self._matrices) > _MATRIX_CACHE:  # the oldest subset goes first (the whole mesh stays)
                del self._matrices[next(k for k in self._matrices if k is not None)]
        return matrix

    @property
    def joint_sets(self) -> tuple[str, ...]:
        return tuple(self._sets)

    def joint_set(self, name: str) -> Tensor:
        """Indices into the output joints of a named set ("body22", "openpose25", "lhand21", "rhand21")."""
        return lookup_joint_set(self._sets, name, self.kind).to(self.parents.device)

    def _rotations(self, p: dict[str, Tensor], batch: tuple[int, ...]) -> Tensor:
        """Local rotation matrices of the skeleton joints, (*batch, 54, 3, 3)."""
        dtype, device = self.fixed_rot.dtype, self.fixed_rot.device
        root = expand_param(p.get("global_orient"), batch, 3, dtype, device).reshape(*batch, 1, 3)
        body = expand_param(p.get("body_pose"), batch, 63, dtype, device).reshape(*batch, 21, 3)
        blocks = [batch_rodrigues(torch.cat([root, body], dim=-2))]
        for key, row in (("left_hand_pose", 0), ("right_hand_pose", 1)):
            hand = p.get(key)
            if hand is None:  # the SMPL-X mean hand (flat_hand_mean=False)
                blocks.append(self.mean_hand_rot[row].expand(*batch, 15, 3, 3))
            else:
                aa = hand.expand(*batch, 45) + self.rig.hand_mean[row]
                blocks.append(batch_rodrigues(aa.reshape(*batch, 15, 3)))
        blocks.append(self.fixed_rot.expand(*batch, *self.fixed_rot.shape))
        rots = torch.cat(blocks, dim=-3)
        return rots if self._rot_order is None else rots.index_select(-3, self._rot_order)

    def forward(
        self, *, return_vertices: bool = True, vertex_ids: Tensor | None = None, **params: Tensor | None
    ) -> BodyOutput:
        """Pose the mannequin; missing parameters are zeros (betas 0 = the SMPL-X neutral shape).

        With `return_vertices=False` only the skeleton and the landmark vertices are shaped and skinned; with
        `vertex_ids` only those vertices are skinned and returned (`BodyModel`).
        """
        device = self.rig.joint_rest.device
        batch, p = self._gather(params)
        names = tuple(k for k in _POSE_KEYS if k in p)
        values = [p[k] for k in names]
        betas = p.get("betas")
        if not return_vertices:  # fits and IK call this hundreds of times: replayed from a recording
            pose = partial(self._pose, names, batch)
            joints = replayed_joints(self.rig, self._trace, pose, names, betas, "landmarks", values)
            return BodyOutput(joints=joints, vertices=None)
        ids = (
            None
            if vertex_ids is None
            else check_vertex_ids(vertex_ids, self.rig.neutral_points.shape[0], device)
        )
        rest, (land, *full), neutral = self.rig.shaped(betas, ["landmarks", "full"])
        joints, transforms = self._pose(names, batch, rest, land, *values)
        transl = p.get("transl")
        shift = 0.0 if transl is None else transl[..., None, :]
        if neutral and device.type in ("cpu", "cuda"):  # shared rest mesh: cached sparse skinning matrix
            vertices = lbs_apply(self._neutral_matrix(ids), transforms, rest) + shift
        else:
            points, weights = full[0], self.rig.sub_full_w
            if ids is not None:
                points, weights = points.index_select(-2, ids), weights[ids]
            vertices = lbs(points, transforms, rest, weights) + shift
        return BodyOutput(joints=joints, vertices=vertices.expand(*batch, *vertices.shape[-2:]))

    def _gather(self, params: dict[str, Tensor | None]) -> tuple[tuple[int, ...], dict[str, Tensor]]:
        """(batch shape, the given parameters checked and on the model's dtype and device)."""
        return gather_params(
            params,
            _BODY_DIMS,
            model="the mannequin body",
            dtype=self.rig.joint_rest.dtype,
            device=self.rig.joint_rest.device,
            coeffs={"betas": NUM_BETAS, "expression": None},
        )

    def kinematics(self, **params: Tensor | None) -> tuple[Tensor, Tensor]:
        """The skeleton as forward kinematics sees it: local rotation matrices (*batch, 54, 3, 3) of the joints
        (`parents` order: the root's `global_orient`, the body joints, the hands with the SMPL-X mean hand, the
        fixed joints' rest turns) and the rest joints (54, 3) they turn, at the first row's `betas`."""
        batch, p = self._gather(params)
        betas = p.get("betas")
        rest = (
            self.rig.neutral_joints
            if betas is None
            else self.rig.rest_joints(betas.reshape(-1, NUM_BETAS)[:1])
        )
        return self._rotations(p, batch), rest.reshape(-1, 3)

    def holding_step(self, betas: Tensor) -> AbstractContextManager[tuple[Tensor, ...] | None]:
        """What a replayed optimisation step of joints-only calls with these (row) betas needs as inputs
        (`WoodenRig.holding_anchor`; `tasks.fit` plans its steps with it)."""
        return self.rig.holding_anchor(betas, ["landmarks"])

    def _pose(
        self, names: tuple[str, ...], batch: tuple[int, ...], rest: Tensor, land: Tensor, *values: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Output joints (skeleton, landmarks, + transl) and world transforms from the shaped rest joints and
        landmark points and the pose parameters `names` (a pure function of its tensors: `TraceCache`)."""
        p = dict(zip(names, values, strict=True))
        transforms, joints = forward_kinematics(self._rotations(p, batch), rest, self.parents)
        cols = self.landmark_cols
        landmarks = lbs(
            land, transforms.index_select(-3, cols), rest.index_select(-2, cols), self.landmark_weights
        )
        joints = torch.cat([joints, landmarks], dim=-2)
        transl = p.get("transl")
        if transl is not None:
            joints = joints + transl[..., None, :]
        return joints.expand(*batch, *joints.shape[-2:]), transforms

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "MannequinBody":
        self._trace.clear()  # recordings hold the old buffers
        self._matrices.clear()
        return super()._apply(fn, recurse)


class MannequinHand(nn.Module):
    """One hand of the mannequin (kind "mannequin-hand"), wrist at the origin.

    `global_orient` is the wrist's rotation, `hand_pose` the 15 finger joints in SMPL-X/MANO order (zero =
    the SMPL-X mean hand of that side), `betas` SMPL-X body shape (it sets finger lengths), `transl` is
    added last. Joints: wrist, 15 finger joints (MANO order), then the five finger tips (thumb, index,
    middle, ring, pinky) — the same 21-joint layout as `MANOBody`. The mesh is the mannequin's hand up to
    the wrist cut (vertices skinned only to the wrist, palm and fingers).
    """

    kind = "mannequin-hand"
    rigid_root = True
    num_betas = NUM_BETAS
    num_expression = 0
    # buffers (registered in `__init__`)
    weights: Tensor
    chain: Tensor
    tips: Tensor
    tip_weights: Tensor
    parents: Tensor
    faces: Tensor
    mean: Tensor

    def __init__(self, side: str = "right", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        self.side = side
        body = MannequinBody(dtype)
        rig = body.rig
        self.rig = rig
        s = "R" if side == "right" else "L"
        wrist, palm = rig.index[f"{s}_Wrist"], rig.index[f"{s}_Hand"]
        fingers = [rig.index[f"{s}_{j.capitalize()}"] for j in HAND_JOINTS]
        chain = [wrist, *fingers]
        pos = {j: i for i, j in enumerate(chain)}
        pos[palm] = 0  # the palm joint sits on the wrist and never turns: fold it into the wrist
        parents = [-1] + [pos[rig.parents[j]] for j in fingers]
        owned = np.isin(rig.skin_idx, [*chain, palm]) | (rig.skin_w == 0.0)
        region = np.flatnonzero(owned.all(axis=1))
        remap = -np.ones(len(rig.skin_idx), dtype=np.int64)
        remap[region] = np.arange(len(region))
        faces = remap[rig.faces_np]
        faces = faces[(faces >= 0).all(axis=1)]
        prefix = f"{side}_"
        tips = [int(np.searchsorted(region, body.landmarks[prefix + f])) for f in _FINGERS]
        rig.add_named_subset(f"hand_{side}", region)
        rig.add_named_subset(f"hand_{side}_tips", region[tips])  # joints-only calls shape just these
        rig.to(dtype)
        # skin columns: wrist (+ palm), then the fingers
        col = torch.tensor([wrist, *fingers])
        w_full = rig._sub(f"hand_{side}", "w")[rig._sub(f"hand_{side}", "pos")]
        w = w_full[:, col].clone()
        w[:, 0] += w_full[:, palm]
        self.register_buffer("weights", w, persistent=False)
        self.register_buffer("chain", col, persistent=False)
        self.register_buffer("tips", torch.as_tensor(np.array(tips)), persistent=False)
        self.register_buffer("tip_weights", w[tips].clone(), persistent=False)
        self.register_buffer("parents", torch.tensor(parents), persistent=False)
        self.register_buffer("faces", torch.as_tensor(faces), persistent=False)
        self.register_buffer("mean", rig.hand_mean[1 if side == "right" else 0].clone(), persistent=False)
        self.joint_names: tuple[str, ...] = ("wrist", *HAND_JOINTS, *_FINGERS)
        self._sets = build_joint_sets(self.joint_names, _HAND_SETS)
        self._region = f"hand_{side}"
        self._trace = TraceCache()

    @property
    def joint_sets(self) -> tuple[str, ...]:
        return tuple(self._sets)

    def joint_set(self, name: str) -> Tensor:
        """Indices into the output joints of a named set ("hand21", "mano16")."""
        return lookup_joint_set(self._sets, name, self.kind).to(self.parents.device)

    def forward(
        self, *, return_vertices: bool = True, vertex_ids: Tensor | None = None, **params: Tensor | None
    ) -> BodyOutput:
        """Pose the hand; missing parameters are zeros (zero `hand_pose` = the mean hand). `vertex_ids`: only
        those vertices (`BodyModel`; the hand's few thousand are skinned all the same)."""
        dtype, device = self.rig.joint_rest.dtype, self.rig.joint_rest.device
        batch, p = gather_params(
            params,
            _HAND_DIMS,
            model="the mannequin hand",
            dtype=dtype,
            device=device,
            coeffs={"betas": NUM_BETAS},
        )
        names = tuple(k for k in _HAND_DIMS if k in p)
        values = [p[k] for k in names]
        betas = p.get("betas")
        if not return_vertices:  # fits and IK call this hundreds of times: replayed from a recording
            pose = partial(self._pose, names, batch, False)
            joints = replayed_joints(
                self.rig, self._trace, pose, names, betas, f"{self._region}_tips", values
            )
            return BodyOutput(joints=joints, vertices=None)
        ids = None if vertex_ids is None else check_vertex_ids(vertex_ids, self.weights.shape[0], device)
        rest_all, (pts,), _ = self.rig.shaped(betas, [self._region])
        joints, vertices = self._pose(names, batch, True, rest_all, pts, *values)
        return BodyOutput(joints=joints, vertices=vertices if ids is None else vertices.index_select(-2, ids))

    def holding_step(self, betas: Tensor) -> AbstractContextManager[tuple[Tensor, ...] | None]:
        """As `MannequinBody.holding_step`."""
        return self.rig.holding_anchor(betas, [f"{self._region}_tips"])

    def _pose(
        self,
        names: tuple[str, ...],
        batch: tuple[int, ...],
        mesh: bool,
        rest_all: Tensor,
        pts: Tensor,
        *values: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Joints and (`mesh`) the hand's vertices — else its finger tips again — from the shaped rest joints,
        the shaped region (or tip) points and the parameters `names` (a pure function: `TraceCache`)."""
        p = dict(zip(names, values, strict=True))
        aa = torch.cat(
            [
                expand_param(p.get("global_orient"), batch, 3, pts.dtype, pts.device).reshape(*batch, 1, 3),
                (
                    expand_param(p.get("hand_pose"), batch, 45, pts.dtype, pts.device).reshape(*batch, 45)
                    + self.mean
                ).reshape(*batch, 15, 3),
            ],
            dim=-2,
        )
        chain = rest_all.index_select(-2, self.chain)  # index_select: a cheaper backward than indexing
        origin = chain[..., :1, :]
        rest = chain - origin
        transforms, joints = forward_kinematics(batch_rodrigues(aa), rest, self.parents)
        pts = pts - origin
        tips = lbs(pts.index_select(-2, self.tips) if mesh else pts, transforms, rest, self.tip_weights)
        transl = p.get("transl")
        shift = 0.0 if transl is None else transl[..., None, :]
        joints = (torch.cat([joints, tips], dim=-2) + shift).expand(*batch, 21, 3)
        if not mesh:
            return joints, tips
        vertices = lbs(pts, transforms, rest, self.weights) + shift
        return joints, vertices.expand(*batch, *vertices.shape[-2:])

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "MannequinHand":
        self._trace.clear()  # recordings hold the old buffers
        return super()._apply(fn, recurse)


_BODY_DIMS = {
    "global_orient": 3,
    "body_pose": 63,
    "left_hand_pose": 45,
    "right_hand_pose": 45,
    "jaw_pose": 3,
    "leye_pose": 3,
    "reye_pose": 3,
    "transl": 3,
}
_POSE_KEYS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")
_HAND_DIMS = {"global_orient": 3, "hand_pose": 45, "transl": 3}
_BODY_SETS = {
    "body22": ("pelvis", *BODY_JOINTS),
    "openpose25": OPENPOSE25_NAMES,
    "lhand21": hand21_names("left_"),
    "rhand21": hand21_names("right_"),
}
_HAND_SETS = {"hand21": hand21_names(""), "mano16": ("wrist", *HAND_JOINTS)}
