"""Batched forward kinematics and linear-blend skinning as pure torch functions (smplx `lbs.py` shape, own code).

Every function takes any leading batch dims; rest quantities may carry fewer (shared) leading dims and
broadcast. Nothing here loops over samples or joints: the tree is processed one depth level at a time.
"""

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

# below this squared angle the series expansions are used: their next terms are < 1e-13
_SMALL_ANGLE_SQ = 1e-6


def batch_rodrigues(pose_aa: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3 3"]:
    """Axis-angle (radians) to rotation matrices, with finite gradients at the zero rotation.

    R = I + a·K + b·K², K = [r]ₓ, a = sin θ/θ, b = (1 − cos θ)/θ² (series near θ = 0).
    """
    theta_sq = (pose_aa * pose_aa).sum(-1, keepdim=True)
    small = theta_sq < _SMALL_ANGLE_SQ
    # where() on a safe argument, not on the result: sqrt'(0) = inf would give NaN gradients
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / safe_sq)
    x, y, z = pose_aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=pose_aa.dtype, device=pose_aa.device)
    k_sq = pose_aa[..., :, None] * pose_aa[..., None, :] - theta_sq[..., None] * eye  # K² = r rᵀ − θ² I
    return eye + a[..., None] * k + b[..., None] * k_sq


def _parents_tuple(parents: "Tensor | Sequence[int]") -> tuple[int, ...]:
    return tuple(parents.tolist()) if isinstance(parents, Tensor) else tuple(int(p) for p in parents)


class _Plan(NamedTuple):
    jumps: tuple[Tensor, ...]  # per doubling step: each slot's 2^k-th ancestor (J+1,), slot J = "none"
    parent_slot: Tensor  # (J,) parent of each joint, J (the identity slot) for roots
    ancestry: Tensor  # (J, J) float: 1 where column a is row j itself or one of its ancestors


@lru_cache(maxsize=64)
def _plan(parents: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> _Plan:
    """Index tensors for one tree on one device, built once (they dominate small-batch cost otherwise)."""
    n = len(parents)
    up = [p if p >= 0 else n for p in parents] + [n]  # slot n: the identity above every root
    jumps = []
    while any(a != n for a in up[:n]):
        jumps.append(torch.tensor(up, device=device))
        up = [up[a] for a in up]
    ancestry = torch.zeros(n, n, dtype=dtype)
    for j in range(n):
        a = j
        while a >= 0:  # parents may come in any order: walk up
            ancestry[j, a] = 1.0
            a = parents[a]
    parent_slot = torch.tensor([p if p >= 0 else n for p in parents], device=device)
    return _Plan(tuple(jumps), parent_slot, ancestry.to(device))


def forward_kinematics(
    rot_mats: Float[Tensor, "*batch J 3 3"],
    rest_joints: Float[Tensor, "*rest J 3"],
    parents: "Tensor | Sequence[int]",
) -> tuple[Float[Tensor, "*out J 4 4"], Float[Tensor, "*out J 3"]]:
    """Posed world transforms and joint positions from local rotations and rest joint positions.

    The root keeps its rest position and turns by `rot_mats[..., root]`; every other joint sits at its
    parent's position plus the parent's world rotation applied to its rest offset. The returned
    transforms map a point given relative to a joint's *posed* position: T_j = [R_j | p_j].

    World rotations come from pointer doubling (each step multiplies every joint's partial product by its
    2^k-th ancestor's: ⌈log₂ depth⌉ batched products instead of one per tree level); positions are the
    sums of the rotated offsets along each joint's ancestry, one matrix product.

    Args:
        rot_mats: local rotation of every joint (the root's is the global orientation).
        rest_joints: rest positions; leading dims broadcast against `rot_mats`.
        parents: parent index per joint, -1 for roots (any order).
    """
    plan = _plan(_parents_tuple(parents), rest_joints.device, rest_joints.dtype)
    n = rest_joints.shape[-2]
    batch = torch.broadcast_shapes(rot_mats.shape[:-3], rest_joints.shape[:-2])
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device).expand(*batch, 1, 3, 3)
    world = torch.cat([rot_mats.expand(*batch, n, 3, 3), eye], dim=-3)  # slot n: identity
    for up in plan.jumps:
        world = torch.matmul(world.index_select(-3, up), world)
    # offset of each joint from its parent (a root's is its rest position), turned by the parent's rotation
    padded = torch.cat([rest_joints, torch.zeros_like(rest_joints[..., :1, :])], dim=-2)
    offsets = rest_joints - padded.index_select(-2, plan.parent_slot)
    turned = (world.index_select(-3, plan.parent_slot) * offsets[..., None, :]).sum(-1)
    joints_out = torch.matmul(plan.ancestry, turned)
    return make_transforms(world[..., :n, :, :], joints_out), joints_out


def _matvec(mat: Tensor, vec: Tensor) -> Tensor:
    return torch.matmul(mat, vec.unsqueeze(-1)).squeeze(-1)


def make_transforms(
    rot: Float[Tensor, "*batch 3 3"], trans: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 4 4"]:
    """Assemble homogeneous 4×4 transforms."""
    top = torch.cat([rot, trans[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def lbs(
    points: Float[Tensor, "*rest V 3"],
    transforms: Float[Tensor, "*batch J 4 4"],
    bind_joints: Float[Tensor, "*bind J 3"],
    weights: Float[Tensor, "*wb V J"],
) -> Float[Tensor, "*out V 3"]:
    """Linear-blend skinning: v = Σ_j w_vj · (R_j (x_v − b_j) + t_j).

    The per-joint affine maps are blended first (one (V, J) @ (J, 12) product), then applied once per
    vertex, which is cheaper than transforming every vertex by each of its influences.

    Args:
        points: rest (bind-pose) vertex positions.
        transforms: posed world transforms [R_j | t_j] (from `forward_kinematics`).
        bind_joints: bind-pose joint positions b_j.
        weights: dense skinning weights, rows sum to 1 (leading dims: per-sample vertex sets).
    """
    rot = transforms[..., :3, :3]
    trans = transforms[..., :3, 3] - _matvec(rot, bind_joints)
    affine = torch.cat([rot, trans[..., None]], dim=-1).flatten(-2)  # (*batch, J, 12)
    blended = (weights @ affine).unflatten(-1, (3, 4))  # (*batch, V, 3, 4)
    # elementwise, not `blended[..., :3] @ points[..., None]`: batched 3×3 @ 3×1 products are slow on CPU
    return (blended[..., :3] * points[..., None, :]).sum(-1) + blended[..., 3]


class SkinMatrix(NamedTuple):
    """Sparse skinning operator from `lbs_matrix` and its transpose (for the backward pass)."""

    matrix: Tensor  # (3V, 12J) CSR
    transpose: Tensor  # (12J, 3V) CSR


def lbs_matrix(points: Float[Tensor, "V 3"], weights: Float[Tensor, "V J"]) -> SkinMatrix:
    """Sparse (3V, 12J) operator M with vec(posed vertices) = M · vec([R_j | t_j − R_j b_j]).

    For a fixed rest mesh, skinning is linear in the per-joint affine maps; with four influences per
    vertex M has 48 non-zeros per vertex, so `lbs_apply` does ~13× fewer operations than the dense blend
    and never materialises the (B, V, 12) blended transforms. Build it once per mesh and reuse it.
    """
    nv, nj = weights.shape
    rows, cols = torch.nonzero(weights, as_tuple=True)
    w = weights[rows, cols]
    homog = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)  # (V, 4): x, y, z, 1
    i = torch.arange(3, device=points.device)[:, None]
    c = torch.arange(4, device=points.device)[None, :]
    out_rows = (rows[:, None, None] * 3 + i).expand(-1, 3, 4).reshape(-1)
    out_cols = (cols[:, None, None] * 12 + i * 4 + c).reshape(-1)
    values = (w[:, None, None] * homog[rows][:, None, :]).expand(-1, 3, 4).reshape(-1).detach()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul with a dense operand is stable
        warnings.simplefilter("ignore", UserWarning)
        shape = (3 * nv, 12 * nj)
        coo = torch.sparse_coo_tensor(
            torch.stack([out_rows, out_cols]), values, shape, check_invariants=False
        )
        coo_t = torch.sparse_coo_tensor(
            torch.stack([out_cols, out_rows]), values, shape[::-1], check_invariants=False
        )
        return SkinMatrix(coo.coalesce().to_sparse_csr(), coo_t.coalesce().to_sparse_csr())


class _SparseApply(torch.autograd.Function):
    """M @ X with the gradient M^T @ G from a pre-built transpose (torch would transpose M every call)."""

    @staticmethod
    def forward(ctx, dense: Tensor, matrix: Tensor, transpose: Tensor) -> Tensor:  # type: ignore[override]
        ctx.transpose = transpose
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return ctx.transpose @ grad.contiguous(), None, None  # CSR @ strided dense is very slow


def lbs_apply(
    skin: SkinMatrix,
    transforms: Float[Tensor, "*batch J 4 4"],
    bind_joints: Float[Tensor, "J 3"],
) -> Float[Tensor, "*batch V 3"]:
    """Skin with an operator from `lbs_matrix` (same result as `lbs` on its mesh and weights)."""
    batch = transforms.shape[:-3]
    rot = transforms[..., :3, :3]
    trans = transforms[..., :3, 3] - _matvec(rot, bind_joints)
    affine = torch.cat([rot, trans[..., None]], dim=-1).reshape(-1, transforms.shape[-3] * 12)
    posed = _SparseApply.apply(affine.T.contiguous(), skin.matrix, skin.transpose)
    return posed.T.reshape(*batch, -1, 3)
