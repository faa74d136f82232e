"""Kinematics against naive references: Rodrigues, FK over an unordered tree, LBS, sparse LBS."""

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from dposer_cli.bodies.kinematics import (
    batch_rodrigues,
    forward_kinematics,
    lbs,
    lbs_apply,
    lbs_matrix,
    make_transforms,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rodrigues_matches_scipy_including_tiny_angles(dtype):
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(200, 3, generator=g, dtype=torch.float64) * 1.5
    aa[:50] *= 1e-5  # series branch
    aa[50:60] = 0.0
    ref = torch.as_tensor(Rotation.from_rotvec(aa.numpy()).as_matrix())
    got = batch_rodrigues(aa.to(dtype)).double()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert (got - ref).abs().max() < tol


def test_rodrigues_gradient_at_zero_is_finite_and_correct():
    aa = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    r = batch_rodrigues(aa)
    (r * torch.arange(9, dtype=torch.float64).reshape(3, 3)).sum().backward()
    assert torch.isfinite(aa.grad).all()
    # dR/dω at 0 is the hat map: d/dω_x Σ C∘[ω]ₓ = C[2,1] − C[1,2] = 7 − 5
    assert torch.allclose(aa.grad[0], torch.tensor([7.0 - 5.0, 2.0 - 6.0, 3.0 - 1.0], dtype=torch.float64))
    assert torch.autograd.gradcheck(
        batch_rodrigues, (torch.randn(3, 3, dtype=torch.float64, requires_grad=True),)
    )


def _naive_fk(rot, rest, parents):
    """Recursive reference over one sample."""
    n = len(parents)
    R, p = [None] * n, [None] * n

    def visit(j):
        if R[j] is not None:
            return
        if parents[j] < 0:
            R[j], p[j] = rot[j], rest[j]
            return
        visit(parents[j])
        q = parents[j]
        R[j] = R[q] @ rot[j]
        p[j] = p[q] + R[q] @ (rest[j] - rest[q])

    for j in range(n):
        visit(j)
    return torch.stack(R), torch.stack(p)


@pytest.mark.parametrize("jump_rows", [4096, 0])  # pointer jumping (small batches), level by level
def test_forward_kinematics_matches_naive_recursion_on_unordered_tree(jump_rows, monkeypatch):
    from dposer_cli.bodies import kinematics

    monkeypatch.setattr(kinematics, "JUMP_ROWS", jump_rows)
    g = torch.Generator().manual_seed(1)
    parents = [3, -1, 3, 1, 2, 2, 0, 1]  # children before parents: level processing must not assume order
    rot = batch_rodrigues(torch.randn(5, 8, 3, generator=g, dtype=torch.float64))
    rest = torch.randn(8, 3, generator=g, dtype=torch.float64)  # shared rest joints broadcast over the batch
    transforms, joints = forward_kinematics(rot, rest, torch.tensor(parents))
    for b in range(5):
        R, p = _naive_fk(rot[b], rest, parents)
        assert torch.allclose(transforms[b, :, :3, :3], R)
        assert torch.allclose(joints[b], p) and torch.allclose(transforms[b, :, :3, 3], p)
    assert torch.equal(
        transforms[..., 3, :], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64).expand(5, 8, 4)
    )


def test_forward_kinematics_strategies_agree_with_gradients_on_a_deep_tree(monkeypatch):
    from dposer_cli.bodies import kinematics

    g = torch.Generator().manual_seed(4)
    parents = [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2, 12, 13, -1, 15]  # depth 11, a branch, two roots
    aa = torch.randn(3, 2, len(parents), 3, generator=g, dtype=torch.float64)
    rest = torch.randn(len(parents), 3, generator=g, dtype=torch.float64)
    out = []
    for rows in (4096, 0):
        monkeypatch.setattr(kinematics, "JUMP_ROWS", rows)
        x = aa.clone().requires_grad_(True)
        transforms, joints = forward_kinematics(batch_rodrigues(x), rest, parents)
        (grad,) = torch.autograd.grad(
            (joints * torch.linspace(-1, 1, joints.numel()).view_as(joints)).sum(), x
        )
        out.append((transforms, grad))
    assert kinematics._jumps(tuple(parents), 1, torch.device("cpu")).__len__() == 4  # ⌈log₂ 12⌉ products
    assert torch.allclose(out[0][0], out[1][0], atol=1e-12) and torch.allclose(
        out[0][1], out[1][1], atol=1e-12
    )


def test_forward_kinematics_identity_rotations_reproduce_rest_pose_with_leading_dims():
    rest = torch.randn(2, 3, 6, 3)
    eye = torch.eye(3).expand(2, 3, 6, 3, 3)
    _, joints = forward_kinematics(eye, rest, [-1, 0, 1, 1, 3, 0])
    assert torch.allclose(joints, rest, atol=1e-6)


def test_lbs_matches_per_vertex_sum_and_sparse_matrix_agrees():
    g = torch.Generator().manual_seed(2)
    nv, nj = 40, 5
    weights = torch.rand(nv, nj, generator=g, dtype=torch.float64)
    weights[weights < 0.4] = 0.0
    weights[:, 0] += 1e-3
    weights /= weights.sum(1, keepdim=True)
    points = torch.randn(nv, 3, generator=g, dtype=torch.float64)
    bind = torch.randn(nj, 3, generator=g, dtype=torch.float64)
    transforms = make_transforms(
        batch_rodrigues(torch.randn(3, nj, 3, generator=g, dtype=torch.float64)),
        torch.randn(3, nj, 3, generator=g, dtype=torch.float64),
    )
    ref = torch.zeros(3, nv, 3, dtype=torch.float64)
    for j in range(nj):
        moved = (transforms[:, j, None, :3, :3] @ (points - bind[j])[..., None])[..., 0] + transforms[
            :, j, None, :3, 3
        ]
        ref += weights[None, :, j, None] * moved
    assert torch.allclose(lbs(points, transforms, bind, weights), ref)
    assert torch.allclose(lbs_apply(lbs_matrix(points, weights), transforms, bind), ref)


def test_rotation_about_root_keeps_root_and_bone_lengths():
    rest = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    rot = torch.eye(3).repeat(3, 1, 1)
    rot[0] = batch_rodrigues(torch.tensor([0.0, 0.0, math.pi / 2]))
    _, joints = forward_kinematics(rot, rest, [-1, 0, 1])
    assert torch.allclose(joints[0], rest[0])
    assert torch.allclose(joints[1], torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(joints[2], torch.tensor([-1.0, 2.0, 0.0]), atol=1e-6)


def test_sparse_skinning_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    weights = torch.rand(30, 5, generator=g, dtype=torch.float64)
    weights[weights < 0.5] = 0.0
    weights[:, 0] += 1e-3
    weights /= weights.sum(1, keepdim=True)
    skin = lbs_matrix(torch.randn(30, 3, generator=g, dtype=torch.float64), weights)
    bind = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def posed(aa):
        return lbs_apply(
            skin, make_transforms(batch_rodrigues(aa), torch.ones(2, 5, 3, dtype=torch.float64)), bind
        )

    assert torch.autograd.gradcheck(posed, (torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True),))
