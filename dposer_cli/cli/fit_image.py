"""`dposer fit-image`."""

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
    choice,
    part_choice,
)
from dposer_cli.core.parts import FIT_PARTS, FIT_PRIORS, KEYPOINT_FORMATS, Part


def command(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Images, folders of video frames (sorted by name) or "
            "videos (.mp4, .mov, .avi, .mkv, .webm).",
            show_default=False,
        ),
    ],
    keypoints: Annotated[
        list[Path] | None,
        typer.Option(
            "--keypoints",
            "-k",
            help="Keypoint JSON per image (repeat), or a keypoint folder per frame folder or video "
            "(one JSON per frame). Default: <stem>.json beside the image, or in predictions/ next to images/; "
            "none found: detected with MediaPipe (the detect extra; one person, the most prominent).",
        ),
    ] = None,
    save_keypoints: Annotated[
        Path | None,
        typer.Option(
            "--save-keypoints",
            help="Where detected keypoints go, as COCO-WholeBody JSON (reusable with --keypoints): "
            "a .json file for one image, else a folder. Default: DIR/<stem>.keypoints.json, videos "
            "DIR/keypoints/.",
        ),
    ] = None,
    part: Annotated[
        str,
        typer.Option(
            "--part",
            "-p",
            metavar="PART",
            callback=part_choice(FIT_PARTS, "fit-image fits {listed}, not --part {value}"),
            help="Which prior: body, hand or wholebody.",
        ),
    ] = Part.body.value,
    out: OutOpt = Path("dposer_fits"),
    keypoint_format: Annotated[
        str,
        typer.Option(
            "--keypoint-format",
            metavar="NAME",
            callback=choice(KEYPOINT_FORMATS, what="--keypoint-format", param="--keypoint-format"),
            help="auto, vitpose, coco-wholebody, openpose, mmpose-hand or coco17.",
        ),
    ] = "auto",
    person: Annotated[
        str, typer.Option(help="Which detected person to fit: all, or an index (0, 1, ...).")
    ] = "all",
    init: Annotated[
        list[Path] | None,
        typer.Option(
            "--init",
            help="Starting parameters .npz per image (rows = persons; e.g. a regressor's output or an "
            "earlier fit).",
        ),
    ] = None,
    focal: Annotated[
        float | None, typer.Option(help="Focal length in pixels. Default: the image diagonal.")
    ] = None,
    steps: Annotated[
        int,
        typer.Option(
            help="Adam iterations per stage (2 camera + 5 pose stages; the translation stage gets half)."
        ),
    ] = 100,
    prior: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=choice(FIT_PRIORS, what="--prior", param="--prior"),
            help="Pose prior: dposer (diffusion prior), l2 (‖θ‖²) or none.",
        ),
    ] = "dposer",
    temporal: Annotated[
        bool,
        typer.Option(
            "--temporal",
            help="Frame folders: a last joint pass with a joint-acceleration term against jitter.",
        ),
    ] = False,
    no_overlay: Annotated[
        bool,
        typer.Option(
            "--no-overlay",
            help="Skip the <stem>_overlay.png and <stem>_fit.png pictures (videos: overlay.mp4).",
        ),
    ] = False,
    no_motion_prior: Annotated[
        bool,
        typer.Option(
            "--no-motion-prior",
            help="Videos: skip the motion prior pass (denoise-motion on the per-frame fits, "
            "one body shape) that removes jitter.",
        ),
    ] = False,
    max_frames: Annotated[
        int | None,
        typer.Option(
            "--max-frames",
            min=1,
            help="Videos: fit the first N frames. Default: all, refused above 600 (one batch).",
        ),
    ] = None,
    export: ExportOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    checkpoint: CheckpointOpt = None,
    normalizer: NormalizerOpt = None,
    body_model: BodyModelOpt = None,
    renderer: RendererOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit body, hand or whole-body parameters to 2D keypoints; write DIR/<stem>.npz and DIR/<stem>_overlay.png.

    DIR/<stem>_fit.png shows the fit (the photo scaled to at most 1280 px) over a view from above, where depth
    errors show, with each person's reprojection error and depth.

    Videos (files or frame folders) share one body shape and get a motion prior pass; they write DIR/motion.npz
    (AMASS-style), DIR/overlay.mp4 and the jitter before and after.

    Example: dposer fit-image photo.jpg --keypoints photo.json --out fits/

    Example: dposer fit-image clip.mp4 --export bvh --out clip_fit/
    """
    from dposer_cli.cli._console import emit, progress, run_staged
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import fit_image as svc

    configure_threads(threads, work_items=None)
    req = svc.FitImageRequest(
        images=tuple(images),
        out=out,
        part=Part(part),
        keypoints=tuple(keypoints or ()),
        keypoint_format=keypoint_format,
        person=person,
        init=tuple(init or ()),
        focal=focal,
        steps=steps,
        prior=prior,
        body_model=body_model,
        checkpoint=checkpoint,
        normalizer=normalizer,
        renderer=renderer,
        device=device,
        seed=seed,
        temporal=temporal,
        overlay=not no_overlay,
        save_keypoints=save_keypoints,
        export=tuple(export or ()),
        motion_prior=not no_motion_prior,
        max_frames=max_frames,
    )
    with progress("fitting", enabled=not (quiet or json_out)) as cb:
        result = run_staged(svc.run, req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)
