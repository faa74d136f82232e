"""SMPL-X / MANO / FLAME adapters equal `smplx` called directly on the synthetic fixtures."""

import sys

import numpy as np
import pytest
import torch

from dposer_cli.bodies.smplx_family import SMPLX_DEFAULTS, FLAMEBody, MANOBody, SMPLXBody, read_model_arrays
from dposer_cli.core.errors import AssetMismatchError, InputError, UnavailableError
from tests._fixtures.body_models import write_mano, write_smplx

smplx = pytest.importorskip("smplx")

OP25 = [55, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65]
LHAND = [20, 37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69, 31, 32, 33, 70]
RHAND = [21, 52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74, 46, 47, 48, 75]
MANO21 = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]


def _random(shape, scale=0.3, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def smplx_body(body_models_root):
    return SMPLXBody(body_models_root / "smplx" / "SMPLX_NEUTRAL.npz")


def test_smplx_wrapper_equals_smplx_called_directly(body_models_root, smplx_body):
    n = 3
    params = {
        "global_orient": _random((n, 3), seed=1),
        "body_pose": _random((n, 63), seed=2),
        "left_hand_pose": _random((n, 45), seed=3),
        "right_hand_pose": _random((n, 45), seed=4),
        "jaw_pose": _random((n, 3), seed=5),
        "betas": _random((n, 10), 1.0, seed=6),
        "expression": _random((n, 100), 1.0, seed=7),
        "transl": _random((n, 3), seed=8),
    }
    direct = smplx.SMPLX(str(body_models_root / "smplx"), **{**SMPLX_DEFAULTS["smplx"], "batch_size": n})
    with torch.no_grad():
        ref = direct(**params, return_verts=True)
        got = smplx_body(**params)
    assert got.joints.shape == (n, 144, 3) and got.vertices.shape == (n, 10475, 3)
    torch.testing.assert_close(got.joints, ref.joints)
    torch.testing.assert_close(got.vertices, ref.vertices)


def test_smplx_construction_keeps_stdout_clean(tmp_path, capfd):
    path = write_smplx(tmp_path, num_shape=10, num_expression=10)  # v1.0-style: smplx prints a WARNING
    capfd.readouterr()
    SMPLXBody(path)
    out, err = capfd.readouterr()
    assert out == "" and "WARNING" in err


def test_smplx_leading_dims_defaults_and_joint_sets(smplx_body):
    out = smplx_body(body_pose=torch.zeros(2, 3, 63), betas=torch.zeros(4))  # short betas are zero-padded
    rest = smplx_body()
    assert out.joints.shape == (2, 3, 144, 3) and rest.joints.shape == (144, 3)
    torch.testing.assert_close(out.joints[1, 2], rest.joints)
    assert smplx_body.joint_set("openpose25").tolist() == OP25
    assert (
        smplx_body.joint_set("lhand21").tolist() == LHAND
        and smplx_body.joint_set("rhand21").tolist() == RHAND
    )
    assert smplx_body.joint_set("body22").tolist() == list(range(22))
    assert smplx_body.joint_set("face68").tolist() == list(range(127, 144)) + list(range(76, 127))
    assert smplx_body.faces.dtype == torch.long and len(smplx_body.parents) == 55
    assert smplx_body.num_betas == 10 and smplx_body.num_expression == 100
    with pytest.raises(InputError, match="11 coefficients"):
        smplx_body(betas=torch.zeros(11))
    # gradients reach the inputs (the module's own parameters are frozen and unused)
    pose = torch.zeros(2, 63, requires_grad=True)
    smplx_body(body_pose=pose).joints.sum().backward()
    assert torch.isfinite(pose.grad).all()
    assert not any(p.requires_grad for p in smplx_body.parameters())


@pytest.mark.slow
def test_smplx_pkl_without_chumpy_equals_npz(tmp_path):
    small = {"num_shape": 10, "num_expression": 10}  # v1.0-sized: keeps the protocol-2 pickle quick
    from_pkl = SMPLXBody(write_smplx(tmp_path / "pkl", fmt="pkl", **small))
    from_npz = SMPLXBody(write_smplx(tmp_path / "npz", **small))
    assert "chumpy" not in sys.modules
    params = {
        "body_pose": _random((2, 63), seed=9),
        "betas": _random((2, 10), seed=10),
        "left_hand_pose": _random((2, 45), seed=11),
        "expression": _random((2, 10), seed=12),
    }
    torch.testing.assert_close(from_pkl(**params).vertices, from_npz(**params).vertices)


@pytest.mark.parametrize("side", ["right", "left"])
def test_mano_wrapper_equals_smplx_with_official_settings(body_models_root, side):
    path = body_models_root / "mano" / f"MANO_{side.upper()}.pkl"
    body = MANOBody(path, side=side)
    params = {
        "global_orient": _random((4, 3), seed=1),
        "hand_pose": _random((4, 45), seed=2),
        "betas": _random((4, 10), 1.0, seed=3),
        "transl": _random((4, 3), seed=4),
    }
    data = read_model_arrays(path, "mano")
    direct = smplx.MANO(
        str(path),
        data_struct=smplx.utils.Struct(**data),
        is_rhand=side == "right",
        **{**SMPLX_DEFAULTS["mano"], "batch_size": 4},
    )
    if side == "left":
        direct.shapedirs[:, 0, :] *= -1  # smplx issue #48, as the official code does
    with torch.no_grad():
        ref = direct(**params)
        got = body(**params)
    tips = ref.vertices[:, [744, 320, 443, 554, 671]]
    torch.testing.assert_close(got.joints, torch.cat([ref.joints, tips], 1))
    torch.testing.assert_close(got.vertices, ref.vertices)
    assert body.joint_set("hand21").tolist() == MANO21 and body.joint_set("mano16").tolist() == list(
        range(16)
    )
    assert got.joints.shape == (4, 21, 3) and body.num_betas == 10


def test_flame_wrapper_equals_smplx_with_contour(body_models_root):
    folder = body_models_root / "flame"
    body = FLAMEBody(folder / "FLAME_NEUTRAL.pkl")
    params = {
        "jaw_pose": _random((3, 3), seed=1),
        "expression": _random((3, 100), 1.0, seed=2),
        "betas": _random((3, 100), 1.0, seed=3),
        "global_orient": _random((3, 3), seed=4),
    }
    # smplx itself cannot read the chumpy pickle: compare against it on the converted npz copy
    import tempfile
    from pathlib import Path

    from dposer_cli.bodies import pickle_compat

    with tempfile.TemporaryDirectory() as tmp:
        data = read_model_arrays(folder / "FLAME_NEUTRAL.pkl", "flame")
        np.savez(
            Path(tmp) / "FLAME_NEUTRAL.npz",
            **{k: np.asarray(v) for k, v in data.items() if k not in ("bs_style", "bs_type")},
        )
        (Path(tmp) / "flame_static_embedding.pkl").write_bytes(
            (folder / "flame_static_embedding.pkl").read_bytes()
        )
        (Path(tmp) / "flame_dynamic_embedding.npy").write_bytes(
            (folder / "flame_dynamic_embedding.npy").read_bytes()
        )
        direct = smplx.FLAME(tmp, ext="npz", **{**SMPLX_DEFAULTS["flame"], "batch_size": 3})
    with torch.no_grad():
        ref = direct(**params, return_verts=True)
        got = body(**params)
    torch.testing.assert_close(got.joints, ref.joints)
    torch.testing.assert_close(got.vertices, ref.vertices)
    assert got.joints.shape == (3, 73, 3) and body.joint_set("flame73").tolist() == list(range(73))
    assert body.joint_set("face68").tolist() == list(range(56, 73)) + list(range(5, 56))
    assert pickle_compat.load_pickle(folder / "flame_static_embedding.pkl")["lmk_face_idx"].shape == (51,)


def test_malformed_files_name_the_file_and_key(tmp_path, body_models_root):
    data = dict(np.load(body_models_root / "smplx" / "SMPLX_NEUTRAL.npz"))
    del data["lmk_faces_idx"]
    bad = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(bad, **data)
    with pytest.raises(AssetMismatchError) as err:
        SMPLXBody(bad)
    msg = str(err.value)
    assert str(bad) in msg and "'lmk_faces_idx'" in msg and "\n" not in msg
    with pytest.raises(AssetMismatchError, match="16 joints"):
        SMPLXBody(body_models_root / "mano" / "MANO_RIGHT.pkl")  # a MANO file where SMPL-X belongs
    garbage = tmp_path / "MANO_RIGHT.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(AssetMismatchError, match="not a readable model pickle"):
        MANOBody(garbage)


def test_flame_without_landmark_embedding_says_what_to_put_where(tmp_path, body_models_root):
    folder = tmp_path / "flame"
    folder.mkdir()
    (folder / "FLAME_NEUTRAL.pkl").write_bytes(
        (body_models_root / "flame" / "FLAME_NEUTRAL.pkl").read_bytes()
    )
    with pytest.raises(AssetMismatchError, match="flame_static_embedding.pkl"):
        FLAMEBody(folder / "FLAME_NEUTRAL.pkl")


def test_missing_smplx_package_is_unavailable(tmp_path, monkeypatch):
    path = write_mano(tmp_path)
    monkeypatch.setitem(sys.modules, "smplx", None)  # import smplx → ImportError
    with pytest.raises(UnavailableError) as err:
        MANOBody(path)
    assert "pip install dposer[smplx]" in err.value.hint


def _joints_only_matches(body, params):
    q = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    full, fast = body(**q).joints, body(**q, return_vertices=False)
    assert fast.vertices is None and fast.joints.shape == full.shape
    torch.testing.assert_close(fast.joints, full, atol=2e-6, rtol=0)
    w = torch.randn(full.shape, generator=torch.Generator().manual_seed(0))
    for a, b in zip(
        torch.autograd.grad((full * w).sum(), list(q.values())),
        torch.autograd.grad((fast.joints * w).sum(), list(q.values())),
        strict=True,
    ):
        torch.testing.assert_close(b, a, atol=1e-5 * float(a.abs().max()) + 1e-6, rtol=0)


def test_joints_only_smplx_equals_the_full_mesh_path_including_the_face_contour(smplx_body):
    # joints-only calls skin just the vertices joints are made of (vertex joints, landmark faces)
    assert smplx_body.twin.v_template.shape[0] < smplx_body.model.v_template.shape[0]
    n = 8
    params = {
        "global_orient": _random((n, 3), 1.0, seed=21),  # head turns: different contour faces
        "body_pose": _random((n, 63), 0.6, seed=22),
        "jaw_pose": _random((n, 3), seed=23),
        "right_hand_pose": _random((n, 45), seed=24),
        "betas": _random((n, 10), 1.0, seed=25),
        "expression": _random((n, 100), 1.0, seed=26),
        "transl": _random((n, 3), seed=27),
    }
    _joints_only_matches(smplx_body, params)


@pytest.mark.parametrize("side", ["right", "left"])
def test_joints_only_mano_equals_the_full_mesh_path(body_models_root, side):
    body = MANOBody(body_models_root / "mano" / f"MANO_{side.upper()}.pkl", side=side)
    params = {
        "global_orient": _random((5, 3), seed=31),
        "hand_pose": _random((5, 45), seed=32),
        "betas": _random((5, 10), 1.0, seed=33),
    }
    _joints_only_matches(body, params)


def test_joints_only_flame_equals_the_full_mesh_path(body_models_root):
    body = FLAMEBody(body_models_root / "flame" / "FLAME_NEUTRAL.pkl")
    params = {
        "global_orient": _random((5, 3), seed=41),
        "neck_pose": _random((5, 3), 0.6, seed=42),
        "jaw_pose": _random((5, 3), seed=43),
        "betas": _random((5, 100), 1.0, seed=44),
        "expression": _random((5, 100), 1.0, seed=45),
    }
    _joints_only_matches(body, params)


@pytest.mark.parametrize("kind", ["smplx", "mano", "flame"])
def test_replayed_joints_only_calls_equal_eager_ones(kind, body_models_root, monkeypatch):
    """Fits replay the joints-only twin from a recording: new values (head turns pick other contour faces)
    give the eager values and gradients bit for bit."""
    from dposer_cli.core.trace import TRACE_ENV

    if kind == "smplx":
        body = SMPLXBody(body_models_root / "smplx" / "SMPLX_NEUTRAL.npz")
        shapes = {"global_orient": (3, 1.0), "body_pose": (63, 0.6), "jaw_pose": (3, 0.3), "betas": (10, 1.0)}
    elif kind == "mano":
        body = MANOBody(body_models_root / "mano" / "MANO_RIGHT.pkl", side="right")
        shapes = {"global_orient": (3, 1.0), "hand_pose": (45, 0.3), "betas": (10, 1.0)}
    else:
        body = FLAMEBody(body_models_root / "flame" / "FLAME_NEUTRAL.pkl")
        shapes = {"global_orient": (3, 1.0), "jaw_pose": (3, 0.3), "expression": (100, 1.0)}

    def joints(params, trace):
        monkeypatch.setenv(TRACE_ENV, "1" if trace else "0")
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = body(**leaves, return_vertices=False).joints
        w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        return (out.detach(), *torch.autograd.grad((out * w).sum(), list(leaves.values())))

    for step in range(5):  # recorded on the third call, replayed on the last two
        params = {
            k: _random((2, d), scale, seed=50 + 7 * step + i)
            for i, (k, (d, scale)) in enumerate(shapes.items())
        }
        for a, b in zip(joints(params, True), joints(params, False), strict=True):
            assert torch.equal(a, b)
    assert body._trace.recorded() == 1


def _subset_matches(body, params, ids):
    """`vertex_ids` returns those vertices of the whole mesh (a twin keeping them), the same joints, and the
    same gradients of a loss on them."""
    q = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    full, sub = body(**q), body(**q, vertex_ids=ids)
    assert sub.vertices.shape == (*full.vertices.shape[:-2], len(ids), 3)
    torch.testing.assert_close(sub.vertices, full.vertices[..., ids, :], atol=2e-6, rtol=0)
    torch.testing.assert_close(sub.joints, full.joints, atol=2e-6, rtol=0)
    w = torch.randn(sub.vertices.shape, generator=torch.Generator().manual_seed(1))
    for a, b in zip(
        torch.autograd.grad((full.vertices[..., ids, :] * w).sum(), list(q.values())),
        torch.autograd.grad((sub.vertices * w).sum(), list(q.values())),
        strict=True,
    ):
        torch.testing.assert_close(b, a, atol=1e-5 * float(a.abs().max()) + 1e-6, rtol=0)


def test_vertex_subsets_of_smplx_mano_and_flame_equal_the_whole_mesh(smplx_body, body_models_root):
    mano = MANOBody(body_models_root / "mano" / "MANO_LEFT.pkl", side="left")
    flame = FLAMEBody(body_models_root / "flame" / "FLAME_NEUTRAL.pkl")
    cases = [
        (smplx_body, {"body_pose": _random((4, 63), 0.6, seed=51), "betas": _random((4, 10), 1.0, seed=52)}),
        (mano, {"hand_pose": _random((3, 45), seed=53), "global_orient": _random((3, 3), seed=54)}),
        (flame, {"jaw_pose": _random((2, 3), seed=55), "expression": _random((2, 100), 1.0, seed=56)}),
    ]
    for body, params in cases:
        nv = body.model.v_template.shape[0]
        ids = torch.cat([torch.arange(nv - 1, 0, -7), torch.tensor([3, 3])])  # any order, repeats allowed
        _subset_matches(body, params, ids)
        assert body.model.v_template.shape[0] == nv  # the model itself is untouched
    with pytest.raises(InputError, match=r"vertex_ids must lie in \[0, "):
        smplx_body(vertex_ids=torch.tensor([smplx_body.model.v_template.shape[0]]))
