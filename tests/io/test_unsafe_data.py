"""User data files holding pickled Python objects are refused unread (issue #14 follow-up, issue #17).

Every array the pose, motion and IK-target readers use is read with `allow_pickle=False`; one that holds
pickled objects raises `UnsafeFileError` (exit 4) saying the file "holds pickled Python objects". Each payload
would write a marker file when unpickled: the marker must never appear. Members the reader does not use are
left out unread, so a file with an unrelated object array (AMASS-style metadata) still reads.
"""

from pathlib import Path

import numpy as np
import pytest

from dposer_cli.core.errors import ExitCode, UnsafeFileError
from dposer_cli.core.parts import Part
from dposer_cli.io.ik_targets import read_ik_targets
from dposer_cli.io.motion import read_motion
from dposer_cli.io.poses import read_poses

RNG = np.random.default_rng(0)
IK_HAND = {
    "part": "hand",
    "joint_set": "hand21",
    "num_joints": 21,
    "known": {"global_orient": 3, "betas": 10},
    "params": {"hand_pose": 45, "global_orient": 3, "betas": 10},
    "pose_keys": ("hand_pose",),
}


class Payload:
    """Unpickling this runs `exec`, which writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def evil(marker: Path) -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    return arr


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "the payload ran"


def _refused(call, path: Path, key: str | None = None) -> UnsafeFileError:
    with pytest.raises(UnsafeFileError) as err:
        call()
    msg = str(err.value)
    assert "holds pickled Python objects" in msg and str(path) in msg and "\n" not in msg
    assert key is None or key in msg
    assert (
        err.value.exit_code == ExitCode.ASSET_MISMATCH == 4
        and "nothing in this file was run" in err.value.hint
    )
    return err.value


@pytest.mark.parametrize("key", ["pose_body", "body_pose", "poses"])
def test_pose_readers_refuse_a_pickled_pose_array(tmp_path, marker, key):
    path = tmp_path / "poses.npz"
    np.savez(path, **{key: evil(marker)})
    _refused(lambda: read_poses(path, Part.body), path, key)


def test_pickled_frame_rate_and_segment_are_refused(tmp_path, marker):
    path = tmp_path / "amass.npz"
    np.savez(path, poses=RNG.normal(0, 0.1, (8, 156)), mocap_framerate=evil(marker))
    _refused(lambda: read_poses(path, Part.body), path, "mocap_framerate")
    path = tmp_path / "face.npz"
    np.savez(path, jaw_pose=np.zeros((3, 3)), expression=evil(marker))
    _refused(lambda: read_poses(path, Part.face), path, "expression")


def test_a_single_pickled_npy_array_is_refused(tmp_path, marker):
    path = tmp_path / "poses.npy"
    np.save(path, evil(marker), allow_pickle=True)
    _refused(lambda: read_poses(path, Part.body), path)


def test_motion_reader_refuses_a_pickled_member_it_reads(tmp_path, marker):
    path = tmp_path / "motion.npz"
    np.savez(path, pose_body=RNG.normal(0, 0.1, (6, 63)), root_orient=evil(marker))
    _refused(lambda: read_motion(path), path, "root_orient")


def test_unused_pickled_members_are_left_out_unread(tmp_path, marker):
    poses = RNG.normal(0, 0.1, (5, 63)).astype(np.float32)
    path = tmp_path / "with_meta.npz"
    np.savez(path, pose_body=poses, markers_latent_vids=evil(marker))
    pf = read_poses(path, Part.body)
    np.testing.assert_array_equal(pf.poses, poses)
    assert "markers_latent_vids" not in pf.extras
    joints = RNG.normal(0, 0.05, (2, 21, 3))
    np.savez(tmp_path / "targets_meta.npz", joints=joints, notes=evil(marker))
    targets = read_ik_targets(tmp_path / "targets_meta.npz", **IK_HAND)
    assert targets.joints is not None and targets.joints.shape == (2, 21, 3)


@pytest.mark.parametrize(
    "arrays",
    [
        lambda m: {"joints": evil(m)},
        lambda m: {"joints": np.zeros((2, 21, 3)), "visible": evil(m)},
        lambda m: {"joints": np.zeros((2, 21, 3)), "betas": evil(m)},
        lambda m: {"hand_pose": evil(m)},
        lambda m: {"poses": evil(m)},
    ],
    ids=["joints", "visible", "known", "params", "poses"],
)
def test_ik_targets_refuse_a_pickled_array_they_use(tmp_path, marker, arrays):
    path = tmp_path / "targets.npz"
    np.savez(path, **arrays(marker))
    _refused(lambda: read_ik_targets(path, **IK_HAND), path)


def test_cli_exit_4_and_one_error_line(tmp_path, marker, capsys):
    from dposer_cli.cli.app import main

    path = tmp_path / "poses.npz"
    np.savez(path, pose_body=evil(marker))
    with pytest.raises(SystemExit) as exc:
        main(["complete", str(path), "--mask", "legs", "--out", str(tmp_path / "o"), "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 4 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "holds pickled Python objects" in line and not (tmp_path / "o").exists()
