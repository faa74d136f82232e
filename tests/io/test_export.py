"""`io.export`: meshes read back by trimesh with the right counts; BVH parsed back by a small independent
parser whose forward kinematics reproduces the body model's joints (default mannequin and SMPL-X)."""

import numpy as np
import pytest
import torch
import trimesh

from dposer_cli.bodies import load_body
from dposer_cli.core.errors import InputError
from dposer_cli.io.export import EXPORT_FORMATS, euler_zxy_degrees, mesh_paths, write_bvh, write_meshes
from tests._fixtures.body_models import write_smplx

BODY_JOINTS = 22  # pelvis + the 21 SMPL-X body joints: what a body pose drives
GESTURES = "official/examples/Gestures_3_poses_batch005.npz"


# ---------------------------------------------------------------------------------------------------- BVH parser
def _axis_matrix(axis: str, deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    rows = {
        "X": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "Y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "Z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def parse_bvh(text: str) -> dict:
    """A minimal BVH reader: names, parents, offsets, channels per joint, frame time and the motion matrix."""
    tokens = text.split()
    names, parents, offsets, channels = [], [], [], []
    stack: list[int] = []
    i, last = 0, -1
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            names.append(tokens[i + 1])
            parents.append(stack[-1] if stack else -1)
            offsets.append(None)
            channels.append([])
            last = len(names) - 1
            i += 2
        elif tok == "End":  # "End Site { OFFSET x y z }"
            assert tokens[i + 1] == "Site" and tokens[i + 2] == "{" and tokens[i + 3] == "OFFSET"
            assert tokens[i + 7] == "}"
            i += 8
        elif tok == "{":
            stack.append(last)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            offsets[last] = [float(v) for v in tokens[i + 1 : i + 4]]
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            channels[last] = tokens[i + 2 : i + 2 + n]
            i += 2 + n
        else:
            i += 1  # HIERARCHY
    assert not stack
    assert tokens[i + 1] == "Frames:" and tokens[i + 3 : i + 5] == ["Frame", "Time:"]
    frames, frame_time = int(tokens[i + 2]), float(tokens[i + 5])
    width = sum(len(c) for c in channels)
    motion = np.array(tokens[i + 6 :], dtype=np.float64)
    assert motion.size == frames * width, "MOTION holds as many numbers as Frames × channels"
    return {"names": names, "parents": parents, "offsets": np.array(offsets), "channels": channels,
            "frames": frames, "frame_time": frame_time, "motion": motion.reshape(frames, width)}  # fmt: skip


def bvh_positions(bvh: dict) -> np.ndarray:
    """World joint positions (T, J, 3) by forward kinematics, channels applied in their listed order
    (v_parent = R_ch1 · R_ch2 · R_ch3 · v_local); the root is at OFFSET + its position channels."""
    t = bvh["frames"]
    j_count = len(bvh["names"])
    pos, rot = np.zeros((t, j_count, 3)), np.zeros((t, j_count, 3, 3))
    col = 0
    for j, (parent, chans) in enumerate(zip(bvh["parents"], bvh["channels"])):
        local_r = np.broadcast_to(np.eye(3), (t, 3, 3)).copy()
        local_t = np.broadcast_to(bvh["offsets"][j], (t, 3)).copy()
        for ch in chans:
            values = bvh["motion"][:, col]
            col += 1
            if ch.endswith("position"):
                local_t[:, "XYZ".index(ch[0])] += values
            else:
                local_r = local_r @ _axis_matrix(ch[0], values)
        assert parent < j, "the parser relies on parents being written before their children"
        if parent < 0:
            pos[:, j], rot[:, j] = local_t, local_r
        else:
            pos[:, j] = pos[:, parent] + np.einsum("tij,tj->ti", rot[:, parent], local_t)
            rot[:, j] = rot[:, parent] @ local_r
    return pos


# ---------------------------------------------------------------------------------------------------- helpers
def _gestures(shared_data, frames: slice = slice(0, 240, 40)) -> dict[str, torch.Tensor]:
    data = np.load(shared_data / GESTURES, allow_pickle=False)
    body = torch.as_tensor(data["pose_body"][frames], dtype=torch.float32)
    orient = torch.as_tensor(data["root_orient"][frames], dtype=torch.float32)
    transl = torch.linspace(0, 1, len(body))[:, None] * torch.tensor([0.3, 0.05, -0.2])
    return {"global_orient": orient, "body_pose": body, "transl": transl}


def _skeleton(model, betas: torch.Tensor | None = None) -> tuple[list[str], list[int], np.ndarray]:
    """Names, parents and rest offsets of the body joints, from the model's public interface only."""
    names = list(model.joint_names[:BODY_JOINTS])
    parents = [int(p) for p in model.parents[:BODY_JOINTS]]
    assert max(parents) < BODY_JOINTS
    with torch.no_grad():
        rest = model(betas=betas, return_vertices=False).joints.reshape(-1, len(model.joint_names), 3)[0]
    rest = rest[:BODY_JOINTS].double().numpy()
    offsets = np.array([rest[j] - rest[p] if p >= 0 else rest[j] for j, p in enumerate(parents)])
    return names, parents, offsets


def _check_bvh_fk(tmp_path, model, params: dict[str, torch.Tensor], betas: torch.Tensor | None = None):
    names, parents, offsets = _skeleton(model, betas)
    with torch.no_grad():
        joints = model(**params, betas=betas, return_vertices=False).joints[:, :BODY_JOINTS].double().numpy()
    t = len(params["body_pose"])
    rotations = torch.cat([params["global_orient"][:, None], params["body_pose"].reshape(t, 21, 3)], dim=1)
    path = write_bvh(tmp_path / "motion.bvh", names, parents, offsets, rotations.double().numpy(),
                     params["transl"].double().numpy(), fps=30)  # fmt: skip
    bvh = parse_bvh(path.read_text())
    # the file lists joints depth first: map back to the model's order by name
    order = [bvh["names"].index(n) for n in names]
    assert sorted(bvh["names"]) == sorted(names)
    assert [bvh["names"][bvh["parents"][k]] if bvh["parents"][k] >= 0 else None for k in order] == [
        names[p] if p >= 0 else None for p in parents
    ]
    assert bvh["frames"] == t and bvh["frame_time"] == pytest.approx(1 / 30)
    assert bvh["channels"][0] == [
        "Xposition",
        "Yposition",
        "Zposition",
        "Zrotation",
        "Xrotation",
        "Yrotation",
    ]
    assert all(c == ["Zrotation", "Xrotation", "Yrotation"] for c in bvh["channels"][1:])
    np.testing.assert_allclose(bvh_positions(bvh)[:, order], joints, atol=1e-4)
    return bvh


# ---------------------------------------------------------------------------------------------------- BVH tests
def test_bvh_of_a_real_motion_reproduces_the_mannequin_joints(tmp_path, shared_data):
    bvh = _check_bvh_fk(tmp_path, load_body("body"), _gestures(shared_data))
    assert len(bvh["names"]) == BODY_JOINTS


def test_bvh_reproduces_a_shaped_mannequin(tmp_path, shared_data):
    betas = torch.tensor([1.5, -1.0, 0.5, 0.0, 0.8, 0.0, 0.0, -0.5, 0.0, 0.3])
    _check_bvh_fk(tmp_path, load_body("body"), _gestures(shared_data, slice(3, 200, 65)), betas)


def test_bvh_reproduces_smplx_joints(tmp_path, shared_data):
    pytest.importorskip("smplx")
    model = load_body("body", write_smplx(tmp_path / "models", num_shape=10, num_expression=10))
    assert model.kind == "smplx"
    _check_bvh_fk(tmp_path, model, _gestures(shared_data), torch.linspace(-1, 1, 10))


def test_bvh_euler_zxy_matches_rotation_matrices_including_gimbal_lock():
    rng = np.random.default_rng(0)
    aa = rng.standard_normal((200, 3)) * 1.5
    # x = ±90° exactly (gimbal lock) and tiny / zero rotations
    aa[:3] = [[np.pi / 2, 0, 0], [-np.pi / 2, 0, 0], [0, 0, 0]]
    aa[3] = [1e-9, -2e-9, 0]
    z, x, y = np.moveaxis(euler_zxy_degrees(aa), -1, 0)
    rebuilt = _axis_matrix("Z", z) @ _axis_matrix("X", x) @ _axis_matrix("Y", y)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)[..., None]
    k = aa / np.maximum(np.linalg.norm(aa, axis=-1, keepdims=True), 1e-300)
    kx = np.zeros((len(aa), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx -= np.swapaxes(kx, 1, 2)
    rodrigues = np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx
    np.testing.assert_allclose(rebuilt, rodrigues, atol=1e-9)


def test_bvh_angles_are_unwrapped_over_time(tmp_path):
    # a joint turning steadily about y through ±180°: no 360° jump between consecutive frames
    angle = np.linspace(0, 3 * np.pi, 50)
    rotations = np.zeros((50, 2, 3))
    rotations[:, 1, 1] = np.mod(angle + np.pi, 2 * np.pi) - np.pi
    path = write_bvh(tmp_path / "spin.bvh", ["root", "child"], [-1, 0], np.array([[0, 1, 0], [0, 0.5, 0]]),
                     rotations, np.zeros((50, 3)), fps=25)  # fmt: skip
    bvh = parse_bvh(path.read_text())
    y = bvh["motion"][:, -1]
    np.testing.assert_allclose(np.diff(y), 540 / 49, atol=1e-4)
    assert y[-1] - y[0] == pytest.approx(540, abs=1e-3)
    assert bvh["offsets"][0].tolist() == [0, 0, 0] and bvh["motion"][0, 1] == pytest.approx(1.0)


def test_bvh_rejects_a_skeleton_that_is_not_one_tree(tmp_path):
    zeros = np.zeros((1, 3, 3))
    with pytest.raises(InputError, match="exactly one root"):
        write_bvh(
            tmp_path / "x.bvh", ["a", "b", "c"], [-1, -1, 0], np.zeros((3, 3)), zeros, np.zeros((1, 3)), 30
        )
    with pytest.raises(InputError, match="not a tree"):
        write_bvh(
            tmp_path / "x.bvh", ["a", "b", "c"], [-1, 2, 1], np.zeros((3, 3)), zeros, np.zeros((1, 3)), 30
        )
    with pytest.raises(InputError, match="same 3 joints"):
        write_bvh(tmp_path / "x.bvh", ["a", "b"], [-1, 0, 1], np.zeros((3, 3)), zeros, np.zeros((1, 3)), 30)
    assert not (tmp_path / "x.bvh").exists()


# ---------------------------------------------------------------------------------------------------- meshes
@pytest.fixture(scope="module")
def mannequin_meshes() -> tuple[np.ndarray, np.ndarray]:
    model = load_body("body")
    pose = torch.zeros(3, 63)
    pose[1, 2] = 0.8  # left hip about z
    pose[2, 45:48] = torch.tensor([0.0, 0.0, -1.0])  # left shoulder
    with torch.no_grad():
        verts = model(body_pose=pose).vertices.numpy()
    return verts, model.faces.numpy()


def test_glb_is_one_scene_with_a_node_per_pose(tmp_path, mannequin_meshes):
    verts, faces = mannequin_meshes
    paths = write_meshes(tmp_path / "poses", verts, faces, "glb")
    assert paths == [tmp_path / "poses.glb"]
    scene = trimesh.load(paths[0], process=False)
    assert isinstance(scene, trimesh.Scene)
    assert sorted(scene.graph.nodes_geometry) == [f"poses_{i:04d}" for i in range(3)]
    for i in range(3):
        mesh = scene.geometry[f"poses_{i:04d}"]
        assert mesh.vertices.shape == verts[i].shape and mesh.faces.shape == faces.shape
        np.testing.assert_allclose(mesh.vertices, verts[i], atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, faces)


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_obj_and_ply_write_one_file_per_pose(tmp_path, mannequin_meshes, fmt):
    verts, faces = mannequin_meshes
    paths = write_meshes(tmp_path / f"poses.{fmt}", verts, faces, fmt)
    assert paths == [tmp_path / "poses" / f"poses_{i:04d}.{fmt}" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "poses").iterdir()) == [p.name for p in paths]  # no temp files
    for i, path in enumerate(paths):
        mesh = trimesh.load(path, process=False)
        assert mesh.vertices.shape == verts[i].shape and mesh.faces.shape == faces.shape
        np.testing.assert_allclose(mesh.vertices, verts[i], atol=1e-5)
        np.testing.assert_array_equal(mesh.faces, faces)


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_a_single_pose_is_one_file(tmp_path, mannequin_meshes, fmt):
    verts, faces = mannequin_meshes
    paths = write_meshes(tmp_path / "fit", verts[:1], faces, fmt)
    assert paths == [tmp_path / f"fit.{fmt}"] == mesh_paths(tmp_path / "fit", fmt, 1)
    loaded = trimesh.load(paths[0], process=False, force="mesh")
    assert loaded.vertices.shape == verts[0].shape and loaded.faces.shape == faces.shape


def test_smplx_meshes_export(tmp_path):
    pytest.importorskip("smplx")
    model = load_body("body", write_smplx(tmp_path / "models", num_shape=10, num_expression=10))
    with torch.no_grad():
        verts = model(body_pose=torch.zeros(2, 63)).vertices.numpy()
    faces = model.faces.numpy()
    scene = trimesh.load(write_meshes(tmp_path / "smplx.glb", verts, faces, "glb")[0], process=False)
    assert [g.vertices.shape for g in scene.geometry.values()] == [verts[0].shape] * 2


def test_mesh_export_errors_name_the_problem(tmp_path, mannequin_meshes):
    verts, faces = mannequin_meshes
    with pytest.raises(InputError, match="did you mean 'glb'"):
        write_meshes(tmp_path / "x", verts, faces, "glbb")
    bad = verts.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        write_meshes(tmp_path / "x", bad, faces, "ply")
    with pytest.raises(InputError, match="outside"):
        write_meshes(tmp_path / "x", verts[:, :10], faces, "obj")
    assert list(tmp_path.iterdir()) == []
    assert EXPORT_FORMATS == ("glb", "obj", "ply", "bvh")


# ---------------------------------------------------------------------------------------------------- whole-body BVH
def _check_wholebody_bvh(tmp_path, model, params: dict[str, torch.Tensor], count: int):
    """`skeleton_motion` with hand poses: the model's whole tree, and the file's forward kinematics give the
    model's own joints (fingers included) at every frame."""
    from dposer_cli.tasks.export import skeleton_motion

    motion = skeleton_motion(model, params, fps=30)
    assert len(motion.joint_names) == count == len(model.parents)
    bvh = parse_bvh(write_bvh(tmp_path / "whole.bvh", *motion.bvh_args()).read_text())
    order = [bvh["names"].index(n) for n in motion.joint_names]
    with torch.no_grad():
        joints = model(**params, return_vertices=False).joints[:, :count].double().numpy()
    np.testing.assert_allclose(bvh_positions(bvh)[:, order], joints, atol=1e-4)
    return motion


def _hands(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.4 * torch.randn(n, 45, generator=g) for k in ("left_hand_pose", "right_hand_pose")}


def test_wholebody_bvh_of_the_mannequin_holds_the_fingers(tmp_path, shared_data):
    betas = torch.tensor([1.5, -1.0, 0.5, 0.0, 0.8, 0.0, 0.0, -0.5, 0.0, 0.3]).expand(6, 10)
    params = {**_gestures(shared_data), **_hands(6), "betas": betas}
    motion = _check_wholebody_bvh(tmp_path, load_body("wholebody"), params, 54)
    assert {"left_index3", "right_thumb3"} <= set(motion.joint_names)
    body_only = {k: v for k, v in params.items() if "hand" not in k}  # body poses: the 22 joints as before
    from dposer_cli.tasks.export import skeleton_motion

    assert len(skeleton_motion(load_body("wholebody"), body_only).joint_names) == BODY_JOINTS


def test_wholebody_bvh_of_smplx_holds_jaw_eyes_and_fingers(tmp_path, shared_data):
    pytest.importorskip("smplx")
    model = load_body("wholebody", write_smplx(tmp_path / "models", num_shape=10, num_expression=10))
    assert model.kind == "smplx"
    g = torch.Generator().manual_seed(1)
    params = {**_gestures(shared_data), **_hands(6, seed=2), "jaw_pose": 0.2 * torch.randn(6, 3, generator=g)}
    motion = _check_wholebody_bvh(tmp_path, model, params, 55)
    assert motion.joint_names[22] == "jaw" and motion.joint_names[-1] == "right_thumb3"
