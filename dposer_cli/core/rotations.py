"""Rotation conversions shared by every layer (batched, differentiable): axis-angle ↔ unit quaternion
(w, x, y, z), quaternion products, rotation matrix → axis-angle and the 6D continuous representation."""

import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F


def axis_angle_to_quaternion(aa: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 4"]:
    """Unit quaternion (w, x, y, z) of an axis-angle vector (radians)."""
    angle = aa.norm(dim=-1, keepdim=True)
    half = angle / 2
    # sin(θ/2)/θ with its Taylor series near 0, so the gradient at the zero rotation is finite
    small = angle < 1e-6
    k = torch.where(small, 0.5 - angle**2 / 48, torch.sin(half) / angle.clamp(min=1e-12))
    return torch.cat([torch.cos(half), aa * k], dim=-1)


def quaternion_to_axis_angle(q: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3"]:
    """Axis-angle (radians, angle in [0, π]) of a quaternion (w, x, y, z); it need not be unit length."""
    q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    q = torch.where(q[..., :1] < 0, -q, q)  # w ≥ 0: the shorter of the two equivalent rotations
    w, v = q[..., :1], q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, w)
    k = torch.where(s < 1e-6, 2 / w.clamp(min=1e-12), angle / s.clamp(min=1e-12))
    return v * k


def quaternion_multiply(
    a: Float[Tensor, "*batch 4"], b: Float[Tensor, "*batch 4"]
) -> Float[Tensor, "*batch 4"]:
    """Hamilton product a ⊗ b (the rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def compose_axis_angle(
    a: Float[Tensor, "*batch 3"], b: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 3"]:
    """Axis-angle of R(a)·R(b) (b applied first)."""
    return quaternion_to_axis_angle(
        quaternion_multiply(axis_angle_to_quaternion(a), axis_angle_to_quaternion(b))
    )


def matrix_to_axis_angle(rot: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 3"]:
    """Axis-angle of a rotation matrix (Shepperd's method through a quaternion: stable at every angle)."""
    m = rot
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        dim=-2,
    )  # row i is 4·q_i·q; take the row with the largest diagonal entry (best conditioned)
    diag = torch.diagonal(cands, dim1=-2, dim2=-1)
    pick = diag.argmax(-1)
    q = torch.gather(cands, -2, pick[..., None, None].expand(*pick.shape, 1, 4))[..., 0, :]
    return quaternion_to_axis_angle(q)


def rot6d_to_matrix(x: Float[Tensor, "*batch 6"]) -> Float[Tensor, "*batch 3 3"]:
    """Rotation matrices from the 6D representation read as a 3×2 matrix whose columns are Gram–Schmidt
    orthonormalised (Zhou et al.; VPoser's `ContinousRotReprDecoder` layout: x.view(3, 2))."""
    m = x.reshape(*x.shape[:-1], 3, 2)
    b1 = F.normalize(m[..., 0], dim=-1)
    b2 = F.normalize(m[..., 1] - (b1 * m[..., 1]).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2)], dim=-1)


def rigid_registration(
    src: Float[Tensor, "*batch N 3"],
    dst: Float[Tensor, "*batch N 3"],
    weights: Float[Tensor, "*batch N"] | None = None,
    *,
    scaling: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted Kabsch / Umeyama: (R, t, s) minimising Σ w‖s·R·src + t − dst‖² (roma.rigid_points_registration).

    Returns R (*batch, 3, 3), t (*batch, 3) and s (*batch) (ones unless `scaling`). Weights need not sum to 1.
    """
    import roma  # imported here: roma imports torch._dynamo (≈ 2 s of start-up for commands that never register)

    if weights is not None:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    if scaling:
        rot, trans, scale = roma.rigid_points_registration(src, dst, weights=weights, compute_scaling=True)
    else:
        rot, trans = roma.rigid_points_registration(src, dst, weights=weights)
        scale = torch.ones(rot.shape[:-2], dtype=rot.dtype, device=rot.device)
    return rot, trans, scale
