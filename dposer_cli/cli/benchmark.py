"""`dposer benchmark`."""

from pathlib import Path
from typing import Annotated

import typer

from dposer_cli.cli._options import (
    BodyModelOpt,
    CheckpointOpt,
    DeviceOpt,
    JsonOpt,
    NormalizerOpt,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
    choice,
    sampler_choice,
)
from dposer_cli.core.parts import BENCHMARK_NAMES, PRIOR_KINDS, Part


def _names(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for raw in values or [] for v in raw.split(",") if v.strip())


def command(
    name: Annotated[
        str,
        typer.Argument(
            help=f"Evaluation: {', '.join(BENCHMARK_NAMES)}.",
            callback=choice(BENCHMARK_NAMES, what="benchmark", param="NAME"),
            metavar="NAME",
            show_default=False,
        ),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Dataset folder in its published layout (EHF, FreiHAND, ARCTIC, AMASS-style npz tree).",
        ),
    ] = None,
    part: Annotated[
        Part | None,
        typer.Option(
            "--part",
            "-p",
            metavar="PART",
            help="Prior part (generation: body, hand, face, face-shape, wholebody). Default per evaluation.",
            show_default=False,
        ),
    ] = None,
    prior: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=choice(PRIOR_KINDS, what="--prior", param="--prior"),
            help="Prior under test: dposer, or a baseline: none, l2, gmm (fitted on "
            "--train-poses), vposer (body; its V02_05 weights via --checkpoint).",
        ),
    ] = "dposer",
    checkpoint: CheckpointOpt = None,
    normalizer: NormalizerOpt = None,
    body_model: BodyModelOpt = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N dataset items.")] = None,
    n: Annotated[
        int | None, typer.Option("-n", "--num", help="Samples to draw (generation: default 50000).")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Reference poses .npz: FID, precision/recall/density/coverage and dNN against them."
        ),
    ] = None,
    statistics: Annotated[
        Path | None,
        typer.Option(help="FID statistics .npz (mu, sigma). Default: the official ones when downloaded."),
    ] = None,
    train_poses: Annotated[
        Path | None,
        typer.Option(
            "--train-poses", help="Poses the gmm baseline is fitted on (default: the shared reference set)."
        ),
    ] = None,
    gmm_components: Annotated[int, typer.Option("--gmm-components", help="GMM components.")] = 8,
    sampler: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=sampler_choice,
            help="Generation sampler: dpm2m-sde (default, 50 steps), dpm2m, ddim or em "
            "(official Euler–Maruyama, 1000 steps).",
        ),
    ] = "dpm2m-sde",
    steps: Annotated[
        int | None, typer.Option(help="Sampler / optimisation steps (default: each task's official count).")
    ] = None,
    hypo: Annotated[int, typer.Option("--hypo", "-H", help="Hypotheses per input (completion).")] = 10,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--setting",
            "-s",
            metavar="NAME[,NAME]",
            help="Evaluation settings (masks, noise levels, IK types, speed tasks); default: the paper's.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Items per batch (the unit dealt to torchrun processes)."),
    ] = None,
    stride: Annotated[int, typer.Option(help="Keep every k-th frame of AMASS sequences.")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="speed: tiny sizes (smoke test).")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report JSON path [default: dposer_out/benchmark-NAME.json]."),
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run one of the paper's evaluations (or the speed harness) and write a JSON report.

    Under `torchrun --nproc-per-node G -m dposer_cli benchmark ...` the dataset is sharded over G processes.

    Example: dposer benchmark generation --reference poses.npz --statistics statistics.npz -n 5000
    """
    from dposer_cli.cli._console import console, emit, progress, run_staged
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import benchmark as svc

    configure_threads(threads, work_items=None)
    req = svc.BenchmarkRequest(
        name=name,
        data_dir=data_dir,
        part=part,
        prior=prior,
        checkpoint=checkpoint,
        normalizer=normalizer,
        body_model=body_model,
        limit=limit,
        n=n,
        reference=reference,
        statistics=statistics,
        train_poses=train_poses,
        gmm_components=gmm_components,
        sampler=sampler,
        steps=steps,
        hypo=hypo,
        settings=_names(setting),
        batch_size=batch_size,
        stride=stride,
        quick=quick,
        out=out,
        device=device,
        seed=seed,
    )
    with progress(f"benchmark {name}", enabled=not (quiet or json_out), unit="batches") as cb:
        result = run_staged(svc.run, req, progress=cb, output_file=svc.report_path(req))
    if result.info.get("rank", 0) != 0:  # torchrun: only rank 0 reports
        return
    if not (json_out or quiet):
        _table(console, result)
    emit(result, as_json=json_out, quiet=True)
    if not (json_out or quiet):
        for line in result.lines:
            console.print(line)
        console.print(f"[green]wrote[/green] report: {result.outputs['report']}")
        console.print(f"done in {result.seconds:.2f} s")


def _table(console, result) -> None:  # type: ignore[no-untyped-def]
    """The rows as a table: the body model each value was computed on, and why a paper value is withheld
    (numbered notes under the table)."""
    from rich.table import Table

    info = result.info
    table = Table(
        title=f"benchmark {info['benchmark']} — {info['part']}, prior {info['prior']} "
        f"({info['items']} items, {info['device']})",
        title_justify="left",
    )
    for col, justify in (
        ("setting", "left"),
        ("metric", "left"),
        ("ours", "right"),
        ("body", "left"),
        (f"paper: {info['paper_row']}", "right"),
        ("table", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    notes: list[str] = []
    for row in info["rows"]:
        paper = "—" if row["paper"] is None else f"{row['paper']:.4g}"
        note = row.get("paper_note")
        if note:
            if note not in notes:
                notes.append(note)
            paper = f"n/c ({notes.index(note) + 1})"
        table.add_row(
            row["setting"],
            row["metric"],
            f"{row['value']:.4g}",
            row.get("body_model") or "—",
            paper,
            (row["table"] or "").split(" (")[0],
        )
    console.print(table)
    for k, note in enumerate(notes, 1):
        console.print(f"({k}) {note}", markup=False)
