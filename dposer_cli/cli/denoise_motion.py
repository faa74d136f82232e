"""`dposer denoise-motion`."""

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
    QuietOpt,
    RendererOpt,
    SeedOpt,
    ThreadsOpt,
    check_masks,
    choice,
)
from dposer_cli.core.parts import TEMPORAL_TERMS, Part, mask_names


def _names(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for raw in values or [] for v in raw.split(",") if v.strip())


def command(
    input: Annotated[
        Path,
        typer.Argument(
            help="Sequence .npz: body poses (pose_body/body_pose, AMASS poses) "
            "and/or 3D joints (`joints`, T×22×3 metres).",
            metavar="SEQ.npz",
            show_default=False,
        ),
    ],
    out: OutOpt = Path("dposer_out"),
    noise_std: Annotated[
        float | None,
        typer.Option(
            "--noise-std",
            help="Metres. Poses input: Gaussian noise added to the body-model joints (default 0.04). "
            "Joints input: their expected noise level (picks the schedule; nothing is added).",
        ),
    ] = None,
    occluded_part: Annotated[
        list[str] | None,
        typer.Option(
            "--occluded-part",
            metavar="NAME[,NAME]",
            help=f"Body mask groups hidden from the observations: {', '.join(mask_names(Part.body))}.",
        ),
    ] = None,
    visible_part: Annotated[
        list[str] | None,
        typer.Option(
            "--visible-part",
            metavar="NAME[,NAME]",
            help="Only these body mask groups (and the pelvis) are observed; the rest is occluded.",
        ),
    ] = None,
    fps: Annotated[float | None, typer.Option(help="Frame rate when the file has none (default 30).")] = None,
    temporal: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=choice(TEMPORAL_TERMS, what="--temporal", param="--temporal"),
            help="Smoothness term on: auto (vertices when the body model has a mesh), vertices or joints (faster).",
        ),
    ] = "auto",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    checkpoint: CheckpointOpt = None,
    normalizer: NormalizerOpt = None,
    no_render: Annotated[bool, typer.Option("--no-render", help="Skip DIR/comparison.mp4.")] = False,
    renderer: RendererOpt = "auto",
    body_model: BodyModelOpt = None,
    export: ExportOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Denoise a 3D joint sequence with the body prior; save DIR/denoised.npz and DIR/comparison.mp4.

    Given poses, their joints are noised (--noise-std) and the result is scored against them (MPJPE, mm).

    Example: dposer denoise-motion walk.npz --noise-std 0.04 --out denoised/
    """
    check_masks(Part.body, _names(occluded_part), param="--occluded-part")
    check_masks(Part.body, _names(visible_part), param="--visible-part")
    from dposer_cli.cli._console import emit, progress, run_staged
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import denoise_motion as svc

    configure_threads(threads, work_items=None)
    req = svc.DenoiseRequest(
        input=input,
        out=out,
        noise_std=noise_std,
        occluded=_names(occluded_part),
        visible=_names(visible_part),
        fps=fps,
        temporal=temporal,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        normalizer=normalizer,
        render=not no_render,
        renderer=renderer,
        body_model=body_model,
        export=tuple(export or ()),
    )
    with progress("denoising", enabled=not (quiet or json_out)) as cb:
        result = run_staged(svc.run, req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)
