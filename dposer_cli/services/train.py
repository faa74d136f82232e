"""`dposer train`: the file-in/file-out shell around `dposer_cli.tasks.train` (spec §9–§10).

Reads the pose files (`io.train_run`, `io.poses`), builds the configs and the network, and runs the task with
checkpoint writers for OUT/last.pt (resumable), OUT/best.pt and a `log.jsonl` recorder; then exports
OUT/prior.pt (EMA weights, optionally float16) and checks its samples. Single process by default; under
`torchrun --nproc-per-node G -m dposer_cli train ...` DDP (NCCL on GPUs, gloo on CPU), rank 0 writes.

Reliability (issue #14): re-running the same command resumes from last.pt bit-identically; SIGINT / SIGTERM
stop at the next step boundary with last.pt written (a second signal stops at once); resume refuses a folder
trained on other data or settings unless `force_resume`; one lock keeps two runs out of one folder, and the
temporary files of a killed write are removed on the next start. Honest reports (issue #17): a heartbeat log
line; the result and prior.pt say whether the prior looks healthy (`healthy`, `reasons`).

Failed runs leave nothing behind: the data, the part priors and the settings are read and checked before the
run folder is made; a run that fails before its first last.pt removes the files (and folders) it created,
and the lock file goes when the run ends. A run that wrote a last.pt keeps it (re-running resumes).
"""

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from dposer_cli.core import validate
from dposer_cli.core.config import PriorConfig, TrainConfig
from dposer_cli.core.device import init_distributed, resolve_device
from dposer_cli.core.errors import ExitCode, InputError, Interrupted
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import demo_checkpoint, ensure_out_dir, models_dir, official_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.checkpoint import read_checkpoint, save_checkpoint
from dposer_cli.engine.normalize import Normalizer, load_official_normalizer
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.poses import pose_files
from dposer_cli.io.train_run import (
    LOCK,
    append_record,
    exclusive,
    read_training_file,
    remove_orphans,
    trim_log,
)
from dposer_cli.tasks import train as task

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0  # seconds between progress log lines
# what a run writes besides last.pt: a run that fails before its first last.pt removes the ones it created
RUN_FILES = ("best.pt", "prior.pt", "log.jsonl")
LOCK_TRIES = 5  # locks of OUT/.train.lock tried while other runs delete and recreate it meanwhile


@dataclass(frozen=True)
class TrainRequest:
    part: Part
    data: list[Path]
    out: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    hidden_dim: int | None = None  # default: the part's demo width
    embed_dim: int | None = None
    dropout: float = 0.1  # official value
    scale_by_sigma: bool = True  # official output parameterisation (see NetConfig)
    gaussian_skip: bool = False  # residual on the unit-Gaussian ε (see NetConfig); not official
    part_priors: dict[str, Path] | None = None  # wholebody: frozen body/hand/face priors (checkpoints)
    normalizer: Path | None = None  # official statistics instead of computing them from the data
    device: str = "auto"
    fps: float | None = None  # AMASS frame subsampling
    eval_samples: int = 500  # held-out FID/APD at the end (0 = off)
    half: bool = False  # store the exported prior.pt in float16
    stop_after: int | None = (
        None  # stop after this many steps in this invocation (checkpointed; re-run resumes)
    )
    force_resume: bool = False  # resume last.pt although the data or settings differ from its run
    heartbeat_s: float | None = (
        HEARTBEAT_S  # progress log line interval (None: off, e.g. a progress bar shows)
    )


def check_request(req: TrainRequest) -> None:
    """Range-check every number of the request (one `InputError` line naming the flag), before any work.

    Raises:
        InputError: the first value out of range.
    """
    v = validate
    task.check_config(req.train)
    task.check_widths(req.hidden_dim, req.embed_dim)
    v.number("--dropout", req.dropout, lo=0, hi=1, hi_open=True, what="probability")
    if req.fps is not None:
        v.number("--fps", req.fps, lo=0, hi=v.MAX_FPS, lo_open=True, what="frame rate")
    v.integer("--eval-samples", req.eval_samples, lo=0, hi=v.MAX_COUNT)
    v.memory(
        f"--eval-samples {req.eval_samples}",
        v.sample_bytes(
            req.eval_samples, dim=PARTS[req.part].dim, width=req.hidden_dim or PARTS[req.part].demo_hidden
        ),
        hint="ask for fewer --eval-samples",
    )
    if req.stop_after is not None:
        v.integer("--stop-after", req.stop_after, lo=1, hi=task.MAX_TRAIN_STEPS)
    if req.heartbeat_s is not None:
        v.number("heartbeat_s", req.heartbeat_s, lo=0, lo_open=True, what="number of seconds")
    if not req.data:
        raise InputError("--data: give at least one pose file or folder")
    v.output_folder("--out", req.out)


def _read_data(req: TrainRequest) -> tuple[Tensor, Tensor]:
    """(N, D) raw training vectors and (N, 4) part availability; whole-body takes part-only files too.

    Raises:
        InputError: an unreadable file, or values that are NaN/inf or absurdly large (naming the file and row).
    """
    blocks = []
    for f in pose_files(req.data):
        part, arr = read_training_file(f, req.part, req.fps)
        poses = torch.tensor(arr)
        task.check_values(poses, part, where=str(f))
        blocks.append((part, poses))
    return task.stack_parts(req.part, blocks)


@dataclass(frozen=True)
class _Setup:
    """What a run needs besides its folder: the data and split, the statistics and the network to train."""

    x: Tensor
    avail: Tensor
    val_idx: Tensor
    train_idx: Tensor
    normalizer: Normalizer
    data_fp: str
    cfg: PriorConfig
    net: nn.Module


def _prepare(req: TrainRequest, world: int, device: torch.device) -> _Setup:
    """Read and check the data, the part priors and the statistics, and build the network; writes nothing."""
    part, tc = req.part, req.train
    x, avail = _read_data(req)
    val_idx, train_idx = task.split(len(x), tc)
    if len(train_idx) < world:
        raise InputError(f"only {len(train_idx)} training poses for {world} processes")
    priors = None
    if part is Part.wholebody:
        paths = {
            n: Path((req.part_priors or {}).get(n) or demo_checkpoint(Part(n)))
            for n in ("body", "hand", "face")
        }
        priors = {n: read_checkpoint(path, Part(n)) for n, path in paths.items()}
    if req.normalizer is not None and part is not Part.wholebody:
        normalizer = load_official_normalizer(part, req.normalizer, official_dir(models_dir()))
    else:
        normalizer = task.make_normalizer(part, x[train_idx], priors, tc.normalizer_stats)
    cfg, net = task.build_model(
        part,
        hidden_dim=req.hidden_dim,
        embed_dim=req.embed_dim,
        dropout=req.dropout,
        scale_by_sigma=req.scale_by_sigma,
        gaussian_skip=req.gaussian_skip,
        part_priors=priors,
        seed=tc.seed,
        device=device,
    )
    return _Setup(x, avail, val_idx, train_idx, normalizer.to(device), task.fingerprint(x, avail), cfg, net)


@contextlib.contextmanager
def _run_folder(out: Path) -> Iterator[None]:
    """Make (if needed) and lock the run folder for one run. When the run fails before any last.pt is there,
    the files it created (`RUN_FILES`) and the folders it made are removed; an earlier run's files are kept.

    Raises:
        InputError: the folder cannot be written, or another run holds it.
    """
    made = []  # folders this run makes, innermost first
    for folder in (out, *out.parents):
        if folder.exists() or folder == folder.parent:
            break
        made.append(folder)
    try:
        ensure_out_dir(out)
        with _locked(out):
            remove_orphans(out)
            before = {name for name in RUN_FILES if (out / name).exists()}
            try:
                yield
            except BaseException:
                if not (out / "last.pt").is_file():
                    for name in set(RUN_FILES) - before:
                        with contextlib.suppress(OSError):
                            (out / name).unlink()
                raise
    except BaseException:
        for folder in made:  # only the empty ones: another run's lock keeps its folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """`exclusive(out)` with OUT/.train.lock deleted when the run ends (while still locked, so nothing is left).

    A run that locked the file just as its holder deleted it holds a lock nobody else sees: the lock file it
    then finds is gone or holds another pid, and it locks again.

    Raises:
        InputError: another run holds the folder.
    """
    lock = out / LOCK
    for _ in range(LOCK_TRIES):
        with exclusive(out):
            if os.name == "posix":  # no fcntl elsewhere: exclusive() holds no lock and writes no file
                try:
                    owner = lock.read_text().strip()
                except OSError:
                    owner = ""
                if owner != str(os.getpid()):
                    continue
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    lock.unlink()
            return
    raise InputError(f"cannot lock {lock}: other runs keep replacing it", hint="give this run another --out")


def run(req: TrainRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Train (or resume) a prior; returns paths, final metrics and whether the prior looks healthy.

    Raises:
        InputError: a number out of range, bad data, or a run folder whose last.pt differs in data or settings.
        Interrupted: SIGINT (exit 130) or SIGTERM (exit 143); the message says what last.pt holds.
    """
    check_request(req)
    stop = task.StopFlag()
    restore = stop.install()
    try:
        t0 = time.perf_counter()
        rank, world = init_distributed()
        device = resolve_device(req.device)
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        setup = _prepare(req, world, device)  # every input checked before the run folder is made
        with contextlib.ExitStack() as held:
            if rank == 0:
                held.enter_context(_run_folder(Path(req.out)))
            return _run(req, setup, progress, stop, rank, world, device, t0)
    except KeyboardInterrupt:  # a second signal, or one outside the loop: stopped at once
        raise _stopped(stop, Path(req.out) / "last.pt") from None
    finally:
        restore()


def _run(
    req: TrainRequest,
    setup: _Setup,
    progress: Callable[[int, int], None] | None,
    stop: task.StopFlag,
    rank: int,
    world: int,
    device: torch.device,
    t0: float,
) -> Result:
    """Resume or start the run, train up to `--steps` / `--stop-after`, export and check."""
    tc, out, part = req.train, Path(req.out), req.part
    x, avail, val_idx, train_idx = setup.x, setup.avail, setup.val_idx, setup.train_idx
    normalizer, data_fp, cfg, net = setup.normalizer, setup.data_fp, setup.cfg, setup.net
    last, logf = out / "last.pt", out / "log.jsonl"
    resume = read_checkpoint(last, part) if last.is_file() else None
    if resume is not None:
        conflict = task.resume_conflict(resume, cfg, tc, data_fp, len(x), normalizer.state())
        if conflict is not None:
            why, fatal = conflict
            if fatal:
                raise InputError(
                    f"cannot resume from {last}: {why}; its weights only fit the network they were "
                    f"trained with",
                    hint=f"use another --out, or delete {last} to start over",
                )
            if not req.force_resume:
                raise InputError(
                    f"cannot resume from {last}: {why}",
                    hint="re-run with the same --data and "
                    "settings, use another --out, or pass --force-resume to continue with the new ones",
                )
            log.warning("--force-resume: continuing %s although %s", last, why)
        if rank == 0:
            trim_log(logf, int(resume.extra["step"]))
        log.info("resuming from %s at step %d", last, int(resume.extra["step"]))

    def save(state: task.TrainState, kind: task.SaveKind) -> None:
        extra = dict(
            step=state.step,
            best_val=state.best,
            train=tc.to_dict(),
            data_fingerprint=data_fp,
            data_poses=len(x),
            **(state.resumable() if kind == "last" else {}),
        )
        save_checkpoint(
            out / f"{kind}.pt",
            part=part,
            config=cfg,
            model=state.net.state_dict(),
            ema=state.ema.weights(state.net),
            normalizer=normalizer.state(),
            **extra,
        )

    def record(entry: dict[str, float]) -> None:
        append_record(logf, {**entry, "seconds": round(time.perf_counter() - t0, 2)})

    data = task.TrainData(x, avail, train_idx, val_idx)
    done = task.train(
        net,
        cfg,
        tc,
        data,
        normalizer,
        save=save,
        record=record,
        resume=resume,
        stop_after=req.stop_after,
        stop=stop,
        progress=progress,
        heartbeat_s=req.heartbeat_s,
        rank=rank,
        world=world,
        device=device,
    )
    step, reasons = done.state.step, done.reasons
    result = Result(command="train", seconds=time.perf_counter() - t0)
    if stop.signum is not None:
        raise _stopped(stop, last, graceful=True)
    if rank != 0:
        return result
    if not done.complete:
        result.status = "partial"
        result.outputs = _existing({"last": last, "log": logf})
        result.info = {"part": part.value, "steps": step, "total_steps": tc.steps}
        result.lines = [f"stopped at step {step} of {tc.steps}; re-run the same command to continue"]
        return result
    export, ema = out / "prior.pt", done.state.ema
    assert done.val_loss is not None
    metrics: dict[str, float] = {"val_loss": done.val_loss, "best_val_loss": done.state.best, "steps": step}
    checks = ["warmup", "val_loss"]

    def write_prior() -> None:
        save_checkpoint(
            export,
            part=part,
            config=cfg,
            model=ema.weights(net),
            ema=None,
            normalizer=normalizer.state(),
            half=req.half,
            step=step,
            healthy=not reasons,
            health_reasons=list(reasons),
        )

    write_prior()
    if req.eval_samples > 0:
        prior = DPoserPrior.from_checkpoint(export, part, device=device)
        found, more = task.check_samples(
            prior, part, x[val_idx], x[train_idx], req.eval_samples, seed=tc.seed, device=device
        )
        metrics.update(found)
        reasons += more
        for reason in more:
            log.warning("the prior looks unhealthy: %s", reason)
        checks += ["samples"] + (["fid"] if "fid_heldout" in found else [])
        write_prior()
    result.outputs = _existing({"last": last, "best": out / "best.pt", "prior": export, "log": logf})
    result.metrics = metrics
    result.info = {
        "part": part.value,
        "world_size": world,
        "effective_batch": done.effective_batch,
        "steps": step,
        "warmup": done.warmup,
        "network": cfg.net.to_dict(),
        "healthy": not reasons,
        "reasons": reasons,
        "health_checks": checks,
    }
    result.lines = [
        f"trained {part.value} prior for {step} steps (effective batch {done.effective_batch}, "
        f"{world} process(es))"
    ]
    result.lines += [f"warning: the prior looks unhealthy: {r}" for r in reasons]
    return result


def _existing(outputs: dict[str, Path]) -> dict[str, Path | list[Path]]:
    """The outputs that exist (a run that never validated has no log.jsonl, and maybe no best.pt)."""
    return {name: path for name, path in outputs.items() if path.is_file()}


def _stopped(stop: task.StopFlag, last: Path, *, graceful: bool = False) -> Interrupted:
    """The one-line error for a stop by signal; exit 143 for SIGTERM, else 130."""
    held = f"{last} holds step {stop.saved}" if stop.saved is not None else "no checkpoint was written"
    if graceful:
        err = Interrupted(
            f"interrupted at step {stop.step}; checkpoint saved to {last}",
            hint="re-run the same command to resume",
        )
    elif stop.phase == "setup":
        held = f"{last} is unchanged" if last.is_file() else "nothing was trained"
        err = Interrupted(
            f"interrupted before training started; {held}", hint="re-run the same command to start"
        )
    elif stop.phase == "loop":
        err = Interrupted(
            f"interrupted during step {stop.step + 1}; {held}",
            hint="re-run the same command to resume from it",
        )
    else:
        err = Interrupted(
            f"interrupted after the last step, before prior.pt and its evaluation were written; {held}",
            hint="re-run the same command to export prior.pt",
        )
    err.exit_code = ExitCode.TERMINATED if stop.signum == signal.SIGTERM else ExitCode.INTERRUPTED
    return err
