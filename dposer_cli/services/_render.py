"""The file side of the commands' pictures: load the body models a picture needs, draw it with
`tasks.pictures` (arrays), write it with `io.media`."""

import logging
from pathlib import Path

import torch
from torch import Tensor

from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.core.errors import MissingAssetError
from dposer_cli.core.parts import Part
from dposer_cli.io.media import save_image
from dposer_cli.tasks import pictures
from dposer_cli.tasks.pictures import GRID_MAX

log = logging.getLogger(__name__)


def load_part_body(part: Part, body_model: Path | None, device: torch.device) -> BodyModel:
    """The body model that pictures `part` (faces: FLAME, else `MissingAssetError`)."""
    return load_body(pictures.BODY_KINDS[Part(part)], body_model, device)


def _flame(body_model: Path | None, device: torch.device) -> BodyModel | None:
    try:
        return load_body("face", body_model, device)
    except MissingAssetError:
        return None


def render_sheet(
    part: Part,
    poses: Tensor,
    path: Path,
    *,
    body_model: Path | None,
    renderer: str,
    device: torch.device,
    cell: int = 256,
    max_items: int = GRID_MAX,
    title: str | None = None,
) -> Path | None:
    """Draw the first `max_items` poses into one PNG as `part` needs them (`tasks.pictures.pose_sheet`);
    None when there are none. Faces without FLAME are drawn as charts."""
    poses = poses[:max_items]
    if len(poses) == 0:
        return None
    faces = part in (Part.face, Part.face_shape)
    body = _flame(body_model, device) if faces else load_part_body(part, body_model, device)
    flame = _flame(body_model, device) if part is Part.wholebody else None
    image = pictures.pose_sheet(part, poses, body, renderer=renderer, cell=cell, flame=flame, title=title)
    return save_image(path, image)


def completion_sheet(
    part: Part,
    inputs: Tensor,
    completed: Tensor,
    hidden: Tensor,
    *,
    truth: bool,
    path: Path,
    body_model: Path | None,
    renderer: str,
    device: torch.device,
    max_rows: int = 16,
    cell: int = 224,
    title: str | None = None,
) -> Path | None:
    """`tasks.pictures.completion_sheet` of the first `max_rows` inputs as a PNG; None (with a warning) when
    the part's body model is missing."""
    try:
        body = load_part_body(part, body_model, device)
    except MissingAssetError as exc:
        log.warning("no picture for --part %s: %s", part.value, exc.message)
        return None
    image = pictures.completion_sheet(
        part,
        inputs[:max_rows],
        completed[:max_rows],
        hidden[:max_rows],
        body,
        truth=truth,
        renderer=renderer,
        cell=cell,
        title=title,
    )
    return save_image(path, image)
