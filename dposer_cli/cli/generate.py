"""`dposer generate`."""

from pathlib import Path
from typing import Annotated

import typer

from dposer_cli.cli._options import (
    BodyModelOpt,
    CheckpointOpt,
    DeviceOpt,
    ExportOpt,
    JsonOpt,
    NormalizerOpt,
    OutOpt,
    PartOpt,
    QuietOpt,
    RendererOpt,
    SeedOpt,
    ThreadsOpt,
    sampler_choice,
)
from dposer_cli.core.parts import Part


def command(
    part: PartOpt = Part.body,
    n: Annotated[int, typer.Option("-n", "--num", help="Number of poses to sample.")] = 10,
    out: OutOpt = Path("dposer_out"),
    sampler: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=sampler_choice,
            help=(
                "Sampler (default steps = network evaluations); quality measured on the demo body prior, 2000 samples "
                "vs 2000 real poses (sampler_study.json in bench/results/):\n\n"
                "dpm2m-sde   50  FID 0.14  prec 0.72  rec 0.70  default: SDE-DPM-Solver++(2M), EM-1000's quality\n\n"
                "dpm2m       25  FID 0.12  prec 0.63  rec 0.76  DPM-Solver++(2M) ODE: fastest, less plausible\n\n"
                "ddim        50  FID 0.21  prec 0.75  rec 0.66\n\n"
                "em        1000  FID 0.11  prec 0.73  rec 0.70  official Euler–Maruyama (20× the cost)"
            ),
        ),
    ] = "dpm2m-sde",
    steps: Annotated[
        int | None, typer.Option(help="Sampler steps (= network evaluations). Default per sampler.")
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    checkpoint: CheckpointOpt = None,
    normalizer: NormalizerOpt = None,
    no_render: Annotated[bool, typer.Option("--no-render", help="Skip the grid.png contact sheet.")] = False,
    grid: Annotated[
        int | None,
        typer.Option(
            "--grid",
            min=0,
            help="Poses drawn in grid.png, the first ones (default 64; whole body 16, with hand and "
            "face close-ups). The JSON's grid_count says how many were drawn.",
        ),
    ] = None,
    renderer: RendererOpt = "auto",
    body_model: BodyModelOpt = None,
    poses_json: Annotated[bool, typer.Option("--poses-json", help="Also write poses.json.")] = False,
    process_video: Annotated[
        bool,
        typer.Option(
            "--process-video",
            help="Also write DIR/process.mp4: the sampling process of the first 8 samples side "
            "by side, noisy state x_t over the denoised estimate x0, from pure noise to the result (at most 90 "
            "recorded steps whatever --steps, then a hold on the result; faces without FLAME as charts of their numbers).",
        ),
    ] = False,
    export: ExportOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample plausible poses from the prior, save them as DIR/poses.npz and render DIR/grid.png.

    Example: dposer generate --part hand -n 50 --out hands/

    Example: dposer generate --part body -n 6 --process-video --out process/
    """
    from dposer_cli.cli._console import emit, progress, run_staged
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import generate as svc

    configure_threads(threads, work_items=n)
    req = svc.GenerateRequest(
        part=part,
        n=n,
        out=out,
        sampler=sampler,
        steps=steps,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        normalizer=normalizer,
        render=not no_render,
        renderer=renderer,
        body_model=body_model,
        poses_json=poses_json,
        process_video=process_video,
        grid=grid,
        export=tuple(export or ()),
    )
    with progress("sampling", enabled=not (quiet or json_out)) as cb:
        result = run_staged(svc.run, req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)
