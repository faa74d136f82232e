"""Dataset readers: the published layouts (EHF, FreiHAND, ARCTIC, AMASS trees, HumanEva clips), and one-line errors that
name the missing file. The `write_*` builders make small synthetic datasets in the exact layouts; the
benchmark tests reuse them."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.io.datasets import (
    humaneva_clips,
    read_amass_poses,
    read_arctic,
    read_ehf,
    read_freihand,
    read_ply_vertices,
)

EHF_ROT = (-2.98747896, 0.01172457, -0.05704687)


# ------------------------------------------------------------------------------------------------- builders
def _rodrigues(aa) -> np.ndarray:
    v = np.asarray(aa, float)
    t = np.linalg.norm(v)
    k = v / t
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(t) * kx + (1 - math.cos(t)) * kx @ kx


def write_ply(
    path: Path, verts: np.ndarray, faces: np.ndarray | None = None, *, binary: bool = False
) -> Path:
    faces = np.zeros((0, 3), int) if faces is None else faces
    head = (
        f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\ncomment synthetic\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    with open(path, "wb") as fh:
        fh.write(head.encode())
        if binary:
            fh.write(np.asarray(verts, "<f4").tobytes())
            fh.writelines(np.uint8(3).tobytes() + np.asarray(f, "<i4").tobytes() for f in faces)
        else:
            fh.write("".join(f"{x:.7f} {y:.7f} {z:.7f}\n" for x, y, z in verts).encode())
            fh.write("".join(f"3 {a} {b} {c}\n" for a, b, c in faces).encode())
    return path


def _jpg(path: Path, width: int, height: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(path, quality=80)


def write_ehf(
    root: Path, body_models: Path, poses: np.ndarray, *, width: int = 320, height: int = 240
) -> Path:
    """EHF layout from SMPL-X poses: NN_img.jpg, NN_align.ply (un-rotated by the EHF camera rotation),
    vitpose_keypoints/predictions/NN_img.json (COCO-WholeBody 133, body + feet from the projected joints)."""
    from dposer_cli.bodies import camera as cam
    from dposer_cli.bodies import load_body
    from dposer_cli.io.keypoints import COCO_TO_OPENPOSE

    body = load_body("body", body_models)
    n = len(poses)
    with torch.no_grad():
        out = body(
            body_pose=torch.as_tensor(poses, dtype=torch.float32),
            global_orient=cam.camera_orient(n),
            transl=torch.tensor([0.0, 0.3, 6.0]).expand(n, 3),
        )
    focal = torch.full((n,), float(cam.estimate_focal(width, height)))
    uv = cam.perspective_project(
        out.joints[:, body.joint_set("openpose25")], focal, torch.tensor([width / 2, height / 2]).expand(n, 2)
    ).numpy()
    rot = _rodrigues(EHF_ROT)
    (root / "vitpose_keypoints" / "predictions").mkdir(parents=True, exist_ok=True)
    faces = body.faces.numpy()
    for i in range(n):
        name = f"{i + 1:02d}"
        _jpg(root / f"{name}_img.jpg", width, height)
        write_ply(root / f"{name}_align.ply", out.vertices[i].numpy() @ rot, faces[:50])  # reader applies rot
        merged = np.zeros((135, 3))
        merged[COCO_TO_OPENPOSE[:25], :2] = uv[i]
        merged[COCO_TO_OPENPOSE[:25], 2] = 0.9
        coco = np.zeros((133, 3))
        coco[:17], coco[17:23] = merged[:17], merged[19:25]  # body 17 and feet 6 (COCO-WholeBody order)
        (root / "vitpose_keypoints" / "predictions" / f"{name}_img.json").write_text(
            json.dumps([{"bbox": [0, 0, width, height, 1.0], "keypoints": coco.tolist()}])
        )
    return root


def write_freihand(root: Path, body_models: Path, hand_poses: np.ndarray, *, focal: float = 480.0) -> Path:
    """FreiHAND_pub_v2_eval layout: evaluation/rgb/NNNNNNNN.jpg + evaluation_{K,xyz,verts,mano}.json."""
    from dposer_cli.bodies import load_body

    body = load_body("hand", body_models)
    n = len(hand_poses)
    g = torch.Generator().manual_seed(3)
    orient = 0.3 * torch.randn(n, 3, generator=g)
    with torch.no_grad():
        out = body(
            hand_pose=torch.as_tensor(hand_poses, dtype=torch.float32),
            global_orient=orient,
            transl=torch.tensor([0.0, 0.0, 0.6]).expand(n, 3),
        )
    xyz = out.joints[:, body.joint_set("hand21")].numpy()
    verts = out.vertices.numpy()
    k = np.array([[focal, 0, 112.0], [0, focal, 112.0], [0, 0, 1]])
    (root / "evaluation" / "rgb").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _jpg(root / "evaluation" / "rgb" / f"{i:08d}.jpg", 224, 224)
    (root / "evaluation_K.json").write_text(json.dumps([k.tolist()] * n))
    (root / "evaluation_xyz.json").write_text(json.dumps(xyz.tolist()))
    (root / "evaluation_verts.json").write_text(json.dumps(verts.tolist()))
    mano = np.concatenate([orient.numpy(), hand_poses, np.zeros((n, 13))], 1)[:, None]
    (root / "evaluation_mano.json").write_text(json.dumps(mano.tolist()))
    return root


ARCTIC_OFFSET = 20  # ioi_offset of the synthetic misc.json: image 00021 is ground-truth row 1
ARCTIC_K = [[520.0, 0.0, 161.0], [0.0, 515.0, 119.0], [0.0, 0.0, 1.0]]


def write_arctic(
    root: Path,
    body_models: Path,
    poses: dict[str, np.ndarray],
    images: dict[str, int],
    *,
    width: int = 320,
    height: int = 240,
    cameras: int = 5,
) -> dict[str, list[int]]:
    """ARCTIC layout for subject s05, camera 4: `images[action]` blank jpgs 00001…, MMPose COCO-WholeBody
    keypoints of the evaluated frames (sorted(jpgs)[1:][19::20]) projected from SMPL-X meshes posed with
    `poses` (whole-body arrays, one row per evaluated frame, in action order), their processed vertices and
    meta/misc.json. Returns the evaluated ground-truth rows per action."""
    from dposer_cli.bodies import camera as cam
    from dposer_cli.bodies import load_body
    from dposer_cli.io.keypoints import COCO_TO_OPENPOSE

    body = load_body("body", body_models)
    n = len(poses["body_pose"])
    with torch.no_grad():
        out = body(
            **{k: torch.as_tensor(v, dtype=torch.float32) for k, v in poses.items()},
            global_orient=cam.camera_orient(n),
            transl=torch.tensor([0.0, 0.3, 6.0]).expand(n, 3),
        )
    focal = torch.full((n,), float(cam.estimate_focal(width, height)))
    op = torch.cat(
        [out.joints[:, body.joint_set(s)] for s in ("openpose25", "lhand21", "rhand21", "face68")], 1
    )
    uv = cam.perspective_project(op, focal, torch.tensor([width / 2, height / 2]).expand(n, 2)).numpy()
    merged = np.zeros((n, 135, 3))
    merged[:, COCO_TO_OPENPOSE, :2] = uv
    merged[:, :, 2] = 0.9
    coco = np.concatenate(
        [merged[:, :17], merged[:, 19:25], merged[:, 67:135], merged[:, 25:46], merged[:, 46:67]], 1
    )
    rows: dict[str, list[int]] = {}
    row = 0
    for action, count in images.items():
        folder = root / "images" / "s05" / action / "4"
        folder.mkdir(parents=True)
        for i in range(1, count + 1):
            _jpg(folder / f"{i:05d}.jpg", width, height)
        chosen = [f"{i:05d}" for i in range(2, count + 1)][19::20]
        frames = [int(stem) - ARCTIC_OFFSET for stem in chosen]
        verts = np.zeros((max(frames) + 2, cameras, 10475, 3), np.float32)
        kp_dir = root / "keypoints" / "mmpose_keypoints" / "s05" / action / "4"
        kp_dir.mkdir(parents=True)
        for stem, frame in zip(chosen, frames, strict=True):
            verts[frame, 4] = out.vertices[row].numpy()
            (kp_dir / f"{stem}.json").write_text(
                json.dumps([{"bbox": [0, 0, width, height, 1.0], "keypoints": coco[row].tolist()}])
            )
            row += 1
        (root / "processed_verts" / "seqs" / "s05").mkdir(parents=True, exist_ok=True)
        np.save(
            root / "processed_verts" / "seqs" / "s05" / f"{action}.npy",
            np.array({"cam_coord": {"verts.smplx": verts}}, dtype=object),
            allow_pickle=True,
        )
        rows[action] = frames
    assert row == n, "one pose per evaluated frame"
    (root / "meta").mkdir(exist_ok=True)
    misc = {"s05": {"ioi_offset": ARCTIC_OFFSET, "intris_mat": [np.eye(3).tolist()] * 3 + [ARCTIC_K] * 5}}
    (root / "meta" / "misc.json").write_text(json.dumps(misc))
    return rows


def write_smplx_eval_files(folder: Path, *, j14: bool = True, seed: int = 0) -> Path:
    """Synthetic MANO_SMPLX_vertex_ids.pkl, SMPL-X__FLAME_vertex_ids.npy and (optionally) SMPLX_to_J14.pkl."""
    import pickle

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    hands = {
        "left_hand": rng.choice(10475, 778, replace=False),
        "right_hand": rng.choice(10475, 778, replace=False),
    }
    with open(folder / "MANO_SMPLX_vertex_ids.pkl", "wb") as fh:
        pickle.dump(hands, fh, protocol=2)
    np.save(folder / "SMPL-X__FLAME_vertex_ids.npy", rng.choice(10475, 5023, replace=False))
    if j14:
        reg = rng.random((14, 10475)) * (rng.random((14, 10475)) < 0.01)
        with open(folder / "SMPLX_to_J14.pkl", "wb") as fh:
            pickle.dump(reg / reg.sum(1, keepdims=True), fh, protocol=2)
    return folder


def write_amass_tree(root: Path, body_poses: np.ndarray) -> Path:
    """Two AMASS-style files: SMPL+H `poses` (T, 156) with a frame rate, and a `pose_body` fragment."""
    (root / "Transitions" / "s1").mkdir(parents=True, exist_ok=True)
    half = len(body_poses) // 2
    t = half
    np.savez(
        root / "Transitions" / "s1" / "a_poses.npz",
        mocap_framerate=120.0,
        trans=np.zeros((t, 3)),
        poses=np.concatenate([np.zeros((t, 3)), body_poses[:half], np.zeros((t, 90))], 1),
        betas=np.zeros(16),
    )
    np.savez(
        root / "Transitions" / "b_poses.npz",
        pose_body=body_poses[half:],
        root_orient=np.zeros((len(body_poses) - half, 3)),
    )
    return root


# ----------------------------------------------------------------------------------------------------- tests
@pytest.fixture
def body_tree(tmp_path):
    from tests._fixtures.body_models import write_body_models_tree

    return write_body_models_tree(tmp_path / "models")


def test_read_ehf_pairs_frames_in_numeric_order(tmp_path, body_tree):
    poses = np.zeros((2, 63), np.float32)
    root = write_ehf(tmp_path / "EHF", body_tree, poses)
    (root / "03_other.jpg").write_bytes(b"")  # not an NN_img.jpg: ignored
    items = read_ehf(root)
    assert [it.name for it in items] == ["01", "02"]
    assert items[1].mesh == root / "02_align.ply"
    assert items[1].keypoints == root / "vitpose_keypoints" / "predictions" / "02_img.json"
    verts = read_ply_vertices(items[0].mesh)
    assert verts.shape == (10475, 3) and np.isfinite(verts).all()


@pytest.mark.parametrize("remove", ["02_align.ply", "vitpose_keypoints/predictions/01_img.json"])
def test_read_ehf_names_the_missing_file(tmp_path, body_tree, remove):
    root = write_ehf(tmp_path / "EHF", body_tree, np.zeros((2, 63), np.float32))
    (root / remove).unlink()
    with pytest.raises(InputError) as exc:
        read_ehf(root)
    assert str(root / remove) in exc.value.message and "\n" not in exc.value.message


def test_read_ehf_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="01_img.jpg"):
        read_ehf(tmp_path / "empty")
    with pytest.raises(InputError, match="EHF folder not found"):
        read_ehf(tmp_path / "nope")


@pytest.mark.parametrize("binary", [False, True])
def test_read_ply_vertices_ascii_and_binary(tmp_path, binary):
    verts = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    path = write_ply(tmp_path / "m.ply", verts, np.array([[0, 1, 2], [2, 3, 4]]), binary=binary)
    np.testing.assert_allclose(read_ply_vertices(path), verts, atol=1e-6)


def test_read_ply_vertices_big_endian_point_cloud(tmp_path):
    verts = np.random.default_rng(1).normal(size=(5, 3))
    head = (
        "ply\nformat binary_big_endian 1.0\nelement vertex 5\nproperty double x\nproperty double y\n"
        "property double z\nproperty uchar red\nend_header\n"
    )
    rows = np.zeros(5, [("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("red", "u1")])
    rows["x"], rows["y"], rows["z"] = verts.T
    (tmp_path / "p.ply").write_bytes(head.encode() + rows.tobytes())
    np.testing.assert_array_equal(read_ply_vertices(tmp_path / "p.ply"), verts)


def test_read_ply_rejects_non_ply(tmp_path):
    (tmp_path / "x.ply").write_text("hello")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply_vertices(tmp_path / "x.ply")
    (tmp_path / "y.ply").write_text("ply\nformat ascii 1.0\n")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply_vertices(tmp_path / "y.ply")
    with pytest.raises(InputError, match="mesh file not found"):
        read_ply_vertices(tmp_path / "missing.ply")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("element vertex 2\nproperty float x\nproperty float y\nend_header\n1 2\n3 4\n", "need x, y, z"),
        ("element face 1\nproperty list uchar int vertex_indices\nend_header\n3 0 1 2\n", "no vertices"),
        (
            "element vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n1 2 3\n3 4\n",
            "cannot read the PLY vertices",
        ),
    ],
)
def test_read_ply_errors_are_one_line(tmp_path, body, message):
    (tmp_path / "bad.ply").write_text("ply\nformat ascii 1.0\n" + body)
    with pytest.raises(InputError, match=message) as err:
        read_ply_vertices(tmp_path / "bad.ply")
    assert "\n" not in str(err.value) and str(tmp_path / "bad.ply") in str(err.value)


def test_read_freihand_layout(tmp_path, body_tree, shared_data):
    hands = np.load(shared_data / "poses" / "hand_reference_train.npz")["poses"][:3]
    root = write_freihand(tmp_path / "FreiHAND_pub_v2_eval", body_tree, hands)
    data = read_freihand(root)
    assert len(data.images) == 3 and data.K.shape == (3, 3, 3) and data.xyz.shape == (3, 21, 3)
    assert data.verts.shape == (3, 778, 3) and data.mano.shape == (3, 61)
    np.testing.assert_allclose(data.mano[:, 3:48], hands, atol=1e-6)


@pytest.mark.parametrize("remove", ["evaluation_xyz.json", "evaluation_K.json", "evaluation_verts.json"])
def test_read_freihand_names_the_missing_file(tmp_path, body_tree, remove):
    root = write_freihand(tmp_path / "fh", body_tree, np.zeros((2, 45), np.float32))
    (root / remove).unlink()
    with pytest.raises(InputError) as exc:
        read_freihand(root)
    assert str(root / remove) in exc.value.message


def test_read_freihand_rejects_size_mismatch_and_missing_rgb(tmp_path, body_tree):
    root = write_freihand(tmp_path / "fh", body_tree, np.zeros((2, 45), np.float32))
    (root / "evaluation" / "rgb" / "00000001.jpg").unlink()
    with pytest.raises(
        InputError, match=r"evaluation_K.json: holds an array of shape \(2, 3, 3\); expected \(1, 3, 3\)"
    ):
        read_freihand(root)
    with pytest.raises(InputError, match="missing folder"):
        read_freihand(tmp_path / "fh", split="training")


def test_read_amass_poses_concatenates_tree_with_stride(tmp_path, shared_data):
    poses = np.load(shared_data / "poses" / "body_reference_train.npz")["poses"][:10]
    root = write_amass_tree(tmp_path / "amass", poses)
    all_ = read_amass_poses(root, Part.body)
    # sorted recursively: Transitions/b_poses.npz before Transitions/s1/a_poses.npz
    np.testing.assert_allclose(all_, np.concatenate([poses[5:], poses[:5]]), atol=1e-6)
    np.testing.assert_allclose(
        read_amass_poses(root, Part.body, stride=2),
        np.concatenate([poses[5:][::2], poses[:5][::2]]),
        atol=1e-6,
    )
    with pytest.raises(InputError, match="pose data not found"):
        read_amass_poses(tmp_path / "missing", Part.body)


def test_humaneva_clips_are_non_overlapping_60_frame_cuts(tmp_path, shared_data):
    motion = np.load(shared_data / "official" / "examples" / "Gestures_3_poses_batch005.npz")
    np.savez(tmp_path / "m.npz", pose_body=motion["pose_body"][:130], root_orient=motion["root_orient"][:130])
    np.savez(tmp_path / "short.npz", pose_body=motion["pose_body"][:30])
    clips = humaneva_clips(tmp_path)
    assert [c.start for c in clips] == [0, 60] and all(c.source.name == "m.npz" for c in clips)
    np.testing.assert_allclose(clips[1].body_pose, motion["pose_body"][60:120], atol=1e-6)
    (tmp_path / "m.npz").unlink()
    with pytest.raises(InputError, match="no motion has 60 frames"):
        humaneva_clips(tmp_path)


# ------------------------------------------------------------------------------------------------------ ARCTIC
def _arctic_poses(shared_data: Path, n: int) -> dict[str, np.ndarray]:
    body = np.load(shared_data / "poses/body_reference_train.npz")["poses"][:n] * 0.3
    hands = np.load(shared_data / "poses/hand_reference_train.npz")["poses"]
    return {"body_pose": body, "left_hand_pose": hands[n : 2 * n] * 0.5, "right_hand_pose": hands[:n] * 0.5}


def test_read_arctic_picks_every_20th_frame_of_camera_4(tmp_path, body_tree, shared_data):
    rows = write_arctic(
        tmp_path / "A", body_tree, _arctic_poses(shared_data, 3), {"box_grab_01": 41, "laptop_use_02": 30}
    )
    data = read_arctic(tmp_path / "A")
    assert [(it.action, it.image.name, it.frame) for it in data.items] == [
        ("box_grab_01", "00021.jpg", 1),
        ("box_grab_01", "00041.jpg", 21),
        ("laptop_use_02", "00021.jpg", 1),
    ]
    assert rows == {"box_grab_01": [1, 21], "laptop_use_02": [1]}
    assert data.ioi_offset == ARCTIC_OFFSET and data.intrinsics.tolist() == ARCTIC_K
    assert set(data.verts) == {"box_grab_01", "laptop_use_02"}
    assert data.items[0].keypoints == tmp_path / "A/keypoints/mmpose_keypoints/s05/box_grab_01/4/00021.json"


@pytest.mark.parametrize(
    "remove",
    [
        "meta/misc.json",
        "processed_verts/seqs/s05/box_grab_01.npy",
        "keypoints/mmpose_keypoints/s05/box_grab_01/4/00041.json",
    ],
)
def test_read_arctic_names_the_missing_file(tmp_path, body_tree, shared_data, remove):
    write_arctic(tmp_path / "A", body_tree, _arctic_poses(shared_data, 2), {"box_grab_01": 41})
    (tmp_path / "A" / remove).unlink()
    with pytest.raises(InputError, match=f"ARCTIC: missing file .*{remove.split('/')[-1]}"):
        read_arctic(tmp_path / "A")


def test_read_arctic_bad_misc_and_missing_folders(tmp_path, body_tree, shared_data):
    write_arctic(tmp_path / "A", body_tree, _arctic_poses(shared_data, 1), {"box_grab_01": 21})
    (tmp_path / "A/meta/misc.json").write_text('{"s05": {"ioi_offset": 1}}')
    with pytest.raises(InputError, match="misc.json: expected s05.ioi_offset and s05.intris_mat"):
        read_arctic(tmp_path / "A")
    (tmp_path / "A/meta/misc.json").write_text("{oops")
    with pytest.raises(InputError, match="misc.json: malformed JSON"):
        read_arctic(tmp_path / "A")
    (tmp_path / "B/meta").mkdir(parents=True)
    (tmp_path / "B/meta/misc.json").write_text(
        json.dumps({"s05": {"ioi_offset": 0, "intris_mat": [ARCTIC_K] * 8}})
    )
    with pytest.raises(InputError, match="ARCTIC: missing folder .*images/s05"):
        read_arctic(tmp_path / "B")
    with pytest.raises(InputError, match="ARCTIC folder not found"):
        read_arctic(tmp_path / "C")
