"""One interface for every body model, and `load_body`: which model to use and where its files are.

Search order (`dposer_cli.core.paths.body_model_dirs`): `--body-model PATH`, `$DPOSER_BODY_MODELS`,
`<models cache>/body_models`. Each place may be a folder in smplx layout (`smplx/SMPLX_NEUTRAL.npz`,
`mano/MANO_RIGHT.pkl`, `flame/FLAME_NEUTRAL.pkl` + landmark embeddings), the model's own folder, or a
model file. When nothing is found the body and the hand fall back to the built-in mannequin (logged at
INFO); faces need FLAME and raise `MissingAssetError`. A path the user names explicitly must exist and
hold the right model, else the error names it.

Parameters (axis-angle radians, any leading dims, missing = zeros): `global_orient` (…,3),
`body_pose` (…,63), `left_hand_pose`/`right_hand_pose` (…,45), `hand_pose` (…,45, hand models),
`jaw_pose` (…,3), `expression` (…,E), `betas` (…,n ≤ num_betas), `transl` (…,3); SMPL-X conventions,
zero hand parameters = the mean hand (`flat_hand_mean=False`).
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from dposer_cli.core.device import resolve_device
from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError, suggest
from dposer_cli.core.parts import BODY_JOINTS
from dposer_cli.core.paths import body_model_dirs

log = logging.getLogger(__name__)


@dataclass
class BodyOutput:
    """What a body model returns."""

    joints: Tensor  # (*batch, J, 3) metres, the model's native joint list (see `joint_names`)
    vertices: Tensor | None  # (*batch, V, 3) metres, or None (no mesh, or return_vertices=False)


@runtime_checkable
class BodyModel(Protocol):
    """Implemented by MannequinBody, MannequinHand, SMPLXBody, MANOBody and FLAMEBody (nn.Modules).

    Calls are stateless: `model(body_pose=..., betas=...)` with any leading batch dims; a keyword-only
    `return_vertices=False` skips the mesh where the model allows it.
    """

    kind: str  # "mannequin" | "mannequin-hand" | "smplx" | "mano" | "flame"
    joint_names: tuple[str, ...]
    faces: Tensor | None  # (F, 3) long
    parents: Tensor  # (J_skel,) kinematic-tree parents of the first J_skel joints, -1 for the root
    num_betas: int

    def __call__(self, **params: Tensor) -> BodyOutput: ...

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
    try:
        batch = torch.broadcast_shapes(*(t.shape[:-1] for t in out.values())) if out else ()
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in out.items())
        raise InputError(f"{model}: parameter batch shapes do not broadcast: {shapes}") from None
    return tuple(batch), out


def expand_param(
    value: Tensor | None, batch: Sequence[int], dim: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """`value` broadcast to (*batch, dim), or zeros when it is missing."""
    if value is None:
        return torch.zeros(*batch, dim, dtype=dtype, device=device)
    return value.expand(*batch, dim)


# ---------------------------------------------------------------- finding model files
_KINDS = {"body": "body", "hand": "hand", "face": "face",
          # accepted aliases: part names and `PartSpec.body_kind`
          "wholebody": "body", "smplx": "body", "mano": "hand", "flame": "face", "face-shape": "face",
          "face_shape": "face"}  # fmt: skip
_MODEL = {"body": "SMPL-X", "hand": "MANO", "face": "FLAME"}
_FOLDER = {"body": "smplx", "hand": "mano", "face": "flame"}


def model_filenames(kind: str, side: str = "right") -> tuple[str, ...]:
    """File names that hold `kind`'s model, preferred first."""
    if kind == "body":
        return ("SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl")
    if kind == "hand":
        stem = f"MANO_{side.upper()}"
        return (f"{stem}.pkl", f"{stem}.npz")
    return ("FLAME_NEUTRAL.pkl", "FLAME_NEUTRAL.npz")


def _file_kind(path: Path) -> str | None:
    name = path.name.upper()
    for prefix, kind in (("SMPLX", "body"), ("MANO", "hand"), ("FLAME", "face")):
        if name.startswith(prefix):
            return kind
    return None


def _in_folder(root: Path, kind: str, side: str) -> tuple[Path | None, list[Path]]:
    tried = [d / f for d in (root / _FOLDER[kind], root) for f in model_filenames(kind, side)]
    return next((p for p in tried if p.is_file()), None), tried


def find_model_file(
    kind: str, path: Path | None = None, *, side: str = "right"
) -> tuple[Path | None, list[Path]]:
    """The model file for `kind` ("body" | "hand" | "face") and every path tried.

    Raises:
        MissingAssetError: `path` was given and does not exist.
        AssetMismatchError: `path` was given but holds no model of this kind.
    """
    tried: list[Path] = []
    explicit = Path(path).expanduser() if path is not None else None
    if explicit is not None:
        if not explicit.exists():
            raise MissingAssetError(
                f"body model path {explicit} does not exist",
                hint=f"pass a folder with {_FOLDER[kind]}/{model_filenames(kind, side)[0]} "
                "or the model file itself",
            )
        if explicit.is_file():
            found_kind = _file_kind(explicit)
            if found_kind not in (None, kind):
                raise AssetMismatchError(
                    f"{explicit} is a {_MODEL[found_kind]} file; this needs a {_MODEL[kind]} model "
                    f"({'/'.join(model_filenames(kind, side))})"
                )
            if kind == "hand" and side.upper() not in explicit.name.upper() and found_kind == "hand":
                raise AssetMismatchError(
                    f"{explicit} is not a {side} MANO hand (expected {model_filenames(kind, side)[0]})"
                )
            return explicit, [explicit]
        found, tried = _in_folder(explicit, kind, side)
        if found is None:
            raise AssetMismatchError(
                f"{explicit} holds no {_MODEL[kind]} model: expected "
                f"{explicit / _FOLDER[kind] / model_filenames(kind, side)[0]} or "
                f"{explicit / model_filenames(kind, side)[0]}"
            )
        return found, tried
    for root in body_model_dirs(None):
        if root.is_file():
            if _file_kind(root) == kind:
                return root, [*tried, root]
            tried.append(root)
            continue
        found, more = _in_folder(root, kind, side)
        tried += more
        if found is not None:
            return found, tried
    return None, tried


def load_body(
    kind: str, path: Path | None = None, device: "str | torch.device" = "cpu", *, side: str = "right"
) -> BodyModel:
    """The body model for `kind`: "body" (SMPL-X, else the mannequin), "hand" (MANO, else the mannequin
    hand) or "face" (FLAME only).

    Raises:
        InputError: unknown kind or side.
        MissingAssetError: an explicit path does not exist; or no FLAME model was found for a face.
        AssetMismatchError: an explicit path has the wrong layout, or a model file is malformed.
        UnavailableError: a real model file was found but the `smplx` extra is not installed.
    """
    resolved = _KINDS.get(str(kind))
    if resolved is None:
        raise InputError(
            f"unknown body-model kind {kind!r}{suggest(str(kind), ['body', 'hand', 'face'])}",
            hint="kinds: body, hand, face",
        )
    if side not in ("right", "left"):
        raise InputError(f"unknown hand side {side!r} (expected 'right' or 'left')")
    dev = resolve_device(device)
    found, tried = find_model_file(resolved, path, side=side)
    if found is None:
        searched = ", ".join(str(p) for p in tried)
        if resolved == "face":
            first = body_model_dirs(None)[0] / "flame"
            raise MissingAssetError(
                f"no FLAME model found (searched {searched}); put FLAME_NEUTRAL.pkl, flame_static_embedding.pkl "
                f"and flame_dynamic_embedding.npy in {first}",
                hint="FLAME is licensed: register at https://flame.is.tue.mpg.de, download FLAME 2020, and pass "
                "its folder with --body-model or set DPOSER_BODY_MODELS",
            )
        from dposer_cli.bodies.mannequin import MannequinBody, MannequinHand

        model = MannequinBody() if resolved == "body" else MannequinHand(side)
        log.info(
            "body model: built-in mannequin (%s; no %s model found in %s)",
            model.kind,
            _MODEL[resolved],
            searched,
        )
        return model.to(dev)

    from dposer_cli.bodies.smplx_family import FLAMEBody, MANOBody, SMPLXBody

    if resolved == "body":
        model = SMPLXBody(found)
    elif resolved == "hand":
        model = MANOBody(found, side=side)
    else:
        model = FLAMEBody(found)
    log.info("body model: %s from %s", _MODEL[resolved], found)
    return model.to(dev)
