"""`dposer ik`."""

from pathlib import Path
from typing import Annotated

import typer

from dposer_cli.cli._options import (
    BodyModelOpt,
    CheckpointOpt,
    ChoiceError,
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
from dposer_cli.core.errors import suggest
from dposer_cli.core.parts import FIT_PRIORS, IK_PARTS, IK_TYPES, Part


def command(
    targets: Annotated[
        Path,
        typer.Option(
            "--targets",
            "-t",
            help="npz with `joints` (N, J, 3) in metres [+ `visible` (N, J) bool], or ground-truth parameters "
            "(evaluation: hand `hand_pose` (N, 45) [+ `global_orient`, `betas`]; face `jaw_pose`, `expression`, "
            "`betas`; or `poses` as in the reference files). Joint orders: hand = hand21 (OpenPose: wrist, "
            "thumb1-3, thumb tip, index1-3, tip, middle…, ring…, pinky…); face = flame73 (root, neck, jaw, "
            "left eye, right eye, 51 landmarks, 17 contour points).",
        ),
    ],
    part: Annotated[
        str,
        typer.Option(
            "--part",
            "-p",
            metavar="PART",
            callback=part_choice(IK_PARTS, "ik supports --part {listed}, not {value!r}"),
            help="Which prior: hand or face.",
        ),
    ] = Part.hand.value,
    ik_type: Annotated[
        str,
        typer.Option(
            "--type",
            metavar="NAME",
            help="Which joints the solver sees. hand: full, sparse (13 of 21 random joints hidden), fingertip "
            "(wrist + 5 tips), partial (two random fingers hidden), noisy; face: full, noisy, left_face, "
            "right_face, half_face (random side). Masks are drawn per sample from --seed.",
        ),
    ] = "full",
    out: OutOpt = Path("dposer_out"),
    noise_std: Annotated[
        float | None,
        typer.Option("--noise-std", help="--type noisy: Gaussian noise std in metres (default 0.002)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", help="Adam steps (= network evaluations per prior). Default: hand 300, face 200."
        ),
    ] = None,
    prior: Annotated[
        str,
        typer.Option(
            "--prior",
            metavar="NAME",
            callback=choice(FIT_PRIORS, what="--prior", param="--prior"),
            help="dposer (the diffusion prior), l2 (0.5·‖θ‖² baseline) or none.",
        ),
    ] = "dposer",
    solve_orient: Annotated[
        bool,
        typer.Option(
            "--solve-orient",
            help="Also solve global rotation and translation (targets not in the model frame). Default: "
            "fixed at the file's `global_orient` or zero, as in the official protocol.",
        ),
    ] = False,
    body_model: BodyModelOpt = None,
    checkpoint: CheckpointOpt = None,
    shape_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--shape-checkpoint",
            help="--part face: face-shape prior checkpoint (default: official, else demo).",
        ),
    ] = None,
    normalizer: NormalizerOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    render: Annotated[
        bool,
        typer.Option(
            "--render",
            help="Also draw DIR/ik.png: for the first 8 solves, the recovered joints against the targets "
            "(filled: seen by the solver, rings: hidden from it, where known).",
        ),
    ] = False,
    renderer: RendererOpt = "auto",
    export: ExportOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Recover hand pose (MANO / mannequin hand) or FLAME jaw, expression and shape from 3D keypoints.

    Writes DIR/ik.npz (parameters under SMPL-X/FLAME names, `joints`, `target_joints`, `visible`); with
    ground-truth parameters it reports MPJPE on visible / occluded / all joints and MPVPE in mm.

    Example: dposer ik --part hand --targets hands.npz --type fingertip --out ik_out/
    """
    kind = Part(part)  # the callback made it a Part already
    if ik_type not in IK_TYPES[kind]:
        raise ChoiceError(
            f"--type {ik_type} is not available for --part {kind.value}"
            f"{suggest(ik_type, list(IK_TYPES[kind]))}",
            param_hint="--type",
            hint="choose from " + ", ".join(IK_TYPES[kind]),
        )
    from dposer_cli.cli._console import emit, progress, run_staged
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import ik as svc

    configure_threads(threads, work_items=None)
    req = svc.IKRequest(
        part=kind,
        targets=targets,
        out=out,
        ik_type=ik_type,
        noise_std=noise_std,
        steps=steps,
        prior=prior,
        solve_orient=solve_orient,
        body_model=body_model,
        checkpoint=checkpoint,
        shape_checkpoint=shape_checkpoint,
        normalizer=normalizer,
        device=device,
        seed=seed,
        render=render,
        renderer=renderer,
        export=tuple(export or ()),
    )
    with progress("solving", enabled=not (quiet or json_out)) as cb:
        result = run_staged(svc.run, req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)
