"""Motion npz reading (official fragment, AMASS, ours, joints) and atomic writing."""

import numpy as np
import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.io.motion import read_motion, write_motion

RNG = np.random.default_rng(1)


def test_official_motion_fragment(shared_data):
    path = shared_data / "official/examples/Gestures_3_poses_batch005.npz"
    m = read_motion(path)
    with np.load(path) as raw:
        np.testing.assert_array_equal(m.body_pose, raw["pose_body"].astype(np.float32))
        np.testing.assert_array_equal(m.global_orient, raw["root_orient"].astype(np.float32))
    assert m.transl is None and m.joints is None and m.fps is None
    assert m.source_format == "pose_body" and m.num_frames == 240
    assert len(read_motion(path, fps=30.0).body_pose) == 240  # no recorded rate: nothing to subsample


@pytest.mark.parametrize(("cols", "rate_key", "fmt"), [(156, "mocap_framerate", "amass-smplh"),
                                                       (165, "mocap_frame_rate", "amass-smplx")])  # fmt: skip
def test_amass_motion_with_subsampling(tmp_path, cols, rate_key, fmt):
    poses, trans = RNG.normal(size=(41, cols)), RNG.normal(size=(41, 3))
    path = tmp_path / "a.npz"
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), gender=np.array("male"), **{rate_key: 60.0})
    m = read_motion(path, fps=20.0)  # stride 3
    assert m.source_format == fmt and m.fps == 20.0
    np.testing.assert_allclose(m.body_pose, poses[::3, 3:66].astype(np.float32))
    np.testing.assert_allclose(m.global_orient, poses[::3, :3].astype(np.float32))
    np.testing.assert_allclose(m.transl, trans[::3].astype(np.float32))
    assert read_motion(path).fps == 60.0


def test_write_then_read_round_trip(tmp_path):
    body, orient, transl = RNG.normal(size=(5, 63)), RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))
    joints = RNG.normal(size=(5, 22, 3))
    out = write_motion(tmp_path / "sub" / "m.npz", body_pose=body, global_orient=orient, transl=transl,
                       joints=joints, fps=np.array(30.0))  # fmt: skip
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    m = read_motion(out)
    assert m.source_format == "dposer" and m.fps == 30.0
    for got, want in ((m.body_pose, body), (m.global_orient, orient), (m.transl, transl), (m.joints, joints)):
        np.testing.assert_allclose(got, want.astype(np.float32))


def test_joints_only_motion(tmp_path):
    path = write_motion(tmp_path / "j.npz", joints=RNG.normal(size=(7, 17, 3)))
    m = read_motion(path)
    assert m.body_pose is None and m.joints.shape == (7, 17, 3) and m.source_format == "joints"


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"pose_body": np.zeros((1, 63))}, "a motion needs at least 2 frames"),
        (
            {"pose_body": np.full((4, 63), np.nan)},
            "pose_body has non-finite (NaN/inf) values (first in row 0)",
        ),
        ({"pose_body": np.zeros((4, 66))}, "pose_body has shape (4, 66); expected (T, 63)"),
        ({"pose_body": np.zeros((4, 63)), "root_orient": np.zeros((5, 3))}, "frame counts differ"),
        ({"joints": np.zeros((4, 17, 2))}, "expected (T, J, 3)"),
        ({"foo": np.zeros(3)}, "no motion found (keys: foo)"),
        (
            {"pose_body": np.zeros((4, 63)), "root_orient": np.array([[0, 0, 0]] * 2 + [[1e30, 0, 0]] * 2)},
            "root_orient has values as large as 1e+30 (first in row 2); expected |value| ≤ 10000",
        ),
        ({"joints": np.full((4, 22, 3), -3e4)}, "joints has values as large as 3e+04 (first in row 0)"),
    ],
)
def test_bad_motions_give_one_line_errors(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError) as exc:
        read_motion(path)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and str(path) in msg


def test_missing_motion_file(tmp_path):
    with pytest.raises(InputError, match="motion file not found"):
        read_motion(tmp_path / "nope.npz")


def test_plain_poses_of_body_width_are_a_body_motion(tmp_path):
    """`poses` (T, 63), the layout `generate` and `complete` write, reads as body poses (AMASS `poses` is
    156/165 wide)."""
    x = RNG.normal(size=(5, 63)).astype(np.float32)
    np.savez(tmp_path / "p.npz", poses=x)
    m = read_motion(tmp_path / "p.npz")
    np.testing.assert_array_equal(m.body_pose, x)
    assert m.global_orient is None and m.joints is None
