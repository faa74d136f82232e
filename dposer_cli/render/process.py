"""The sampling process as video frames: samples side by side, from pure noise to the final poses.

Each frame is a grid (rows × `cols` cells) of meshes and/or skeletons under a caption band (the step and
diffusion time). One camera, framed once on every point of every frame, sees all cells of all frames, so
poses keep their position and scale from frame to frame and movement is real movement. The last frame is
held (`hold` repeats) so the result stays on screen. Like `draw`, this returns uint8 arrays and writes no
files (`io/media.save_video` does); it needs no body model.
"""

import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import UInt8

from dposer_cli.core.errors import InputError
from dposer_cli.render.draw import contact_sheet, label
from dposer_cli.render.scene import BODY_COLOR, background_image, frame_points, select_renderer
from dposer_cli.render.threads import map_each, picture_workers

MAX_VIDEO_FRAMES = 120  # whatever the step count: process frames + the final hold
PROCESS_SECONDS = 3.0  # the process part lasts about this long (fps between MIN_FPS and MAX_FPS)
MIN_FPS, MAX_FPS = 8, 30
NOISY_COLOR = (0.80, 0.72, 0.64)  # a warmer clay for rows that show the noisy state (row_colors)

Item = dict[str, np.ndarray]


def video_timing(process_frames: int, max_frames: int = MAX_VIDEO_FRAMES) -> tuple[int, int]:
    """(fps, hold) for `process_frames` frames: about `PROCESS_SECONDS` of process, then about one second
    of final hold, never more than `max_frames` frames in all."""
    if process_frames < 1 or process_frames > max_frames:
        raise InputError(f"process video: {process_frames} frames; expected 1 to {max_frames}")
    fps = min(MAX_FPS, max(MIN_FPS, round(process_frames / PROCESS_SECONDS)))
    return fps, min(fps, max_frames - process_frames)


def _corners(items: Sequence[Item]) -> np.ndarray:
    """The 8 corners of the axis-aligned box around every finite point of `items`."""
    pts = np.concatenate(
        [
            np.asarray(it["vertices"] if "vertices" in it else it["joints"], np.float64).reshape(-1, 3)
            for it in items
        ]
    )
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise InputError("process video: a frame has no finite vertices or joints")
    lo, hi = pts.min(0), pts.max(0)
    return np.array([[(hi if (c >> a) & 1 else lo)[a] for a in range(3)] for c in range(8)])


def caption_band(cell: int) -> int:
    """Height in pixels of the caption band above a grid of `cell`-pixel cells."""
    return max(18, cell // 7)


def draw_caption(frame: np.ndarray, text: str, band: int) -> None:
    """The top `band` rows of uint8 `frame` (H, W, 3) in place: white, `text` in them, a thin rule under."""
    px = max(11, round(band * 0.6))
    frame[:band] = 255
    frame[band - 1] = 200
    label(frame, text, max(4, px // 2), max(1, (band - px) // 2 - 1), px)


def process_frames(
    frames: Sequence[Sequence[Item]],
    *,
    captions: Sequence[str],
    cols: int,
    row_labels: Sequence[str] | None = None,
    row_colors: Sequence[tuple[float, float, float]] | None = None,
    cell: int = 192,
    renderer: str = "auto",
    view: str = "front",
    hold: int = 0,
) -> UInt8[np.ndarray, "T H W 3"]:
    """Render a sampling process: frame k is a grid of `frames[k]`'s items (row-major, `cols` per row).

    Args:
        frames: per frame, its items (`{"vertices", "faces"}` or `{"joints", "parents"}`), the same number in
            every frame. Read twice (framing, then drawing), so it may be a lazy sequence.
        captions: one caption per frame, drawn in the band above the grid (e.g. "step 12/50  t = 0.53").
        cols: cells per row (the samples); rows = items per frame / cols.
        row_labels: optional caption per row, in the row's first cell.
        row_colors: optional mesh colour per row (sRGB 0-1); default the clay of `draw`.
        cell: side of one cell in pixels; renderer: auto | pyrender | soft; view: as `draw.render_mesh`.
        hold: extra copies of the last frame (the final hold); see `video_timing`.

    Returns:
        (len(frames) + hold, H, W, 3) uint8 frames, H = caption band + rows·cell, W = cols·cell.
    """
    n_frames = len(frames)
    if n_frames == 0:
        raise InputError("process video: no frames to draw")
    if len(captions) != n_frames:
        raise InputError(f"process video: {len(captions)} captions for {n_frames} frames")
    if cols < 1 or int(cell) < 16 or hold < 0:
        raise InputError(
            f"process video: need cols >= 1, cell >= 16 px and hold >= 0 (got {cols}, {cell}, {hold})"
        )
    cell = int(cell)
    per_frame = len(frames[0])
    rows = math.ceil(per_frame / cols)
    if per_frame == 0:
        raise InputError("process video: frames have no items")
    for labels, what in ((row_labels, "row labels"), (row_colors, "row colours")):
        if labels is not None and len(labels) != rows:
            raise InputError(f"process video: {len(labels)} {what} for {rows} rows")

    # one camera for everything: framed on the bounding boxes of all frames (exact for front/back views)
    corners = []
    for k in range(n_frames):
        items = frames[k]
        if len(items) != per_frame:
            raise InputError(f"process video: frame {k} has {len(items)} items; frame 0 has {per_frame}")
        corners.append(_corners(items))
    framing = frame_points(np.concatenate(corners), view, cell)

    band = caption_band(cell)
    px_row = max(10, cell // 14)
    width, grid_h = cols * cell, rows * cell
    colors = [np.asarray(c, np.float64) for c in (row_colors or [BODY_COLOR] * rows)]
    backend = select_renderer(renderer)
    out = np.empty((n_frames + hold, band + grid_h, width, 3), np.uint8)

    def draw(k: int) -> None:
        # row colours go to meshes only (skeletons keep their depth-cued bones)
        items = [
            {**it, "colors": colors[i // cols]} if "vertices" in it else it for i, it in enumerate(frames[k])
        ]
        try:
            grid = contact_sheet(items, cols=cols, cell=cell, renderer=backend, framing=framing)
        except InputError as exc:
            raise InputError(f"process video frame {k}: {exc.message}", hint=exc.hint) from None
        frame = out[k]
        frame[band:] = background_image(width, grid_h)
        frame[band:, : grid.shape[1]] = grid
        draw_caption(frame, str(captions[k]), band)
        for r, text in enumerate(row_labels or []):
            label(frame, str(text), px_row // 2, band + r * cell + px_row // 3, px_row)

    map_each(draw, range(n_frames), workers=picture_workers(n_frames, backend))  # frames side by side
    out[n_frames:] = out[n_frames - 1]
    return out
