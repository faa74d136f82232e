"""Nothing partial: every command that writes outputs runs through `run_staged`.

    result = run_staged(svc.run, req, progress=cb)                        # --out is a folder
    result = run_staged(svc.run, req, progress=cb, output_file=svc.report_path(req))   # benchmark

1. The request's numbers are checked (`core.validate.request`) and its output path is checked for
   the right kind (an existing file given as a folder is refused) before anything is written.
2. The service runs with `req.out` replaced by a fresh staging folder next to the final one,
   `.<name>.partial-<pid>`; orphans of killed runs (their pid is dead) are removed first.
3. On any failure — exception, Ctrl-C (SIGINT) or SIGTERM — the staging folder (and any parent
   folders this run created) is deleted, so the final folder is exactly as before.
4. On success the files are moved into the final folder with signals deferred: first the files
   the same command wrote on its previous run into that folder (listed in `.dposer-run.json`;
   files dposer did not write and this run's inputs are never touched) are removed, then the new
   files replace same-named ones, then the manifest is updated. JSON outputs that mention the
   staging path are rewritten to the final path, and `Result.outputs` / `lines` / `info` are
   remapped the same way.

`install_signal_handlers()` (called by `cli.app.main`) turns SIGTERM into `core.errors.Terminated`
(a KeyboardInterrupt) so every Ctrl-C cleanup path runs for it too, and defers both signals while a
commit or a cleanup is in progress.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError, Terminated
from dposer_cli.core.result import Result

MANIFEST = ".dposer-run.json"
MANIFEST_FORMAT = "dposer-run/1"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")

# signal state shared with the handler: while `_deferring` > 0 a signal is only recorded
_deferring = 0
_pending: list[int] = []
received: list[int] = []  # signals that interrupted this process (cli.app.main picks the exit code)
discarded: list[Path] = []  # final output paths whose staged run was discarded (cli.app.main says so)


# ------------------------------------------------------------------------------------------------- signals
def _on_signal(signum: int, frame: Any) -> None:
    if _deferring:
        _pending.append(signum)
        return
    received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_signal_handlers() -> Callable[[], None]:
    """Route SIGINT and SIGTERM through `_on_signal`; returns a function restoring the previous handlers.

    Does nothing (and returns a no-op) outside the main thread, where Python cannot set handlers.
    """
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread / not allowed here
            pass

    def restore() -> None:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)

    return restore


@contextlib.contextmanager
def deferred_signals(*, swallow: bool) -> Iterator[None]:
    """Record SIGINT/SIGTERM instead of raising inside the block (moving files, deleting a staging folder).

    After the block a recorded signal is re-raised (`swallow=False`) or dropped (`swallow=True`: the
    commit finished, the run is complete, exiting 0 is the truthful answer).
    """
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            signum = _pending[-1]
            _pending.clear()
            if not swallow:
                received.append(signum)
                raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


# ------------------------------------------------------------------------------------------------- runner
def run_staged(
    run: Callable[..., Result],
    req: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
    output_file: Path | None = None,
    field: str | None = None,
) -> Result:
    """Run `run(req, progress=progress)` with its outputs staged and committed all at once (see module doc).

    Args:
        run: the service's `run`.
        req: its request dataclass; `field` (default: `out`, else `out_dir`) names the output folder.
        output_file: the command writes one named file (and siblings named after it) rather than a
            folder: the benchmark report. Its folder is shared with other files, so no manifest is kept.

    Raises:
        InputError: a bad number in the request, or an output path of the wrong kind.
    """
    validate.request(req)
    name = field or ("out" if hasattr(req, "out") else "out_dir")
    if output_file is not None:
        final = validate.output_file("--out", Path(output_file))
        final_dir = final.parent
    else:
        final = final_dir = validate.output_folder("--out", Path(getattr(req, name)))
    stage = Staging(final_dir, file_name=final.name if output_file is not None else None)
    try:
        stage.open()
        staged_out = stage.path / final.name if output_file is not None else stage.path
        result = run(dataclasses.replace(req, **{name: staged_out}), progress=progress)
        with deferred_signals(swallow=True):
            stage.commit(command=result.command, inputs=_input_paths(req, name))
    except BaseException:
        discarded.append(final)
        with deferred_signals(swallow=False):
            stage.discard()
        raise
    return _remap(result, stage.path, final_dir)


class Staging:
    """A `.<name>.partial-<pid>` folder beside `final` whose files move into `final` on `commit()`."""

    def __init__(self, final: Path, *, file_name: str | None = None) -> None:
        self.final = Path(final)
        self.file_name = file_name  # the benchmark report: no manifest in a shared folder
        absolute = Path(os.path.abspath(self.final))
        self.label = absolute.name or "out"
        self.path = absolute.parent / f".{self.label}.partial-{os.getpid()}"
        self._created: list[Path] = []  # folders this run created (removed again on failure)

    def open(self) -> None:
        parent = self.path.parent
        missing = []
        for folder in (parent, *parent.parents):
            if folder.exists():
                break
            missing.append(folder)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._created = missing
            remove_orphans(parent, self.label)
            if self.path.exists():  # a previous process with our pid (pids are reused)
                shutil.rmtree(self.path)
            self.path.mkdir()
        except OSError as exc:
            self._remove_created()
            raise InputError(f"cannot write to output folder {self.final}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()

    def commit(self, *, command: str, inputs: set[Path]) -> list[str]:
        """Move the staged files into the final folder; returns their paths relative to it."""
        new = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if not p.is_dir())
        _rewrite_json(self.path, str(self.path), str(self.final))
        try:
            self.final.mkdir(parents=True, exist_ok=True)
            if self.file_name is None:
                manifest = _read_manifest(self.final)
                _remove_previous(self.final, manifest.get(command, []), keep=set(new), inputs=inputs)
            for rel in new:
                target = self.final / rel
                if target.is_dir() and not target.is_symlink():
                    raise InputError(f"cannot write {target}: a folder of that name is in the way")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path / rel, target)
            if self.file_name is None:
                manifest[command] = new
                _write_manifest(self.final, manifest)
        except OSError as exc:
            raise InputError(f"cannot move the outputs into {self.final}: {exc.strerror or exc}") from None
        shutil.rmtree(self.path, ignore_errors=True)
        return new


def remove_orphans(parent: Path, label: str | None = None) -> list[Path]:
    """Delete `.<label>.partial-<pid>` folders in `parent` whose process is gone (killed runs)."""
    removed: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _PARTIAL.match(entry.name)
        if not m or (label is not None and m["name"] != label) or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or not a pid at all: leave it alone
    return True


# ------------------------------------------------------------------------------------------------ manifest
def _read_manifest(folder: Path) -> dict[str, list[str]]:
    """{command: [relative file, ...]} of the previous runs in `folder`; unreadable manifests count as empty."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    runs = data.get("runs") if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
    if not isinstance(runs, dict):
        return {}
    return {str(k): [str(f) for f in v if isinstance(f, str)] for k, v in runs.items() if isinstance(v, list)}


def _write_manifest(folder: Path, runs: dict[str, list[str]]) -> None:
    from dposer_cli import __version__
    from dposer_cli.core.paths import atomic_write

    with atomic_write(folder / MANIFEST, "w") as fh:
        json.dump({"format": MANIFEST_FORMAT, "version": __version__, "runs": runs}, fh, indent=1)
        fh.write("\n")


def _remove_previous(folder: Path, files: list[str], *, keep: set[str], inputs: set[Path]) -> None:
    """Delete the files a previous run of the same command wrote (and the folders that leaves empty)."""
    root = Path(os.path.abspath(folder))
    emptied: set[Path] = set()
    for rel in files:
        if rel in keep or rel.startswith("/") or ".." in Path(rel).parts or rel == MANIFEST:
            continue
        target = root / rel
        if target in inputs or target.is_dir() and not target.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            emptied.update(p for p in target.parents if root in p.parents)
    for sub in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only succeeds when empty


def _input_paths(req: Any, out_field: str) -> set[Path]:
    """Absolute paths of the request's inputs (Path fields and tuples of them), never deleted as stale."""
    found: set[Path] = set()
    for f in dataclasses.fields(req):
        if f.name == out_field:
            continue
        value = getattr(req, f.name)
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, Path):
                found.add(Path(os.path.abspath(v)))
    return found


# ------------------------------------------------------------------------------------------------- remap
def _rewrite_json(folder: Path, old: str, new: str) -> None:
    """Staged `.json` outputs that name the staging folder (e.g. a report's `outputs`) name the final one."""
    for path in folder.rglob("*.json"):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        olds, news = json.dumps(old)[1:-1], json.dumps(new)[1:-1]
        if olds in text:
            path.write_text(text.replace(olds, news), encoding="utf-8")


def _remap(result: Result, staging: Path, final: Path) -> Result:
    """`Result` with every path (and every string naming one) under `staging` moved to `final`."""
    old = str(staging)

    def path(p: Path) -> Path:
        absolute = Path(os.path.abspath(p))
        if absolute == staging or staging in absolute.parents:
            return final / absolute.relative_to(staging)
        return p

    def value(v: Any) -> Any:
        if isinstance(v, Path):
            return path(v)
        if isinstance(v, str):
            return v.replace(old, str(final))
        if isinstance(v, list | tuple):
            return type(v)(value(x) for x in v)
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        return v

    return dataclasses.replace(
        result, outputs=value(result.outputs), info=value(result.info), lines=value(result.lines)
    )
