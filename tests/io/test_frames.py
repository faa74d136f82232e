"""io.frames.read_init: `--init` rows to persons, and what is not used is said."""

import logging

import numpy as np
import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.io.frames import read_init


def write(path, **arrays):
    np.savez(
        path, **{k: np.asarray(v, np.float32 if k != "person_index" else np.int64) for k, v in arrays.items()}
    )
    return path


def test_rows_follow_persons_and_person_index(tmp_path):
    a = write(tmp_path / "a.npz", body_pose=np.arange(3 * 63).reshape(3, 63) / 100)
    b = write(tmp_path / "b.npz", body_pose=np.arange(2 * 63).reshape(2, 63) / 50, person_index=[4, 1])
    got = read_init([a, b], 2, frame=np.array([0, 0, 0, 1, 1]), person=np.array([2, 0, 1, 1, 4]))
    pa = np.load(a)["body_pose"]
    pb = np.load(b)["body_pose"]
    np.testing.assert_array_equal(got["body_pose"], np.stack([pa[2], pa[0], pa[1], pb[1], pb[0]]))


def test_rows_for_no_fitted_person_are_named(tmp_path, caplog):
    path = write(tmp_path / "init.npz", body_pose=np.zeros((6, 63)), transl=np.zeros((6, 3)))
    with caplog.at_level(logging.WARNING, logger="dposer_cli.io.frames"):
        got = read_init([path], 1, frame=np.array([0]), person=np.array([1]))
    assert got["body_pose"].shape == (1, 63)
    (record,) = caplog.records
    assert (
        "init.npz: rows 0, 2, 3, 4, … (5 rows) start no fitted person (1 of its 6 rows used)"
        in record.message
    )


def test_every_row_used_warns_nothing(tmp_path, caplog):
    path = write(tmp_path / "init.npz", body_pose=np.zeros((2, 63)))
    with caplog.at_level(logging.WARNING, logger="dposer_cli.io.frames"):
        read_init([path], 1, frame=np.array([0, 0]), person=np.array([1, 0]))
    assert not caplog.records


def test_a_missing_person_row_is_refused(tmp_path):
    path = write(tmp_path / "init.npz", body_pose=np.zeros((1, 63)))
    with pytest.raises(InputError, match=r"no row for person 1 in 'body_pose' \(1 rows\)"):
        read_init([path], 1, frame=np.array([0]), person=np.array([1]))
