"""`load_body`: which body model to use and where its files are.

Search order (`dposer_cli.core.paths.body_model_dirs`): `--body-model PATH`, `$DPOSER_BODY_MODELS`,
`<models cache>/body_models`. Each place may be a folder in smplx layout (`smplx/SMPLX_NEUTRAL.npz`,
`mano/MANO_RIGHT.pkl`, `flame/FLAME_NEUTRAL.pkl` + landmark embeddings), the model's own folder, or a
model file. When nothing is found the body and the hand fall back to the built-in mannequin (logged at
INFO); faces need FLAME and raise `MissingAssetError`. A path the user names explicitly must exist and
hold the right model, else the error names it.
"""

import logging
from pathlib import Path

import torch

from dposer_cli.bodies.base import BodyModel
from dposer_cli.bodies.mannequin import MannequinBody, MannequinHand
from dposer_cli.bodies.smplx_family import FLAMEBody, MANOBody, SMPLXBody
from dposer_cli.core.device import resolve_device
from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError, suggest
from dposer_cli.core.parts import FLAME_FILES
from dposer_cli.core.paths import body_model_dirs

log = logging.getLogger(__name__)

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
                f"no FLAME model found (searched {searched}); put {', '.join(FLAME_FILES[:-1])} and "
                f"{FLAME_FILES[-1]} in {first}",
                hint="FLAME is licensed: register at https://flame.is.tue.mpg.de, download FLAME 2020, and pass "
                "its folder with --body-model or set DPOSER_BODY_MODELS",
            )
        fallback = MannequinBody() if resolved == "body" else MannequinHand(side)
        roots = ", ".join(dict.fromkeys(str(p) for p in body_model_dirs(None)))
        log.info("body model: built-in %s (no %s model in %s)", fallback.kind, _MODEL[resolved], roots)
        log.debug("body model: tried %s", searched)
        return fallback.to(dev)

    model: SMPLXBody | MANOBody | FLAMEBody
    if resolved == "body":
        model = SMPLXBody(found)
    elif resolved == "hand":
        model = MANOBody(found, side=side)
    else:
        model = FLAMEBody(found)
    log.info("body model: %s from %s", _MODEL[resolved], found)
    return model.to(dev)
