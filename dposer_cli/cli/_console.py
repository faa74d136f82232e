"""stderr console, logging, progress adapter and the one owner of stdout (`emit`)."""

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dposer_cli import __version__
from dposer_cli.cli._staging import run_staged
from dposer_cli.core.result import Result

__all__ = ["StdoutClosed", "console", "emit", "progress", "run_staged", "setup_logging", "write_stdout"]

console = Console(stderr=True, highlight=False, soft_wrap=True)


def setup_logging(quiet: bool = False) -> None:
    """Route the `dposer_cli` logger to the stderr console."""
    logger = logging.getLogger("dposer_cli")
    logger.handlers.clear()
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class progress:
    """Context manager yielding a `(done, total)` callback that drives a transient Rich bar.

    Disabled (a no-op callback) with --quiet/--json or when stderr is not a terminal.
    """

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled and console.is_terminal
        self._progress: Progress | None = None
        self._task: int | None = None

    def __enter__(self) -> Callable[[int, int], None]:
        if not self.enabled:
            return lambda done, total: None
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=None)

        def update(done: int, total: int) -> None:
            assert self._progress is not None and self._task is not None
            self._progress.update(self._task, completed=done, total=total)

        return update

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()


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
