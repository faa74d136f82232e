"""The torch mannequin equals mannequin-x's own NumPy results (joints and vertices), and is differentiable."""

import copy

import numpy as np
import pytest
import torch

from dposer_cli.bodies.mannequin import MannequinHand
from dposer_cli.core.errors import InputError
from dposer_cli.core.paths import shared_data_dir

mannequin = pytest.importorskip("mannequin")

TOL = 1e-5  # metres


def _mx_pose(body, hands=None, orient=None, transl=None, dtype=np.float64):
    b = len(body)
    pose = {
        "body_pose": np.asarray(body, dtype).reshape(b, 21, 3),
        "head_pose": np.zeros((b, 3, 3), dtype),
        "hand_pose": np.zeros((b, 30, 3), dtype)
        if hands is None
        else np.asarray(hands, dtype).reshape(b, 30, 3),
    }
    if orient is not None:
        pose["pelvis_rotation"] = np.asarray(orient, dtype)  # SMPL-X global_orient turns about the pelvis
    if transl is not None:
        pose["global_translation"] = np.asarray(transl, dtype)
    return pose


def _vertex_subset(mx, ids):
    """A copy of a mannequin-x model that skins only `ids` with its own NumPy code."""
    sub = copy.copy(mx)
    sub._skin_joint_indices = mx._skin_joint_indices[ids]
    sub._skin_weights = mx._skin_weights[ids]
    sub._identity = dict(mx._identity, skin_vertices=mx._identity["skin_vertices"][ids])
    return sub


@pytest.fixture(scope="module")
def reference_poses():
    path = shared_data_dir() / "poses" / "body_reference_train.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return np.load(path)["poses"].astype(np.float64)


@pytest.mark.slow
def test_joints_equal_mannequin_x_on_8000_real_poses(reference_poses, mannequin64):
    mx = mannequin.Mannequin("wooden")
    worst = 0.0
    for chunk in np.array_split(reference_poses, 4):
        ref = mx.joint_transforms(_mx_pose(chunk))[..., :3, 3]
        with torch.no_grad():
            got = mannequin64(body_pose=torch.from_numpy(chunk), return_vertices=False).joints[:, :54].numpy()
        worst = max(worst, np.abs(got - ref).max())
    assert worst < TOL


@pytest.mark.slow
def test_vertices_equal_mannequin_x_on_8000_real_poses(reference_poses, mannequin32):
    # all poses on every 97th vertex (mannequin-x's NumPy skinning of the whole mesh takes ~20 ms a pose)
    mx = mannequin.Mannequin("wooden")
    ids = np.arange(0, mx.num_vertices, 97)
    mx_sub = _vertex_subset(mx, ids)
    worst = 0.0
    for chunk in np.array_split(reference_poses, 8):
        ref = mx_sub.vertices(_mx_pose(chunk))
        with torch.no_grad():
            got = mannequin32(body_pose=torch.from_numpy(chunk).float()).vertices[:, ids].double().numpy()
        worst = max(worst, np.abs(got - ref).max())
    assert worst < TOL


def test_whole_mesh_with_orientation_hands_translation_and_shapes(reference_poses, mannequin64):
    rng = np.random.default_rng(0)
    for trial in range(3):
        betas = np.zeros(10) if trial == 0 else rng.normal(size=10) * 1.5
        mx = mannequin.Mannequin("wooden", shape=betas)
        body = reference_poses[rng.choice(len(reference_poses), 6)]
        hands = rng.normal(size=(6, 90)) * 0.4
        orient, transl = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
        pose = _mx_pose(body, hands, orient, transl)
        pose["shape"] = np.broadcast_to(betas.astype(np.float32), (6, 10))
        with torch.no_grad():
            out = mannequin64(
                body_pose=torch.from_numpy(body),
                global_orient=torch.from_numpy(orient),
                transl=torch.from_numpy(transl),
                left_hand_pose=torch.from_numpy(hands[:, :45]),
                right_hand_pose=torch.from_numpy(hands[:, 45:]),
                betas=torch.from_numpy(betas),
            )
        assert np.abs(out.joints[:, :54].numpy() - mx.joint_transforms(pose)[..., :3, 3]).max() < TOL
        assert np.abs(out.vertices.numpy() - mx.vertices(pose)).max() < TOL


def test_per_sample_shapes_match_one_mannequin_x_model_each(mannequin64):
    rng = np.random.default_rng(1)
    betas = rng.normal(size=(3, 10))
    body = rng.normal(size=(3, 63)) * 0.3
    with torch.no_grad():
        out = mannequin64(body_pose=torch.from_numpy(body), betas=torch.from_numpy(betas))
    for i in range(3):
        mx = mannequin.Mannequin("wooden", shape=betas[i])
        ref = mx.vertices(_mx_pose(body[i : i + 1]) | {"shape": betas[i : i + 1].astype(np.float32)})
        assert np.abs(out.vertices[i].numpy() - ref[0]).max() < TOL


def test_gradients_are_finite_at_the_zero_pose_and_match_with_and_without_dedup(mannequin64):
    params = {
        k: torch.zeros(2, d, dtype=torch.float64, requires_grad=True)
        for k, d in [("global_orient", 3), ("body_pose", 63), ("left_hand_pose", 45), ("betas", 10)]
    }
    out = mannequin64(**params)
    (out.vertices.square().sum() + out.joints.square().sum()).backward()
    for k, p in params.items():
        assert torch.isfinite(p.grad).all(), k
    assert params["body_pose"].grad.abs().sum() > 0 and params["betas"].grad.abs().sum() > 0
    # the grad-free path (de-duplicated, cached neutral mesh) gives the same numbers
    with torch.no_grad():
        again = mannequin64(**{k: v.detach() for k, v in params.items()})
    assert torch.allclose(again.vertices, out.vertices.detach(), atol=1e-10)


def test_shapes_leading_dims_and_joints_only(mannequin32):
    out = mannequin32(body_pose=torch.zeros(2, 3, 63), transl=torch.ones(3))
    assert out.joints.shape == (2, 3, len(mannequin32.joint_names), 3)
    assert out.vertices.shape[:2] == (2, 3) and mannequin32.faces.max() < out.vertices.shape[-2]
    assert torch.allclose(out.joints[0, 0], mannequin32().joints + 1.0, atol=1e-6)
    fast = mannequin32(body_pose=torch.zeros(2, 3, 63), transl=torch.ones(3), return_vertices=False)
    assert fast.vertices is None and torch.allclose(fast.joints, out.joints)
    # landmark joints are exactly their mesh vertices
    ids = list(mannequin32.landmarks.values())
    assert torch.allclose(out.joints[..., 54:, :], out.vertices[..., ids, :], atol=1e-6)


def test_joint_sets_follow_openpose_and_smplx_order(mannequin32):
    names = mannequin32.joint_names
    op = mannequin32.joint_set("openpose25").tolist()
    assert [names[i] for i in op[:9]] == [
        "nose",
        "neck",
        "right_shoulder",
        "right_elbow",
        "right_wrist",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
        "pelvis",
    ]
    assert mannequin32.joint_set("body22").tolist() == list(range(22))
    rh = [names[i] for i in mannequin32.joint_set("rhand21").tolist()]
    assert rh[:5] == ["right_wrist", "right_thumb1", "right_thumb2", "right_thumb3", "right_thumb"]
    assert len(mannequin32.parents) == 54 and mannequin32.parents[0] == -1
    with pytest.raises(InputError, match="openpose25"):
        mannequin32.joint_set("openpose_25")


def test_landmarks_sit_where_a_person_has_them(mannequin32):
    j = dict(zip(mannequin32.joint_names, mannequin32().joints, strict=True))
    assert j["nose"][2] > j["head"][2] + 0.08 and j["nose"][1] > j["neck"][1]  # in front of the face
    assert j["left_eye"][0] > 0 > j["right_eye"][0] and j["left_eye"][1] > j["nose"][1]
    assert j["left_ear"][0] > j["left_eye"][0] and j["left_ear"][2] < j["left_eye"][2]
    for side in ("left", "right"):
        assert j[f"{side}_heel"][2] < j[f"{side}_ankle"][2] < j[f"{side}_big_toe"][2]
        assert j[f"{side}_big_toe"][1] < j[f"{side}_ankle"][1]
        assert abs(j[f"{side}_small_toe"][0]) > abs(j[f"{side}_big_toe"][0])  # small toe is lateral
        tip, third = j[f"{side}_middle"], j[f"{side}_middle3"]
        assert abs(tip[0]) > abs(third[0])  # T-pose: tips are further out than the last finger joint


def test_parameter_errors_are_one_line():
    from dposer_cli.bodies.base import gather_params

    with pytest.raises(InputError, match="did you mean 'body_pose'") as err:
        gather_params(
            {"body_poses": torch.zeros(63)},
            {"body_pose": 63},
            model="m",
            dtype=torch.float32,
            device=torch.device("cpu"),
        )
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="expected 63"):
        gather_params(
            {"body_pose": torch.zeros(66)},
            {"body_pose": 63},
            model="m",
            dtype=torch.float32,
            device=torch.device("cpu"),
        )
    with pytest.raises(InputError, match="11 coefficients"):
        gather_params(
            {"betas": torch.zeros(11)},
            {},
            model="m",
            dtype=torch.float32,
            device=torch.device("cpu"),
            coeffs={"betas": 10},
        )


@pytest.mark.parametrize("side", ["right", "left"])
def test_hand_equals_mannequin_x_hand_relative_to_the_wrist(side):
    hand = MannequinHand(side, dtype=torch.float64)
    rng = np.random.default_rng(3)
    orient, pose = rng.normal(size=(4, 3)), rng.normal(size=(4, 45)) * 0.5
    with torch.no_grad():
        out = hand(global_orient=torch.from_numpy(orient), hand_pose=torch.from_numpy(pose))
    # mannequin-x: the same rotation on the wrist joint of an otherwise rest body
    body = np.zeros((4, 21, 3))
    body[:, 20 if side == "right" else 19] = orient
    hands = np.zeros((4, 30, 3))
    hands[:, slice(15, 30) if side == "right" else slice(0, 15)] = pose.reshape(4, 15, 3)
    mx = mannequin.Mannequin("wooden")
    p = _mx_pose(body.reshape(4, 63), hands.reshape(4, 90))
    joints = mx.joint_transforms(p)[..., :3, 3]
    wrist = 21 if side == "right" else 20
    first = 39 if side == "right" else 24
    ref = joints[:, [wrist, *range(first, first + 15)]] - joints[:, wrist : wrist + 1]
    assert np.abs(out.joints[:, :16].numpy() - ref).max() < TOL
    assert np.abs(out.joints[:, 0].numpy()).max() < 1e-12  # wrist at the origin
    verts = mx.vertices(p) - joints[:, wrist : wrist + 1]
    region = hand.rig.ids_hand_right if side == "right" else hand.rig.ids_hand_left
    assert np.abs(out.vertices.numpy() - verts[:, region.numpy()]).max() < TOL
    assert hand.joint_set("hand21").tolist() == [
        0,
        13,
        14,
        15,
        16,
        1,
        2,
        3,
        17,
        4,
        5,
        6,
        18,
        10,
        11,
        12,
        19,
        7,
        8,
        9,
        20,
    ]
    assert hand.faces.max() < out.vertices.shape[1] and len(hand.parents) == 16


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_candidate_statistics_equal_the_all_vertex_reference_with_gradients(dtype, mannequin64, mannequin32):
    # the head box and floor shifts are extremes over thousands of vertices; only candidates get autograd
    rig = (mannequin64 if dtype == torch.float64 else mannequin32).rig
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    g = torch.Generator().manual_seed(4)
    betas = torch.randn(40, 10, generator=g, dtype=dtype) * 2.0
    betas[0] = 0.0  # the neutral shape: a symmetric mesh with exact ties
    betas.requires_grad_(True)
    fast, ref = rig.context(betas), rig.context(betas, all_vertices=True)
    for key in ("head_src_min", "head_src_max", "shift_l", "shift_r"):
        assert (fast[key] - ref[key]).abs().max() < tol, key
    w = torch.randn(40, len(rig.sub_landmarks_pos), 3, generator=g, dtype=dtype)
    (g_fast,) = torch.autograd.grad((rig.points(fast, "landmarks") * w).sum(), betas)
    (g_ref,) = torch.autograd.grad((rig.points(ref, "landmarks") * w).sum(), betas)
    assert (g_fast - g_ref).abs().max() < tol * 10 * g_ref.abs().max()


def test_statistics_in_order_path_equals_the_reference(mannequin64, monkeypatch):
    # foot regions with head-fitted or rigid vertices need the head box before the foot search
    rig = mannequin64.rig
    for region in ("fl", "fr"):
        monkeypatch.setitem(rig._regions, region, rig._regions[region]._replace(head=True, rigid=True))
    betas = torch.randn(5, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fast, ref = rig.context(betas), rig.context(betas, all_vertices=True)
    for key in ("head_src_min", "head_src_max", "shift_l", "shift_r"):
        assert torch.allclose(fast[key], ref[key], atol=1e-12), key


def test_fitting_path_with_free_betas_equals_the_grad_free_path(mannequin32):
    g = torch.Generator().manual_seed(6)
    params = {
        "body_pose": torch.randn(4, 63, generator=g) * 0.3,
        "global_orient": torch.randn(4, 3, generator=g),
    }
    betas = torch.randn(4, 10, generator=g)
    free = mannequin32(**params, betas=betas.clone().requires_grad_(True), return_vertices=False).joints
    with torch.no_grad():
        fixed = mannequin32(**params, betas=betas, return_vertices=True)
    assert torch.allclose(free, fixed.joints, atol=2e-6)
    ids = list(mannequin32.landmarks.values())
    assert torch.allclose(free[:, 54:], fixed.vertices[:, ids], atol=2e-6)


def test_constant_betas_are_cached_until_they_change(mannequin32):
    g = torch.Generator().manual_seed(7)
    pose = torch.randn(3, 63, generator=g) * 0.3
    b1 = torch.randn(3, 10, generator=g)
    b2 = b1.clone()
    b2[1, 0] += 0.5
    first = mannequin32(body_pose=pose, betas=b1, return_vertices=False).joints
    assert torch.equal(mannequin32(body_pose=pose, betas=b1, return_vertices=False).joints, first)
    changed = mannequin32(body_pose=pose, betas=b2, return_vertices=False).joints
    mannequin32.rig._shape_cache = None
    assert torch.equal(mannequin32(body_pose=pose, betas=b2, return_vertices=False).joints, changed)
    assert not torch.allclose(changed[1], first[1])
    assert torch.equal(changed[0], first[0]) and torch.equal(changed[2], first[2])


@pytest.mark.parametrize("side", ["right", "left"])
def test_hand_joints_only_equals_the_mesh_path(side):
    hand = MannequinHand(side)
    g = torch.Generator().manual_seed(8)
    params = {"hand_pose": torch.randn(3, 45, generator=g) * 0.4, "betas": torch.randn(3, 10, generator=g)}
    fast = hand(**params, return_vertices=False)
    full = hand(**params)
    assert fast.vertices is None and torch.allclose(fast.joints, full.joints, atol=2e-6)


def test_shifted_shapes_reuse_their_anchors_candidate_search_with_the_same_values(mannequin32):
    """`_jacobian`'s shapes, shifted by ±_SECANT per beta from their anchor, search the region extremes on the
    anchors only: the same head box, floor shifts and points as searching every shape."""
    from dposer_cli.bodies.mannequin import _SECANT

    rig = mannequin32.rig
    anchors = torch.randn(3, 10, generator=torch.Generator().manual_seed(21)) * 1.5
    step = _SECANT * torch.eye(10)
    shapes = torch.cat(
        [
            anchors,
            (anchors[None] + step[:, None]).flatten(0, 1),
            (anchors[None] - step[:, None]).flatten(0, 1),
        ]
    )
    with torch.no_grad():
        searched, full = rig.context(shapes, searched=3), rig.context(shapes)
        for key in ("head_src_min", "head_src_max", "shift_l", "shift_r"):
            assert torch.equal(searched[key], full[key]), key
        assert torch.equal(rig.points(searched, "landmarks"), rig.points(full, "landmarks"))


def test_free_betas_are_linearised_within_the_radius_and_reanchored_per_row(mannequin32):
    from dposer_cli.bodies.mannequin import LINEAR_RADIUS

    rig = mannequin32.rig
    g = torch.Generator().manual_seed(9)
    pose = torch.randn(3, 63, generator=g) * 0.3
    betas = torch.randn(3, 10, generator=g)

    def joints(b, *, linear=True, grad=True):
        rig.linearise = linear
        try:
            x = b.clone().requires_grad_(grad)
            out = mannequin32(body_pose=pose, betas=x, return_vertices=False).joints
            w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
            (grad_b,) = torch.autograd.grad((out * w).sum(), x) if grad else (None,)
            return out.detach(), grad_b
        finally:
            rig.linearise = True

    rig._anchor = None
    at_anchor, grad_lin = joints(betas)
    exact, grad_exact = joints(betas, linear=False)
    assert torch.allclose(at_anchor, exact, atol=1e-6)  # exact at the anchor (up to float order)
    assert torch.allclose(grad_lin, grad_exact, rtol=1e-3, atol=1e-4)  # secant vs tangent
    anchor = rig._anchor[0].clone()
    near = betas + 0.9 * LINEAR_RADIUS * torch.sign(torch.randn(3, 10, generator=g))
    near[2] = betas[2] + 3 * LINEAR_RADIUS  # row 2 moves beyond the radius: re-anchored alone
    moved, _ = joints(near)
    with torch.no_grad():
        truth = mannequin32(body_pose=pose, betas=near, return_vertices=False).joints
    assert (moved - truth).norm(dim=-1).max() < 1e-4  # < 0.1 mm from the exact shape pipeline
    assert torch.allclose(moved[2], truth[2], atol=2e-6)  # exact (up to float order) once re-anchored
    assert torch.equal(rig._anchor[0][:2], anchor[:2]) and torch.equal(rig._anchor[0][2], near[2])
    assert not torch.equal(moved[:2], truth[:2])  # rows 0, 1 are first-order, not recomputed


def test_reanchoring_keeps_an_earlier_graph_differentiable(mannequin32):
    rig = mannequin32.rig
    rig._anchor = None
    pose = torch.zeros(2, 63)
    b1 = torch.zeros(2, 10, requires_grad=True)
    first = mannequin32(body_pose=pose, betas=b1, return_vertices=False).joints.sum()
    b2 = torch.full((2, 10), 1.0, requires_grad=True)  # beyond the radius: both rows re-anchored
    mannequin32(body_pose=pose, betas=b2, return_vertices=False).joints.sum().backward()
    first.backward()  # the first graph's anchor tensors were not modified in place
    assert b1.grad is not None and torch.isfinite(b1.grad).all()


def test_replayed_joints_only_forward_follows_new_values_and_reanchoring(mannequin32, monkeypatch):
    from dposer_cli.bodies.mannequin import LINEAR_RADIUS
    from dposer_cli.core.trace import TRACE_ENV

    g = torch.Generator().manual_seed(12)
    mannequin32.rig._anchor = None

    def joints(pose, betas, transl, trace):
        monkeypatch.setenv(TRACE_ENV, "1" if trace else "0")
        b = betas.clone().requires_grad_(True)
        p = pose.clone().requires_grad_(True)
        out = mannequin32(body_pose=p, betas=b, transl=transl, return_vertices=False).joints
        w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        return (out.detach(), *torch.autograd.grad((out * w).sum(), [p, b]))

    betas = torch.randn(2, 10, generator=g)
    for k in range(6):  # the joints-only call is recorded after two calls and replayed from then on
        if k == 4:
            betas = betas + 2 * LINEAR_RADIUS  # every row re-anchored: new anchor tensors, same recording
        pose, transl = torch.randn(2, 63, generator=g) * 0.4, torch.randn(2, 3, generator=g)
        replayed = joints(pose, betas, transl, trace=True)
        eager = joints(pose, betas, transl, trace=False)
        for a, b in zip(replayed, eager, strict=True):
            assert torch.equal(a, b)
    assert mannequin32._trace.recorded() >= 1  # the replayed path was tested, not an eager fallback
    mannequin32.double()  # new buffers: recordings forgotten, and the next ones are float64
    assert not mannequin32._trace._traced
    mannequin32.float()


@pytest.mark.parametrize("side", ["right", "left"])
def test_replayed_hand_joints_equal_eager_ones(side, monkeypatch):
    from dposer_cli.core.trace import TRACE_ENV

    hand = MannequinHand(side)
    g = torch.Generator().manual_seed(13)

    def joints(pose, betas, trace):
        monkeypatch.setenv(TRACE_ENV, "1" if trace else "0")
        p, b = pose.clone().requires_grad_(True), betas.clone().requires_grad_(True)
        out = hand(hand_pose=p, betas=b, global_orient=pose[:, :3], return_vertices=False).joints
        w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        return (out.detach(), *torch.autograd.grad((out * w).sum(), [p, b]))

    betas = torch.randn(3, 10, generator=g)
    for _ in range(5):
        pose = torch.randn(3, 45, generator=g) * 0.4
        for a, b in zip(joints(pose, betas, True), joints(pose, betas, False), strict=True):
            assert torch.equal(a, b)
    assert hand._trace.recorded() == 1


def test_vertex_subsets_skin_only_those_vertices_with_the_whole_meshs_values(mannequin32):
    """`vertex_ids` (the neutral shape's cached subset operator, and shaped bodies): the whole mesh's values
    at those vertices to the bit, and the same gradients; the hand's subset too; bad ids are one line."""
    gen = torch.Generator().manual_seed(7)
    nv = mannequin32().vertices.shape[-2]
    ids = torch.cat([torch.randperm(nv, generator=gen)[:500], torch.tensor([0, 0])])
    for betas in (None, torch.randn(3, 10, generator=gen)):
        pose = (0.4 * torch.randn(3, 63, generator=gen)).requires_grad_(True)
        full = mannequin32(body_pose=pose, betas=betas, transl=torch.ones(3))
        sub = mannequin32(body_pose=pose, betas=betas, transl=torch.ones(3), vertex_ids=ids)
        assert sub.vertices.shape == (3, len(ids), 3)
        assert torch.equal(sub.vertices, full.vertices[:, ids]) and torch.equal(sub.joints, full.joints)
        w = torch.randn(sub.vertices.shape, generator=gen)
        (g_full,) = torch.autograd.grad((full.vertices[:, ids] * w).sum(), pose)
        (g_sub,) = torch.autograd.grad((sub.vertices * w).sum(), pose)
        torch.testing.assert_close(g_sub, g_full, atol=1e-6 * float(g_full.abs().max()), rtol=0)
    hand = MannequinHand("left")
    hp = 0.3 * torch.randn(2, 45, generator=gen)
    whole = hand(hand_pose=hp).vertices
    assert torch.equal(hand(hand_pose=hp, vertex_ids=torch.tensor([5, 1, 5])).vertices, whole[:, [5, 1, 5]])
    for bad, pattern in ((torch.tensor([nv]), r"\[0, "), (torch.tensor([[1, 2]]), "1-D integer"),
                         (torch.tensor([0.5]), "1-D integer")):  # fmt: skip
        with pytest.raises(InputError, match=pattern):
            mannequin32(vertex_ids=bad)
