"""Pixels: meshes, skeletons, contact sheets, overlays and motion frames as uint8 arrays.

numpy in, arrays out; pyrender (EGL) is imported lazily and `soft` (numpy + Pillow) is the fallback.
Never imports the engine or the body models; `io/media.py` writes the arrays to files.
"""

from dposer_cli.render.draw import (
    contact_sheet,
    draw_keypoints,
    motion_frames,
    overlay_mesh,
    render_mesh,
    render_skeleton,
    side_by_side,
)
from dposer_cli.render.scene import select_renderer

__all__ = [
    "contact_sheet",
    "draw_keypoints",
    "motion_frames",
    "overlay_mesh",
    "render_mesh",
    "render_skeleton",
    "select_renderer",
    "side_by_side",
]
