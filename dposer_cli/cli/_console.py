"""stderr console, logging, progress adapter and the one owner of stdout (`emit`)."""

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from dposer_cli import __version__
from dposer_cli.cli._staging import run_staged
from dposer_cli.core.result import Result

__all__ = [
    "StdoutClosed",
    "console",
    "emit",
    "progress",
    "progress_interval",
    "run_staged",
    "setup_logging",
    "write_stdout",
]

console = Console(stderr=True, highlight=False, soft_wrap=True)


PROGRESS_INTERVAL_S = 10.0  # seconds between progress log lines when no bar shows ($DPOSER_PROGRESS_INTERVAL)

log = logging.getLogger("dposer_cli.progress")


class _LineHandler(logging.Handler):
    """One line per record, never wrapped (stderr is a file or a pipe: CI logs, `nohup`, `2> file`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(
                f"{record.levelname:<8} {self.format(record)}", markup=False, highlight=False, soft_wrap=True
            )
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _ShownOnce(logging.Filter):
    """Drops an INFO record whose text this run already showed (a body model loaded twice says so once)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def setup_logging(quiet: bool = False) -> None:
    """Route the `dposer_cli` logger to the stderr console: Rich on a terminal, one plain line per record
    otherwise; repeated INFO messages are shown once."""
    logger = logging.getLogger("dposer_cli")
    logger.handlers.clear()
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    else:
        handler = _LineHandler()
    handler.addFilter(_ShownOnce())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def progress_interval(default: float = PROGRESS_INTERVAL_S) -> float:
    """Seconds between progress log lines: $DPOSER_PROGRESS_INTERVAL (0: every update), else `default`."""
    raw = os.environ.get("DPOSER_PROGRESS_INTERVAL", "")
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value >= 0 and value == value and value != float("inf") else default


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


class _ProgressLines:
    """`(done, total)` → an INFO line `label done/total (pct)  rate unit/s  ETA t` at most every `every`
    seconds (the format of `train`'s heartbeat), and a last line when the phase ends."""

    def __init__(self, label: str, unit: str, every: float) -> None:
        self.label, self.unit, self.every = label, unit, every
        self.t0 = self.last = time.monotonic()
        self.done0 = 0
        self.state: tuple[int, int] | None = None  # the latest (done, total)
        self.shown: tuple[int, int] | None = None  # the latest (done, total) logged

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.state is not None and done < self.state[0]:  # a new phase: its rate counts from here
            self.t0, self.done0 = now, done
        self.state = (done, total)
        if now - self.last < self.every:
            return
        self.last = now
        self._line(done, total, now)

    def _line(self, done: int, total: int, now: float, *, final: bool = False) -> None:
        self.shown = (done, total)
        rate = (done - self.done0) / max(now - self.t0, 1e-9)
        pct = f" ({100 * done // total}%)" if total > 0 else ""
        if final:
            tail = f"in {_duration(now - self.t0)}"
        else:
            eta = (total - done) / rate if rate > 0 else float("inf")
            tail = f"ETA {_duration(eta)}"
        log.info("%s %d/%d%s  %.1f %s/s  %s", self.label, done, total, pct, rate, self.unit, tail)

    def finish(self) -> None:
        """The last line, when a line was shown before and the latest state was not."""
        if self.shown is not None and self.state is not None and self.state != self.shown:
            self._line(*self.state, time.monotonic(), final=True)


class progress:
    """Context manager yielding a `(done, total)` callback.

    On a terminal (and without --quiet/--json: `enabled`) it drives a transient Rich bar; otherwise it
    logs a one-line progress report at most every `progress_interval()` seconds and a last line when the
    run ends (INFO: --quiet hides them). `lines=False` leaves the lines to the service (train's heartbeat).
    """

    def __init__(self, label: str, *, enabled: bool = True, unit: str = "steps", lines: bool = True) -> None:
        self.label = label
        self.enabled = enabled and console.is_terminal  # a bar shows
        self.unit = unit
        self.lines = lines
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lines: _ProgressLines | None = None

    def __enter__(self) -> Callable[[int, int], None]:
        if not self.enabled:
            if not self.lines:
                return lambda done, total: None
            self._lines = _ProgressLines(self.label, self.unit, progress_interval())
            return self._lines
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=None)

        def update(done: int, total: int) -> None:
            assert self._progress is not None and self._task is not None
            self._progress.update(self._task, completed=done, total=total)

        return update

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._lines is not None and exc_type is None:
            self._lines.finish()


class StdoutClosed(Exception):
    """stdout is closed (`>&-`) or its reader is gone (broken pipe); `cli.app.main` exits 1 without a traceback."""


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so Python's final flush of a broken stdout raises nothing at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)  # gets fd 1 itself when fd 1 is closed
        if devnull != 1:
            os.dup2(devnull, 1)
            os.close(devnull)
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit


def write_stdout(text: str) -> None:
    """The only writer of stdout: `text`, flushed.

    Raises:
        StdoutClosed: stdout is closed or its reader went away.
    """
    try:
        if sys.stdout is None:
            raise OSError("stdout is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as exc:  # BrokenPipeError, EBADF, "I/O operation on closed file"
        silence_stdout()
        raise StdoutClosed(str(exc)) from None


def emit(result: Result, *, as_json: bool, quiet: bool = False) -> None:
    """JSON summary → stdout (with --json); human summary → stderr."""
    from dposer_cli.io.report import dumps, result_dict

    if as_json:
        write_stdout(dumps(result_dict(result, __version__)) + "\n")
        return
    if quiet:
        return
    for line in result.lines:
        console.print(line)
    for name, path in result.outputs.items():
        shown = ", ".join(str(p) for p in path) if isinstance(path, list) else str(path)
        console.print(f"[green]wrote[/green] {name}: {shown}")
    if result.metrics:
        for key, value in result.metrics.items():
            console.print(f"  {key} = {value:.4f}" if isinstance(value, float) else f"  {key} = {value}")
    console.print(f"done in {result.seconds:.2f} s")
