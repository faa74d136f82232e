"""Pinhole cameras for fitting bodies to 2D keypoints (spec §7.6–§7.8), batched over people.

Conventions: OpenCV camera coordinates (x right, y down, z forward, metres); a point (X, Y, Z) lands on
pixel (f·X/Z + cx, f·Y/Z + cy). The camera rotation is the identity, so a body's `global_orient` is its
orientation in camera coordinates. Body models are y-up and face +z (SMPL-X, the mannequin); a person
facing the camera upright therefore has `global_orient` ≈ `CAMERA_ORIENT` = [π, 0, 0] (a half turn about
x: head towards −y = up in the image, front towards −z = towards the camera).

Rotations are composed as unit quaternions, so no rotation-matrix → axis-angle conversion (and its
singularity at π) is needed.
"""

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dposer_cli.core.rotations import (  # noqa: F401 - re-exported for the fitting code
    axis_angle_to_quaternion,
    compose_axis_angle,
    matrix_to_axis_angle,
    quaternion_multiply,
    quaternion_to_axis_angle,
)

# a half turn about x: y-up model → OpenCV camera, facing the camera (spec §7.6: init orient ≈ [π, 0, 0])
CAMERA_ORIENT = (math.pi, 0.0, 0.0)
CROP_ASPECT = 256 / 192  # height / width of the detector crop (spec §7.6 bbox_from_detector)
MIN_DEPTH = 1e-3  # metres: points at or behind the camera are clamped here before dividing


def estimate_focal(width: float | Tensor, height: float | Tensor) -> float | Tensor:
    """Focal length in pixels for an unknown camera: the image diagonal √(W² + H²) (spec §7.6)."""
    if torch.is_tensor(width) or torch.is_tensor(height):
        return torch.sqrt(torch.as_tensor(width) ** 2 + torch.as_tensor(height) ** 2)
    return math.sqrt(float(width) ** 2 + float(height) ** 2)


def perspective_project(
    points: Float[Tensor, "*batch J 3"], focal: Tensor, center: Float[Tensor, "*batch 2"]
) -> Float[Tensor, "*batch J 2"]:
    """Project camera-space points to pixels: u = f·X/Z + c.

    Args:
        points: metres, OpenCV camera coordinates.
        focal: pixels, shape (*batch,) for square pixels or (*batch, 2) for (fx, fy).
        center: principal point (cx, cy) in pixels.
    """
    # (*batch,) → (*batch, 1, 1); (*batch, 2) → (*batch, 1, 2)
    f = focal[..., None, None] if focal.ndim == points.ndim - 2 else focal[..., None, :]
    z = points[..., 2:3].clamp(min=MIN_DEPTH)  # clamp, not where(): keeps gradients finite
    return points[..., :2] / z * f + center[..., None, :]


def bbox_from_keypoints(
    keypoints: Float[Tensor, "*batch K 3"], *, conf_threshold: float = 0.0, rescale: float = 1.1
) -> tuple[Float[Tensor, "*batch 2"], Float[Tensor, "*batch"], Bool[Tensor, "*batch"]]:
    """Detector-style box around the confident keypoints (spec §7.6 `bbox_from_detector`).

    Returns the box centre (px), its scale (box side / 200 px, widened to the 256×192 crop aspect and
    enlarged by `rescale`) and whether at least two keypoints were confident enough to define it.
    """
    xy, conf = keypoints[..., :2], keypoints[..., 2]
    vis = conf > conf_threshold
    big = torch.finfo(xy.dtype).max
    lo = torch.where(vis[..., None], xy, big).amin(-2)
    hi = torch.where(vis[..., None], xy, -big).amax(-2)
    valid = vis.sum(-1) >= 2
    lo = torch.where(valid[..., None], lo, torch.zeros_like(lo))
    hi = torch.where(valid[..., None], hi, torch.zeros_like(hi))
    center = (lo + hi) / 2
    wh = hi - lo
    scale = torch.maximum(wh[..., 0] * CROP_ASPECT, wh[..., 1]) / 200.0 * rescale
    return center, scale, valid


def cam_crop2full(
    crop_cam: Float[Tensor, "*batch 3"],
    center: Float[Tensor, "*batch 2"],
    scale: Float[Tensor, "*batch"],
    image_size: Float[Tensor, "*batch 2"],
    focal: Float[Tensor, "*batch"],
) -> Float[Tensor, "*batch 3"]:
    """Weak-perspective crop camera (s, tx, ty) → full-image translation (CLIFF; spec §7.6).

    `image_size` is (H, W). With b = 200·scale: tz = 2f/(b·s), tx += 2(cx − W/2)/(b·s), ty += 2(cy − H/2)/(b·s).
    """
    s, tx, ty = crop_cam.unbind(-1)
    bs = 200.0 * scale * s.clamp(min=1e-6)
    h, w = image_size.unbind(-1)
    cx, cy = center.unbind(-1)
    return torch.stack([tx + 2 * (cx - w / 2) / bs, ty + 2 * (cy - h / 2) / bs, 2 * focal / bs], dim=-1)


def depth_from_edges(
    joints: Float[Tensor, "*batch J 3"],
    keypoints: Float[Tensor, "*batch J 3"],
    edges: Tensor,
    focal: Float[Tensor, "*batch"],
    *,
    conf_threshold: float = 0.0,
) -> tuple[Float[Tensor, "*batch"], Bool[Tensor, "*batch"]]:
    """Camera distance from the ratio of 3D to 2D lengths of rigid edges (spec §7.6/§7.7 `guess_init`).

    tz = f·Σ‖3D edge‖ / Σ‖2D edge‖ over the edges whose two keypoints are both confident (the torso sides
    shoulder–hip for bodies, wrist–finger base for hands). `joints` are the model's joints matching the
    keypoints one to one; `edges` is an (E, 2) index tensor. Returns the depth and whether any edge
    was usable (depth is 0 where not).
    """
    a, b = edges[:, 0], edges[:, 1]
    conf = keypoints[..., 2]
    ok = ((conf[..., a] > conf_threshold) & (conf[..., b] > conf_threshold)).to(joints.dtype)
    len3 = (joints[..., a, :] - joints[..., b, :]).norm(dim=-1)
    len2 = (keypoints[..., a, :2] - keypoints[..., b, :2]).norm(dim=-1)
    sum3, sum2 = (ok * len3).sum(-1), (ok * len2).sum(-1)
    valid = (ok.sum(-1) > 0) & (sum2 > 1e-6)
    depth = torch.where(valid, focal * sum3 / sum2.clamp(min=1e-6), torch.zeros_like(sum3))
    return depth, valid


def init_translation(
    joints: Float[Tensor, "*batch J 3"],
    keypoints: Float[Tensor, "*batch J 3"],
    edges: Tensor,
    focal: Float[Tensor, "*batch"],
    center: Float[Tensor, "*batch 2"],
    image_size: Float[Tensor, "*batch 2"],
    *,
    conf_threshold: float = 0.0,
    depth: Float[Tensor, "*batch"] | None = None,
    fallback_edges: Tensor | None = None,
) -> Float[Tensor, "*batch 3"]:
    """Translation that puts the model's joints (posed, oriented, untranslated) over the keypoints.

    Depth: `depth` where given and positive, else from `depth_from_edges` on `edges`, else on
    `fallback_edges` (e.g. every limb: more foreshortened, so less exact); where no edge is usable, from
    the keypoint box through `cam_crop2full` with crop scale 0.9 (spec §7.6 "fixed"). Then x, y so
    that the confidence-weighted centroid of the joints projects onto that of the keypoints (the
    official code leaves x = y = 0, which starts the camera stage far off for people away from the
    image centre).
    """
    edge_depth, ok = depth_from_edges(joints, keypoints, edges, focal, conf_threshold=conf_threshold)
    if fallback_edges is not None:
        more, more_ok = depth_from_edges(
            joints, keypoints, fallback_edges, focal, conf_threshold=conf_threshold
        )
        edge_depth, ok = torch.where(ok, edge_depth, more), ok | more_ok
    if depth is not None:
        edge_depth, ok = torch.where(depth > 0, depth, edge_depth), ok | (depth > 0)
    depth = edge_depth
    box_center, box_scale, box_ok = bbox_from_keypoints(keypoints, conf_threshold=conf_threshold)
    crop = torch.tensor([0.9, 0.0, 0.0], dtype=joints.dtype, device=joints.device).expand(*focal.shape, 3)
    full = cam_crop2full(crop, box_center, box_scale.clamp(min=1e-3), image_size, focal)
    depth = torch.where(ok, depth, torch.where(box_ok, full[..., 2], 10.0 * torch.ones_like(depth)))
    w = (keypoints[..., 2] > conf_threshold).to(joints.dtype) * keypoints[..., 2]
    wsum = w.sum(-1, keepdim=True).clamp(min=1e-9)
    kp_mean = (w[..., None] * keypoints[..., :2]).sum(-2) / wsum
    j_mean = (w[..., None] * joints).sum(-2) / wsum
    has = w.sum(-1, keepdim=True) > 0
    kp_mean = torch.where(has, kp_mean, center)
    j_mean = torch.where(has, j_mean, joints.mean(-2))
    z = depth + j_mean[..., 2]
    xy = (kp_mean - center) * z[..., None] / focal[..., None] - j_mean[..., :2]
    return torch.cat([xy, depth[..., None]], dim=-1)


def flip_about_up_axis(global_orient: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """Turn a body half-way round its own vertical (y) axis: R·R_y(π) (spec §7.6 side-view second pass)."""
    turn = torch.tensor([0.0, math.pi, 0.0], dtype=global_orient.dtype, device=global_orient.device)
    return compose_axis_angle(global_orient, turn.expand_as(global_orient))


def camera_orient(
    *batch: int, dtype: torch.dtype = torch.float32, device: "str | torch.device" = "cpu"
) -> Tensor:
    """`CAMERA_ORIENT` broadcast to (*batch, 3): an upright body facing the camera."""
    return torch.tensor(CAMERA_ORIENT, dtype=dtype, device=device).expand(*batch, 3).clone()


def planar_orientations(
    points: Float[Tensor, "*batch N 3"],
    keypoints: Float[Tensor, "*batch N 3"],
    *,
    conf_threshold: float = 0.0,
) -> tuple[Float[Tensor, "*batch 2 3"], Float[Tensor, "*batch"], Bool[Tensor, "*batch"]]:
    """The two rotations that make a nearly planar point set look like its 2D keypoints (weak perspective).

    For an orientation init where no "upright" default exists (hands: wrist and finger bases are almost a
    plane). Under weak perspective a plane's image fixes its rotation up to one mirror ambiguity (tilted
    towards or away from the camera), so both candidates are returned, (…, 2, 3) axis-angle, for the
    caller to try. `points` are model coordinates relative to the root at zero orientation; rotation
    about the root. Also returns the image scale (pixels per metre, = f/Z: the depth without any
    foreshortening error) and where the solution is valid (at least three confident keypoints that span
    an area).
    """
    dtype = points.dtype
    w = torch.where(
        keypoints[..., 2] > conf_threshold, keypoints[..., 2], torch.zeros_like(keypoints[..., 2])
    )
    wsum = w.sum(-1, keepdim=True).clamp(min=1e-9)
    x3 = points - (w[..., None] * points).sum(-2, keepdim=True) / wsum[..., None]
    x2 = keypoints[..., :2] - (w[..., None] * keypoints[..., :2]).sum(-2, keepdim=True) / wsum[..., None]
    # plane basis e1, e2 and normal n = e1 × e2 (right-handed) of the 3D points
    _, _, vh = torch.linalg.svd(w.sqrt()[..., None] * x3, full_matrices=False)
    e1, e2 = vh[..., 0, :], vh[..., 1, :]
    n = torch.linalg.cross(e1, e2)
    basis = torch.stack([e1, e2, n], dim=-1)  # columns
    q = torch.stack([(x3 * e1[..., None, :]).sum(-1), (x3 * e2[..., None, :]).sum(-1)], dim=-1)  # (…, N, 2)
    # affine map A (2×2) of plane coordinates to image offsets, weighted least squares
    qtq = (w[..., None, None] * q[..., :, None] * q[..., None, :]).sum(-3)
    xtq = (w[..., None, None] * x2[..., :, None] * q[..., None, :]).sum(-3)
    eye = torch.eye(2, dtype=dtype, device=points.device)
    a_map = torch.linalg.solve(qtq + 1e-9 * eye, xtq.transpose(-1, -2)).transpose(-1, -2)
    # rows of A are s·(first two entries of orthonormal rows r1, r2): solve for 1/s² = u, then the
    # third entries c1, c2 from |r_i| = 1 and r1·r2 = 0 (two mirror solutions ±(c1, c2))
    p = a_map[..., 0, :].pow(2).sum(-1)
    qq = a_map[..., 1, :].pow(2).sum(-1)
    r = (a_map[..., 0, :] * a_map[..., 1, :]).sum(-1)
    det = (p * qq - r**2).clamp(min=0)
    disc = ((p + qq) ** 2 - 4 * det).clamp(min=0)
    u = 2 / ((p + qq) + disc.sqrt()).clamp(min=1e-12)  # the smaller root of det·u² − (p+q)·u + 1 = 0
    a, b = a_map[..., 0, :] * u.sqrt()[..., None], a_map[..., 1, :] * u.sqrt()[..., None]
    c1 = (1 - a.pow(2).sum(-1)).clamp(min=0).sqrt()
    c2_free = (1 - b.pow(2).sum(-1)).clamp(min=0).sqrt()
    c2 = torch.where(c1 > 1e-4, -(a * b).sum(-1) / c1.clamp(min=1e-4), c2_free)
    out = []
    for sign in (1.0, -1.0):
        r1 = torch.cat([a, sign * c1[..., None]], -1)
        r2 = torch.cat([b, sign * c2[..., None]], -1)
        r1 = r1 / r1.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        r2 = r2 - (r2 * r1).sum(-1, keepdim=True) * r1
        r2 = r2 / r2.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        rot_plane = torch.stack([r1, r2, torch.linalg.cross(r1, r2)], dim=-2)
        out.append(matrix_to_axis_angle(rot_plane @ basis.transpose(-1, -2)))
    spread = torch.linalg.svdvals(qtq)  # both plane directions must be seen
    valid = ((w > 0).sum(-1) >= 3) & (spread[..., -1] > 1e-12) & (det > 1e-12 * (p + qq) ** 2)
    return torch.stack(out, dim=-2), 1 / u.sqrt().clamp(min=1e-12), valid
