"""`dposer train`."""

from pathlib import Path
from typing import Annotated

import typer

from dposer_cli.cli._options import (
    DeviceOpt,
    JsonOpt,
    NormalizerOpt,
    PartOpt,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
    choice,
)
from dposer_cli.core.parts import T_WEIGHTINGS, Part


def command(
    part: PartOpt = Part.body,
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            metavar="PATH",
            help="Pose npz files or folders (ours, official toy, AMASS); repeat for several. "
            "At least 10 poses in all.",
        ),
    ] = ...,  # type: ignore[assignment]
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: last.pt, best.pt, prior.pt, log.jsonl. Re-running resumes from last.pt.",
        ),
    ] = Path("dposer_train"),
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 20000,
    batch_size: Annotated[
        int, typer.Option(help="Effective batch size (split over torchrun processes).")
    ] = 1280,
    lr: Annotated[float, typer.Option(help="RAdam learning rate (cosine schedule with warm-up).")] = 2e-4,
    warmup: Annotated[int, typer.Option(help="Warm-up steps.")] = 500,
    ema_rate: Annotated[float, typer.Option(help="EMA decay of the weights used for inference.")] = 0.9999,
    hidden_dim: Annotated[
        int | None,
        typer.Option(
            help="TimeFC width, a multiple of 32 (official 1024; default: demo width; below 128 its GroupNorm "
            "groups hold 4 channels each)."
        ),
    ] = None,
    embed_dim: Annotated[
        int | None, typer.Option(help="Time-embedding width, at least 4 (official 512; default: demo width).")
    ] = None,
    dropout: Annotated[float, typer.Option(help="Dropout in the score network (official 0.1).")] = 0.1,
    t_weighting: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            callback=choice(T_WEIGHTINGS, what="--t-weighting", param="--t-weighting"),
            help="uniform (official DSM loss) or adaptive (each diffusion-time bin weighted by 1/its running loss; "
            "same optimum, faster on small data).",
        ),
    ] = "uniform",
    robust_stats: Annotated[
        bool,
        typer.Option(
            "--robust-stats",
            help="Normalise with the median and interquartile range instead of the mean and standard deviation "
            "(official): for heavy-tailed data such as body poses. Whole-body runs use their part priors'.",
        ),
    ] = False,
    sigma_scaling: Annotated[
        bool,
        typer.Option(
            "--sigma-scaling/--no-sigma-scaling",
            help="Official output "
            "parameterisation ε̂ = out/σ_table(t); --no-sigma-scaling predicts ε "
            "directly (trains much faster on small data).",
        ),
    ] = True,
    gaussian_skip: Annotated[
        bool,
        typer.Option(
            "--gaussian-skip",
            help="Add the exact ε of unit-Gaussian "
            "(normalised) data as a skip connection; the net learns the rest. "
            "Not in the official models.",
        ),
    ] = False,
    ckpt_every: Annotated[int, typer.Option(help="Write last.pt every N steps.")] = 1000,
    val_every: Annotated[int, typer.Option(help="Validate (EMA weights) every N steps.")] = 1000,
    fps: Annotated[float | None, typer.Option(help="Subsample AMASS sequences to this frame rate.")] = None,
    eval_samples: Annotated[int, typer.Option(help="Samples for the final held-out FID (0: skip).")] = 500,
    half: Annotated[bool, typer.Option("--half", help="Store prior.pt in float16.")] = False,
    stop_after: Annotated[
        int | None,
        typer.Option(
            help="Stop after N steps in this invocation (checkpointed); "
            "re-run to continue. For time-limited jobs."
        ),
    ] = None,
    body_prior: Annotated[Path | None, typer.Option(help="Whole-body: frozen body prior checkpoint.")] = None,
    hand_prior: Annotated[Path | None, typer.Option(help="Whole-body: frozen hand prior checkpoint.")] = None,
    face_prior: Annotated[Path | None, typer.Option(help="Whole-body: frozen face prior checkpoint.")] = None,
    force_resume: Annotated[
        bool,
        typer.Option(
            "--force-resume",
            help="Resume OUT/last.pt even though --data or "
            "the training settings differ from its run (otherwise refused).",
        ),
    ] = False,
    normalizer: NormalizerOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a DPoser prior (denoising score matching, subVP SDE, EMA); multi-GPU with torchrun.

    Ctrl-C or SIGTERM stops at the end of the current step with last.pt written (exit 130 / 143); re-running the
    same command resumes bit-identically. The summary says whether the prior looks healthy.

    Example: dposer train --part hand --data ../shared/data/poses/hand_reference_train.npz --out runs/hand --steps 5000
    Multi-GPU: torchrun --nproc-per-node 4 -m dposer_cli train --part body --data DIR --out runs/body
    """
    from dposer_cli.cli._console import emit, progress, progress_interval
    from dposer_cli.core.config import TrainConfig
    from dposer_cli.core.device import configure_threads
    from dposer_cli.services import train as svc

    configure_threads(threads, work_items=batch_size)
    tc = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        ema_rate=ema_rate,
        seed=seed,
        ckpt_every=ckpt_every,
        val_every=val_every,
        t_weighting=t_weighting,
        normalizer_stats="robust" if robust_stats else "mean-std",
    )
    priors = {
        k: v for k, v in (("body", body_prior), ("hand", hand_prior), ("face", face_prior)) if v is not None
    }
    bar = progress("training", enabled=not (quiet or json_out), lines=False)  # the service logs its heartbeat
    req = svc.TrainRequest(
        part=part,
        data=list(data),
        out=out,
        train=tc,
        hidden_dim=hidden_dim,
        embed_dim=embed_dim,
        dropout=dropout,
        scale_by_sigma=sigma_scaling,
        gaussian_skip=gaussian_skip,
        part_priors=priors or None,
        normalizer=normalizer,
        device=device,
        fps=fps,
        eval_samples=eval_samples,
        half=half,
        stop_after=stop_after,
        force_resume=force_resume,
        heartbeat_s=None if bar.enabled else max(progress_interval(svc.HEARTBEAT_S), 1e-6),
    )
    with bar as cb:
        result = svc.run(req, progress=cb)
    emit(result, as_json=json_out, quiet=quiet)
