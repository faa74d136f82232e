"""Cameras for fitting: projection, box and depth initialisation, rotations, the y-up → camera convention."""

import math

import numpy as np
import pytest
import torch

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies.kinematics import batch_rodrigues


def _random_aa(n: int, seed: int = 0, max_angle: float = math.pi) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return axis * torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle


def test_projection_matches_pinhole_formula_with_square_and_separate_focals():
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(4, 7, 3, generator=g, dtype=torch.float64) + torch.tensor(
        [0, 0, 5.0], dtype=torch.float64
    )
    focal = torch.tensor([500.0, 800.0, 1200.0, 90.0], dtype=torch.float64)
    center = torch.tensor([[320.0, 240.0], [0.0, 0.0], [10.0, 20.0], [5.0, 6.0]], dtype=torch.float64)
    p, f, c = pts.numpy(), focal.numpy(), center.numpy()
    expected = p[..., :2] / p[..., 2:] * f[:, None, None] + c[:, None, :]
    np.testing.assert_allclose(cam.perspective_project(pts, focal, center).numpy(), expected, rtol=1e-12)
    fxy = torch.stack([focal, 2 * focal], -1)
    out = cam.perspective_project(pts, fxy, center).numpy()
    np.testing.assert_allclose(
        out[..., 1], p[..., 1] / p[..., 2] * 2 * f[:, None] + c[:, None, 1], rtol=1e-12
    )


def test_projection_gradient_stays_finite_behind_the_camera():
    pts = torch.tensor([[[0.1, 0.2, -1.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    cam.perspective_project(pts, torch.tensor([100.0]), torch.zeros(1, 2)).sum().backward()
    assert torch.isfinite(pts.grad).all()


def test_focal_is_the_image_diagonal():
    assert cam.estimate_focal(1600, 1200) == pytest.approx(2000.0)
    assert float(cam.estimate_focal(torch.tensor(3.0), torch.tensor(4.0))) == pytest.approx(5.0)


def test_bbox_covers_confident_keypoints_with_crop_aspect_and_margin():
    kp = torch.tensor(
        [
            [[100.0, 50.0, 0.9], [300.0, 450.0, 0.8], [1000.0, 1000.0, 0.0]],
            [[5.0, 5.0, 0.9], [0.0, 0.0, 0.0], [9.0, 9.0, 0.0]],
        ]
    )
    center, scale, valid = cam.bbox_from_keypoints(kp, rescale=1.1)
    np.testing.assert_allclose(center[0].numpy(), [200.0, 250.0])
    # w = 200, h = 400: max(200·256/192, 400) = 400 → 400 / 200 · 1.1
    assert float(scale[0]) == pytest.approx(2.2)
    assert valid.tolist() == [True, False]


def test_crop_camera_puts_the_body_origin_on_the_box_centre():
    center = torch.tensor([[900.0, 300.0]])
    size = torch.tensor([[1200.0, 1600.0]])  # (H, W)
    focal = torch.tensor([2000.0])
    transl = cam.cam_crop2full(torch.tensor([[0.9, 0.0, 0.0]]), center, torch.tensor([3.0]), size, focal)
    assert float(transl[0, 2]) == pytest.approx(2 * 2000 / (600 * 0.9))  # tz = 2f / (b·s)
    uv = cam.perspective_project(transl[:, None], focal, size.flip(-1) / 2)
    np.testing.assert_allclose(uv[0, 0].numpy(), [900.0, 300.0], rtol=1e-5)


def test_depth_from_fronto_parallel_edges_is_exact_and_falls_back_without_edges():
    g = torch.Generator().manual_seed(3)
    joints = torch.randn(5, 4, 3, generator=g, dtype=torch.float64) * 0.3
    joints[..., 2] = 0.0  # edges parallel to the image plane: 2D length = f·3D length / Z exactly
    depth_true = torch.tensor([2.0, 3.0, 5.0, 8.0, 4.0], dtype=torch.float64)
    focal = torch.full((5,), 1000.0, dtype=torch.float64)
    placed = joints + torch.stack([torch.zeros(5), torch.zeros(5), depth_true], -1)[:, None]
    uv = cam.perspective_project(placed, focal, torch.zeros(5, 2, dtype=torch.float64))
    kp = torch.cat([uv, torch.ones(5, 4, 1, dtype=torch.float64)], -1)
    kp[4, :, 2] = 0.0  # nobody seen: no usable edge
    edges = torch.tensor([[0, 1], [2, 3]])
    depth, valid = cam.depth_from_edges(joints, kp, edges, focal)
    np.testing.assert_allclose(depth[:4].numpy(), depth_true[:4].numpy(), rtol=1e-9)
    assert valid.tolist() == [True, True, True, True, False]


def test_initial_translation_reprojects_onto_the_keypoints():
    g = torch.Generator().manual_seed(4)
    joints = torch.randn(6, 10, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.3, 0.6, 0.02], dtype=torch.float64
    )
    transl = torch.tensor(
        [
            [0.5, -0.2, 4.0],
            [-1.0, 0.3, 6.0],
            [0.0, 0.0, 3.0],
            [1.5, 1.0, 9.0],
            [0.2, 0.2, 2.5],
            [-0.4, 0.1, 5.0],
        ],
        dtype=torch.float64,
    )
    focal = torch.full((6,), 1500.0, dtype=torch.float64)
    center = torch.tensor([[640.0, 360.0]], dtype=torch.float64).expand(6, 2)
    uv = cam.perspective_project(joints + transl[:, None], focal, center)
    kp = torch.cat([uv, torch.ones(6, 10, 1, dtype=torch.float64)], -1)
    est = cam.init_translation(
        joints,
        kp,
        torch.tensor([[0, 1], [2, 3], [4, 5]]),
        focal,
        center,
        torch.tensor([[720.0, 1280.0]], dtype=torch.float64).expand(6, 2),
    )
    assert (est[:, 2] / transl[:, 2] - 1).abs().max() < 0.1
    reproj = cam.perspective_project(joints + est[:, None], focal, center)
    assert (reproj.mean(1) - uv.mean(1)).norm(dim=-1).max() < 5.0  # px


def test_axis_angle_quaternion_matrix_round_trips_including_half_turns():
    aa = torch.cat(
        [_random_aa(500), torch.tensor([[math.pi, 0, 0], [0, 0, 0], [0, 1e-8, 0]], dtype=torch.float64)]
    )
    rot = batch_rodrigues(aa)
    back = cam.matrix_to_axis_angle(rot)
    np.testing.assert_allclose(batch_rodrigues(back).numpy(), rot.numpy(), atol=1e-9)
    np.testing.assert_allclose(
        cam.quaternion_to_axis_angle(cam.axis_angle_to_quaternion(aa[:500])).numpy(),
        aa[:500].numpy(),
        atol=1e-9,
    )
    b = _random_aa(503, seed=9)
    np.testing.assert_allclose(
        batch_rodrigues(cam.compose_axis_angle(aa, b)).numpy(), (rot @ batch_rodrigues(b)).numpy(), atol=1e-9
    )


def test_quaternion_of_zero_rotation_has_finite_gradient():
    aa = torch.zeros(2, 3, requires_grad=True)
    cam.compose_axis_angle(aa, torch.tensor([[0.0, math.pi, 0.0]] * 2)).sum().backward()
    assert torch.isfinite(aa.grad).all()


@pytest.fixture(scope="module")
def mannequin():
    from dposer_cli.bodies.mannequin import MannequinBody

    return MannequinBody()


def _named(model, out, name):
    return out.joints[0, model.joint_names.index(name)]


def test_camera_orient_shows_an_upright_body_facing_the_camera(mannequin):
    """y-up model → OpenCV camera: head above pelvis in the image, its left shoulder on the image's right,
    nose nearer the camera than the head joint."""
    out = mannequin(
        global_orient=cam.camera_orient(1), transl=torch.tensor([[0.0, 0.0, 3.0]]), return_vertices=False
    )
    uv = cam.perspective_project(out.joints, torch.tensor([1000.0]), torch.tensor([[500.0, 500.0]]))[0]
    idx = {n: mannequin.joint_names.index(n) for n in ("head", "pelvis", "left_shoulder", "right_shoulder")}
    assert uv[idx["head"], 1] < uv[idx["pelvis"], 1] - 100  # head higher up in the picture
    assert uv[idx["left_shoulder"], 0] > uv[idx["right_shoulder"], 0] + 50  # mirror view of a facing person
    assert _named(mannequin, out, "nose")[2] < _named(mannequin, out, "head")[2]


def test_flip_turns_the_body_away_and_keeps_it_upright(mannequin):
    flipped = cam.flip_about_up_axis(cam.camera_orient(1))
    out = mannequin(global_orient=flipped, transl=torch.tensor([[0.0, 0.0, 3.0]]), return_vertices=False)
    assert _named(mannequin, out, "nose")[2] > _named(mannequin, out, "head")[2]
    assert _named(mannequin, out, "head")[1] < _named(mannequin, out, "pelvis")[1]
    assert _named(mannequin, out, "left_shoulder")[0] < _named(mannequin, out, "right_shoulder")[0]


def test_planar_orientations_recover_the_rotation_of_a_plane():
    g = torch.Generator().manual_seed(5)
    n = 300
    pts = torch.randn(n, 6, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.05, 0.08, 0.0], dtype=torch.float64
    )
    aa = _random_aa(n, seed=6, max_angle=0.95 * math.pi)
    rot = batch_rodrigues(aa)
    xy = (pts @ rot.transpose(-1, -2))[..., :2] * 900 + 50  # orthographic camera, any scale and offset
    kp = torch.cat([xy, torch.ones(n, 6, 1, dtype=torch.float64)], -1)
    cands, scale, valid = cam.planar_orientations(pts, kp)
    err = (batch_rodrigues(cands) - rot[:, None]).flatten(2).abs().amax(-1).amin(-1)
    assert valid.all()
    assert ((scale / 900 - 1).abs() < 1e-4).float().mean() > 0.97
    assert (err < 1e-4).float().mean() > 0.97  # near edge-on or face-on planes lose digits
    kp[:, 3:, 2] = 0.0
    kp[:, 2, :2] = 2 * kp[:, 1, :2] - kp[:, 0, :2]  # the three seen points on a line
    assert not cam.planar_orientations(pts, kp)[2].any()
