"""`--export` through `main()` for every command that produces bodies (generate, complete, denoise-motion,
fit-image, ik): the files named in the JSON summary open in trimesh with one mesh per pose, and BVH files parse
(the same independent parser as tests/io/test_export.py) with the 22 body joints and one frame per pose / frame.
Bad formats, and BVH for results without a body skeleton, are one error line (exit 1)."""

import json
import logging

import numpy as np
import pytest
import trimesh

from dposer_cli.core.parts import Part
from dposer_cli.tasks import export as task
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run
from tests.io.test_export import bvh_positions, parse_bvh
from tests.services.test_fit_image import reference_poses, synthetic_scene, write_blank_image, write_keypoints

BODY_JOINTS = 22


def _summary(capsys, *args) -> dict:
    code, out, err = run(capsys, *args, "--device", "cpu", "--json")
    assert code == 0, err
    return json.loads(out)


def _meshes(path: str) -> list[trimesh.Trimesh]:
    loaded = trimesh.load(path, process=False)
    return list(loaded.geometry.values()) if isinstance(loaded, trimesh.Scene) else [loaded]


def _bvh(path: str, frames: int) -> dict:
    with open(path) as fh:
        bvh = parse_bvh(fh.read())
    assert len(bvh["names"]) == BODY_JOINTS and bvh["frames"] == frames
    return bvh


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {p: write_tiny_prior(root / f"{p.value}.pt", p) for p in (Part.body, Part.hand)}


def test_generate_exports_glb_and_bvh(tmp_path, capsys, priors):
    s = _summary(
        capsys,
        "generate",
        "-n",
        "3",
        "--no-render",
        "--checkpoint",
        str(priors[Part.body]),
        "--out",
        str(tmp_path / "o"),
        "--export",
        "glb,bvh",
    )
    (glb,), bvh = s["outputs"]["export_glb"], s["outputs"]["export_bvh"]
    meshes = _meshes(glb)
    assert len(meshes) == 3 and all(len(m.faces) > 1000 for m in meshes)
    _bvh(bvh, 3)


def test_generate_hand_exports_one_ply_per_pose(tmp_path, capsys, priors):
    s = _summary(
        capsys,
        "generate",
        "--part",
        "hand",
        "-n",
        "2",
        "--no-render",
        "--checkpoint",
        str(priors[Part.hand]),
        "--out",
        str(tmp_path / "o"),
        "--export",
        "ply",
    )
    files = s["outputs"]["export_ply"]
    assert len(files) == 2 and all(len(_meshes(f)[0].vertices) > 100 for f in files)


def test_complete_exports_every_hypothesis(tmp_path, capsys, priors):
    np.savez(tmp_path / "poses.npz", body_pose=reference_poses()[:2].astype(np.float32))
    s = _summary(
        capsys,
        "complete",
        str(tmp_path / "poses.npz"),
        "--mask",
        "legs",
        "--hypo",
        "2",
        "--steps",
        "3",
        "--checkpoint",
        str(priors[Part.body]),
        "--out",
        str(tmp_path / "o"),
        "--export",
        "obj",
        "--export",
        "bvh",
    )
    assert len(s["outputs"]["export_obj"]) == 4
    _bvh(s["outputs"]["export_bvh"], 4)


def test_denoise_motion_exports_a_bvh_at_the_motion_frame_rate(tmp_path, capsys, priors):
    frames = 5
    np.savez(
        tmp_path / "seq.npz",
        pose_body=reference_poses()[:frames],
        root_orient=np.zeros((frames, 3)),
        mocap_framerate=np.array(60.0),
    )
    s = _summary(
        capsys,
        "denoise-motion",
        str(tmp_path / "seq.npz"),
        "--noise-std",
        "0.02",
        "--no-render",
        "--checkpoint",
        str(priors[Part.body]),
        "--out",
        str(tmp_path / "o"),
        "--export",
        "bvh,glb",
    )
    bvh = _bvh(s["outputs"]["export_bvh"], frames)
    assert bvh["frame_time"] == pytest.approx(1 / 60)
    assert len(_meshes(s["outputs"]["export_glb"][0])) == frames


def test_ik_exports_hand_meshes_and_refuses_bvh(tmp_path, capsys, priors):
    np.savez(tmp_path / "hands.npz", hand_pose=np.zeros((2, 45), np.float32))
    args = [
        "ik",
        "--part",
        "hand",
        "--targets",
        str(tmp_path / "hands.npz"),
        "--steps",
        "3",
        "--checkpoint",
        str(priors[Part.hand]),
    ]
    s = _summary(capsys, *args, "--out", str(tmp_path / "o"), "--export", "glb")
    assert len(_meshes(s["outputs"]["export_glb"][0])) == 2
    code, out, err = run(capsys, *args, "--out", str(tmp_path / "bvh"), "--export", "bvh", "--device", "cpu")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "hand IK results have no body skeleton" in errors[0], err
    assert not (tmp_path / "bvh").exists()


def test_fit_image_exports_upright_bodies(tmp_path, capsys):
    scene = synthetic_scene(reference_poses()[[7, 70]], seed=3, width=480, height=320)
    img = write_blank_image(tmp_path / "photo.png", scene.width, scene.height)
    kp = write_keypoints(tmp_path / "photo.json", scene.keypoints, "openpose")
    s = _summary(
        capsys,
        "fit-image",
        str(img),
        "--keypoints",
        str(kp),
        "--steps",
        "3",
        "--prior",
        "l2",
        "--no-overlay",
        "--out",
        str(tmp_path / "o"),
        "--export",
        "glb",
        "--export",
        "bvh",
    )
    (glb,) = s["outputs"]["export_glb"]
    meshes = _meshes(glb)
    assert len(meshes) == 2
    files = s["outputs"]["export_bvh"]
    assert [f.rsplit("/", 1)[-1] for f in files] == ["photo_person0.bvh", "photo_person1.bvh"]
    for f in files:
        bvh = _bvh(f, 1)
        joints = bvh_positions(bvh)[0]
        head, pelvis = joints[bvh["names"].index("head")], joints[bvh["names"].index("pelvis")]
        assert head[1] - pelvis[1] > 0.3  # y up: the camera frame (y down) is turned upright
        assert pelvis[2] < -3  # in front of the camera, which looks along −z
    for mesh in meshes:  # the meshes turned the same way: tall along +y
        extent = mesh.vertices.max(0) - mesh.vertices.min(0)
        assert extent[1] > 1.0 and mesh.vertices[:, 2].mean() < -3


@pytest.mark.parametrize(
    "args, exit_code, pattern",
    [
        (["generate", "--export", "glb,plyy"], 2, "unknown --export format 'plyy' (did you mean 'ply'?)"),
        (["generate", "--part", "hand", "--export", "bvh"], 1, "hand poses have no body skeleton"),
        (["fit-image", "x.png", "--part", "hand", "--export", "bvh"], 1, "hand fits have no body skeleton"),
    ],
)
def test_bad_export_is_one_error_line(tmp_path, capsys, args, exit_code, pattern):
    code, out, err = run(capsys, *args, "--out", str(tmp_path / "o"), "--device", "cpu")
    errors = [
        line for line in err.splitlines() if line.lower().startswith("error:")
    ]  # usage errors: "Error:"
    assert code == exit_code and len(errors) == 1 and pattern in err, err
    assert out == "" and not (tmp_path / "o").exists()


def test_a_large_glb_warns_and_recommends_bvh(tmp_path, caplog, monkeypatch, priors):
    from dposer_cli.services import generate as svc

    monkeypatch.setattr(task, "GLB_WARN_BYTES", 1)
    with caplog.at_level(logging.WARNING, logger="dposer_cli"):
        svc.run(
            svc.GenerateRequest(
                part=Part.body,
                n=2,
                out=tmp_path / "o",
                render=False,
                device="cpu",
                checkpoint=priors[Part.body],
                export=("glb",),
            )
        )
    assert "poses.glb holds 2 meshes" in caplog.text and "--export bvh is far smaller" in caplog.text
