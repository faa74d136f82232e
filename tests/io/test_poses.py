"""Pose npz reading (every shared example, AMASS, our files) and atomic writing with the input's keys."""

from pathlib import Path

import numpy as np
import pytest

from dposer_cli.core.errors import InputError, UnsafeFileError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.io.poses import read_pose_tree, read_poses, write_poses

RNG = np.random.default_rng(0)


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------------- shared files
# file (relative to shared/data) -> {part: expected vector built directly from the npz keys}
SHARED_CASES = {
    "poses/body_reference_train.npz": {Part.body: lambda d: d["poses"]},
    "poses/hand_reference_train.npz": {Part.hand: lambda d: d["poses"]},
    "poses/face_expression_reference_train.npz": {Part.face: lambda d: d["poses"]},
    "poses/face_shape_reference_train.npz": {Part.face_shape: lambda d: d["poses"]},
    "official/examples/toy_body_data.npz": {Part.body: lambda d: d["pose_samples"]},
    "official/examples/toy_hand_data.npz": {Part.hand: lambda d: d["pose_samples"]},
    "official/examples/toy_face_data.npz": {
        Part.face: lambda d: np.concatenate([d["jaw_pose"], d["expression"]], 1),
        Part.face_shape: lambda d: d["betas"][:, :100],
    },
    "official/examples/toy_wholebody_data.npz": {
        Part.wholebody: lambda d: np.concatenate(
            [d[k] for k in ("body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "expression")], 1
        ),
        Part.body: lambda d: d["body_pose"],
        Part.hand: lambda d: d["right_hand_pose"],
        Part.face: lambda d: np.concatenate([d["jaw_pose"], d["expression"]], 1),
    },
    "official/examples/Gestures_3_poses_batch005.npz": {Part.body: lambda d: d["pose_body"]},
    "official/lib/data/bend_pose.npz": {Part.body: lambda d: d["pose"][:, 3:66]},
    "official/lib/data/grab_pose.npz": {Part.body: lambda d: d["pose"][:, 3:66]},
}


@pytest.mark.parametrize("rel", sorted(SHARED_CASES))
def test_every_shared_example_reads_for_its_parts(shared_data, rel):
    path = shared_data / rel
    raw = _load(path)
    for part, expected in SHARED_CASES[rel].items():
        pf = read_poses(path, part)
        want = expected(raw).astype(np.float32)
        assert pf.poses.dtype == np.float32 and pf.poses.shape == (len(want), PARTS[part].dim)
        np.testing.assert_array_equal(pf.poses, want)
        assert pf.part is part


@pytest.mark.parametrize("rel", sorted(SHARED_CASES))
def test_shared_examples_refuse_parts_they_do_not_hold_in_one_line(shared_data, rel):
    for part in set(Part) - set(SHARED_CASES[rel]):
        with pytest.raises(InputError) as exc:
            read_poses(shared_data / rel, part)
        assert str(shared_data / rel) in _one_line_error(exc)


def test_official_statistics_files_are_not_poses_and_the_error_lists_keys(shared_data):
    path = shared_data / "official/data/body_data/version1/statistics.npz"
    with pytest.raises(InputError) as exc:
        read_poses(path, Part.body)
    msg = _one_line_error(exc)
    assert "keys: mu, sigma" in msg and "body_pose" in msg and "(N, 63)" in msg


def test_shared_sources_and_extras(shared_data):
    ex = shared_data / "official/examples"
    motion = read_poses(ex / "Gestures_3_poses_batch005.npz", Part.body)
    assert motion.source_format == "pose_body" and motion.keys == ("pose_body",)
    np.testing.assert_array_equal(
        motion.extras["root_orient"], _load(ex / "Gestures_3_poses_batch005.npz")["root_orient"]
    )
    assert read_poses(ex / "toy_body_data.npz", Part.body).source_format == "official-toy"
    wb = read_poses(ex / "toy_wholebody_data.npz", Part.wholebody)
    assert wb.source_format == "wholebody-dict" and set(wb.extras) == {"global_orient"}
    face_shape = read_poses(ex / "toy_face_data.npz", Part.face_shape)
    assert face_shape.keys == ("betas",) and set(face_shape.extras) == {"jaw_pose", "expression"}
    face = read_poses(ex / "toy_face_data.npz", Part.face)
    assert face.extras["betas"].shape == (500, 300)  # kept whole, to be written back unchanged


# ---------------------------------------------------------------------------------------------------- AMASS
def _amass(
    tmp_path: Path, cols: int, t: int = 50, rate_key: str = "mocap_framerate", **more
) -> tuple[Path, dict]:
    data = {
        "poses": RNG.normal(size=(t, cols)).astype(np.float64),
        "trans": RNG.normal(size=(t, 3)),
        "betas": RNG.normal(size=16),
        "gender": np.array("female"),
        rate_key: np.array(120.0),
        **more,
    }
    path = tmp_path / f"amass_{cols}.npz"
    np.savez(path, **data)
    return path, data


def test_amass_smplh_body_and_right_hand_columns(tmp_path):
    path, d = _amass(tmp_path, 156)
    body = read_poses(path, Part.body)
    assert body.source_format == "amass-smplh"
    np.testing.assert_allclose(body.poses, d["poses"][:, 3:66].astype(np.float32))
    np.testing.assert_allclose(body.extras["global_orient"], d["poses"][:, :3].astype(np.float32))
    np.testing.assert_allclose(body.extras["transl"], d["trans"].astype(np.float32))
    np.testing.assert_allclose(body.extras["left_hand_pose"], d["poses"][:, 66:111].astype(np.float32))
    hand = read_poses(path, Part.hand)
    np.testing.assert_allclose(hand.poses, d["poses"][:, 111:156].astype(np.float32))


def test_amass_smplx_layout_and_frame_rate_spelling(tmp_path):
    path, d = _amass(tmp_path, 165, rate_key="mocap_frame_rate")
    np.testing.assert_allclose(read_poses(path, Part.body).poses, d["poses"][:, 3:66].astype(np.float32))
    np.testing.assert_allclose(read_poses(path, Part.hand).poses, d["poses"][:, 120:165].astype(np.float32))
    sub = read_poses(path, Part.body, fps=30.0)  # 120 → 30 fps: every 4th frame
    np.testing.assert_allclose(sub.poses, d["poses"][::4, 3:66].astype(np.float32))
    assert len(sub.extras["transl"]) == len(sub.poses) == 13
    assert float(sub.extras["mocap_framerate"]) == 30.0


def test_amass_face_needs_expressions(tmp_path):
    path, _ = _amass(tmp_path, 156)
    with pytest.raises(InputError) as exc:
        read_poses(path, Part.face)
    msg = _one_line_error(exc)
    assert "SMPL+H" in msg and "--part face" in msg
    path, _ = _amass(tmp_path, 165)
    for part in (Part.face, Part.wholebody):
        with pytest.raises(InputError, match="expression"):
            read_poses(path, part)
    with pytest.raises(InputError):
        read_poses(path, Part.face_shape)


def test_amass_smplx_with_expressions_gives_face_and_wholebody(tmp_path):
    expr = RNG.normal(size=(50, 50))
    path, d = _amass(tmp_path, 165, expressions=expr)
    face = read_poses(path, Part.face)
    np.testing.assert_allclose(face.poses[:, :3], d["poses"][:, 66:69].astype(np.float32))
    np.testing.assert_allclose(face.poses[:, 3:53], expr.astype(np.float32))
    assert (face.poses[:, 53:] == 0).all()  # 50 SMPL-X expressions zero-padded to 100
    wb = read_poses(path, Part.wholebody)
    p = d["poses"]
    want = np.concatenate([p[:, 3:66], p[:, 75:120], p[:, 120:165], p[:, 66:69], expr, np.zeros((50, 50))], 1)
    np.testing.assert_allclose(wb.poses, want.astype(np.float32))


def test_fps_leaves_files_without_a_rate_alone_and_rejects_nonsense(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, poses=RNG.normal(size=(10, 63)))
    assert len(read_poses(path, Part.body, fps=30.0).poses) == 10
    with pytest.raises(InputError, match="fps"):
        read_poses(path, Part.body, fps=0.0)


# ---------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("part", list(Part))
def test_write_then_read_round_trips_every_part(tmp_path, part):
    x = RNG.normal(size=(7, PARTS[part].dim)).astype(np.float32)
    out = write_poses(tmp_path / "sub" / "poses.npz", part, x, extras={"transl": np.ones((7, 3))})
    raw = _load(out)
    assert str(raw["part"]) == part.value
    assert set(raw) == set(PARTS[part].keys) | {"part", "transl"}
    for key, sl in PARTS[part].slices().items():
        np.testing.assert_array_equal(raw[key], x[:, sl])
    back = read_poses(out, part)
    np.testing.assert_array_equal(back.poses, x)
    assert back.source_format == "dposer"
    np.testing.assert_array_equal(back.extras["transl"], np.ones((7, 3)))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_hypotheses_keeps_the_h_axis(tmp_path):
    x = RNG.normal(size=(4, 3, 63)).astype(np.float32)
    out = write_poses(tmp_path / "c.npz", Part.body, x)
    assert _load(out)["body_pose"].shape == (4, 3, 63)
    np.testing.assert_array_equal(read_poses(out, Part.body).poses, x.reshape(12, 63))


def test_write_reuses_the_input_keys(tmp_path, shared_data):
    src = shared_data / "official/examples/Gestures_3_poses_batch005.npz"
    pf = read_poses(src, Part.body)
    out = write_poses(tmp_path / "o.npz", Part.body, pf.poses * 0, extras=pf.extras, keys_like=pf)
    raw = _load(out)
    assert set(raw) == {"pose_body", "root_orient", "part"}
    assert (raw["pose_body"] == 0).all()
    toy = read_poses(shared_data / "official/examples/toy_face_data.npz", Part.face)
    raw = _load(write_poses(tmp_path / "f.npz", Part.face, toy.poses, keys_like=toy))
    assert raw["jaw_pose"].shape == (500, 3) and raw["expression"].shape == (500, 100)
    plain = read_poses(shared_data / "poses/hand_reference_train.npz", Part.hand)
    assert "poses" in _load(write_poses(tmp_path / "h.npz", Part.hand, plain.poses[:5], keys_like=plain))


def test_write_amass_input_uses_our_keys(tmp_path):
    path, _ = _amass(tmp_path, 156)
    pf = read_poses(path, Part.body)
    raw = _load(write_poses(tmp_path / "o.npz", Part.body, pf.poses, keys_like=pf))
    assert "body_pose" in raw and "poses" not in raw


def test_write_rejects_wrong_width(tmp_path):
    with pytest.raises(InputError) as exc:
        write_poses(tmp_path / "x.npz", Part.hand, np.zeros((3, 63)))
    assert "(N, 45)" in _one_line_error(exc)
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------------- errors
def test_wrong_shape_message_matches_the_documented_style(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("poses.npz", body_pose=np.zeros((50, 66)))
    with pytest.raises(InputError) as exc:
        read_poses(Path("poses.npz"), Part.body)
    assert _one_line_error(exc) == "poses.npz: body_pose has shape (50, 66); expected (N, 63) for --part body"


def test_non_finite_values_name_key_and_row(tmp_path):
    x = np.zeros((20, 63))
    x[12, 5] = np.nan
    path = tmp_path / "p.npz"
    np.savez(path, body_pose=x)
    with pytest.raises(InputError) as exc:
        read_poses(path, Part.body)
    msg = _one_line_error(exc)
    assert "body_pose" in msg and "row 12" in msg
    assert np.isnan(read_poses(path, Part.body, allow_nan=True).poses[12, 5])
    x[3, 0] = np.inf
    np.savez(path, body_pose=x)
    with pytest.raises(InputError, match="row 3"):
        read_poses(path, Part.body, allow_nan=True)
    x[3, 0], x[12, 5], x[7, 1] = 0.0, 0.0, -1e3  # within bounds
    np.savez(path, body_pose=x)
    assert read_poses(path, Part.body).poses[7, 1] == -1e3
    x[9, 1] = -1e30  # squares overflow float32: garbage either way
    np.savez(path, body_pose=x)
    for allow_nan in (False, True):
        with pytest.raises(InputError) as exc:
            read_poses(path, Part.body, allow_nan=allow_nan)
        assert "body_pose has values as large as 1e+30 (first in row 9)" in _one_line_error(exc)


@pytest.mark.parametrize(
    ("writer", "needle"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("hello"), "not a readable .npz"),
        (lambda p: np.savez(p, body_pose=np.zeros((0, 63))), "0 rows"),
        (lambda p: np.savez(p, foo=np.zeros((3, 63)), bar=np.ones(2)), "keys: foo, bar"),
        (lambda p: np.savez(p, body_pose=np.array(["a", "b"])), "dtype"),
        (lambda p: np.savez(p, body_pose=np.array([{"a": 1}], dtype=object)), "holds pickled Python objects"),
        (
            lambda p: np.savez(p, body_pose=np.zeros((4, 63)), left_hand_pose=np.zeros((4, 45))),
            "not right_hand_pose",
        ),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, writer, needle):
    path = tmp_path / "bad.npz"
    writer(path)
    part = Part.wholebody if "right_hand" in needle else Part.body
    error = UnsafeFileError if "pickled" in needle else InputError  # pickled data: exit 4, refused unread
    with pytest.raises(error) as exc:
        read_poses(path, part)
    assert needle in _one_line_error(exc)


def test_npy_file_and_row_mismatch(tmp_path):
    npy = tmp_path / "p.npy"
    np.save(npy, np.zeros((3, 63)))
    with pytest.raises(InputError, match="single .npy array"):
        read_poses(npy, Part.body)
    path = tmp_path / "f.npz"
    np.savez(path, jaw_pose=np.zeros((4, 3)), expression=np.zeros((5, 100)))
    with pytest.raises(InputError, match="expression has 5 rows but jaw_pose has 4"):
        read_poses(path, Part.face)


def test_reading_with_the_wrong_part_hints_at_the_written_part(tmp_path):
    out = write_poses(tmp_path / "h.npz", Part.hand, np.zeros((2, 45)))
    with pytest.raises(InputError) as exc:
        read_poses(out, Part.body)
    assert exc.value.hint == "this file was written for --part hand"


def test_face_columns_are_padded_and_truncated(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, jaw_pose=np.ones((2, 3)), expression=np.full((2, 10), 2.0), betas=np.full((2, 300), 3.0))
    face = read_poses(path, Part.face).poses
    assert face.shape == (2, 103) and (face[:, 3:13] == 2).all() and (face[:, 13:] == 0).all()
    assert read_poses(path, Part.face_shape).poses.shape == (2, 100)
    np.savez(path, betas=np.zeros((2, 10)))
    with pytest.raises(InputError, match=r"betas has shape \(2, 10\); expected \(N, 100\)"):
        read_poses(path, Part.face_shape)


def test_amass_stageii_side_keys_and_single_pose(tmp_path):
    path = tmp_path / "s.npz"
    hands = RNG.normal(size=(6, 90))
    np.savez(path, pose_hand=hands)
    np.testing.assert_allclose(read_poses(path, Part.hand).poses, hands[:, 45:].astype(np.float32))
    np.savez(path, body_pose=np.arange(63.0))  # one pose saved as (63,)
    assert read_poses(path, Part.body).poses.shape == (1, 63)


# ---------------------------------------------------------------------------------------------------- trees
def test_pose_tree_reads_folders_recursively_and_files(tmp_path):
    a, b, c = (RNG.normal(size=(n, 45)).astype(np.float32) for n in (3, 4, 5))
    (tmp_path / "d" / "e").mkdir(parents=True)
    np.savez(tmp_path / "d" / "a.npz", poses=a)
    np.savez(tmp_path / "d" / "e" / "b.npz", hand_pose=b)
    np.savez(tmp_path / "c.npz", pose_samples=c)
    out = read_pose_tree([tmp_path / "d", tmp_path / "c.npz"], Part.hand)
    np.testing.assert_array_equal(out, np.concatenate([a, b, c]))


def test_pose_tree_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .npz"):
        read_pose_tree([tmp_path / "empty"], Part.body)
    with pytest.raises(InputError, match="not found"):
        read_pose_tree([tmp_path / "missing.npz"], Part.body)
    with pytest.raises(InputError, match="no pose files"):
        read_pose_tree([], Part.body)
