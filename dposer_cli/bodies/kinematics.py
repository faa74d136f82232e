"""Batched forward kinematics and linear-blend skinning as pure torch functions (smplx `lbs.py` shape, own code).

Every function takes any leading batch dims; rest quantities may carry fewer (shared) leading dims and
broadcast. Nothing here loops over samples or joints: the tree is processed one depth level at a time.
"""

import math
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


@lru_cache(maxsize=32)
def _levels(parents: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Group joints by tree depth: per level (joint ids, position of each parent inside the previous level)."""
    depth = [0] * len(parents)
    for j, p in enumerate(parents):  # parents may come in any order: resolve depths by walking up
        d, q = 0, p
        while q >= 0:
            d, q = d + 1, parents[q]
        depth[j] = d
    levels: list[tuple[int, ...]] = [
        tuple(j for j in range(len(parents)) if depth[j] == d) for d in range(max(depth) + 1)
    ]
    out: list[tuple[tuple[int, ...], tuple[int, ...]]] = [(levels[0], ())]
    for d in range(1, len(levels)):
        pos = {j: i for i, j in enumerate(levels[d - 1])}
        out.append((levels[d], tuple(pos[parents[j]] for j in levels[d])))
    return tuple(out)


class _Plan(NamedTuple):
    sizes: tuple[int, ...]  # joints per level
    parent_idx: Tensor  # parent per joint (roots: themselves)
    is_root: Tensor


@lru_cache(maxsize=64)
def _plan(parents: tuple[int, ...], device: torch.device) -> _Plan:
    """Index tensors for one tree on one device, built once (they dominate small-batch cost otherwise)."""
    return _Plan(
        sizes=tuple(len(j) for j, _ in _levels(parents)),
        parent_idx=torch.tensor([max(p, 0) for p in parents], device=device),
        is_root=torch.tensor([p < 0 for p in parents], device=device),
    )


class _Rows(NamedTuple):
    into_levels: Tensor  # pose-major row b·J + j → level-major row k·n + b (joint j = order[k])
    parents: tuple[Tensor, ...]  # per level after the first: its rows' parent rows in the previous level
    out_of_levels: Tensor  # level-major rows → pose-major


@lru_cache(maxsize=64)
def _rows(parents: tuple[int, ...], n: int, device: torch.device) -> _Rows:
    """Row indices of `forward_kinematics` for `n` poses of one tree: transforms are kept as (rows, 4, 4)
    with the poses of a level next to each other, so every level is a slice and every product one `bmm`."""
    levels = _levels(parents)
    order = torch.tensor([j for joints, _ in levels for j in joints])
    poses = torch.arange(n)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return _Rows(
        into_levels=(poses[None, :] * len(order) + order[:, None]).flatten().to(device),
        parents=tuple(
            (torch.tensor(pos)[:, None] * n + poses[None, :]).flatten().to(device) for _, pos in levels[1:]
        ),
        out_of_levels=(inverse[None, :] * n + poses[:, None]).flatten().to(device),
    )


# `forward_kinematics` by pointer jumping while poses × joints is at most this (small batches: fewer,
# larger operations); level by level above it (fewer flops)
JUMP_ROWS = 4096


@lru_cache(maxsize=64)
def _jumps(parents: tuple[int, ...], n: int, device: torch.device) -> tuple[Tensor, ...]:
    """Row gathers of pointer jumping for `n` poses of one tree, rows `b·(J+1) + j` with row `J` of each pose
    the identity: step s multiplies every transform by the one 2^s ancestors up (the identity past the root),
    so after ⌈log₂(depth + 1)⌉ steps each row holds its whole chain."""
    joints = len(parents)
    anc = [p if p >= 0 else joints for p in parents] + [joints]
    base = torch.arange(n)[:, None] * (joints + 1)
    steps = []
    while any(a != joints for a in anc):
        steps.append((base + torch.tensor(anc)[None, :]).flatten().to(device))
        anc = [anc[a] for a in anc]
    return tuple(steps)


def forward_kinematics(
    rot_mats: Float[Tensor, "*batch J 3 3"],
    rest_joints: Float[Tensor, "*rest J 3"],
    parents: "Tensor | Sequence[int]",
) -> tuple[Float[Tensor, "*out J 4 4"], Float[Tensor, "*out J 3"]]:
    """Posed world transforms and joint positions from local rotations and rest joint positions.

    The root keeps its rest position and turns by `rot_mats[..., root]`; every other joint sits at its
    parent's position plus the parent's world rotation applied to its rest offset. The returned
    transforms map a point given relative to a joint's *posed* position: T_j = [R_j | p_j].

    Works on homogeneous 4×4 transforms, T_j = T_parent · [R_local | offset_j], kept as rows of one (rows, 4,
    4) tensor, so every product is one row gather and one `bmm` (a batch-1 fit pays per operation, forward and
    backward, not per flop; broadcasting `matmul`s would add six view operations each). Small batches
    (poses × joints ≤ `JUMP_ROWS`) use pointer jumping: ⌈log₂(depth + 1)⌉ products over every joint (4 for
    the SMPL-X tree rather than 11 levels). Larger ones walk the tree a depth level at a time (rows ordered by
    level, so a level is a slice): one product per joint. The two differ by float rounding only.

    Args:
        rot_mats: local rotation of every joint (the root's is the global orientation).
        rest_joints: rest positions; leading dims broadcast against `rot_mats`.
        parents: parent index per joint, -1 for roots (any order).
    """
    tree = _parents_tuple(parents)
    plan = _plan(tree, rest_joints.device)
    offsets = rest_joints - rest_joints.index_select(-2, plan.parent_idx)
    offsets = torch.where(
        plan.is_root[:, None], rest_joints, offsets
    )  # a root's "offset" is its rest position

    # int(): while a `TraceCache` records, sizes are tensors
    batch = broadcast_shapes(
        [tuple(int(s) for s in rot_mats.shape[:-3]), tuple(int(s) for s in rest_joints.shape[:-2])]
    )
    if batch is None:
        raise ValueError(
            f"rotations {tuple(rot_mats.shape)} and rest joints {tuple(rest_joints.shape)} do not broadcast"
        )
    n_joints = int(rot_mats.shape[-3])
    n = math.prod(batch)
    local = make_transforms(
        rot_mats.expand(*batch, *rot_mats.shape[-3:]), offsets.expand(*batch, *offsets.shape[-2:])
    )
    if n * n_joints <= JUMP_ROWS:
        eye = torch.eye(4, dtype=local.dtype, device=local.device).expand(n, 1, 4, 4)
        chain = torch.cat([local.reshape(n, n_joints, 4, 4), eye], dim=1).reshape(n * (n_joints + 1), 4, 4)
        for ancestors in _jumps(tree, n, rest_joints.device):
            chain = torch.bmm(chain.index_select(0, ancestors), chain)
        transforms = chain.view(n, n_joints + 1, 4, 4)[:, :n_joints].reshape(*batch, n_joints, 4, 4)
        return transforms, transforms[..., :3, 3]
    rows = _rows(tree, n, rest_joints.device)
    levels = (
        local.reshape(n * n_joints, 4, 4)
        .index_select(0, rows.into_levels)
        .split([size * n for size in plan.sizes])
    )
    world = [levels[0]]
    for level, parent_rows in zip(levels[1:], rows.parents, strict=True):
        world.append(torch.bmm(world[-1].index_select(0, parent_rows), level))
    transforms = torch.cat(world).index_select(0, rows.out_of_levels).reshape(*batch, n_joints, 4, 4)
    return transforms, transforms[..., :3, 3]


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
    return (blended[..., :3] @ points[..., None])[..., 0] + blended[..., 3]


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


def broadcast_shapes(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...] | None:
    """NumPy broadcasting of `shapes`, or None when they do not broadcast. Plain Python: torch's
    `broadcast_shapes` goes through its symbolic-shape reference code (~1.5 ms a call, once per body forward)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size != 1:
                if out[i] not in (1, size):
                    return None
                out[i] = size
    return tuple(out)
