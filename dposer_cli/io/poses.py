"""Pose npz files: every supported layout → one part vector, and results back to npz (spec §1.1, §13).

Readable layouts (formats.md §4.4), tried in this order:

1. AMASS: `poses` (T, 156) SMPL+H (root 3, body 63, left hand 45, right hand 45) or (T, 165) SMPL-X
   (root 3, body 63, jaw 3, eyes 6, left hand 45, right hand 45), with `mocap_framerate` (SMPL+H) or
   `mocap_frame_rate` (SMPL-X stage-ii) and `trans`. Body and hands come from both; the face needs an
   `expression`/`expressions` key next to the 165 columns (BEAT2-style files), because AMASS itself stores no
   expression coefficients. `--part hand` takes the right hand (the prior's convention); the left hand is kept
   in `extras`.
2. Named segments: our keys (`body_pose`, `hand_pose`, `jaw_pose` + `expression`, `betas`, the whole-body keys
   `left_hand_pose`/`right_hand_pose`), the official toy files (`toy_face`, `toy_wholebody`), SMPL-X dicts and the
   motion files (`pose_body`, `root_orient`), AMASS stage-ii side keys (`pose_hand` (T, 90), `pose_jaw`).
   Face `betas` with more than 100 columns (FLAME 300) keep the first 100; `expression` with fewer than 100
   columns (SMPL-X's 10 or 50) is zero-padded to 100 (zero = neutral), with more it keeps the first 100.
3. One plain array: `poses` or `pose_samples` (official toy) or `pose` of shape (N, part dim); for the body
   also (N, 66) global+body and (N, 72) SMPL rows (columns 3:66).

A (N, H, d) array (hypotheses written by `dposer complete`) is read as N·H rows. `fps` subsamples files that
record their frame rate (stride = round(rate / fps)); files without a rate are read at every frame.

Arrays are read with `allow_pickle=False`: one that holds pickled Python objects is refused with
`UnsafeFileError` (exit 4, "holds pickled Python objects"), unread.
"""

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jaxtyping import Float

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError, UnsafeFileError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import atomic_write

SOURCE_FORMATS = (
    "dposer", "poses", "official-toy", "pose_body", "amass-smplh", "amass-smplx", "wholebody-dict", "smpl",
)  # fmt: skip
FRAME_RATE_KEYS = ("mocap_framerate", "mocap_frame_rate", "fps", "frame_rate")

# AMASS `poses` column layouts (formats.md §4.4)
AMASS_LAYOUTS: dict[int, tuple[str, dict[str, slice]]] = {
    156: ("amass-smplh", {
        "global_orient": slice(0, 3), "body_pose": slice(3, 66),
        "left_hand_pose": slice(66, 111), "right_hand_pose": slice(111, 156),
    }),
    165: ("amass-smplx", {
        "global_orient": slice(0, 3), "body_pose": slice(3, 66), "jaw_pose": slice(66, 69),
        "eye_pose": slice(69, 75), "left_hand_pose": slice(75, 120), "right_hand_pose": slice(120, 165),
    }),
}  # fmt: skip

# segment key -> (file key, column slice of a wider array or None), in order of preference
_ALIASES: dict[str, tuple[tuple[str, slice | None], ...]] = {
    "body_pose": (("body_pose", None), ("pose_body", None)),
    "hand_pose": (("hand_pose", None), ("right_hand_pose", None), ("pose_hand", slice(45, 90))),
    "left_hand_pose": (("left_hand_pose", None), ("pose_hand", slice(0, 45))),
    "right_hand_pose": (("right_hand_pose", None), ("pose_hand", slice(45, 90))),
    "jaw_pose": (("jaw_pose", None), ("pose_jaw", None)),
    "expression": (("expression", None), ("expressions", None), ("expr", None)),
    "betas": (("betas", None), ("shape", None)),
}
_WIDE_COLS = {"pose_hand": 90}  # full width of arrays that aliases slice
_SINGLE_KEYS = ("poses", "pose_samples", "pose")
_EXPRESSION_KEYS = ("expression", "expressions", "expr")
_AMASS_TRANSL_KEYS = ("trans", "transl")
_AMASS_NAMES = {"amass-smplh": "SMPL+H", "amass-smplx": "SMPL-X"}
_WRITE_KEEPS_KEYS = ("dposer", "poses", "official-toy", "pose_body", "wholebody-dict")


@dataclass
class PoseFile:
    """Part vectors read from one npz, plus what is needed to write results back in the same shape."""

    poses: Float[
        np.ndarray, "N D"
    ]  # float32, PARTS[part] layout (segment order); NaN where missing if allowed
    part: Part
    source_format: str  # one of SOURCE_FORMATS
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # global_orient, transl, betas, ...
    keys: tuple[str, ...] = ()  # npz keys the part vector was assembled from (segment order)


# ---------------------------------------------------------------------------------------------------- helpers
def holds_pickle(exc: BaseException) -> bool:
    """Whether `exc` is NumPy refusing an object array under `allow_pickle=False` (nothing of it was run)."""
    return isinstance(exc, ValueError) and "allow_pickle=False" in str(exc)


def unsafe_data(path: Path, key: str | None = None) -> UnsafeFileError:
    """The error for a data file whose array (`key`, or the file itself) holds pickled Python objects."""
    what = f"{key} holds" if key else "it holds"
    return UnsafeFileError(
        f"refusing to read {path}: {what} pickled Python objects, which could run code; expected numeric arrays",
        hint="save plain arrays (np.savez(path, poses=numbers)); nothing in this file was run",
    )


def open_npz(path: Path, what: str = "poses file") -> "np.lib.npyio.NpzFile":
    """Open an npz lazily; missing files and non-npz files become one-line InputErrors.

    Raises:
        InputError: missing, a folder, or not a readable .npz.
        UnsafeFileError: a single .npy array of pickled Python objects.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected an .npz file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if not (magic.startswith(b"PK") or magic.startswith(b"\x93NUMPY") or magic.startswith(b"\x80")):
        # NumPy treats any other bytes as a pickle and says so; it is just not an .npz (text, JSON, an image...)
        raise InputError(
            f"{path}: not a readable .npz file (it is not a zip archive: text, JSON or another format?)"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if holds_pickle(exc):
            raise unsafe_data(path) from None
        raise InputError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(
            f"{path}: is a single .npy array, not an .npz archive; save it with np.savez(path, poses=...)"
        )
    return data


def load_key(npz: "np.lib.npyio.NpzFile", key: str, path: Path) -> np.ndarray:
    """One array of an npz.

    Raises:
        UnsafeFileError: the member holds pickled Python objects (refused unread).
        InputError: a corrupt member.
    """
    try:
        return npz[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if holds_pickle(exc):
            raise unsafe_data(path, key) from None
        raise InputError(f"{path}: cannot read {key} ({_one_line(exc)})") from None


def frame_rate(npz: "np.lib.npyio.NpzFile", path: Path) -> float | None:
    """The recorded frame rate (`mocap_framerate`, `mocap_frame_rate`, `fps`), or None."""
    for key in FRAME_RATE_KEYS:
        if key in npz.files:
            value = load_key(npz, key, path)
            try:
                rate = float(np.asarray(value).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise InputError(f"{path}: {key} is not a number") from None
            if not np.isfinite(rate) or rate <= 0:
                raise InputError(f"{path}: {key} is {rate}; expected a positive frame rate")
            return rate
    return None


def frame_stride(rate: float | None, fps: float | None) -> int:
    """Subsampling stride for a target `fps` (1 when either rate is unknown or fps ≥ rate)."""
    if fps is None:
        return 1
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"--fps must be a positive number, got {fps}")
    if rate is None:
        return 1
    return max(1, round(rate / fps))


def check_finite(arr: np.ndarray, key: str, path: Path, *, allow_nan: bool = False) -> None:
    """Raise on NaN/inf (only inf when NaN marks missing values) and on values beyond ±`validate.MAX_VALUE`,
    naming the key and first bad row."""
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        rows = bad.reshape(len(arr), -1).any(axis=1) if arr.ndim > 1 else bad
        kind = "infinite" if allow_nan else "non-finite (NaN/inf)"
        raise InputError(
            f"{path}: {key} has {kind} values (first in row {int(np.argmax(rows))})",
            hint=None
            if allow_nan
            else "fix or drop those rows; only `dposer complete` reads NaN as 'missing'",
        )
    validate.magnitude(arr, f"{path}: {key}", unit="(radians, metres or coefficients)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _numeric(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{path}: {key} has dtype {arr.dtype}; expected real numbers")
    return arr


def _rows(arr: np.ndarray, key: str, path: Path, width: int, part: Part) -> np.ndarray:
    """(d,) → (1, d); (N, H, d) → (N·H, d); anything else but (N, d) is a shape error."""
    arr = _numeric(arr, key, path)
    if arr.ndim == 1 and arr.shape[0] == width:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2:
        raise InputError(
            f"{path}: {key} has shape {arr.shape}; expected (N, {width}) for --part {part.value}"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{path}: {key} has 0 rows; expected at least one pose")
    return arr


def _shape_error(path: Path, key: str, shape: tuple, width: int | str, part: Part) -> InputError:
    return InputError(f"{path}: {key} has shape {shape}; expected (N, {width}) for --part {part.value}")


def _fit_width(arr: np.ndarray, seg_key: str, key: str, path: Path, width: int, part: Part) -> np.ndarray:
    """Apply the documented column rules (FLAME betas 300 → 100, short expressions zero-padded)."""
    cols = arr.shape[1]
    if seg_key == "expression" and cols != width:
        if cols > width:
            return arr[:, :width]
        return np.concatenate([arr, np.zeros((len(arr), width - cols), arr.dtype)], axis=1)
    if seg_key == "betas" and cols > width:
        return arr[:, :width]
    if cols != width:
        raise _shape_error(path, key, arr.shape, width, part)
    return arr


def _finish(arr: np.ndarray, path: Path, allow_nan: bool) -> np.ndarray:
    out = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite(out, "poses", path, allow_nan=allow_nan)  # after the float32 cast: overflow becomes inf
    return out


# ---------------------------------------------------------------------------------------------------- routes
def _read_amass(
    npz, path: Path, part: Part, poses: np.ndarray, allow_nan: bool, fps: float | None
) -> PoseFile:
    fmt, layout = AMASS_LAYOUTS[poses.shape[1]]
    spec = PARTS[part]
    poses = _numeric(poses, "poses", path)
    if len(poses) == 0:
        raise InputError(f"{path}: poses has 0 rows; expected at least one frame")
    stride = frame_stride(frame_rate(npz, path), fps)
    poses = poses[::stride]
    check_finite(poses, "poses", path, allow_nan=allow_nan)
    expr_key = next((k for k in _EXPRESSION_KEYS if k in npz.files), None)
    blocks, keys, used = [], ["poses"], set()
    for seg in spec.segments:
        name = "right_hand_pose" if seg.key == "hand_pose" else seg.key
        if name in layout:
            blocks.append(poses[:, layout[name]])
            used.add(name)
        elif seg.key == "expression" and expr_key is not None:
            expr = _rows(load_key(npz, expr_key, path), expr_key, path, seg.dim, part)[::stride]
            if len(expr) != len(poses):
                raise InputError(f"{path}: {expr_key} has {len(expr)} rows but poses has {len(poses)} frames")
            check_finite(expr, expr_key, path, allow_nan=allow_nan)
            blocks.append(_fit_width(expr, "expression", expr_key, path, seg.dim, part))
            keys.append(expr_key)
        else:
            have = ", ".join(k for k in layout if k != "global_orient")
            need = " + ".join(spec.keys)
            why = "AMASS stores no expression coefficients" if seg.key == "expression" else f"no {seg.key}"
            raise InputError(
                f"{path}: AMASS {_AMASS_NAMES[fmt]} poses (T, {poses.shape[1]}) have {have} but {why}; "
                f"--part {part.value} needs {need}",
                hint="add an `expression` (T, 100) array to the file" if seg.key == "expression" else None,
            )
    extras = {k: np.ascontiguousarray(poses[:, sl], np.float32) for k, sl in layout.items() if k not in used}
    for key in _AMASS_TRANSL_KEYS:
        if key in npz.files:
            extras["transl"] = np.asarray(load_key(npz, key, path))[::stride].astype(np.float32)
            break
    if "betas" in npz.files:
        extras["betas"] = np.asarray(load_key(npz, "betas", path))
    rate = frame_rate(npz, path)
    if rate is not None:
        extras["mocap_framerate"] = np.asarray(rate / stride)
    return PoseFile(_finish(np.concatenate(blocks, axis=1), path, allow_nan), part, fmt, extras, tuple(keys))


def _find_segments(npz, part: Part) -> list[tuple[str, str, slice | None] | None]:
    """For each segment of the part: (segment key, file key, column slice) or None if absent."""
    found = []
    for seg in PARTS[part].segments:
        hit = next(
            ((seg.key, k, sl) for k, sl in _ALIASES.get(seg.key, ((seg.key, None),)) if k in npz.files), None
        )
        found.append(hit)
    return found


def _read_segments(npz, path: Path, part: Part, hits, allow_nan: bool, fps: float | None) -> PoseFile:
    spec = PARTS[part]
    stride = frame_stride(frame_rate(npz, path), fps)
    blocks, keys, n_rows, first, n_frames = [], [], None, None, 0
    for seg, (seg_key, key, cols) in zip(spec.segments, hits, strict=True):
        raw = load_key(npz, key, path)
        width = _WIDE_COLS[key] if cols is not None else seg.dim
        arr = _rows(raw, key, path, width, part)
        n_frames = len(raw) if raw.ndim >= 2 else 1
        if cols is not None:
            if arr.shape[1] != width:
                raise _shape_error(path, key, raw.shape, width, part)
            arr = arr[:, cols]
        arr = _fit_width(arr, seg_key, key, path, seg.dim, part)[::stride]
        if n_rows is None:
            n_rows, first = len(arr), key
        elif len(arr) != n_rows:
            raise InputError(f"{path}: {key} has {len(arr)} rows but {first} has {n_rows}")
        check_finite(arr, key, path, allow_nan=allow_nan)
        blocks.append(arr)
        keys.append(key)
    files = set(npz.files)
    if "part" in files:
        fmt = "dposer"
    elif {"pose_body"} & set(keys):
        fmt = "pose_body"
    elif {"left_hand_pose", "right_hand_pose"} <= files:
        fmt = "wholebody-dict"
    else:
        fmt = "dposer"
    extras = _extras(npz, path, exclude=set(keys) | {"part"}, stride=stride, n_frames=n_frames)
    return PoseFile(_finish(np.concatenate(blocks, axis=1), path, allow_nan), part, fmt, extras, tuple(keys))


def _read_single(npz, path: Path, part: Part, key: str, allow_nan: bool, fps: float | None) -> PoseFile:
    spec = PARTS[part]
    raw = load_key(npz, key, path)
    arr = _rows(raw, key, path, spec.dim, part)
    stride = frame_stride(frame_rate(npz, path), fps)
    extras: dict[str, np.ndarray] = {}
    fmt = "official-toy" if key == "pose_samples" else "poses"
    if part is Part.body and arr.shape[1] in (66, 72):  # global orient + body (+ SMPL hand joints 22, 23)
        extras["global_orient"] = np.ascontiguousarray(arr[::stride, :3], np.float32)
        arr, fmt = arr[:, 3:66], "smpl"
    if arr.shape[1] != spec.dim:
        extra = " (or 66 / 72 with the global orientation first)" if part is Part.body else ""
        raise InputError(
            f"{path}: {key} has shape {raw.shape}; expected (N, {spec.dim}){extra} for --part {part.value}"
        )
    arr = arr[::stride]
    check_finite(arr, key, path, allow_nan=allow_nan)
    n_frames = len(raw) if raw.ndim >= 2 else 1
    extras.update(_extras(npz, path, exclude={key, "part"}, stride=stride, n_frames=n_frames))
    return PoseFile(_finish(arr, path, allow_nan), part, fmt, extras, (key,))


def _extras(npz, path: Path, *, exclude: set[str], stride: int, n_frames: int) -> dict[str, np.ndarray]:
    """Other numeric/string arrays of the file; per-frame ones (leading dim = frames) follow the stride."""
    out: dict[str, np.ndarray] = {}
    for key in npz.files:
        if key in exclude:
            continue
        try:
            arr = npz[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            continue  # pickled objects or unreadable members are not worth failing the pose read for
        if stride > 1 and arr.ndim >= 2 and arr.shape[0] == n_frames:
            arr = arr[::stride]
        out[key] = arr
    return out


# ---------------------------------------------------------------------------------------------------- public
def read_poses(
    path: Path | str, part: Part, *, allow_nan: bool = False, fps: float | None = None
) -> PoseFile:
    """Read one npz into (N, D) part vectors (see the module docstring for the accepted layouts).

    Args:
        path: the .npz file.
        part: which part vector to build.
        allow_nan: keep NaN entries (they mark missing values for completion); inf is still an error.
        fps: subsample files that record a frame rate to about this many frames per second.

    Raises:
        InputError: missing/unreadable file, no usable key (the message lists the keys found and expected),
            wrong shapes, zero rows, non-finite values, or a part the file cannot provide.
        UnsafeFileError: an array it reads holds pickled Python objects (exit 4; nothing of it runs). Other
            members holding them are left out of `extras`, unread.
    """
    path = Path(path)
    part = Part(part)
    spec = PARTS[part]
    with open_npz(path) as npz:
        if "poses" in npz.files:
            poses = load_key(npz, "poses", path)
            if poses.ndim == 2 and poses.shape[1] in AMASS_LAYOUTS and poses.shape[1] != spec.dim:
                return _read_amass(npz, path, part, poses, allow_nan, fps)
        hits = _find_segments(npz, part)
        if all(h is not None for h in hits):
            return _read_segments(npz, path, part, hits, allow_nan, fps)
        single_error: InputError | None = None
        for key in _SINGLE_KEYS:
            if key in npz.files:
                try:
                    return _read_single(npz, path, part, key, allow_nan, fps)
                except InputError as exc:
                    single_error = single_error or exc
        found = [h[1] for h in hits if h is not None]
        hint = None
        if "part" in npz.files:
            written = str(load_key(npz, "part", path))
            if written != part.value:
                hint = f"this file was written for --part {written}"
        if found and len(spec.segments) > 1:
            missing = [s.key for s, h in zip(spec.segments, hits, strict=True) if h is None]
            raise InputError(
                f"{path}: found {', '.join(found)} but not {', '.join(missing)}; "
                f"--part {part.value} needs {' + '.join(spec.keys)}",
                hint=hint,
            )
        if single_error is not None:
            single_error.hint = single_error.hint or hint
            raise single_error
        keys = ", ".join(npz.files) or "none"
        raise InputError(
            f"{path}: no {part.value} poses found (keys: {keys}); expected {' + '.join(spec.keys)}, "
            f"or `poses` (N, {spec.dim}), or AMASS `poses` (T, 156|165)",
            hint=hint,
        )


def read_pose_tree(paths: "list[Path]", part: Part, *, fps: float | None = None) -> Float[np.ndarray, "N D"]:
    """Read files and folders (recursively, every *.npz, sorted) and concatenate their part vectors.

    Raises:
        InputError: a path does not exist, a folder holds no .npz, nothing was read, or any file is invalid.
    """
    arrays = [read_poses(f, part, fps=fps).poses for f in pose_files(paths)]
    return np.concatenate(arrays, axis=0)


def pose_files(paths: "list[Path]") -> list[Path]:
    """Expand files and folders (recursively, every *.npz, sorted) into a list of files.

    Raises:
        InputError: a path does not exist, a folder holds no .npz, or nothing was given.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.npz"))
            if not found:
                raise InputError(f"pose folder {p} contains no .npz files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"poses file not found: {p}")
    if not files:
        raise InputError("no pose files given")
    return files


def _output_keys(part: Part, keys_like: PoseFile | None) -> list[tuple[str, slice]]:
    spec = PARTS[part]
    default = list(spec.slices().items())
    if keys_like is None or keys_like.part is not part or keys_like.source_format not in _WRITE_KEEPS_KEYS:
        return default
    keys = keys_like.keys
    if len(keys) == 1:  # one plain array (`poses`, `pose_samples`) or the single segment
        return [(keys[0], slice(0, spec.dim))]
    if len(keys) == len(spec.segments) and len(set(keys)) == len(keys):
        return [(k, sl) for k, (_, sl) in zip(keys, default, strict=True)]
    return default


def write_poses(
    path: Path,
    part: Part,
    poses: "Float[np.ndarray, 'N D'] | Float[np.ndarray, 'N H D']",
    *,
    extras: "dict[str, np.ndarray] | None" = None,
    keys_like: PoseFile | None = None,
) -> Path:
    """Write part vectors as npz, split into the part's segment keys, atomically; returns the path.

    `poses` (N, D) or (N, H, D) (H hypotheses) becomes e.g. `body_pose` (N, 63) or (N, H, 63). With
    `keys_like`, the keys of that input file are reused (e.g. `pose_body`, `poses`, `pose_samples`); AMASS inputs
    are written with our keys. `extras` are stored as given (global_orient, transl, ...), and `part` is stored
    as a string so the file says what it holds.

    Raises:
        InputError: the array does not have the part's width, or the file cannot be written.
    """
    path = Path(path)
    part = Part(part)
    spec = PARTS[part]
    arr = np.asarray(poses)
    if arr.ndim not in (2, 3) or arr.shape[-1] != spec.dim:
        raise InputError(
            f"cannot write {path}: poses have shape {arr.shape}; expected (N, {spec.dim}) or "
            f"(N, H, {spec.dim}) for --part {part.value}"
        )
    arrays: dict[str, np.ndarray] = {}
    for key, sl in _output_keys(part, keys_like):
        arrays[key] = np.ascontiguousarray(arr[..., sl], dtype=np.float32)
    for key, value in (extras or {}).items():
        if key not in arrays and key != "part":
            arrays[key] = np.asarray(value)
    arrays["part"] = np.asarray(part.value)
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stubs read **kwds as allow_pickle
    return path
