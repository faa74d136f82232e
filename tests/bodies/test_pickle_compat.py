"""Chumpy-free, code-free loading of official pickles."""

import io
import os
import pickle

import numpy as np
import pytest
import scipy.sparse

from dposer_cli.bodies import pickle_compat
from dposer_cli.core.errors import AssetMismatchError
from tests._fixtures.body_models import _fake_chumpy, mano_arrays, write_mano


def test_mano_pickle_loads_without_chumpy_to_plain_arrays(tmp_path):
    path = write_mano(tmp_path)
    data = pickle_compat.load_pickle(path)
    ref = mano_arrays()
    assert isinstance(data["shapedirs"], np.ndarray) and np.array_equal(data["shapedirs"], ref["shapedirs"])
    assert isinstance(data["J_regressor"], np.ndarray) and np.allclose(
        data["J_regressor"], ref["J_regressor"]
    )
    assert data["bs_style"] == "lbs"


@pytest.mark.parametrize("fmt", ["csr", "coo", "csc"])
def test_sparse_matrices_become_dense(fmt):
    dense = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    blob = pickle.dumps({"m": getattr(scipy.sparse, f"{fmt}_matrix")(dense)}, protocol=2)
    assert np.array_equal(pickle_compat.load_stream(io.BytesIO(blob))["m"], dense)


def test_code_in_a_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(AssetMismatchError, match="refusing to load"):
        pickle_compat.load_pickle(path)


def test_chumpy_expression_without_stored_array_is_reported(tmp_path):
    with _fake_chumpy() as Ch:
        obj = Ch(np.zeros(3))
        del obj.x
        blob = pickle.dumps({"posedirs": obj}, protocol=2)
    with pytest.raises(ValueError, match="posedirs"):
        pickle_compat.load_stream(io.BytesIO(blob))


def test_npy_with_pickled_dict_loads_through_the_restricted_unpickler(tmp_path):
    obj = np.empty((), dtype=object)
    obj[()] = {"lmk_face_idx": np.arange(4)}
    np.save(tmp_path / "a.npy", obj, allow_pickle=True)
    assert np.array_equal(pickle_compat.load_npy_object(tmp_path / "a.npy")["lmk_face_idx"], np.arange(4))
    np.save(tmp_path / "b.npy", np.ones(3))
    assert np.array_equal(pickle_compat.load_npy_object(tmp_path / "b.npy"), np.ones(3))
