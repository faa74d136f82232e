"""The one place that checks user-supplied numbers and sizes, for every command and the Python API.

Pure Python (no torch, so `dposer --help` stays fast): the CLI option callbacks (`cli/_options.py`),
the CLI runner (`request()` on every command's request before anything is written), `engine.prior`
(`DPoserPrior.sample` / `loss`) and the services call these functions. Every check raises one
`InputError` line naming the flag or argument, what is allowed and what was given:

    --steps must be at most 1000000 (got 10000000000)
    sampling 10000000000 body poses would need about 2.3 TiB of memory; about 12.0 GiB is available

Limits are module constants so a caller (or a test) can read them; the memory checks compare an
estimate with what the machine has free now (`available_memory()`).
"""

import json
import math
import numbers
import os
import sys
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts 0 .. 2^64 − 1
MAX_STEPS = 1_000_000  # sampler / optimiser steps (each is one network evaluation per sample)
MAX_COUNT = 1_000_000_000  # -n, --hypo, --limit, --batch-size: absurd beyond this whatever the memory
MAX_FPS = 10_000.0
MAX_JSON_BYTES = 512 * 2**20  # keypoint / dataset JSON files
MAX_IMAGE_PIXELS = 178_956_970  # ~179 MP (Pillow's own decompression-bomb limit): refused before decoding
MAX_FRAMES = 1_000_000  # frames of one motion / video folder
MAX_FILES = 1_000_000  # images of one fit-image call
FLOAT_BYTES = 4  # float32 tensors
MAX_VALUE = 1e4  # poses (radians), shapes and expressions (coefficients), positions (metres): garbage beyond
MAX_PIXEL = 1e7  # keypoint coordinates (pixels): far outside any photo, still exact in float32
SAMPLER_COPIES = 8  # live (N, D) tensors in a sampler step: x, ε̂, x̂0, noise, history, ...


# ---------------------------------------------------------------------------------------------- scalars
def integer(
    name: str, value: Any, *, lo: int | None = None, hi: int | None = None, hint: str | None = None
) -> int:
    """`value` as an int within [lo, hi].

    Raises:
        InputError: not an integer (bools and floats included), or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer (got {value!r})", hint=hint)
    value = int(value)
    if lo is not None and value < lo:
        raise InputError(f"{name} must be at least {lo} (got {value})", hint=hint)
    if hi is not None and value > hi:
        raise InputError(f"{name} must be at most {hi} (got {value})", hint=hint)
    return value


def number(
    name: str,
    value: Any,
    *,
    lo: int | float | None = None,
    hi: int | float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    what: str = "number",
    hint: str | None = None,
) -> float:
    """`value` as a finite float within the given bounds (`lo_open`: strictly greater than `lo`).

    `what` completes the message: "--focal must be a positive number of pixels (got -1.0)".

    Raises:
        InputError: not a real number, NaN / ±inf, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a {what} (got {value!r})", hint=hint)
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite {what} (got {value})", hint=hint)
    if lo is not None and (value <= lo if lo_open else value < lo):
        if lo == 0:
            kind = "positive" if lo_open else "non-negative"
            raise InputError(f"{name} must be a {kind} {what} (got {value})", hint=hint)
        raise InputError(
            f"{name} must be {'greater than' if lo_open else 'at least'} {lo} (got {value})", hint=hint
        )
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise InputError(
            f"{name} must be {'less than' if hi_open else 'at most'} {hi} (got {value})", hint=hint
        )
    return value


def seed(value: Any, name: str = "--seed") -> int:
    """A random seed: an integer in 0 .. 2^64 − 1 (what torch generators accept).

    Raises:
        InputError: not an integer or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
        raise InputError(f"{name} must be an integer between 0 and 2^64 − 1 (got {value!r})")
    return int(value)


def diffusion_time(t: float, name: str = "t") -> float:
    """A diffusion time in (0, 1] (spec §3: t = 0 is the data, the SDE is defined up to t = 1).

    Raises:
        InputError: not a finite number in (0, 1].
    """
    return number(name, t, lo=0.0, hi=1.0, lo_open=True, what="diffusion time in (0, 1]")


# ---------------------------------------------------------------------------------------------- memory
def human_bytes(n: int | float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def available_memory() -> int | None:
    """Bytes of RAM free for a new allocation now (Linux MemAvailable, else free pages), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory(what: str, nbytes: int | float, available: int | None = None, *, hint: str | None = None) -> None:
    """Refuse a request whose estimated memory `nbytes` exceeds what is `available` (default: free RAM).

    Raises:
        InputError: "WHAT would need about X of memory; about Y is available".
    """
    free = available_memory() if available is None else available
    if free is not None and nbytes > free:
        raise InputError(
            f"{what} would need about {human_bytes(nbytes)} of memory; about {human_bytes(free)} "
            "is available",
            hint=hint,
        )


def sample_bytes(n: int, *, dim: int, width: int = 0, inner: int = 1, copies: int = SAMPLER_COPIES) -> int:
    """Peak bytes of sampling / optimising `n` × `inner` vectors of `dim` with a network `width` wide
    (`copies` live (N, D) tensors, four (N, width) activations; `copies=1, width=0`: the result alone)."""
    return int(n) * int(inner) * FLOAT_BYTES * (int(copies) * int(dim) + 4 * int(width))


# ---------------------------------------------------------------------------------------------- sizes
def magnitude(arr: Any, where: str, *, limit: float = MAX_VALUE, unit: str = "") -> None:
    """Refuse finite values beyond ±`limit` (NaN and inf are the callers' to judge), naming the first bad row.

    Parameters (radians, coefficients, metres) that large are garbage from a broken export, and in float32
    arithmetic they overflow into NaN far from where they entered.

    Raises:
        InputError: "<where> has values as large as 1e+30 (first in row 3); expected |value| ≤ 1e+04 ...".
    """
    import numpy as np  # only here: the option checks above stay pure Python

    a = np.asarray(arr)
    if a.size == 0 or not np.issubdtype(a.dtype, np.number):
        return
    big = np.abs(np.nan_to_num(a.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)) > limit
    if big.any():
        rows = big.reshape(len(a), -1).any(axis=1) if a.ndim > 1 else big
        peak = float(np.abs(a[big]).max())
        raise InputError(
            f"{where} has values as large as {peak:.3g} (first in row {int(np.argmax(rows))}); expected "
            f"|value| ≤ {limit:g}{' ' + unit if unit else ''}",
            hint="the file looks corrupted or in other units",
        )


def image_size(where: str, width: int, height: int, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse a picture larger than `limit` pixels before it is decoded (decompression bombs).

    Raises:
        InputError: width × height > limit, or a non-positive side.
    """
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: image has size {width}×{height}")
    if width * height > limit:
        raise InputError(
            f"{where}: image is {width}×{height} = {width * height / 1e6:.0f} megapixels; at most "
            f"{limit / 1e6:.0f} are read",
            hint="downscale the picture (keypoints scale with it)",
        )


def count(what: str, value: int, limit: int, *, hint: str | None = None) -> None:
    """Refuse more than `limit` items (frames of a motion, images of a call, ...).

    Raises:
        InputError: "WHAT: N items; at most LIMIT are supported".
    """
    if value > limit:
        raise InputError(f"{what}: {value} items; at most {limit} are supported in one run", hint=hint)


def frames(where: str, n_frames: int, *, bytes_per_frame: int = 0, available: int | None = None) -> None:
    """A motion of `n_frames` frames: at most MAX_FRAMES, and its estimated memory must fit.

    Raises:
        InputError: too many frames, or more memory than is available.
    """
    count(
        f"{where} has {n_frames} frames", n_frames, MAX_FRAMES, hint="split the sequence into shorter clips"
    )
    if bytes_per_frame:
        memory(
            f"{where}: {n_frames} frames",
            n_frames * bytes_per_frame,
            available,
            hint="split the sequence into shorter clips or use --temporal joints",
        )


def json_size(where: str, nbytes: int) -> None:
    """Refuse a JSON file of more than MAX_JSON_BYTES (check `stat().st_size` before reading it).

    Raises:
        InputError: the file is too large.
    """
    if nbytes > MAX_JSON_BYTES:
        raise InputError(
            f"{where}: JSON of {human_bytes(nbytes)} is larger than the {human_bytes(MAX_JSON_BYTES)} "
            "dposer reads"
        )


def load_json(text: str | bytes, where: str) -> Any:
    """Parse JSON with limits: at most MAX_JSON_BYTES, and nesting shallower than Python's recursion limit.

    Raises:
        InputError: too large, nested too deeply, or malformed (line and column named).
    """
    json_size(where, len(text))
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(
            f"{where}: JSON is nested too deeply (over {sys.getrecursionlimit()} levels)"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 text ({exc.reason})") from None


# ---------------------------------------------------------------------------------------------- paths
def output_folder(flag: str, path: Path) -> Path:
    """An output folder: may be missing (it is created) but must not be an existing file.

    Raises:
        InputError: the path is an existing file (or other non-folder).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is an existing file; give a folder for the outputs")
    return path


def output_file(flag: str, path: Path) -> Path:
    """An output file: may be missing or an existing file (replaced), but not an existing folder.

    Raises:
        InputError: the path is an existing folder.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is an existing folder; give a file path")
    return path


# ---------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Rule:
    """How one request field is checked: its flag and bounds (None: unbounded; None values are skipped)."""

    flag: str
    kind: str  # "int" | "float" | "seed"
    lo: int | float | None = None
    hi: int | float | None = None
    lo_open: bool = False
    what: str = "number"


# request field name → rule; a field is checked wherever it appears (generate, complete, ik, ...)
FIELDS: dict[str, Rule] = {
    "n": Rule("-n", "int", 1, MAX_COUNT),
    "hypo": Rule("--hypo", "int", 1, MAX_COUNT),
    "steps": Rule("--steps", "int", 1, MAX_STEPS),
    "seed": Rule("--seed", "seed"),
    "limit": Rule("--limit", "int", 1, MAX_COUNT),
    "batch_size": Rule("--batch-size", "int", 1, MAX_COUNT),
    "stride": Rule("--stride", "int", 1, MAX_COUNT),
    "gmm_components": Rule("--gmm-components", "int", 1, 100_000),
    "noise_std": Rule("--noise-std", "float", 0.0, None, what="number of metres"),
    "focal": Rule("--focal", "float", 0.0, None, lo_open=True, what="number of pixels"),
    "fps": Rule("--fps", "float", 0.0, MAX_FPS, lo_open=True, what="frame rate"),
    "t_end": Rule("t_end", "float", 0.0, 1.0, lo_open=True, what="diffusion time"),
}


def field(rule: Rule, value: Any) -> None:
    """Check one value against its rule (see FIELDS)."""
    if rule.kind == "seed":
        seed(value, rule.flag)
    elif rule.kind == "int":
        integer(
            rule.flag,
            value,
            lo=None if rule.lo is None else int(rule.lo),
            hi=None if rule.hi is None else int(rule.hi),
        )
    else:
        number(rule.flag, value, lo=rule.lo, hi=rule.hi, lo_open=rule.lo_open, what=rule.what)


def request(req: Any) -> None:
    """Check every known numeric field of a command's request dataclass (see FIELDS), then its memory.

    Called by the CLI runner before the service runs, so a bad value costs no model load and writes
    nothing. The memory estimate covers what is known before any file is read: the `n` (× `hypo`)
    poses of the request's part that the result alone holds (`DPoserPrior.sample` checks the
    sampler's peak once the network is known).

    Raises:
        InputError: the first field out of range, or a request that cannot fit in memory.
    """
    if not is_dataclass(req):
        return
    for f in fields(req):
        rule = FIELDS.get(f.name)
        value = getattr(req, f.name)
        if rule is not None and value is not None:
            field(rule, value)
    part = getattr(req, "part", None)
    n = getattr(req, "n", None)
    if isinstance(part, Part) and isinstance(n, int) and not isinstance(n, bool):
        hypo = getattr(req, "hypo", 1) or 1
        memory(
            f"{n * hypo} {part.value} poses",
            sample_bytes(n * hypo, dim=PARTS[part].dim, copies=1),
            hint="ask for fewer with -n",
        )
