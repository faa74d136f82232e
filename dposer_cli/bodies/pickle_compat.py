"""Read official SMPL-family pickles without chumpy, and without running code from the file.

The released `.pkl` models (MANO, FLAME, some SMPL-X) were written with Python 2 and hold chumpy arrays
and scipy sparse matrices. PyPI chumpy does not build on Python ≥ 3.11, so a restricted unpickler maps
every `chumpy.*` class to an inert stub (its state keeps the array under `x`) and every scipy sparse
matrix to a stub that is densified with NumPy. Anything outside a short allow-list (NumPy arrays and
plain containers) is refused, so a malicious file cannot execute code (spec/platform.md).
"""

import importlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dposer_cli.core.errors import AssetMismatchError, UnsafeFileError

# (module, name) pairs a model pickle may reference; Python 2 and NumPy 1 spellings are renamed first
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("copyreg", "_reconstructor"), ("_codecs", "encode"),
    ("builtins", "object"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "complex"), ("builtins", "bytearray"), ("builtins", "dict"), ("builtins", "list"),
    ("builtins", "tuple"), ("collections", "OrderedDict"),
}  # fmt: skip
_RENAMED_MODULES = {
    "copy_reg": "copyreg",
    "__builtin__": "builtins",
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}


class ChumpyStub:
    """Inert stand-in for any chumpy object; `state` is what the pickle stored (a dict with `x`)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class SparseStub:
    """Inert stand-in for a scipy sparse matrix; `fmt` is "csc", "csr" or "coo"."""

    fmt = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


_SPARSE = {fmt: type(f"{fmt}_stub", (SparseStub,), {"fmt": fmt}) for fmt in ("csc", "csr", "coo")}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced something outside the allow-list (code could run): `str(exc)` is its name."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStub
        if module.startswith("scipy.sparse"):
            fmt = name[:3]
            if fmt in _SPARSE and name.endswith(("_matrix", "_array")):
                return _SPARSE[fmt]
        mod = _RENAMED_MODULES.get(module, module)
        if (mod, name) in _ALLOWED:
            return getattr(importlib.import_module(mod), name)
        raise RefusedGlobal(f"{module}.{name}")


def _dense(stub: SparseStub) -> np.ndarray:
    state = stub.state
    shape = tuple(state.get("_shape") or state.get("shape"))
    data = np.asarray(state["data"])
    out = np.zeros(shape, dtype=data.dtype)
    if stub.fmt in ("csc", "csr"):
        indptr = np.asarray(state["indptr"])
        major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        minor = np.asarray(state["indices"])
        rows, cols = (minor, major) if stub.fmt == "csc" else (major, minor)
    else:
        rows, cols = state["coords"] if "coords" in state else (state["row"], state["col"])
    np.add.at(out, (np.asarray(rows), np.asarray(cols)), data)  # add: COO may hold duplicates
    return out


def _resolve(obj: Any, where: str) -> Any:
    """Replace stubs by NumPy arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, ChumpyStub):
        state = obj.state
        if not (isinstance(state, dict) and "x" in state):
            raise ValueError(f"{where} is a chumpy expression, not a stored array")
        return np.asarray(_resolve(state["x"], where))
    if isinstance(obj, SparseStub):
        return _dense(obj)
    if isinstance(obj, dict):
        return {k: _resolve(v, f"{where}[{k!r}]" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, where) for v in obj)
    return obj


def load_stream(fh: io.BufferedIOBase, *, where: str = "") -> Any:
    """Unpickle from an open binary stream with the restricted unpickler and resolve the stubs."""
    return _resolve(_Unpickler(fh, encoding="latin1").load(), where)


# what a corrupt or foreign pickle raises while loading; mapped to one AssetMismatchError line
_UNREADABLE = (pickle.UnpicklingError, ValueError, EOFError, KeyError, TypeError, AttributeError, ImportError)


def _refused(path: Path, exc: RefusedGlobal) -> UnsafeFileError:
    return UnsafeFileError(
        f"refusing to load {path}: it references {exc}, which could run code (model files hold plain arrays)",
        hint="only use model files from their official source; nothing in this file was run",
    )


def load_pickle(path: Path) -> Any:
    """Load an official model pickle (chumpy / scipy-sparse content allowed) as plain NumPy data.

    Raises:
        UnsafeFileError: the pickle references code (nothing of it is run).
        AssetMismatchError: the file is not a readable model pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return load_stream(fh)
    except OSError as exc:
        raise AssetMismatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except RefusedGlobal as exc:
        raise _refused(path, exc) from None
    except _UNREADABLE as exc:
        raise AssetMismatchError(f"{path} is not a readable model pickle: {exc}") from None


def load_npy_object(path: Path) -> Any:
    """Load a `.npy` file; object arrays (e.g. FLAME's pickled dict) go through the restricted unpickler."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(fh)
            if dtype.hasobject:
                arr = load_stream(fh)
            else:
                fh.seek(0)
                arr = np.lib.format.read_array(fh, allow_pickle=False)
    except OSError as exc:
        raise AssetMismatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except RefusedGlobal as exc:
        raise _refused(path, exc) from None
    except _UNREADABLE as exc:
        raise AssetMismatchError(f"{path} is not a readable .npy file: {exc}") from None
    return arr[()] if isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 0 else arr


def npz_object_members(path: Path) -> list[str]:
    """Members of an `.npz` whose arrays hold pickled Python objects, read from the `.npy` headers only.

    Nothing is unpickled; `np.load(..., allow_pickle=True)` of such a member would run its code.

    Raises:
        AssetMismatchError: not a zip archive, or a member with an unreadable `.npy` header.
    """
    path = Path(path)
    found = []
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    _, _, dtype = read_header(fh)
                    if dtype.hasobject:
                        found.append(info.filename[: -len(".npy")])
    except OSError as exc:
        raise AssetMismatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError) as exc:
        raise AssetMismatchError(f"{path} is not a readable .npz file: {exc}") from None
    return found


def read_npz_plain(path: Path, keys: "tuple[str, ...] | None" = None) -> dict[str, np.ndarray]:
    """Arrays of an `.npz` (all, or `keys`), every member read with `allow_pickle=False`.

    The whole archive is checked first: a member holding pickled objects refuses the file, even one
    that would not be read, so a payload in an unused key cannot ride along.

    Raises:
        UnsafeFileError: a member holds pickled Python objects (nothing of them is run).
        AssetMismatchError: the file is not a readable `.npz`.
    """
    path = Path(path)
    unsafe = npz_object_members(path)
    if unsafe:
        raise UnsafeFileError(
            f"refusing to load {path}: member {unsafe[0]!r} holds pickled Python objects, which could run code "
            "(model files hold plain arrays)",
            hint="only use model files from their official source; nothing in this file was run",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = npz.files if keys is None else [k for k in keys if k in npz.files]
            return {k: npz[k] for k in names}
    except OSError as exc:
        raise AssetMismatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AssetMismatchError(f"{path} is not a readable .npz file: {exc}") from None


def dumps_plain(obj: Any) -> bytes:
    """Pickle resolved (plain NumPy) data, e.g. to hand a converted file to smplx."""
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=4)
    return buf.getvalue()
