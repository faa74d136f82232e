"""Root Typer app (all Typer settings live here) and `main()`: the one error → exit-code map."""

import importlib
import os
import sys

import typer

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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dposer {__version__}")
        raise typer.Exit()


def make_app() -> typer.Typer:
    app = typer.Typer(
        name="dposer",
        help="DPoser-X diffusion pose prior: sample, complete, denoise, fit and benchmark human poses.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    ) -> None:
        """DPoser-X pose prior toolkit. Run `dposer COMMAND --help` for details."""

    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        app.command(name=name, help=mod.command.__doc__)(mod.command)
    return app


def _command_name(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "dposer")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from dposer_cli.cli._console import console, setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    setup_logging(quiet="--quiet" in args or "-q" in args)
    app = make_app()
    try:
        app(args=args, prog_name="dposer", standalone_mode=False)
    except DposerError as exc:
        _fail(console, _command_name(args), exc.message, exc.hint, int(exc.exit_code), as_json)
    except Exception as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # Click turns Ctrl-C into Abort
            _fail(console, _command_name(args), "interrupted", None, int(ExitCode.INTERRUPTED), as_json)
        if not (hasattr(exc, "show") and hasattr(exc, "exit_code")):  # Typer/Click usage errors (exit 2)
            _internal(console, args, exc, as_json)
        exc.show()
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        _fail(console, _command_name(args), "interrupted", None, int(ExitCode.INTERRUPTED), as_json)
    sys.exit(0)


def _internal(console, args: list[str], exc: BaseException, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Last resort: one line, exit 70; DPOSER_DEBUG=1 re-raises for the traceback."""
    if os.environ.get("DPOSER_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    msg = f"internal error: {type(exc).__name__}: {first}; set DPOSER_DEBUG=1 for the traceback"
    _fail(console, _command_name(args), msg, None, int(ExitCode.INTERNAL), as_json)


def _fail(console, command: str, message: str, hint: str | None, code: int, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    from dposer_cli.io.report import dumps, error_dict

    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    if hint:
        console.print(f"hint: {hint}", markup=False)
    if as_json:
        sys.stdout.write(dumps(error_dict(command, message, hint, code, __version__)) + "\n")
    sys.exit(code)
