"""`dposer complete`."""

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
    check_masks,
    choice,
    mask_help,
)
from dposer_cli.core.parts import COMPLETE_MODES, Part


def _names(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for raw in values or [] for v in raw.split(",") if v.strip())


def _ints(values: list[str] | None) -> tuple[int, ...]:
    out = []
    for v in _names(values):
        try:
            out.append(int(v))
        except ValueError:
            raise typer.BadParameter(
                f"{v!r} is not a joint index (expected integers like 0,3,6)", param_hint="--mask-joints"
            ) from None
    return tuple(out)


def command(
    input: Annotated[
        Path,
        typer.Argument(
            help="Poses .npz (ours, AMASS `poses`, or official `pose_body`); NaN "
            "entries mark missing values when no mask is given.",
            metavar="INPUT.npz",
            show_default=False,
        ),
    ],
    part: PartOpt = Part.body,
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask",
            "-m",
            metavar="NAME[,NAME]",
            help=f"Mask groups to complete, comma-separated or repeated. {mask_help()}.",
        ),
    ] = None,
    mask_joints: Annotated[
        list[str] | None,
        typer.Option(
            "--mask-joints",
            metavar="J[,J]",
            help="Joint indices into the part's joint list (3 dims each), e.g. 0,3,6.",
        ),
    ] = None,
    hypo: Annotated[
        int, typer.Option("--hypo", "-H", help="Hypotheses per input; output is (N, H, D) when H > 1.")
    ] = 1,
    mode: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=choice(COMPLETE_MODES, what="--mode", param="--mode"),
            help="dposer (prior-as-loss optimisation, 200 steps), scoresde (inpainting by replacement, 1000 steps), "
            "dps or mcg (guided inpainting, 1000 steps).",
        ),
    ] = "dposer",
    steps: Annotated[
        int | None,
        typer.Option(
            help="Optimisation / sampler steps (= network evaluations). "
            "Default: 200 for dposer, 1000 otherwise."
        ),
    ] = None,
    out: OutOpt = Path("dposer_out"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    checkpoint: CheckpointOpt = None,
    normalizer: NormalizerOpt = None,
    render: Annotated[
        bool, typer.Option("--render", help="Also draw DIR/completed.png (all hypotheses).")
    ] = False,
    renderer: RendererOpt = "auto",
    body_model: BodyModelOpt = None,
    export: ExportOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Complete masked joints with the prior (H hypotheses each) and save DIR/completed.npz.

    A named mask on a complete input makes it its own ground truth: MPJPE (mm) and APD (cm) are reported.

    Example: dposer complete poses.npz --mask legs --hypo 10 --out completed/
    """
    check_masks(part, _names(mask), param="--mask")
    from dposer_cli.cli._console import emit, progress, run_staged
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import complete as svc

    configure_threads(threads, work_items=None)
    req = svc.CompleteRequest(
        input=input,
        part=part,
        masks=_names(mask),
        mask_joints=_ints(mask_joints),
        hypo=hypo,
        out=out,
        mode=mode,
        steps=steps,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        normalizer=normalizer,
        render=render,
        renderer=renderer,
        body_model=body_model,
        export=tuple(export or ()),
    )
    with progress("completing", enabled=not (quiet or json_out)) as cb:
        result = run_staged(svc.run, req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)
