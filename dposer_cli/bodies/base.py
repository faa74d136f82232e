"""One interface for every body model: `BodyModel`, `BodyOutput`, named joint sets and parameter handling.

The models (`mannequin`, `smplx_family`) import this module; `loader.load_body` imports the models. Keeping
the factory out of here is what keeps the package free of import cycles.

Parameters (axis-angle radians, any leading dims, missing = zeros): `global_orient` (…,3),
`body_pose` (…,63), `left_hand_pose`/`right_hand_pose` (…,45), `hand_pose` (…,45, hand models),
`jaw_pose` (…,3), `expression` (…,E), `betas` (…,n ≤ num_betas), `transl` (…,3); SMPL-X conventions,
zero hand parameters = the mean hand (`flat_hand_mean=False`).
"""

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from dposer_cli.bodies.kinematics import broadcast_shapes
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import BODY_JOINTS


@dataclass
class BodyOutput:
    """What a body model returns."""

    joints: Tensor  # (*batch, J, 3) metres, the model's native joint list (see `joint_names`)
    vertices: Tensor | None  # (*batch, V, 3) metres, or None (no mesh, or return_vertices=False)


@runtime_checkable
class BodyModel(Protocol):
    """Implemented by MannequinBody, MannequinHand, SMPLXBody, MANOBody and FLAMEBody (nn.Modules).

    Calls are stateless: `model(body_pose=..., betas=...)` with any leading batch dims, a parameter given as
    None is a missing one (zeros); a keyword-only `return_vertices=False` skips the mesh where the model allows
    it, and `vertex_ids` ((n,) mesh vertex indices) returns only those vertices, (*batch, n, 3), skinning
    only them where the model can (the same values as indexing the whole mesh, to float rounding).
    """

    kind: str  # "mannequin" | "mannequin-hand" | "smplx" | "mano" | "flame"
    # optional class attribute `rigid_root = True`: the output joints at `global_orient = R`, `transl = t`
    # are R·(J₀ − J₀[0]) + J₀[0] + t of those at zero (a camera stage then needs no forward per step)
    # optional method `holding_step(betas)`: see `step_inputs`
    # optional method `kinematics(**params)` → ((*batch, J_skel, 3, 3) each skeleton joint's rotation relative
    # to its parent for these pose parameters, (J_skel, 3) the rest joints they turn, at the first row's betas):
    # MannequinBody, SMPLXBody (whole-body BVH exports)
    joint_names: tuple[str, ...]
    num_betas: int

    @property
    def faces(self) -> Tensor | None:
        """(F, 3) long."""
        ...

    @property
    def parents(self) -> Tensor:
        """(J_skel,) kinematic-tree parents of the first J_skel joints, -1 for the root."""
        ...

    def __call__(
        self, *, return_vertices: bool = True, vertex_ids: Tensor | None = None, **params: Tensor | None
    ) -> BodyOutput: ...

    def joint_set(self, name: str) -> Tensor: ...

    def to(self, device: "str | torch.device") -> "BodyModel": ...


# ---------------------------------------------------------------- joint names and named joint sets
OPENPOSE25_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "pelvis",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
)  # fmt: skip  (OpenPose BODY_25; MidHip = pelvis as in smplx's smpl_to_openpose, spec §7.6)
BODY22_NAMES = ("pelvis", *BODY_JOINTS)


def step_inputs(
    model: "BodyModel", betas: Tensor | None
) -> AbstractContextManager[tuple[Tensor, ...] | None]:
    """What a replayed optimisation step (`engine.optimize.StepPlan`) of joints-only calls needs from `model`:
    a context yielding its tensors that may change from step to step (the mannequin's checked shape anchor of
    these row `betas`; nothing for SMPL-X, MANO, FLAME), or None for a model that cannot hand them over.
    `betas`: the row betas when they are free parameters of the optimisation, None when they are fixed."""
    holding = getattr(model, "holding_step", None)
    if holding is None:
        return nullcontext(None)
    return holding(betas.detach()) if betas is not None else nullcontext(())


def hand21_names(prefix: str) -> tuple[str, ...]:
    """OpenPose hand order: wrist, then thumb, index, middle, ring, pinky as joints 1–3 + tip (spec §7.7)."""
    out = [f"{prefix}wrist"]
    for finger in ("thumb", "index", "middle", "ring", "pinky"):
        out += [f"{prefix}{finger}{i}" for i in (1, 2, 3)] + [f"{prefix}{finger}"]
    return tuple(out)


def build_joint_sets(joint_names: Sequence[str], sets: Mapping[str, Sequence[str]]) -> dict[str, Tensor]:
    """Resolve named joint sets (tuples of joint names) to index tensors into `joint_names`."""
    pos = {n: i for i, n in enumerate(joint_names)}
    return {name: torch.tensor([pos[j] for j in members], dtype=torch.long) for name, members in sets.items()}


def lookup_joint_set(sets: Mapping[str, Tensor], name: str, model: str) -> Tensor:
    if name not in sets:
        raise InputError(
            f"the {model} model has no joint set {name!r}{suggest(name, list(sets))}",
            hint="joint sets: " + ", ".join(sets),
        )
    return sets[name]


# ---------------------------------------------------------------- parameter handling shared by models
def gather_params(
    params: Mapping[str, object],
    dims: Mapping[str, int],
    *,
    model: str,
    dtype: torch.dtype,
    device: torch.device,
    coeffs: Mapping[str, int | None] | None = None,
) -> tuple[tuple[int, ...], dict[str, Tensor]]:
    """Validate keyword parameters and return (broadcast batch shape, tensors on dtype/device).

    `dims` are fixed last-axis sizes; `coeffs` are coefficient vectors that may be shorter than the model's
    size (zero-padded) but not longer (None: accepted and ignored). Tensors are not expanded.
    """
    coeffs = coeffs or {}
    out: dict[str, Tensor] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key not in dims and key not in coeffs:
            valid = [*dims, *coeffs]
            raise InputError(
                f"{model} takes no parameter {key!r}{suggest(key, valid)}",
                hint="parameters: " + ", ".join(valid),
            )
        t = torch.as_tensor(value).to(device=device, dtype=dtype)
        if t.ndim == 0:
            raise InputError(
                f"{model}: {key} must have a last axis of size {dims.get(key, coeffs.get(key))}, got a scalar"
            )
        if key in dims and t.shape[-1] != dims[key]:
            raise InputError(
                f"{model}: {key} has {t.shape[-1]} values in its last axis; expected {dims[key]}"
            )
        if key in coeffs:
            size = coeffs[key]
            if size is None:  # accepted for interface compatibility, not used by this model
                continue
            if t.shape[-1] > size:
                raise InputError(f"{model}: {key} has {t.shape[-1]} coefficients; this model has {size}")
            if t.shape[-1] < size:
                t = torch.nn.functional.pad(t, (0, size - t.shape[-1]))
        out[key] = t
    batch = broadcast_shapes([tuple(t.shape[:-1]) for t in out.values()])
    if batch is None:
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in out.items())
        raise InputError(f"{model}: parameter batch shapes do not broadcast: {shapes}")
    return batch, out


def expand_param(
    value: Tensor | None, batch: Sequence[int], dim: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """`value` broadcast to (*batch, dim), or zeros when it is missing."""
    if value is None:
        return torch.zeros(*batch, dim, dtype=dtype, device=device)
    return value.expand(*batch, dim)


def check_vertex_ids(vertex_ids: Tensor, num_vertices: int, device: torch.device) -> Tensor:
    """`vertex_ids` (`BodyModel` calls) as a long tensor on `device`, or an `InputError` naming what is wrong."""
    ids = torch.as_tensor(vertex_ids)
    if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InputError(
            f"vertex_ids must be a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}"
        )
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= num_vertices):
        raise InputError(
            f"vertex_ids must lie in [0, {num_vertices}), got {int(ids.min())}..{int(ids.max())}"
        )
    return ids.to(device=device, dtype=torch.long)
