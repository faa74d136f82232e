"""`dposer download`."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dposer_cli.cli._options import JsonOpt, QuietOpt
from dposer_cli.core.parts import Part

# the part names plus "all"; built from Part so a new part is offered without touching this file
Target = Enum("PART", {**{p.name: p.value for p in Part}, "all": "all"}, type=str)  # type: ignore[misc]


def command(
    parts: Annotated[
        list[Target] | None,  # type: ignore[valid-type]
        typer.Argument(
            help="Priors to fetch: body, hand, face (also fetches face-shape), face-shape, wholebody "
            "or all. Default: all.",
            metavar="PART",
            show_choices=False,  # listed in the help text
            show_default=False,
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="Models folder (files go to DIR/official/). Default: $DPOSER_MODELS_DIR, "
            "the checkout's models_cache/, else ~/.cache/dposer.",
        ),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            help="Hub revision of Moon-bow/DPoser-X: branch, tag or 40-hex commit (pass a "
            "commit for reproducible installs). Default: dposer's pinned revision.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch again even when the files are present.")
    ] = False,
    list_: Annotated[
        bool,
        typer.Option(
            "--list",
            help="Print (stdout) what is installed per part and which prior each "
            "command uses; fetches nothing.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Like --list, and also load every installed file to verify it. Exits 1 when an installed "
            "file is invalid or a part has no usable prior (e.g. an official checkpoint without its "
            "normaliser); files not downloaded are not an error (the demo prior is used). --json lists "
            "them under `invalid` and `unusable`.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download the official DPoser-X weights and normaliser statistics into the models folder.

    Respects HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE; DPOSER_NORMALIZER_URL overrides where the
    normalisers come from. A second run with everything present does nothing.

    Example: dposer download body hand   |   dposer download --list
    """
    from dposer_cli.cli._console import emit, progress
    from dposer_cli.services import download as svc

    names = tuple(t.value for t in parts or ())
    if list_ or check:
        if force or revision:
            raise typer.BadParameter("--force/--revision cannot be combined with --list/--check")
        result = svc.inventory(names, models_dir, check=check)
        if not json_out:
            _print_table(result.info)
        emit(result, as_json=json_out, quiet=quiet)
        if result.status != "ok":  # --check found an invalid file or an unusable part
            raise typer.Exit(code=1)
        return
    req = svc.DownloadRequest(
        parts=names or (svc.ALL,), models_dir=models_dir, revision=revision, force=force
    )
    with progress("downloading", enabled=not (quiet or json_out), unit="bytes") as cb:
        result = svc.run(req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)


def _print_table(info: dict[str, Any]) -> None:
    """The inventory table on stdout (it is what --list asks for; notes and hints stay on stderr)."""
    import io
    import shutil
    import sys

    from rich.console import Console
    from rich.table import Table

    from dposer_cli.cli._console import write_stdout

    root = Path(info["models_dir"])

    def state(item: dict[str, Any]) -> str:
        if not item["present"]:
            return "[red]missing[/red]"
        return "[red]invalid[/red]" if item.get("valid") is False else "[green]ok[/green]"

    table = Table()
    for col in ("part", "official", "normaliser", "demo", "uses", "body model"):
        table.add_column(col, no_wrap=True)
    bodies = info["body_models"]
    for part, e in info["parts"].items():
        norms = e["normalizers"]
        missing = [n for n in norms if not n["present"]]
        bad = [n for n in norms if n.get("valid") is False]
        norm = "[red]invalid[/red]" if bad else "[red]missing[/red]" if missing else "[green]ok[/green]"
        demo = state(e["demo_prior"])
        use = (
            e["prior"] if e["usable"] else "[red]none[/red]" if e["prior"] == "none" else "[red]broken[/red]"
        )
        kind = e["body_model"]
        body = f"[green]{kind} ok[/green]" if bodies[kind]["present"] else f"[yellow]{kind} missing[/yellow]"
        table.add_row(part, state(e["official_checkpoint"]), norm, demo, use, body)
    tty = sys.stdout is not None and sys.stdout.isatty()
    buf = io.StringIO()
    width = shutil.get_terminal_size().columns if tty else 200  # a pipe or file: no wrapping
    Console(file=buf, width=width, force_terminal=tty, no_color=not tty, highlight=False).print(table)
    lines = [f"official files under {root / 'official'}", *buf.getvalue().splitlines()]  # a title never wraps
    write_stdout("".join(line.rstrip() + "\n" for line in lines))
