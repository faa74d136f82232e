"""What both rasterisers share: the pinhole camera, the background, the light rig and the shading model.

`scene` (pyrender) and `soft` (numpy) both import this module and neither imports the other's internals,
so the two backends draw the same picture: Lambert shading over `LIGHTS` plus `AMBIENT`, gamma 2.2.
"""

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, UInt8

BACKGROUND = (0.96, 0.96, 0.96)  # light grey, sRGB
AMBIENT = 0.30  # linear ambient term
# Directional lights in OpenCV camera coordinates: direction *towards* the light, and its strength.
LIGHTS = (
    ((-0.35, -0.55, -0.76), 0.80),  # key: above-left of the camera
    ((0.45, -0.10, -0.89), 0.35),  # fill: right of the camera
    ((0.00, 0.00, -1.00), 0.15),  # headlight, so nothing facing us is black
)
_PBR_DIFFUSE = 0.96 * 0.96 / np.pi  # pyrender's diffuse BRDF scale for a dielectric (F0 = 0.04)


@dataclass(frozen=True, slots=True)
class Intrinsics:
    """Pinhole camera in pixels, OpenCV convention: u = fx·X/Z + cx, pixel centres at integers."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


def project(points_cam: Float[np.ndarray, "*batch 3"], intr: Intrinsics) -> Float[np.ndarray, "*batch 2"]:
    """Camera-space points → pixel coordinates (u, v); points behind the camera give non-finite values."""
    z = points_cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intr.fx * points_cam[..., 0] / z + intr.cx
        v = intr.fy * points_cam[..., 1] / z + intr.cy
    return np.stack([u, v], axis=-1)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def shade(normals: Float[np.ndarray, "N 3"], colors: Float[np.ndarray, "N 3"]) -> UInt8[np.ndarray, "N 3"]:
    """The shared shading model: linear albedo × (ambient + Lambert over LIGHTS), then gamma 1/2.2.

    Matches pyrender's PBR shader for a rough dielectric (its specular lobe is small there).
    """
    lin = srgb_to_linear(colors)
    dirs = np.array([d for d, _ in LIGHTS], np.float64)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    power = np.array([p for _, p in LIGHTS]) * np.pi  # pyrender intensities (see _light_nodes)
    irradiance = np.clip(normals @ dirs.T, 0.0, None) @ (power * _PBR_DIFFUSE)
    out = lin * (AMBIENT + irradiance)[:, None]
    return (np.clip(out, 0.0, 1.0) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def background_image(width: int, height: int) -> UInt8[np.ndarray, "H W 3"]:
    bg = (np.asarray(BACKGROUND) * 255 + 0.5).astype(np.uint8)
    return np.broadcast_to(bg, (height, width, 3)).copy()
