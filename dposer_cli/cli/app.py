"""Root Typer app (all Typer settings live here) and `main()`: the one error → exit-code map."""

import contextlib
import importlib
import os
import sys
from typing import NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from dposer_cli import __version__
from dposer_cli.core.errors import DposerError, ExitCode

# command name -> module exposing `command` (a plain function with Typer annotations).
# A command is listed here only once it works end to end.
COMMANDS: dict[str, str] = {
    "generate": "dposer_cli.cli.generate",
    "train": "dposer_cli.cli.train",
    "download": "dposer_cli.cli.download",
    "complete": "dposer_cli.cli.complete",
    "denoise-motion": "dposer_cli.cli.denoise_motion",
    "ik": "dposer_cli.cli.ik",
    "fit-image": "dposer_cli.cli.fit_image",
    "benchmark": "dposer_cli.cli.benchmark",
}


def _version(value: bool) -> bool:
    if value:
        typer.echo(f"dposer {__version__}")
        raise typer.Exit()
    return value  # Typer passes a callback's return value on as the parameter


class _Flagless:
    """Help without a `<bool>` type beside on/off flags (they take no value)."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                param.metavar = ""
        return params


class _Command(_Flagless, TyperCommand):
    pass


class _Group(_Flagless, TyperGroup):
    pass


def make_app() -> typer.Typer:
    app = typer.Typer(
        cls=_Group,
        name="dposer",
        help="DPoser-X diffusion pose prior: sample, complete, denoise, fit and benchmark human poses.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Show the version."
        ),
    ) -> None:
        """DPoser-X pose prior toolkit. Run `dposer COMMAND --help` for details."""

    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        app.command(name=name, help=mod.command.__doc__, cls=_Command)(mod.command)
    return app


def _command_name(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "dposer")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 on success, else one `error:` line and the code of README's table.

    SIGINT exits 130 and SIGTERM 143, both through the same clean path (staged outputs are removed);
    a closed or broken stdout ends the run like a broken pipe (exit 1, no traceback).
    """
    from dposer_cli.cli import _staging

    _staging.received.clear()
    _staging.discarded.clear()
    restore = _staging.install_signal_handlers()
    try:
        _run(argv)
    finally:
        restore()


def _run(argv: list[str] | None) -> None:
    from dposer_cli.cli._console import StdoutClosed, console, setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    command = _command_name(args)
    try:
        setup_logging(quiet="--quiet" in args or "-q" in args)
        app = make_app()
        rv = app(args=args, prog_name="dposer", standalone_mode=False)
        if rv == 130:  # Typer turns KeyboardInterrupt into a *returned* 130 when not standalone
            _interrupted(console, command, as_json)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            sys.exit(rv)
    except StdoutClosed as exc:
        _stdout_closed(console, exc)
    except DposerError as exc:
        _fail(console, command, exc.message, exc.hint, int(exc.exit_code), as_json)
    except KeyboardInterrupt:
        _interrupted(console, command, as_json)
    except RecursionError as exc:
        _fail(
            console,
            command,
            f"input nested too deeply to process ({exc})",
            None,
            int(ExitCode.INPUT),
            as_json,
        )
    except MemoryError:
        _fail(
            console,
            command,
            "out of memory",
            "ask for fewer samples (-n / --hypo) or a shorter input",
            int(ExitCode.INPUT),
            as_json,
        )
    except Exception as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # Click turns Ctrl-C into Abort
            _interrupted(console, command, as_json)
        if isinstance(exc, BrokenPipeError):
            _stdout_closed(console, exc)
        if _out_of_memory(exc):  # torch's allocator: a request too large for this machine (exit 1, not 70)
            first = str(exc).splitlines()[0][:300]
            _fail(
                console,
                command,
                f"out of memory: {first}",
                "ask for fewer samples (-n / --hypo), fewer --steps or a shorter input",
                int(ExitCode.INPUT),
                as_json,
            )
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if show is None or code is None:  # not a Typer/Click usage error (exit 2)
            _internal(console, args, exc, as_json)
        if hasattr(exc, "format_message") and type(exc).__name__ != "NoArgsIsHelpError":
            # a usage error (exit 2): one line as ours, not Click's "Usage / Try / Error" block
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            ctx = getattr(exc, "ctx", None)
            hint = getattr(exc, "hint", None) or f"see '{getattr(ctx, 'command_path', None) or 'dposer'} -h'"
            _fail(console, command, message, hint, int(code), as_json)
        show()  # `dposer` alone: the help
        sys.exit(int(code))
    sys.exit(0)


def _interrupted(console, command: str, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Exit 130 (SIGINT / Ctrl-C) or 143 (SIGTERM); staged outputs were already removed on the way up."""
    import signal

    from dposer_cli.cli import _staging

    note = f"; nothing was written to {_staging.discarded[-1]}" if _staging.discarded else ""
    if _staging.received and _staging.received[-1] == signal.SIGTERM:
        _fail(console, command, f"terminated (SIGTERM){note}", None, int(ExitCode.TERMINATED), as_json)
    _fail(console, command, f"interrupted{note}", None, int(ExitCode.INTERRUPTED), as_json)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        k in text
        for k in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")
    )


def _stdout_closed(console, exc: BaseException) -> None:  # type: ignore[no-untyped-def]
    """stdout is closed (`>&-`) or its reader went away (`| head`): no traceback, exit 1 like a broken pipe."""
    from dposer_cli.cli._console import silence_stdout

    silence_stdout()
    with contextlib.suppress(Exception):
        console.print(
            "[red]error:[/red] stdout is closed; the --json summary was not written",
            markup=True,
            highlight=False,
        )
    sys.exit(int(ExitCode.INPUT))


def _internal(console, args: list[str], exc: BaseException, as_json: bool) -> NoReturn:  # type: ignore[no-untyped-def]
    """Last resort: one line, exit 70; DPOSER_DEBUG=1 re-raises for the traceback."""
    if os.environ.get("DPOSER_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    msg = f"internal error: {type(exc).__name__}: {first}; set DPOSER_DEBUG=1 for the traceback"
    _fail(console, _command_name(args), msg, None, int(ExitCode.INTERNAL), as_json)


def _fail(console, command: str, message: str, hint: str | None, code: int, as_json: bool) -> NoReturn:  # type: ignore[no-untyped-def]
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    if hint:
        console.print(f"hint: {hint}", markup=False)
    if as_json:
        _json_error(command, message, hint, code)
    sys.exit(code)


def _json_error(command: str, message: str, hint: str | None, code: int) -> None:
    from dposer_cli.cli._console import StdoutClosed, write_stdout
    from dposer_cli.io.report import dumps, error_dict

    with contextlib.suppress(StdoutClosed):  # the error line on stderr is what matters then
        write_stdout(dumps(error_dict(command, message, hint, code, __version__)) + "\n")
