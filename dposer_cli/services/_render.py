"""Shared helper for services that picture poses: part vectors → body model → contact sheet."""

import logging
from pathlib import Path

import numpy as np
import torch

from dposer_cli.core.errors import MissingAssetError
from dposer_cli.core.parts import PARTS, Part

log = logging.getLogger(__name__)

# which body model pictures each part (load_body kind)
_BODY_KIND = {Part.body: "body", Part.wholebody: "body", Part.hand: "hand", Part.face: "face", Part.face_shape: "face"}
# camera per part: hands lie along -x with the palm turned away from the default front camera
_VIEW = {Part.hand: "back"}


def part_params(part: Part, poses: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split part vectors (..., D) into body-model keyword arguments."""
    params = {k: poses[..., s] for k, s in PARTS[part].slices().items()}
    if part is Part.hand:  # hand models take `hand_pose`
        params = {"hand_pose": params["hand_pose"]}
    return params


def pose_items(part: Part, poses: torch.Tensor, body_model: Path | None, device: torch.device) -> list[dict]:
    """Meshes (or skeletons) for a contact sheet; raises MissingAssetError for faces without FLAME."""
    from dposer_cli.bodies.base import load_body

    body = load_body(_BODY_KIND[part], body_model, device)
    with torch.no_grad():
        out = body(**part_params(part, poses.to(device)))
    if out.vertices is not None and body.faces is not None:
        faces = body.faces.cpu().numpy()
        return [{"vertices": v, "faces": faces} for v in out.vertices.cpu().numpy()]
    parents = body.parents.cpu().numpy()
    return [{"joints": j[: len(parents)], "parents": parents} for j in out.joints.cpu().numpy()]


def render_sheet(part: Part, poses: torch.Tensor, path: Path, *, body_model: Path | None, renderer: str,
                 device: torch.device, cell: int = 256, max_items: int = 64) -> Path | None:
    """Render up to `max_items` poses into one PNG; returns None (with a log line) when impossible."""
    from dposer_cli.io.media import save_image
    from dposer_cli.render.draw import contact_sheet

    try:
        items = pose_items(part, poses[:max_items], body_model, device)
    except MissingAssetError as exc:
        log.warning("no picture for --part %s: %s", part.value, exc.message)
        return None
    image = contact_sheet(items, cell=cell, renderer=renderer, view=_VIEW.get(part, "front"))
    return save_image(path, np.asarray(image))
