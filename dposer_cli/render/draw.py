"""Pictures as arrays: meshes, skeletons, contact sheets, photo overlays, keypoints and motion frames.

Every function returns uint8 RGB arrays, (H, W, 3) or (T, H, W, 3), and never writes files
(`io/media.py` saves them). Inputs are numpy arrays (metres, body coordinates y up, facing +z), so
this module needs no body model. `renderer` is `auto|pyrender|soft` (see `scene.select_renderer`).

Array arguments are annotated as plain `np.ndarray` because they are validated here, with one-line
`InputError`s (a runtime shape checker would pre-empt those); their shapes are in each docstring.
"""

import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import UInt8
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
)

Color = tuple[float, float, float]
Number = int | float
KEYPOINT_COLORS = ((230, 57, 70), (29, 120, 230), (40, 170, 80), (240, 150, 20), (150, 60, 200))
TEXT_COLOR = (40, 40, 40)
BONE_NEAR, BONE_FAR = np.array([45, 70, 120]), np.array([150, 170, 205])  # depth cue for skeletons
JOINT_COLOR = (220, 80, 60)
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


def _skeleton(
    joints: np.ndarray, parents: np.ndarray, what: str = "skeleton"
) -> tuple[np.ndarray, np.ndarray]:
    j = np.asarray(joints, np.float64)
    p = np.asarray(parents).astype(np.int64).reshape(-1)
    if j.ndim != 2 or j.shape[1] != 3:
        raise InputError(f"{what}: joints have shape {j.shape}; expected (J, 3)")
    if len(p) != len(j) or (len(p) and (p.min() < -1 or p.max() >= len(j))):
        raise InputError(
            f"{what}: parents must be (J,) = ({len(j)},) indices in [-1, J), got {len(p)} values"
        )
    if not np.isfinite(j).all():
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

    All meshes go into one scene and one draw call. A pixel shift (du, dv) of a perspective image equals
    the shear X += du·Z/fx, Y += dv·Z/fy in camera space (depth unchanged), so each mesh lands in its
    own cell with exactly its own perspective; normals are taken before the shear so shading is too.
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


# --------------------------------------------------------------------------------------------------
# skeletons


def _skeleton_image(joints: np.ndarray, parents: np.ndarray, framing: Framing) -> np.ndarray:
    """Bones as lines (far ones lighter, drawn first) and joints as dots; 2× supersampled for smooth edges."""
    k = framing.intrinsics
    ss = 2
    cam = framing.to_camera(joints)
    # pixel centres are integers in both images: original u ↦ ss·u + (ss - 1)/2
    uv = (
        np.stack([k.fx * cam[:, 0] / cam[:, 2] + k.cx, k.fy * cam[:, 1] / cam[:, 2] + k.cy], 1) * ss
        + (ss - 1) / 2
    )
    z = cam[:, 2]
    # depth cue relative to the figure's size, so one limb reaching forward doesn't wash out the rest
    span = max(float(np.ptp(z)), float(np.ptp(cam[:, :2], axis=0).max()), 1e-9)
    side = min(k.width, k.height) * ss
    line_w, radius = max(2, round(side / 110)), max(2.0, side / 120)
    img = Image.new("RGB", (k.width * ss, k.height * ss), tuple(int(c * 255 + 0.5) for c in BACKGROUND))
    draw = ImageDraw.Draw(img)
    child = np.flatnonzero(parents >= 0)
    bone_z = (z[child] + z[parents[child]]) / 2
    for j in child[np.argsort(-bone_z, kind="stable")].tolist():
        t = (0.5 * (z[j] + z[parents[j]]) - z.min()) / span
        col = tuple(int(c) for c in BONE_NEAR + (BONE_FAR - BONE_NEAR) * t)
        draw.line([*uv[parents[j]].tolist(), *uv[j].tolist()], fill=col, width=line_w, joint="curve")
    for j in np.argsort(-z, kind="stable").tolist():
        x, y = uv[j].tolist()
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=JOINT_COLOR)
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
    j, p = _skeleton(joints, parents)
    return _skeleton_image(j, p, frame_points(j, view, size))


# --------------------------------------------------------------------------------------------------
# labels


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _label(frames: np.ndarray, text: str, x: int, y: int, px: int) -> None:
    """Blend dark `text` into frames[..., H, W, 3] in place at (x, y); the glyph mask is drawn once."""
    font = _font(px)
    _, _, right, bottom = font.getbbox(text)
    h, w = frames.shape[-3:-1]
    bw, bh = min(right + 2, w - x), min(bottom + 2, h - y)
    if bw <= 0 or bh <= 0:
        return
    mask_img = Image.new("L", (bw, bh), 0)
    ImageDraw.Draw(mask_img).text((0, 0), text, fill=255, font=font)
    a = np.asarray(mask_img, np.float64)[..., None] / 255.0
    region = frames[..., y : y + bh, x : x + bw, :]
    region[...] = (region * (1 - a) + np.asarray(TEXT_COLOR) * a + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# contact sheet


def contact_sheet(
    items: list[dict[str, np.ndarray]],
    *,
    cols: int | None = None,
    cell: int = 256,
    renderer: str = "auto",
    labels: list[str] | None = None,
    view: str = "front",
) -> UInt8[np.ndarray, "H W 3"]:
    """A grid of meshes and/or skeletons seen through one shared camera, so poses compare directly.

    Args:
        items: each `{"vertices": (V, 3), "faces": (F, 3)}` or `{"joints": (J, 3), "parents": (J,)}`.
        cols: columns (default: a near-square grid).
        cell: side of one cell in pixels.
        labels: optional caption per item, drawn in the cell's top-left corner.
    """
    if not items:
        raise InputError("contact sheet: no items to draw")
    if labels is not None and len(labels) != len(items):
        raise InputError(f"contact sheet: {len(labels)} labels for {len(items)} items")
    if int(cell) < 16:
        raise InputError(f"contact sheet: cell must be at least 16 px, got {cell}")
    cell = int(cell)
    parsed: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i, item in enumerate(items):
        if "vertices" in item and "faces" in item:
            parsed.append(("mesh", *_mesh(item["vertices"], item["faces"], f"item {i}")))
        elif "joints" in item and "parents" in item:
            parsed.append(("skeleton", *_skeleton(item["joints"], item["parents"], f"item {i}")))
        else:
            raise InputError(
                f"contact sheet item {i} has keys {sorted(item)}; expected vertices+faces or joints+parents"
            )
    n = len(parsed)
    cols = max(1, min(int(cols), n)) if cols else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    framing = frame_points(np.concatenate([arr for _, arr, _ in parsed]), view, cell)
    sheet = background_image(cols * cell, rows * cell)

    # meshes: one draw call per band of rows (a single band unless the sheet is very tall)
    mesh_ids = [i for i, (kind, _, _) in enumerate(parsed) if kind == "mesh"]
    if mesh_ids:
        backend = select_renderer(renderer)
        band_rows = max(1, MAX_BAND // cell)
        for r0 in range(0, rows, band_rows):
            band = [i for i in mesh_ids if r0 <= i // cols < r0 + band_rows]
            if not band:
                continue
            nrows = min(band_rows, rows - r0)
            meshes = [(parsed[i][1], parsed[i][2], np.asarray(BODY_COLOR)) for i in band]
            offsets = [((i % cols) * cell, (i // cols - r0) * cell) for i in band]
            rgb, _ = _draw_meshes(meshes, framing, offsets, (cols * cell, nrows * cell), backend)
            y0 = r0 * cell
            sheet[y0 : y0 + nrows * cell] = rgb
    for i, (kind, joints, parents) in enumerate(parsed):
        if kind == "skeleton":
            r, c = divmod(i, cols)
            sheet[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = _skeleton_image(
                joints, parents, framing
            )
    if labels:
        px = max(10, cell // 16)
        for i, text in enumerate(labels):
            r, c = divmod(i, cols)
            _label(sheet, str(text), c * cell + px // 2, r * cell + px // 3, px)
    return sheet


# --------------------------------------------------------------------------------------------------
# photos


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
    arrays (with one shared faces array or a list), or a (P, V, 3) array; each gets its own colour.
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
    a = (mask * alpha)[..., None]
    return (img * (1 - a) + rgb * a + 0.5).astype(np.uint8)


def draw_keypoints(
    image: np.ndarray,
    keypoints: np.ndarray,
    *,
    edges: list[tuple[int, int]] | None = None,
    conf_threshold: float = 0.3,
    color: tuple[int, int, int] | None = None,
) -> UInt8[np.ndarray, "H W 3"]:
    """Draw (K, 3) keypoints (x, y, confidence) as dots, and `edges` as lines, on a copy of `image`.

    Points with confidence below `conf_threshold` (or non-finite) are skipped, and so are their edges.
    `(K, 2)` input counts as fully confident. Several people: (P, K, 3), one colour per person unless
    `color` is given.
    """
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
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=col, outline=(255, 255, 255))
    return np.asarray(pil)


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
        _label(a, str(labels[0]), px // 2, px // 3, px)
        _label(b, str(labels[1]), px // 2, px // 3, px)
    return np.concatenate([a, b], axis=-2)
