"""Pictures as arrays: meshes, skeletons, contact sheets, photo overlays, keypoints, charts and motion frames.

Every function returns uint8 RGB arrays, (H, W, 3) or (T, H, W, 3), and never writes files
(`io/media.py` saves them). Inputs are numpy arrays (metres, body coordinates y up, facing +z), so
this module needs no body model. `renderer` is `auto|pyrender|soft` (see `scene.select_renderer`).

Array arguments are annotated as plain `np.ndarray` because they are validated here, with one-line
`InputError`s (a runtime shape checker would pre-empt those); their shapes are in each docstring.

Contact-sheet items are dicts: a mesh `{"vertices": (V, 3), "faces": (F, 3)}` or a skeleton
`{"joints": (J, 3), "parents": (J,)}`. Optional keys: `"colors"`, an sRGB (r, g, b) or one per vertex /
joint, (V, 3) or (J, 3), in 0-1 or 0-255; for skeletons `"hidden"` (J,) bool (joints not drawn, NaN
allowed there), and `"targets"` (J, 3) with `"target_visible"` (J,) bool: target positions drawn as filled
dots (seen) or rings (hidden), each joined to its joint by a thin line (inverse kinematics).
"""

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Float, UInt8
from PIL import Image, ImageDraw, ImageFont

from dposer_cli.core.errors import InputError
from dposer_cli.render.scene import (
    BACKGROUND,
    BODY_COLOR,
    PERSON_COLORS,
    Framing,
    Intrinsics,
    background_image,
    frame_points,
    image_size,
    rasterize,
    select_renderer,
    vertex_normals,
    view_rotation,
)

Color = tuple[float, float, float]
Number = int | float
Item = Mapping[str, np.ndarray]
KEYPOINT_COLORS = ((230, 57, 70), (29, 120, 230), (40, 170, 80), (240, 150, 20), (150, 60, 200))
TEXT_COLOR = (40, 40, 40)
MUTED_TEXT = (115, 115, 115)
BONE_NEAR, BONE_FAR = np.array([45, 70, 120]), np.array([150, 170, 205])  # depth cue for skeletons
JOINT_COLOR = (220, 80, 60)
HIGHLIGHT_COLOR = (0.96, 0.55, 0.18)  # sRGB 0-1: what a command filled in (completed joints)
TRUTH_COLOR = (0.42, 0.74, 0.44)  # the ground truth of that region
GHOST_COLOR = (0.84, 0.84, 0.86)  # what the input does not have
TARGET_COLOR = (40, 160, 80)  # targets the solver saw (filled dots)
HIDDEN_TARGET_COLOR = (215, 60, 50)  # targets hidden from the solver (rings)
SERIES_COLORS = ((205, 75, 60), (45, 110, 205), (60, 150, 80), (130, 130, 130), (150, 60, 200))
BAR_COLOR = (70, 110, 190)
MAX_BAND = 4096  # contact sheets taller than this are drawn in row bands (GL viewport limits)


# --------------------------------------------------------------------------------------------------
# validation


def _mesh(vertices: np.ndarray, faces: np.ndarray, what: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"{what}: vertices have shape {v.shape}; expected (V, 3)")
    if f.ndim != 2 or f.shape[1] != 3 or (f.size and not np.issubdtype(f.dtype, np.integer)):
        raise InputError(f"{what}: faces have shape {f.shape} ({f.dtype}); expected integer (F, 3)")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise InputError(f"{what}: face indices span [{f.min()}, {f.max()}] but there are {len(v)} vertices")
    if not np.isfinite(v).all():
        raise InputError(f"{what}: vertices contain NaN or inf")
    return v, f.astype(np.int64)


def _flags(value: np.ndarray | None, n: int, what: str, key: str) -> np.ndarray | None:
    if value is None:
        return None
    flags = np.asarray(value)
    if flags.shape != (n,) or flags.dtype != bool:
        raise InputError(f"{what}: {key} has shape {flags.shape} ({flags.dtype}); expected bool ({n},)")
    return flags


def _skeleton(
    joints: np.ndarray, parents: np.ndarray, what: str = "skeleton", hidden: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    j = np.asarray(joints, np.float64)
    p = np.asarray(parents).astype(np.int64).reshape(-1)
    if j.ndim != 2 or j.shape[1] != 3:
        raise InputError(f"{what}: joints have shape {j.shape}; expected (J, 3)")
    if len(p) != len(j) or (len(p) and (p.min() < -1 or p.max() >= len(j))):
        raise InputError(
            f"{what}: parents must be (J,) = ({len(j)},) indices in [-1, J), got {len(p)} values"
        )
    shown = np.ones(len(j), bool) if hidden is None else ~hidden
    if not np.isfinite(j[shown]).all():
        raise InputError(f"{what}: joints contain NaN or inf")
    return j, p


def _rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise InputError(f"{what}: expected a uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def _color(color: Color | None, default: Color = BODY_COLOR) -> np.ndarray:
    c = np.asarray(default if color is None else color, np.float64).reshape(-1)
    if c.shape != (3,):
        raise InputError(f"color must be an (r, g, b) triple, got {color!r}")
    return c / 255.0 if c.max() > 1.0 else c  # accept 0-255 as well as 0-1


def _colors(value: np.ndarray | Color | None, n: int, what: str) -> np.ndarray | None:
    """One sRGB 0-1 colour per point, (n, 3), from one colour or n of them (0-1 or 0-255)."""
    if value is None:
        return None
    c = np.asarray(value, np.float64)
    if c.shape == (3,):
        c = np.broadcast_to(c, (n, 3))
    if c.shape != (n, 3) or not np.isfinite(c).all():
        raise InputError(f"{what}: colors have shape {c.shape}; expected (3,) or ({n}, 3)")
    return c / 255.0 if c.max() > 1.0 else c


def _rgb255(color: Color | Sequence[float] | np.ndarray) -> tuple[int, int, int]:
    c = np.asarray(color, np.float64).reshape(3)
    c = c * 255.0 if c.max() <= 1.0 else c
    r, g, b = (int(round(float(x))) for x in np.clip(c, 0, 255))
    return r, g, b


def _cell_size(cell: int | tuple[int, int], what: str) -> tuple[int, int]:
    w, h = image_size(cell)
    if min(w, h) < 16:
        raise InputError(f"{what}: cell must be at least 16 px, got {cell}")
    return w, h


class _Item(NamedTuple):
    """A validated contact-sheet item."""

    kind: str  # "mesh" | "skeleton"
    points: np.ndarray  # (V, 3) vertices or (J, 3) joints
    topology: np.ndarray  # (F, 3) faces or (J,) parents
    colors: np.ndarray | None  # (V, 3) / (J, 3) sRGB 0-1
    hidden: np.ndarray | None  # skeleton: (J,) joints not drawn
    targets: np.ndarray | None  # skeleton: (J, 3) target positions (NaN: none)
    target_visible: np.ndarray | None  # skeleton: (J,) targets the solver saw

    def framing_points(self) -> np.ndarray:
        pts = self.points if self.hidden is None else self.points[~self.hidden]
        if self.targets is not None:
            pts = np.concatenate([pts, self.targets[np.isfinite(self.targets).all(axis=1)]])
        return pts

    def moved(self, shift: np.ndarray) -> "_Item":
        targets = None if self.targets is None else self.targets + shift
        return self._replace(points=self.points + shift, targets=targets)


def _mesh_colors(item: _Item) -> np.ndarray:
    """The item's colours, or the clay of `scene.BODY_COLOR` for every vertex."""
    if item.colors is not None:
        return item.colors
    return np.broadcast_to(np.asarray(BODY_COLOR, np.float64), item.points.shape)


def _parse_item(item: Item, what: str) -> _Item:
    if "vertices" in item and "faces" in item:
        v, f = _mesh(item["vertices"], item["faces"], what)
        return _Item("mesh", v, f, _colors(item.get("colors"), len(v), what), None, None, None)
    if "joints" in item and "parents" in item:
        n = len(np.asarray(item["joints"]))
        hidden = _flags(item.get("hidden"), n, what, "hidden")
        j, p = _skeleton(item["joints"], item["parents"], what, hidden)
        targets, seen = None, None
        if item.get("targets") is not None:
            targets = np.asarray(item["targets"], np.float64)
            if targets.shape != j.shape:
                raise InputError(f"{what}: targets have shape {targets.shape}; expected {j.shape}")
            seen = _flags(item.get("target_visible"), n, what, "target_visible")
            seen = np.ones(n, bool) if seen is None else seen
        return _Item("skeleton", j, p, _colors(item.get("colors"), n, what), hidden, targets, seen)
    raise InputError(f"{what} has keys {sorted(item)}; expected vertices+faces or joints+parents")


# --------------------------------------------------------------------------------------------------
# meshes


def _draw_meshes(
    meshes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    framing: Framing,
    offsets: Sequence[tuple[int, int]],
    canvas: tuple[int, int],
    renderer: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (vertices, faces, colour) meshes, each seen through `framing` and shifted by a pixel offset.

    Colours are one sRGB triple or one per vertex. All meshes go into one scene and one draw call. A pixel
    shift (du, dv) of a perspective image equals the shear X += du·Z/fx, Y += dv·Z/fy in camera space (depth
    unchanged), so each mesh lands in its own cell with exactly its own perspective; normals are taken
    before the shear so shading is too.
    """
    k = framing.intrinsics
    verts, faces, normals, colors, base = [], [], [], [], 0
    for (v, f, color), (du, dv) in zip(meshes, offsets, strict=True):
        cam = framing.to_camera(v)
        normals.append(vertex_normals(cam, f))
        z = cam[:, 2:3]
        verts.append(cam + np.concatenate([du * z / k.fx, dv * z / k.fy, 0 * z], axis=1))
        faces.append(f + base)
        colors.append(np.broadcast_to(color, (len(v), 3)))
        base += len(v)
    intr = Intrinsics(k.fx, k.fy, k.cx, k.cy, canvas[0], canvas[1])
    return rasterize(
        np.concatenate(verts),
        np.concatenate(faces),
        np.concatenate(normals),
        np.concatenate(colors),
        intr,
        renderer=renderer,
    )


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    size: int | tuple[int, int] = 512,
    view: str = "front",
    color: Color | None = None,
    renderer: str = "auto",
) -> UInt8[np.ndarray, "H W 3"]:
    """Render one mesh (body coordinates: y up, facing +z), framed to fill the image.

    Args:
        vertices, faces: (V, 3) float positions in metres and (F, 3) integer, counter-clockwise faces.
        size: image side, or (width, height), in pixels.
        view: front | back | left | right | side | top | three_quarter.
        color: (r, g, b) in 0-1 or 0-255; default a soft blue-grey.
        renderer: auto | pyrender | soft.
    """
    v, f = _mesh(vertices, faces)
    framing = frame_points(v, view, size)
    rgb, _ = _draw_meshes([(v, f, _color(color))], framing, [(0, 0)], image_size(size), renderer)
    return rgb


def palm_frame(
    wrist: np.ndarray, index: np.ndarray, middle: np.ndarray, pinky: np.ndarray, *, side: str = "right"
) -> Float[np.ndarray, "3 3"]:
    """The rotation R that turns a hand so its palm faces +z and its fingers point up (+y): draw
    `(points - wrist) @ R.T` with view "front" for the palm, "back" for the back of the hand.

    Args:
        wrist, index, middle, pinky: (3,) positions of the wrist and of the first joints (knuckles) of the
            index, middle and little fingers; finger bending does not move them, so every pose of a hand
            gets the same frame.
        side: "right" or "left" (a mirror image: the palm normal flips).
    """
    pts = [np.asarray(p, np.float64).reshape(3) for p in (wrist, index, middle, pinky)]
    if not all(np.isfinite(p).all() for p in pts):
        raise InputError("palm frame: hand joints contain NaN or inf")
    if side not in ("right", "left"):
        raise InputError(f"palm frame: side must be right or left, got {side!r}")
    w, i, m, p = pts
    up = m - w
    normal = np.cross(i - w, p - w) * (1.0 if side == "right" else -1.0)
    normal = normal - up * float(normal @ up) / max(float(up @ up), 1e-12)
    if np.linalg.norm(up) < 1e-9 or np.linalg.norm(normal) < 1e-9:
        raise InputError("palm frame: the wrist and knuckles are (nearly) collinear")
    y = up / np.linalg.norm(up)
    z = normal / np.linalg.norm(normal)
    return np.stack([np.cross(y, z), y, z])


# --------------------------------------------------------------------------------------------------
# skeletons


def _skeleton_image(item: _Item, framing: Framing) -> np.ndarray:
    """Bones as lines (far ones lighter, drawn first), joints as dots and optional targets as markers;
    2× supersampled for smooth edges."""
    k = framing.intrinsics
    ss = 2
    joints, parents = item.points, item.topology
    shown = np.ones(len(joints), bool) if item.hidden is None else ~item.hidden
    cam = framing.to_camera(np.where(shown[:, None], joints, 0.0))
    # pixel centres are integers in both images: original u ↦ ss·u + (ss - 1)/2
    uv = (
        np.stack([k.fx * cam[:, 0] / cam[:, 2] + k.cx, k.fy * cam[:, 1] / cam[:, 2] + k.cy], 1) * ss
        + (ss - 1) / 2
    )
    z = cam[:, 2]
    # depth cue relative to the figure's size, so one limb reaching forward doesn't wash out the rest
    zs = z[shown] if shown.any() else np.zeros(1)
    span = max(float(np.ptp(zs)), float(np.ptp(cam[shown, :2], axis=0).max()) if shown.any() else 0.0, 1e-9)
    side = min(k.width, k.height) * ss
    line_w, radius = max(2, round(side / 110)), max(2.0, side / 120)
    bg = np.asarray(BACKGROUND) * 255
    img = Image.new("RGB", (k.width * ss, k.height * ss), _rgb255(BACKGROUND))
    draw = ImageDraw.Draw(img)
    safe = np.where(parents >= 0, parents, 0)
    child = np.flatnonzero((parents >= 0) & shown & shown[safe])
    bone_z = (z[child] + z[parents[child]]) / 2
    for j in child[np.argsort(-bone_z, kind="stable")].tolist():
        t = (0.5 * (z[j] + z[parents[j]]) - zs.min()) / span
        if item.colors is None:
            col = tuple(int(c) for c in BONE_NEAR + (BONE_FAR - BONE_NEAR) * t)
        else:
            base = item.colors[j] * 255
            col = _rgb255(base + (bg - base) * 0.45 * t)
        draw.line([*uv[parents[j]].tolist(), *uv[j].tolist()], fill=col, width=line_w, joint="curve")
    if item.targets is not None:
        tcam = framing.to_camera(np.nan_to_num(item.targets))
        tuv = np.stack([k.fx * tcam[:, 0] / tcam[:, 2] + k.cx, k.fy * tcam[:, 1] / tcam[:, 2] + k.cy], 1) * ss
        tuv += (ss - 1) / 2
        has = np.isfinite(item.targets).all(axis=1)
        for j in np.flatnonzero(has & shown).tolist():
            draw.line([*tuv[j].tolist(), *uv[j].tolist()], fill=(150, 150, 150), width=max(1, line_w // 2))
        r = radius * 1.9
        for j in np.flatnonzero(has).tolist():
            x, y = tuv[j].tolist()
            if item.target_visible is None or item.target_visible[j]:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=TARGET_COLOR)
            else:
                draw.ellipse([x - r, y - r, x + r, y + r], outline=HIDDEN_TARGET_COLOR, width=line_w)
    for j in np.argsort(-z, kind="stable").tolist():
        if not shown[j]:
            continue
        x, y = uv[j].tolist()
        fill = JOINT_COLOR if item.colors is None else _rgb255(item.colors[j] * 0.75)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    return np.asarray(img.resize((k.width, k.height), Image.Resampling.LANCZOS))


def render_skeleton(
    joints: np.ndarray,
    parents: np.ndarray,
    *,
    size: int | tuple[int, int] = 512,
    view: str = "front",
) -> UInt8[np.ndarray, "H W 3"]:
    """Draw a skeleton (for models without a mesh): bones as lines, joints as dots.

    Args:
        joints, parents: (J, 3) positions and (J,) parent indices, -1 for a root.
    """
    item = _parse_item({"joints": joints, "parents": parents}, "skeleton")
    return _skeleton_image(item, frame_points(item.points, view, size))


# --------------------------------------------------------------------------------------------------
# text


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def text_width(text: str, px: int) -> int:
    """Width in pixels of `text` drawn by `label` at size `px`."""
    return int(math.ceil(_font(px).getbbox(str(text))[2]))


def label(
    frames: np.ndarray, text: str, x: int, y: int, px: int, color: tuple[int, int, int] = TEXT_COLOR
) -> None:
    """Blend `text` into uint8 frames[..., H, W, 3] in place at (x, y) (its top-left corner), in `px`-pixel
    type; the glyph mask is drawn once for every frame."""
    font = _font(px)
    _, _, right, bottom = font.getbbox(text)
    h, w = frames.shape[-3:-1]
    x, y = int(x), int(y)
    bw, bh = min(right + 2, w - x), min(bottom + 2, h - y)
    if bw <= 0 or bh <= 0 or x < 0 or y < 0:
        return
    mask_img = Image.new("L", (bw, bh), 0)
    ImageDraw.Draw(mask_img).text((0, 0), text, fill=255, font=font)
    a = np.asarray(mask_img, np.float64)[..., None] / 255.0
    region = frames[..., y : y + bh, x : x + bw, :]
    region[...] = (region * (1 - a) + np.asarray(color) * a + 0.5).astype(np.uint8)


def _wrap(text: str, px: int, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a long word stays whole)."""
    lines: list[str] = []
    for word in str(text).split(" "):
        if lines and text_width(f"{lines[-1]} {word}", px) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def titled(
    image: np.ndarray, title: str, *, note: str | None = None, px: int | None = None
) -> UInt8[np.ndarray, "H2 W 3"]:
    """`image` under a white band holding `title` (and a grey `note` under it), wrapped to the width."""
    img = _rgb(image)
    px = px or max(12, min(22, img.shape[1] // 48))
    small = max(10, px - 2)
    room = img.shape[1] - px
    lines = [(t, TEXT_COLOR, px) for t in _wrap(title, px, room)]
    lines += [(t, MUTED_TEXT, small) for t in _wrap(note, small, room)] if note else []
    line_h = round(px * 1.35)
    band = np.full((line_h * len(lines) + px // 2, img.shape[1], 3), 255, np.uint8)
    for i, (text, color, size) in enumerate(lines):
        label(band, text, px // 2, px // 4 + i * line_h, size, color)
    band[-1] = 215
    return np.concatenate([band, img], axis=0)


def tile(panels: Sequence[np.ndarray], *, cols: int, gap: int = 0) -> UInt8[np.ndarray, "H W 3"]:
    """Lay uint8 (H, W, 3) panels out row-major in a grid of equal cells (the largest panel's size), each
    panel in its cell's top-left corner, `gap` background pixels between cells."""
    if not panels:
        raise InputError("tile: no panels")
    imgs = [_rgb(p, f"panel {i}") for i, p in enumerate(panels)]
    cols = max(1, min(int(cols), len(imgs)))
    rows = math.ceil(len(imgs) / cols)
    ch, cw = max(p.shape[0] for p in imgs), max(p.shape[1] for p in imgs)
    out = background_image(cols * cw + (cols - 1) * gap, rows * ch + (rows - 1) * gap)
    for i, p in enumerate(imgs):
        r, c = divmod(i, cols)
        y, x = r * (ch + gap), c * (cw + gap)
        out[y : y + p.shape[0], x : x + p.shape[1]] = p
    return out


def legend(
    entries: Sequence[tuple[str, Color | tuple[int, int, int], str]], *, width: int, px: int = 14
) -> UInt8[np.ndarray, "H W 3"]:
    """A white band of (glyph, colour, text) entries, left to right, wrapping onto more lines.

    Glyphs: "dot" (filled), "ring" (hollow), "square", "line", "cross".
    """
    if width < 16:
        raise InputError(f"legend: width must be at least 16 px, got {width}")
    r, gap, line_h = max(3, px // 3), px, round(px * 1.6)
    placed, x, y = [], px // 2, 0
    for glyph, color, text in entries:
        w = 2 * r + px // 3 + text_width(str(text), px)
        if x + w > width - px // 2 and x > px // 2:
            x, y = px // 2, y + line_h
        placed.append((glyph, _rgb255(color), str(text), x, y))
        x += w + gap
    img = Image.new("RGB", (width, y + line_h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for glyph, color, _text, x0, y0 in placed:
        cx, cy = x0 + r, y0 + line_h // 2
        box = [cx - r, cy - r, cx + r, cy + r]
        if glyph == "dot":
            draw.ellipse(box, fill=color)
        elif glyph == "ring":
            draw.ellipse(box, outline=color, width=max(2, r // 2))
        elif glyph == "square":
            draw.rectangle(box, fill=color)
        elif glyph == "line":
            draw.line([cx - r, cy, cx + r, cy], fill=color, width=max(2, r // 2))
        elif glyph == "cross":
            draw.line([cx - r, cy - r, cx + r, cy + r], fill=color, width=2)
            draw.line([cx - r, cy + r, cx + r, cy - r], fill=color, width=2)
        else:
            raise InputError(f"legend: unknown glyph {glyph!r}; use dot, ring, square, line or cross")
    out = np.array(img)
    for _glyph, _color, text, x0, y0 in placed:
        label(out, text, x0 + 2 * r + px // 3, y0 + (line_h - px) // 2 - 1, px)
    return out


# --------------------------------------------------------------------------------------------------
# contact sheet


def _centred(items: list[_Item], rotation: np.ndarray, target: np.ndarray) -> list[_Item]:
    """Each item moved (in the view's image plane only) so the centre of its box lands on `target`."""
    out = []
    for it in items:
        cam = it.framing_points() @ rotation.T
        mid = (cam.min(axis=0) + cam.max(axis=0)) / 2 if len(cam) else np.zeros(3)
        shift = np.array([target[0] - mid[0], target[1] - mid[1], 0.0]) @ rotation
        out.append(it.moved(shift))
    return out


def contact_sheet(
    items: Sequence[Item],
    *,
    cols: int | None = None,
    cell: int | tuple[int, int] = 256,
    renderer: str = "auto",
    labels: Sequence[str] | None = None,
    view: str = "front",
    framing: Framing | None = None,
    center: bool = False,
) -> UInt8[np.ndarray, "H W 3"]:
    """A grid of meshes and/or skeletons seen through one shared camera, so poses compare directly.

    Args:
        items: each `{"vertices": (V, 3), "faces": (F, 3)}` or `{"joints": (J, 3), "parents": (J,)}`, with the
            optional keys of the module docstring (colours, hidden joints, targets).
        cols: columns (default: a near-square grid).
        cell: side of one cell, or (width, height), in pixels.
        labels: optional caption per item, drawn in the cell's top-left corner.
        view: front | back | left | right | side | top | three_quarter (ignored when `framing` is given).
        framing: the camera of one cell (e.g. framed once on every frame of a video, `scene.frame_points`);
            default: framed on all items.
        center: move each item (in the image plane) so its box is centred in its cell; the scale stays
            shared, so sizes still compare.
    """
    if not items:
        raise InputError("contact sheet: no items to draw")
    if labels is not None and len(labels) != len(items):
        raise InputError(f"contact sheet: {len(labels)} labels for {len(items)} items")
    cw, ch = _cell_size(cell, "contact sheet")
    parsed = [_parse_item(item, f"contact sheet item {i}") for i, item in enumerate(items)]
    n = len(parsed)
    cols = max(1, min(int(cols), n)) if cols else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if framing is not None and (framing.intrinsics.width, framing.intrinsics.height) != (cw, ch):
        k = framing.intrinsics
        raise InputError(
            f"contact sheet: the framing is for {k.width}x{k.height} cells, the cells are {cw}x{ch}"
        )
    if center:
        rotation = view_rotation(view) if framing is None else framing.rotation
        target = np.zeros(2) if framing is None else -framing.translation[:2]
        parsed = _centred(parsed, rotation, target)
    if framing is None:
        framing = frame_points(np.concatenate([it.framing_points() for it in parsed]), view, (cw, ch))
    sheet = background_image(cols * cw, rows * ch)

    # meshes: one draw call per band of rows (a single band unless the sheet is very tall)
    mesh_ids = [i for i, it in enumerate(parsed) if it.kind == "mesh"]
    if mesh_ids:
        backend = select_renderer(renderer)
        band_rows = max(1, MAX_BAND // ch)
        for r0 in range(0, rows, band_rows):
            band = [i for i in mesh_ids if r0 <= i // cols < r0 + band_rows]
            if not band:
                continue
            nrows = min(band_rows, rows - r0)
            meshes = [(parsed[i].points, parsed[i].topology, _mesh_colors(parsed[i])) for i in band]
            offsets = [((i % cols) * cw, (i // cols - r0) * ch) for i in band]
            rgb, _ = _draw_meshes(meshes, framing, offsets, (cols * cw, nrows * ch), backend)
            y0 = r0 * ch
            sheet[y0 : y0 + nrows * ch] = rgb
    for i, it in enumerate(parsed):
        if it.kind == "skeleton":
            r, c = divmod(i, cols)
            sheet[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = _skeleton_image(it, framing)
    if labels:
        px = max(10, min(cw, ch) // 16)
        for i, text in enumerate(labels):
            r, c = divmod(i, cols)
            label(sheet, str(text), c * cw + px // 2, r * ch + px // 3, px)
    return sheet


# --------------------------------------------------------------------------------------------------
# charts


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is >= value (> 0)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * base >= value * (1 - 1e-9):
            return m * base
    return 10.0 * base


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2g}"


def _bars(
    out: np.ndarray,
    box: tuple[int, int, int, int],
    values: np.ndarray,
    limit: float,
    px: int,
    color: tuple[int, int, int],
) -> None:
    """Signed bars of `values` in box (x0, y0, x1, y1) of `out` (in place): zero line, ±limit ticks."""
    x0, y0, x1, y1 = box
    tick_w = text_width(f"-{_fmt(limit)}", px) + px // 2
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    left = x0 + tick_w
    mid = (y0 + y1) / 2
    half = max((y1 - y0) / 2 - 1, 1)
    draw.rectangle([left, y0, x1 - 1, y1 - 1], outline=(205, 205, 205))
    draw.line([left, mid, x1 - 1, mid], fill=(150, 150, 150))
    n = len(values)
    step = (x1 - 1 - left) / max(n, 1)
    bar_w = max(1.0, step * (0.7 if step >= 3 else 1.0))
    for i, v in enumerate(np.clip(np.nan_to_num(values), -limit, limit).tolist()):
        bx = left + i * step + (step - bar_w) / 2
        top = mid - half * v / limit
        draw.rectangle([bx, min(mid, top), bx + bar_w - 1, max(mid, top)], fill=color)
    out[...] = np.asarray(pil)
    for text, y in ((f"+{_fmt(limit)}", y0), ("0", mid - px / 2), (f"-{_fmt(limit)}", y1 - px - 1)):
        label(out, text, x0 + tick_w - px // 3 - text_width(text, px), round(y), px, MUTED_TEXT)


def bar_chart(
    values: np.ndarray,
    *,
    size: int | tuple[int, int] = (256, 128),
    title: str | None = None,
    limit: float | None = None,
    color: tuple[int, int, int] = BAR_COLOR,
) -> UInt8[np.ndarray, "H W 3"]:
    """Signed coefficients (e.g. expression or shape) as one bar each around a zero line.

    Args:
        values: (N,) numbers; clipped to ±`limit` (default: the largest |value|, rounded up).
        size: side or (width, height) in pixels.
        title: drawn above the bars.
    """
    vals = np.asarray(values, np.float64).reshape(-1)
    if vals.size == 0:
        raise InputError("bar chart: no values")
    w, h = _cell_size(size, "bar chart")
    px = max(10, min(16, w // 22, h // 9))
    limit = _nice(float(np.nanmax(np.abs(vals)))) if limit is None else float(limit)
    out = background_image(w, h)
    top = px // 3
    if title:
        label(out, title, px // 2, top, px)
        top += round(px * 1.5)
    _bars(out, (px // 3, top, w - px // 3, h - px // 3), vals, limit, max(8, px - 2), color)
    return out


def face_chart(
    jaw_pose: np.ndarray,
    expression: np.ndarray,
    *,
    size: int | tuple[int, int] = 256,
    title: str | None = None,
    limit: float | None = None,
) -> UInt8[np.ndarray, "H W 3"]:
    """A face pose without a face model: the jaw rotation (a hinge opened by its angle, and the axis-angle
    components in degrees) over the expression coefficients as bars.

    Args:
        jaw_pose: (3,) axis-angle, radians. expression: (E,) coefficients (bars clipped to ±`limit`).
    """
    jaw = np.asarray(jaw_pose, np.float64).reshape(-1)
    expr = np.asarray(expression, np.float64).reshape(-1)
    if jaw.shape != (3,) or not np.isfinite(jaw).all():
        raise InputError(f"face chart: jaw_pose has shape {jaw.shape}; expected 3 finite numbers")
    w, h = _cell_size(size, "face chart")
    px = max(9, min(w, h) // 16)
    out = background_image(w, h)
    y = px // 3
    if title:
        label(out, title, px // 2, y, px)
        y += round(px * 1.5)
    # the hinge: an upper jaw line and a lower one opened by the jaw angle (true angle, 45° at most drawn)
    angle = float(np.linalg.norm(jaw))
    hinge_h = max(px * 3, h // 5)
    hx, hy, arm = px, y + hinge_h // 3, min(hinge_h * 1.4, w * 0.3)
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    a = min(angle, math.pi / 4)
    draw.line([hx, hy, hx + arm, hy], fill=(120, 120, 120), width=max(2, px // 5))
    draw.line(
        [hx, hy, hx + arm * math.cos(a), hy + arm * math.sin(a)],
        fill=_rgb255(HIGHLIGHT_COLOR),
        width=max(2, px // 4),
    )
    draw.ellipse([hx - px / 4, hy - px / 4, hx + px / 4, hy + px / 4], fill=(90, 90, 90))
    out[...] = np.asarray(pil)
    tx = round(hx + arm + px)
    deg = np.degrees(jaw)
    label(out, f"jaw {math.degrees(angle):.1f}°", tx, y, px)
    axes = f"x {deg[0]:+.1f}  y {deg[1]:+.1f}  z {deg[2]:+.1f}"
    if tx + text_width(axes, max(8, px - 2)) > w:  # narrow: one component per line would not fit either
        axes = f"{deg[0]:+.0f} {deg[1]:+.0f} {deg[2]:+.0f}"
    label(out, axes, tx, y + round(px * 1.3), max(8, px - 2), MUTED_TEXT)
    y += hinge_h + px // 2
    if expr.size:
        label(out, f"expression ({expr.size})", px // 2, y, max(8, px - 1))
        y += round(px * 1.4)
        lim = _nice(float(np.nanmax(np.abs(expr)))) if limit is None else float(limit)
        _bars(out, (px // 3, y, w - px // 3, h - px // 3), expr, lim, max(8, px - 2), BAR_COLOR)
    return out


def line_plot(
    series: Mapping[str, np.ndarray],
    *,
    size: int | tuple[int, int] = (640, 140),
    cursor: int | None = None,
    title: str | None = None,
    unit: str = "",
    y_max: float | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> UInt8[np.ndarray, "H W 3"]:
    """Curves over a shared x axis (e.g. an error per frame), from y = 0 up, with a legend that gives each
    curve's value at `cursor` (a vertical line) or its mean.

    Args:
        series: name → (T,) values (NaN: a gap); all the same length.
        cursor: x index to mark (video frames), or None.
        unit: appended to the values in the legend; y_max: top of the axis (default: the data, rounded up).
    """
    if not series:
        raise InputError("line plot: no series")
    data = {str(k): np.asarray(v, np.float64).reshape(-1) for k, v in series.items()}
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise InputError(f"line plot: series have lengths {sorted(lengths)}; expected one length >= 1")
    t = lengths.pop()
    colors = list(colors or SERIES_COLORS)
    w, h = _cell_size(size, "line plot")
    px = max(9, min(16, h // 9))
    finite = np.concatenate([v[np.isfinite(v)] for v in data.values()])
    top_value = _nice(float(finite.max()) if finite.size else 1.0) if y_max is None else float(y_max)
    tick_w = text_width(_fmt(top_value), px) + px
    x0, x1 = tick_w, w - px
    y0, y1 = round(px * 1.9), h - round(px * 1.6)
    pil = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    for frac in (0.0, 0.5, 1.0):
        gy = y1 - (y1 - y0) * frac
        draw.line([x0, gy, x1, gy], fill=(225, 225, 225) if frac else (160, 160, 160))
    draw.line([x0, y0, x0, y1], fill=(160, 160, 160))

    def xy(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        xs = x0 + (x1 - x0) * (i / max(t - 1, 1))
        ys = y1 - (y1 - y0) * np.clip(v / top_value, 0, 1.02)
        return np.stack([xs, ys], axis=1)

    idx = np.arange(t, dtype=np.float64)
    for k, (_name, v) in enumerate(data.items()):
        pts = xy(idx, v)
        ok = np.isfinite(v)
        for run in np.split(np.arange(t), np.flatnonzero(np.diff(ok.astype(int))) + 1):
            run = run[ok[run]]
            if len(run) > 1:
                draw.line([tuple(p) for p in pts[run].tolist()], fill=colors[k % len(colors)], width=2)
            elif len(run) == 1:
                x, y = pts[run[0]]
                draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=colors[k % len(colors)])
    if cursor is not None:
        c = int(np.clip(cursor, 0, t - 1))
        cx = float(xy(np.array([c]), np.zeros(1))[0, 0])
        draw.line([cx, y0, cx, y1], fill=(90, 90, 90))
        for k, v in enumerate(data.values()):
            if np.isfinite(v[c]):
                x, y = xy(np.array([c]), v[c : c + 1])[0]
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colors[k % len(colors)])
    out = np.array(pil)
    label(
        out, _fmt(top_value), tick_w - px // 2 - text_width(_fmt(top_value), px), y0 - px // 2, px, MUTED_TEXT
    )
    label(out, "0", tick_w - px // 2 - text_width("0", px), y1 - px // 2 - 1, px, MUTED_TEXT)
    label(out, "0", x0, y1 + px // 4, px, MUTED_TEXT)
    label(out, str(t - 1), x1 - text_width(str(t - 1), px), y1 + px // 4, px, MUTED_TEXT)
    texts = []
    for name, v in data.items():
        if cursor is not None:
            value = v[int(np.clip(cursor, 0, t - 1))]
        else:
            value = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        texts.append(f"{name} {value:.1f}{(' ' + unit) if unit else ''}" if np.isfinite(value) else name)
    keys_w = sum(px + px // 3 + text_width(text, px) + px for text in texts)
    x = px // 2
    if title and x + text_width(title, px) + px + keys_w <= w:  # the legend wins when both do not fit
        label(out, title, x, px // 4, px)
        x += text_width(title, px) + px
    for k, text in enumerate(texts):
        out[px // 4 + px // 2 - 1 : px // 4 + px // 2 + 2, x : x + px] = colors[k % len(colors)]
        label(out, text, x + px + px // 3, px // 4, px)
        x += px + px // 3 + text_width(text, px) + px
    return out


# --------------------------------------------------------------------------------------------------
# photos


def fit_within_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) of `fit_within` for an image of this size."""
    scale = side / max(height, width)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_within(image: np.ndarray, side: int) -> UInt8[np.ndarray, "H W 3"]:
    """A uint8 (H, W, 3) image scaled down (Lanczos) so that its longer side is at most `side` pixels; as it is
    when it already fits."""
    img = _rgb(image)
    h, w = fit_within_size(img.shape[0], img.shape[1], side)
    if (h, w) == img.shape[:2]:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))


def overlay_mesh(
    image: np.ndarray,
    vertices: np.ndarray | list[np.ndarray],
    faces: np.ndarray | list[np.ndarray],
    *,
    focal: Number | tuple[Number, Number],
    center: tuple[Number, Number],
    alpha: float = 0.7,
    renderer: str = "auto",
) -> UInt8[np.ndarray, "H W 3"]:
    """Blend meshes over a uint8 (H, W, 3) photo; vertices (V, 3) in OpenCV camera coordinates (x right,
    y down, z forward), metres.

    A vertex (X, Y, Z) lands on pixel (fx·X/Z + cx, fy·Y/Z + cy). Several people: a list of (V_i, 3)
    arrays (with one shared faces array or a list), or a (P, V, 3) array; each gets its own colour
    (`scene.PERSON_COLORS`, in order).
    """
    img = _rgb(image)
    h, w = img.shape[:2]
    if isinstance(vertices, np.ndarray) and vertices.ndim == 3:
        vertices = list(vertices)
    verts = list(vertices) if isinstance(vertices, list | tuple) else [vertices]
    face_list = list(faces) if isinstance(faces, list | tuple) else [faces] * len(verts)
    if len(face_list) != len(verts):
        raise InputError(f"overlay: {len(face_list)} face arrays for {len(verts)} meshes")
    fx, fy = (focal, focal) if isinstance(focal, int | float | np.integer | np.floating) else tuple(focal)
    cx, cy = center
    if not (0.0 <= alpha <= 1.0):
        raise InputError(f"overlay: alpha must be in [0, 1], got {alpha}")
    base = 0
    vs, fs, ns, cs = [], [], [], []
    for p, (v, f) in enumerate(zip(verts, face_list, strict=True)):
        v, f = _mesh(v, f, f"person {p}")
        vs.append(v)
        fs.append(f + base)
        ns.append(vertex_normals(v, f))
        cs.append(np.broadcast_to(PERSON_COLORS[p % len(PERSON_COLORS)], (len(v), 3)))
        base += len(v)
    intr = Intrinsics(float(fx), float(fy), float(cx), float(cy), w, h)
    rgb, mask = rasterize(
        np.concatenate(vs),
        np.concatenate(fs),
        np.concatenate(ns),
        np.concatenate(cs),
        intr,
        renderer=renderer,
    )
    out = img.copy()  # blended where a mesh covers the photo only (elsewhere the blend is the photo itself)
    out[mask] = (img[mask] * (1 - alpha) + rgb[mask] * alpha + 0.5).astype(np.uint8)
    return out


def draw_keypoints(
    image: np.ndarray,
    keypoints: np.ndarray,
    *,
    edges: list[tuple[int, int]] | None = None,
    conf_threshold: float = 0.3,
    color: tuple[int, int, int] | None = None,
    marker: str = "dot",
) -> UInt8[np.ndarray, "H W 3"]:
    """Draw (K, 3) keypoints (x, y, confidence) as markers, and `edges` as lines, on a copy of `image`.

    Points with confidence below `conf_threshold` (or non-finite) are skipped, and so are their edges.
    `(K, 2)` input counts as fully confident. Several people: (P, K, 3), one colour per person unless
    `color` is given. `marker`: "dot" (filled, white rim) or "ring" (hollow, a little larger: e.g. projected
    model joints beside detected keypoints).
    """
    if marker not in ("dot", "ring"):
        raise InputError(f"keypoint marker must be dot or ring, got {marker!r}")
    img = _rgb(image)
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[2] not in (2, 3):
        raise InputError(f"keypoints have shape {np.shape(keypoints)}; expected (K, 3) or (P, K, 3)")
    if kp.shape[2] == 2:
        kp = np.concatenate([kp, np.ones(kp.shape[:2] + (1,))], axis=2)
    visible = np.isfinite(kp).all(axis=2) & (kp[..., 2] >= conf_threshold)
    n_kp = kp.shape[1]
    edges = [] if edges is None else [(int(a), int(b)) for a, b in edges]
    if any(not (0 <= a < n_kp and 0 <= b < n_kp) for a, b in edges):
        raise InputError(f"keypoint edges refer to indices outside [0, {n_kp})")
    h, w = img.shape[:2]
    side = min(h, w)
    radius, line_w = max(2.0, side / 160), max(1, round(side / 250))
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for p in range(kp.shape[0]):
        col = tuple(color) if color is not None else KEYPOINT_COLORS[p % len(KEYPOINT_COLORS)]
        for a, b in edges:
            if visible[p, a] and visible[p, b]:
                draw.line([*kp[p, a, :2].tolist(), *kp[p, b, :2].tolist()], fill=col, width=line_w)
        for x, y in kp[p, visible[p], :2].tolist():
            if marker == "dot":
                draw.ellipse(
                    [x - radius, y - radius, x + radius, y + radius], fill=col, outline=(255, 255, 255)
                )
            else:
                r = radius * 1.6
                draw.ellipse([x - r, y - r, x + r, y + r], outline=col, width=max(2, line_w + 1))
    return np.asarray(pil)


def draw_segments(
    image: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    color: tuple[int, int, int] = (255, 255, 255),
    width: int | None = None,
) -> UInt8[np.ndarray, "H W 3"]:
    """Lines from (N, 2) `starts` to (N, 2) `ends` (pixels) on a copy of `image`; non-finite pairs skipped
    (e.g. each keypoint joined to its projected model joint: the reprojection error)."""
    img = _rgb(image)
    a, b = np.asarray(starts, np.float64).reshape(-1, 2), np.asarray(ends, np.float64).reshape(-1, 2)
    if a.shape != b.shape:
        raise InputError(f"segments: {len(a)} starts for {len(b)} ends")
    width = width or max(1, round(min(img.shape[:2]) / 400))
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for p, q in zip(a.tolist(), b.tolist(), strict=True):
        if np.isfinite(p).all() and np.isfinite(q).all():
            draw.line([*p, *q], fill=tuple(color), width=width)
    return np.asarray(pil)


def overhead_view(
    vertices: Sequence[np.ndarray],
    faces: np.ndarray | Sequence[np.ndarray],
    *,
    size: int | tuple[int, int] = (360, 480),
    colors: Sequence[Color] | None = None,
    labels: Sequence[str] | None = None,
    half_fov: float | None = None,
    renderer: str = "auto",
) -> UInt8[np.ndarray, "H W 3"]:
    """Camera-space meshes (OpenCV: x right, y down, z forward; metres) seen from above: depth grows upwards,
    ruler lines mark it, the camera sits at the bottom (or, far away, its distance is written there), so a
    person fitted at the wrong depth shows here even when the overlay on the photo looks right.

    Args:
        vertices: one (V, 3) array per person; faces: one shared (F, 3) array or one per person.
        colors: one per person (default `scene.PERSON_COLORS`); labels: one per person, written beside it.
        half_fov: tan of half the photo's horizontal field of view (width / 2 / focal): draws its edges.
    """
    verts = [np.asarray(v, np.float64) for v in vertices]
    if not verts:
        raise InputError("overhead view: no meshes")
    face_list: list[np.ndarray] = (
        list(faces) if isinstance(faces, list | tuple) else [np.asarray(faces)] * len(verts)
    )
    if len(face_list) != len(verts) or (labels is not None and len(labels) != len(verts)):
        raise InputError(
            f"overhead view: {len(verts)} meshes, {len(face_list)} face arrays, "
            f"{'no' if labels is None else len(labels)} labels"
        )
    flip = np.array([1.0, -1.0, -1.0])  # camera → body coordinates (y up); the camera looks along -z
    meshes = []
    for p, (v, f) in enumerate(zip(verts, face_list, strict=True)):
        v, f = _mesh(v, f, f"person {p}")
        col = colors[p] if colors is not None else PERSON_COLORS[p % len(PERSON_COLORS)]
        meshes.append((v * flip, f, _color(col)))
    body = np.concatenate([m[0] for m in meshes])
    floor = float(body[:, 1].min())
    near, far = float(max(-body[:, 2].max(), 0.0)), float(-body[:, 2].min())
    span = max(far - near, 0.5)
    # the camera is drawn when it is not far below the people; else the view zooms in on them
    with_camera = near <= 1.5 * span
    lo = 0.0 if with_camera else near - 0.35 * span
    hi = far + 0.15 * span
    xs = body[:, 0]
    cx = 0.0 if with_camera else float((xs.min() + xs.max()) / 2)
    half = max(float(np.abs(xs - cx).max()), 0.3 * (hi - lo))
    frame_pts = np.concatenate([body, [[cx - half, floor, -lo], [cx + half, floor, -lo], [cx, floor, -hi]]])
    w, h = image_size(size)
    framing = frame_points(frame_pts, "top", (w, h), margin=0.06)
    rgb, mask = _draw_meshes(meshes, framing, [(0, 0)] * len(meshes), (w, h), select_renderer(renderer))
    # rulers, field of view and the camera on a layer under the meshes
    layer = Image.new("RGB", (w, h), _rgb255(BACKGROUND))
    draw = ImageDraw.Draw(layer)
    px = max(10, min(18, max(w, h) // 60, h // 12))
    step = _nice((hi - lo) / 6)
    texts = []
    for d in np.arange(math.ceil(lo / step) * step, hi, step):
        if d <= 0:
            continue
        (ua, va), (ub, vb) = framing.project(
            np.array([[cx - 3 * half, floor, -d], [cx + 3 * half, floor, -d]])
        )
        draw.line([ua, va, ub, vb], fill=(214, 214, 214), width=1)
        texts.append((f"{d:g} m", 4, round(va) - px - 1))
    cam_u, cam_v = framing.project(np.array([0.0, floor, 0.0]))
    if half_fov is not None and half_fov > 0:
        for sgn in (-1, 1):
            u, v = framing.project(np.array([sgn * half_fov * hi, floor, -hi]))
            draw.line([cam_u, cam_v, u, v], fill=(190, 190, 190), width=1)
    r = px * 0.6
    if with_camera:
        draw.polygon(
            [(cam_u, cam_v - r), (cam_u - r, cam_v + r * 0.6), (cam_u + r, cam_v + r * 0.6)],
            fill=(80, 80, 80),
        )
    under = np.array(layer)
    title_bottom = px // 3 + px + 1  # "seen from above", written last at the top left
    for text, x, y in texts:  # under the meshes too; none under the title
        if y >= title_bottom:
            label(under, text, x, y, px, MUTED_TEXT)
    out = np.where(mask[..., None], rgb, under).astype(np.uint8)
    if with_camera:
        cam_text, cam_x, cam_y = "camera", round(cam_u + r + 3), round(cam_v - px / 2)
    else:
        cam_text = f"camera {near:.1f} m below"
        cam_x, cam_y = round(w / 2 - text_width(cam_text, px) / 2), h - px - px // 2
    label(
        out,
        cam_text,
        min(w - text_width(cam_text, px) - 2, cam_x),
        max(0, min(h - px - 2, cam_y)),
        px,
        MUTED_TEXT,
    )
    label(out, "seen from above", px // 2, px // 3, px)
    for p, (v, _f, mesh_color) in enumerate(meshes):
        if labels is None:
            continue
        u, vv = framing.project(np.array([[float(v[:, 0].mean()), floor, float(v[:, 2].max())]]))[0]
        tw = text_width(labels[p], px)
        x = int(min(max(u - tw / 2, 0), w - tw - 2))
        label(out, labels[p], x, int(min(max(vv + px / 3, 0), h - px - 2)), px, _rgb255(mesh_color * 0.55))
    return out


# --------------------------------------------------------------------------------------------------
# motion


def motion_frames(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    size: int | tuple[int, int] = 512,
    renderer: str = "auto",
    fixed_camera: bool = True,
    view: str = "front",
    color: Color | None = None,
) -> UInt8[np.ndarray, "T H W 3"]:
    """Render a (T, V, 3) mesh sequence with (F, 3) faces into (T, H, W, 3) frames.

    `fixed_camera` frames the whole sequence once (so motion shows as movement); otherwise each frame is
    framed on its own.
    """
    seq = np.asarray(vertices, np.float64)
    if seq.ndim != 3 or seq.shape[2] != 3 or len(seq) == 0:
        raise InputError(f"motion: vertices have shape {seq.shape}; expected (T, V, 3) with T >= 1")
    _, f = _mesh(seq[0], faces, "motion")
    if not np.isfinite(seq).all():
        raise InputError("motion: vertices contain NaN or inf")
    backend = select_renderer(renderer)
    col = _color(color)
    wh = image_size(size)
    fixed = frame_points(seq.reshape(-1, 3), view, size) if fixed_camera else None
    out = np.empty((len(seq), wh[1], wh[0], 3), np.uint8)
    for t, v in enumerate(seq):
        framing = fixed or frame_points(v, view, size)
        out[t], _ = _draw_meshes([(v, f, col)], framing, [(0, 0)], wh, backend)
    return out


def side_by_side(
    a: np.ndarray,
    b: np.ndarray,
    labels: tuple[str, str] | list[str] | None = None,
) -> UInt8[np.ndarray, "*T H W2 3"]:
    """Put two uint8 (H, W, 3) images or two equally long (T, H, W, 3) stacks side by side (e.g. noisy
    vs denoised), with an optional caption in each half's top-left corner; the shorter one is padded."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8 or a.ndim not in (3, 4) or a.ndim != b.ndim:
        raise InputError(
            f"side_by_side: expected two uint8 (H, W, 3) or (T, H, W, 3) arrays, got {a.shape} and {b.shape}"
        )
    if a.ndim == 4 and len(a) != len(b):
        raise InputError(f"side_by_side: {len(a)} frames vs {len(b)} frames")
    h = max(a.shape[-3], b.shape[-3])

    def pad(x: np.ndarray) -> np.ndarray:
        if x.shape[-3] == h:
            return x.copy()
        fill = background_image(x.shape[-2], h - x.shape[-3])
        return np.concatenate([x, np.broadcast_to(fill, x.shape[:-3] + fill.shape)], axis=-3)

    a, b = pad(a), pad(b)
    if labels is not None:
        if len(labels) != 2:
            raise InputError(f"side_by_side: expected 2 labels, got {len(labels)}")
        px = max(10, h // 24)
        label(a, str(labels[0]), px // 2, px // 3, px)
        label(b, str(labels[1]), px // 2, px // 3, px)
    return np.concatenate([a, b], axis=-2)
