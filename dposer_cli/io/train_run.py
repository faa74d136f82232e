"""The files of a `dposer train` run folder besides its checkpoints: training data files, `log.jsonl`, the
folder lock and the temporary files a killed write leaves.

`log.jsonl` holds one JSON object per validation: {"step", "train_loss", "val_loss", "lr", "seconds"}; a
resumed run first drops the records written after the checkpoint it resumes (`trim_log`).
"""

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import atomic_write
from dposer_cli.io.poses import read_poses

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK = ".train.lock"
# temp files of core.paths.atomic_write and core.paths.ensure_out_dir's write probe
_TMP = re.compile(r"^\.((last|best|prior)\.pt\..+\.tmp|dposer-write-test-\d+)$")
_WHOLEBODY_PARTS = (Part.body, Part.hand, Part.face)  # part-only files whole-body training can use


def read_training_file(path: Path, part: Part, fps: float | None = None) -> tuple[Part, np.ndarray]:
    """The poses of one training file and the part they are of: `part`, or for whole-body (mixed training,
    spec §10.3) the first of body, hand, face the file holds.

    Raises:
        InputError: no poses of `part` (nor, for whole-body, of body, hand or face) in the file.
    """
    try:
        return part, read_poses(path, part, fps=fps).poses
    except InputError:
        if part is not Part.wholebody:
            raise
    for sub in _WHOLEBODY_PARTS:
        try:
            return sub, read_poses(path, sub, fps=fps).poses
        except InputError:
            continue
    raise InputError(f"{path}: no whole-body, body, hand or face poses found")


def append_record(logf: Path, record: Mapping[str, float]) -> None:
    """Append one record to `log.jsonl`."""
    with open(logf, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def trim_log(logf: Path, step: int) -> None:
    """Drop log.jsonl records written after step `step` (and a line cut by a kill)."""
    try:
        lines = logf.read_text().splitlines()
    except OSError:
        return
    keep = []
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if int(json.loads(line).get("step")) <= step:
                keep.append(line)
    if len(keep) != len(lines):
        with atomic_write(logf, "w") as fh:
            fh.write("".join(f"{line}\n" for line in keep))


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One training run per folder: an advisory lock on OUT/.train.lock (released by the OS if killed).

    Raises:
        InputError: another process holds the folder.
    """
    if fcntl is None:
        yield
        return
    with open(out / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise InputError(
                f"{out} is in use by another dposer train (pid {owner})",
                hint="wait for it to finish, or give this run another --out",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_orphans(out: Path) -> None:
    """Delete temporary checkpoint files left by a write that was killed (hold the folder lock)."""
    removed = [p for p in out.iterdir() if _TMP.match(p.name) and p.is_file()]
    for p in removed:
        with contextlib.suppress(OSError):
            p.unlink()
    if removed:
        log.info("removed %d temporary file(s) left in %s by a killed run", len(removed), out)
