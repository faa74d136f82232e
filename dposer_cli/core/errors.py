"""One exception hierarchy; `cli.app.main()` is the only place that turns it into an exit code."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (documented in README)."""

    OK = 0
    INPUT = 1  # bad or missing user file, malformed JSON, wrong shape, NaN, unknown mask
    USAGE = 2  # Typer's own usage errors (unknown option / choice)
    MISSING_ASSET = 3  # weights / body model / normaliser not found
    ASSET_MISMATCH = 4  # checkpoint or model file of the wrong part / format / keys
    UNAVAILABLE = 5  # --device cuda without CUDA, renderer without a backend, network down
    INTERRUPTED = 130  # Ctrl-C / SIGINT (train flushes a checkpoint first)
    TERMINATED = 143  # SIGTERM (same clean path as Ctrl-C)
    INTERNAL = 70  # anything unexpected


class DposerError(Exception):
    """Base class: a one-line message plus an optional hint on how to fix it."""

    exit_code: ExitCode = ExitCode.INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(DposerError):
    """A user-supplied file or value is missing, malformed or out of range."""

    exit_code = ExitCode.INPUT


class MissingAssetError(DposerError):
    """Weights, normaliser or body model not found; the message lists every place searched."""

    exit_code = ExitCode.MISSING_ASSET


class AssetMismatchError(DposerError):
    """A checkpoint or model file exists but is for another part or has the wrong format."""

    exit_code = ExitCode.ASSET_MISMATCH


class UnsafeFileError(AssetMismatchError):
    """A file holds pickled Python objects or references to code; refused before anything in it runs."""


class UnavailableError(DposerError):
    """A requested device, backend or remote service is not available here."""

    exit_code = ExitCode.UNAVAILABLE


def suggest(name: str, choices: "list[str] | tuple[str, ...]") -> str:
    """Return ' (did you mean X?)' for the closest valid choice, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Interrupted(DposerError):
    """The user interrupted a long run (state was saved first where possible)."""

    exit_code = ExitCode.INTERRUPTED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the handler `cli.app.main()` installs: every Ctrl-C path (cleanup, checkpoint
    flush, staging removal) runs for it too; the exit code is `ExitCode.TERMINATED`."""
