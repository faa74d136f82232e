"""Offscreen renderer setup: backend choice, camera framing, lights, and the pyrender rasteriser.

Both backends (pyrender via EGL, and the numpy + Pillow `soft` renderer) take the same input: vertices
already in OpenCV camera coordinates (x right, y down, z forward), per-vertex normals and sRGB colours,
and pinhole `Intrinsics` (pixel centres at integer coordinates). They return an sRGB uint8 image and a
coverage mask, and use the same light rig and shading model (Lambert, gamma 2.2, in `shading`) so
pictures match. `rasterize` picks the backend.
"""

import atexit
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Integer, UInt8

from dposer_cli.core.errors import InputError, UnavailableError, suggest
from dposer_cli.render.shading import (
    AMBIENT,
    BACKGROUND,
    LIGHTS,
    Intrinsics,
    project,
    srgb_to_linear,
)
from dposer_cli.render.shading import background_image as background_image  # re-exported for draw
from dposer_cli.render.soft import rasterize_soft

RENDERERS = ("auto", "pyrender", "soft")

# Mesh colours (the background, lights and shading model are in `shading`).
BODY_COLOR = (0.60, 0.72, 0.88)  # soft blue-grey clay, sRGB
PERSON_COLORS = (  # overlays with several people, sRGB
    (0.60, 0.72, 0.88),
    (0.93, 0.65, 0.45),
    (0.55, 0.80, 0.60),
    (0.85, 0.60, 0.80),
    (0.90, 0.82, 0.45),
    (0.55, 0.80, 0.85),
)
FOCAL_SCALE = 2.5  # focal length / image side: a ~23° field of view, little perspective distortion

# View name → (direction from the subject to the camera, up) in body coordinates (y up, facing +z).
VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "front": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "back": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "left": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "right": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "side": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "top": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "three_quarter": ((0.6, 0.25, 1.0), (0.0, 1.0, 0.0)),
}


@dataclass(frozen=True, slots=True)
class Framing:
    """A world → camera transform (x_cam = R·x + t, OpenCV axes) plus the intrinsics of one image."""

    rotation: Float[np.ndarray, "3 3"]
    translation: Float[np.ndarray, "3"]
    intrinsics: Intrinsics

    def to_camera(self, points: Float[np.ndarray, "*batch 3"]) -> Float[np.ndarray, "*batch 3"]:
        return np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def project(self, points: Float[np.ndarray, "*batch 3"]) -> Float[np.ndarray, "*batch 2"]:
        """World points → pixel coordinates (u, v)."""
        return project(self.to_camera(points), self.intrinsics)


def image_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """`size` (side, or (width, height)) → (width, height), validated."""
    w, h = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if int(w) < 1 or int(h) < 1:
        raise InputError(f"image size must be positive, got {size!r}")
    return int(w), int(h)


def view_rotation(view: str) -> Float[np.ndarray, "3 3"]:
    """Rotation from body coordinates (y up, facing +z) to an OpenCV camera looking at it."""
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}{suggest(view, list(VIEWS))}; choose from {', '.join(VIEWS)}")
    eye, up = (np.asarray(a, np.float64) for a in VIEWS[view])
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def frame_points(
    points: Float[np.ndarray, "N 3"], view: str, size: int | tuple[int, int], *, margin: float = 0.08
) -> Framing:
    """The camera for `view` that fits all `points` into the image with a relative `margin` each side.

    The distance is solved exactly per point (|u - cx| <= half-width·(1 - 2·margin)), so the framing is
    tight for any shape, in one vectorised pass.
    """
    width, height = image_size(size)
    rot = view_rotation(view)
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise InputError("nothing to render: no finite vertices or joints")
    cam = pts @ rot.T
    lo, hi = cam.min(axis=0), cam.max(axis=0)
    mid = (lo + hi) / 2
    rel = cam - mid
    f = FOCAL_SCALE * min(width, height)
    half_w, half_h = width / 2 * (1 - 2 * margin), height / 2 * (1 - 2 * margin)
    need = np.maximum(f * np.abs(rel[:, 0]) / half_w, f * np.abs(rel[:, 1]) / half_h) - rel[:, 2]
    extent = max(float(np.max(hi - lo)), 1e-6)
    # keep every point at least a little in front of the camera
    dist = max(float(need.max()), float(-rel[:, 2].min()) + 0.05 * extent, 1e-3)
    translation = np.array([0.0, 0.0, dist]) - mid
    intr = Intrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height)
    return Framing(rot, translation, intr)


def vertex_normals(
    vertices: Float[np.ndarray, "V 3"], faces: Integer[np.ndarray, "F 3"]
) -> Float[np.ndarray, "V 3"]:
    """Area-weighted unit vertex normals (outward for counter-clockwise faces)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    idx = faces.reshape(-1)
    n = len(vertices)
    # bincount per axis is a fast scatter-add (np.add.at is ~10x slower)
    out = np.stack([np.bincount(idx, weights=np.repeat(fn[:, k], 3), minlength=n) for k in range(3)], axis=1)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


# --------------------------------------------------------------------------------------------------
# backend choice

_probe: dict[str, Any] = {}  # {"ok": bool, "reason": str, "renderer": OffscreenRenderer}


def _probe_pyrender() -> tuple[bool, str]:
    """Try pyrender offscreen once per process (a 16×16 render); cache the result."""
    if "ok" in _probe:
        return bool(_probe["ok"]), str(_probe["reason"])
    # EGL (Mesa llvmpipe on CPU, the driver on GPUs) needs no display; must be set before OpenGL loads.
    if "OpenGL" not in sys.modules:
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import pyrender

        renderer = pyrender.OffscreenRenderer(16, 16)
        _probe["renderer"] = renderer
        tri = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]])
        rgb, _ = _rasterize_pyrender(
            tri,
            np.array([[0, 2, 1]]),
            np.tile([0.0, 0.0, -1.0], (3, 1)),
            np.ones((3, 3)),
            Intrinsics(16.0, 16.0, 7.5, 7.5, 16, 16),
        )
        if rgb.shape != (16, 16, 3):
            raise RuntimeError(f"unexpected frame shape {rgb.shape}")
        atexit.register(_release)
        ok, reason = True, ""
    except Exception as exc:  # noqa: BLE001 - any GL/EGL/import failure means "not available"
        _probe.pop("renderer", None)
        msg = " ".join(str(exc).split()) or type(exc).__name__
        ok, reason = False, f"{type(exc).__name__}: {msg[:200]}"
    _probe.update(ok=ok, reason=reason)
    return ok, reason


def _release() -> None:
    renderer = _probe.pop("renderer", None)
    if renderer is not None:
        with contextlib.suppress(Exception):
            renderer.delete()


def select_renderer(name: str = "auto") -> str:
    """Resolve `auto|pyrender|soft` to the backend that will draw: `"pyrender"` or `"soft"`.

    `auto` is `soft`: the numpy z-buffer draws the same pictures as pyrender on software OpenGL (Mesa
    llvmpipe, what headless machines have) at about the same speed per frame, without pyrender's ≈ 2 s of
    import and EGL set-up (most of a one-photo fit-image's drawing time). `pyrender` is probed once per process.

    Raises:
        UnavailableError: `pyrender` was asked for explicitly and cannot open an offscreen context.
        InputError: unknown renderer name.
    """
    if name not in RENDERERS:
        raise InputError(
            f"unknown renderer {name!r}{suggest(name, RENDERERS)}; choose auto, pyrender or soft"
        )
    if name in ("soft", "auto"):
        return "soft"
    ok, reason = _probe_pyrender()
    if ok:
        return "pyrender"
    raise UnavailableError(
        f"renderer pyrender is unavailable: no offscreen OpenGL context ({reason})",
        hint="use --renderer soft (pure numpy), or install Mesa EGL (libegl1) for pyrender",
    )


# --------------------------------------------------------------------------------------------------
# rasterisers


def rasterize(
    vertices: Float[np.ndarray, "V 3"],
    faces: Integer[np.ndarray, "F 3"],
    normals: Float[np.ndarray, "V 3"],
    colors: Float[np.ndarray, "V 3"],
    intr: Intrinsics,
    *,
    renderer: str = "auto",
) -> tuple[UInt8[np.ndarray, "H W 3"], Bool[np.ndarray, "H W"]]:
    """Draw a camera-space mesh on the background; return (rgb, coverage mask)."""
    if select_renderer(renderer) == "pyrender":
        return _rasterize_pyrender(vertices, faces, normals, colors, intr)
    return rasterize_soft(vertices, faces, normals, colors, intr)


def _light_nodes(pyrender):
    nodes = []
    for direction, power in LIGHTS:
        # pyrender lights shine along their local -z; build a frame whose +z is the (GL) light direction.
        d = np.array(direction, np.float64) * np.array([1.0, -1.0, -1.0])  # OpenCV → OpenGL axes
        z = d / np.linalg.norm(d)
        helper = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = np.cross(helper, z)
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        nodes.append((pyrender.DirectionalLight(color=np.ones(3), intensity=power * np.pi), pose))
    return nodes


def _rasterize_pyrender(vertices, faces, normals, colors, intr):
    import pyrender

    renderer = _probe.get("renderer")
    if renderer is None:  # only reachable through the probe itself failing mid-way
        raise UnavailableError("renderer pyrender is unavailable", hint="use --renderer soft")
    flip = np.array([1.0, -1.0, -1.0])  # OpenCV camera → OpenGL camera (y up, looking down -z)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    scene = pyrender.Scene(bg_color=[*map(float, BACKGROUND), 1.0], ambient_light=[AMBIENT] * 3)
    if len(faces):
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0
        )
        prim = pyrender.Primitive(
            positions=(np.asarray(vertices, np.float64) * flip).astype(np.float32),
            normals=(np.asarray(normals, np.float64) * flip).astype(np.float32),
            # the shader multiplies linear albedo by vertex colour, so hand it linear values
            color_0=np.concatenate([srgb_to_linear(colors), np.ones((len(colors), 1))], axis=1).astype(
                np.float32
            ),
            indices=faces.astype(np.uint32),
            material=material,
            mode=pyrender.constants.GLTF.TRIANGLES,
        )
        scene.add(pyrender.Mesh([prim]))
    # clip planes from our own vertices: pyrender's Mesh/Scene .bounds use np.infty (gone in numpy 2)
    z = np.asarray(vertices)[:, 2] if len(vertices) else np.array([1.0])
    z = z[np.isfinite(z)]
    zfar = float(max(z.max(initial=1.0) * 2.0, 1.0))
    znear = float(max(z[z > 0].min(initial=zfar) * 0.5, 1e-3))
    # +0.5: GL pixel centres sit at half-integers, OpenCV's at integers
    cam = pyrender.IntrinsicsCamera(
        intr.fx, intr.fy, intr.cx + 0.5, intr.cy + 0.5, znear=min(znear, zfar / 2), zfar=zfar
    )
    scene.add(cam, pose=np.eye(4))
    for light, pose in _light_nodes(pyrender):
        scene.add(light, pose=pose)
    renderer.viewport_width, renderer.viewport_height = intr.width, intr.height
    try:
        color, depth = renderer.render(scene)
    except Exception as exc:  # noqa: BLE001 - GL errors surface as many types
        msg = " ".join(str(exc).split())[:200]
        raise UnavailableError(
            f"pyrender failed to draw a {intr.width}x{intr.height} frame: {type(exc).__name__}: {msg}",
            hint="use --renderer soft",
        ) from None
    return np.ascontiguousarray(color[..., :3]), depth > 0
