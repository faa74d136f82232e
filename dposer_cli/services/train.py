"""`dposer train`: denoising score matching on the subVP SDE (spec §9–§10), resumable, DDP via torchrun.

Single process by default; under `torchrun --nproc-per-node G -m dposer_cli train ...` it runs PyTorch
DDP (NCCL on GPUs, gloo on CPU) with each rank drawing a disjoint shard of every epoch. Rank 0 writes
checkpoints and logs. Re-running the same command resumes from `OUT/last.pt`.

Reliability (issue #14): SIGINT / SIGTERM during the loop stop it at the next step boundary, where
`last.pt` is written, so interrupt-and-resume gives the same weights bit for bit as an uninterrupted
run (as `--stop-after` and SIGKILL-and-resume do); a second signal stops at once and `last.pt` keeps
the previous checkpoint. Validation never swaps weights (the EMA weights go in through
`torch.func.functional_call`), so no interrupt can save EMA weights as the training weights. Resume
refuses a run folder trained on other data or with other settings unless `force_resume`; temporary
files of a killed write are removed on the next start, and one lock keeps two runs out of one folder.

Honest reports (issue #17): a log line every `heartbeat_s` seconds (step, rate, ETA, loss) for CI logs;
the result and `prior.pt` say whether the prior looks healthy (`healthy`, `reasons`): a warm-up not
shorter than the run (it is scaled down), a non-finite validation loss, non-finite samples, a held-out
FID far beyond the data's own variance, or joint angles beyond any in the training data.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dposer_cli.core import validate
from dposer_cli.core.config import NetConfig, PriorConfig, SDEConfig, TrainConfig
from dposer_cli.core.device import init_distributed, resolve_device
from dposer_cli.core.errors import AssetMismatchError, ExitCode, InputError, Interrupted, Terminated
from dposer_cli.core.parts import PARTS, WHOLEBODY_SPLIT, Part
from dposer_cli.core.paths import atomic_write, demo_checkpoint, ensure_out_dir, models_dir, official_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from dposer_cli.engine.ema import EMA
from dposer_cli.engine.loss import dsm_loss
from dposer_cli.engine.nets import build_net
from dposer_cli.engine.normalize import Normalizer, load_official_normalizer, mirror_mask, statistics
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.sde import build_sde
from dposer_cli.io.poses import pose_files, read_poses
from dposer_cli.metrics import fid, gaussian_stats

log = logging.getLogger(__name__)

# whole-body slots filled by part-only data ("mixed" training, spec §10.3)
_SLOT_OF_PART = {Part.body: [0], Part.hand: [2, 1], Part.face: [3]}

MAX_TRAIN_STEPS = 10_000_000  # official runs are 100k–400k steps (spec §10.2)
MAX_WIDTH = 16_384  # --hidden-dim / --embed-dim (official 1024 / 512)
T_WEIGHTINGS = ("uniform", "adaptive")
HEARTBEAT_S = 10.0  # seconds between progress log lines
WARMUP_FRACTION = TrainConfig().warmup / TrainConfig().steps  # a too-long warm-up is scaled to this share of the run
FID_LIMIT = 10.0  # unhealthy: held-out FID above this many times the held-out data's total variance
ANGLE_LIMIT = 0.01  # unhealthy: more than this share of sampled joint rotations beyond any in the data
_DDP_STOP_SYNC = 10  # steps between the ranks' agreement on a stop request (one tiny all-reduce)
# temp files of core.paths.atomic_write and core.paths.ensure_out_dir's write probe
_TMP = re.compile(r"^\.((last|best|prior)\.pt\..+\.tmp|dposer-write-test-\d+)$")
_FLAGS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "warmup": "--warmup",
          "ema_rate": "--ema-rate", "seed": "--seed", "t_weighting": "--t-weighting", "hidden_dim": "--hidden-dim",
          "embed_dim": "--embed-dim", "dropout": "--dropout", "scale_by_sigma": "--sigma-scaling",
          "gaussian_skip": "--gaussian-skip"}
_CADENCE = ("ckpt_every", "val_every")  # how often last.pt is written / validation runs: never changes weights


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
    stop_after: int | None = None  # stop after this many steps in this invocation (checkpointed; re-run resumes)
    force_resume: bool = False  # resume last.pt although the data or settings differ from its run
    heartbeat_s: float | None = HEARTBEAT_S  # progress log line interval (None: off, e.g. a progress bar shows)


def check_request(req: TrainRequest) -> None:
    """Range-check every number of the request (one `InputError` line naming the flag), before any work.

    Raises:
        InputError: the first value out of range.
    """
    tc, v = req.train, validate
    v.integer("--steps", tc.steps, lo=1, hi=MAX_TRAIN_STEPS)
    v.integer("--batch-size", tc.batch_size, lo=1, hi=v.MAX_COUNT)
    v.number("--lr", tc.lr, lo=0, hi=1, lo_open=True, what="learning rate")
    v.integer("--warmup", tc.warmup, lo=0, hi=MAX_TRAIN_STEPS)
    v.number("--ema-rate", tc.ema_rate, lo=0, hi=1, hi_open=True, what="decay rate")
    v.seed(tc.seed)
    v.integer("--ckpt-every", tc.ckpt_every, lo=1, hi=MAX_TRAIN_STEPS)
    v.integer("--val-every", tc.val_every, lo=1, hi=MAX_TRAIN_STEPS)
    v.number("TrainConfig.grad_clip", tc.grad_clip, lo=0, lo_open=True)
    v.number("TrainConfig.weight_decay", tc.weight_decay, lo=0)
    v.number("TrainConfig.eps", tc.eps, lo=0, hi=1, lo_open=True, hi_open=True)
    v.number("TrainConfig.val_fraction", tc.val_fraction, lo=0, hi=1, hi_open=True)
    v.number("TrainConfig.mask_prob", tc.mask_prob, lo=0, hi=1, what="probability")
    if tc.t_weighting not in T_WEIGHTINGS:
        raise InputError(f"--t-weighting must be uniform or adaptive (got {tc.t_weighting!r})")
    if req.hidden_dim is not None:
        v.integer("--hidden-dim", req.hidden_dim, lo=32, hi=MAX_WIDTH)
        if req.hidden_dim % 32:
            raise InputError(f"--hidden-dim must be a multiple of 32, the GroupNorm group count (got {req.hidden_dim})")
    if req.embed_dim is not None:
        v.integer("--embed-dim", req.embed_dim, lo=4, hi=MAX_WIDTH)
    v.number("--dropout", req.dropout, lo=0, hi=1, hi_open=True, what="probability")
    if req.fps is not None:
        v.number("--fps", req.fps, lo=0, hi=v.MAX_FPS, lo_open=True, what="frame rate")
    v.integer("--eval-samples", req.eval_samples, lo=0, hi=v.MAX_COUNT)
    v.memory(f"--eval-samples {req.eval_samples}", v.sample_bytes(req.eval_samples, dim=PARTS[req.part].dim,
                                                                    width=req.hidden_dim or PARTS[req.part].demo_hidden),
             hint="ask for fewer --eval-samples")
    if req.stop_after is not None:
        v.integer("--stop-after", req.stop_after, lo=1, hi=MAX_TRAIN_STEPS)
    if req.heartbeat_s is not None:
        v.number("heartbeat_s", req.heartbeat_s, lo=0, lo_open=True, what="number of seconds")
    if not req.data:
        raise InputError("--data: give at least one pose file or folder")
    v.output_folder("--out", req.out)


def effective_warmup(tc: TrainConfig) -> int:
    """The warm-up used: `tc.warmup`, or `WARMUP_FRACTION` of the run (≥ 1 step) when it is not shorter (#17)."""
    return tc.warmup if tc.warmup < tc.steps else max(1, round(tc.steps * WARMUP_FRACTION))


@dataclass
class _Data:
    x: Tensor  # (N, D) raw vectors
    avail: Tensor  # (N, 4) part availability (whole-body only; ones otherwise)


def _read_data(req: TrainRequest) -> _Data:
    """Read every file; for whole-body, part-only files fill their slots (mixed training)."""
    files = pose_files(req.data)
    spec = PARTS[req.part]
    xs, avails = [], []
    for f in files:
        try:
            arr = read_poses(f, req.part, fps=req.fps).poses
            xs.append(arr)
            avails.append(np.ones((len(arr), 4), np.float32))
            continue
        except InputError:
            if req.part is not Part.wholebody:
                raise
        placed = False
        for sub in (Part.body, Part.hand, Part.face):
            try:
                arr = read_poses(f, sub, fps=req.fps).poses
            except InputError:
                continue
            full = np.zeros((len(arr), spec.dim), np.float32)
            av = np.zeros((len(arr), 4), np.float32)
            slots = _SLOT_OF_PART[sub]
            offs = np.cumsum((0,) + WHOLEBODY_SPLIT)
            for i, slot in enumerate(slots):  # hands alternate right/left slot (left mirrored below)
                rows = slice(i, None, len(slots))
                block = arr[rows]
                if slot == 1:  # left slot stores left-hand convention: mirror the right-hand data
                    block = block * mirror_mask(Part.wholebody)[63:108].numpy()
                full[rows, offs[slot]:offs[slot + 1]] = block
                av[rows, slot] = 1.0
            xs.append(full)
            avails.append(av)
            placed = True
            break
        if not placed:
            raise InputError(f"{f}: no whole-body, body, hand or face poses found")
    x = np.concatenate(xs)
    if len(x) < 2:
        raise InputError("training needs at least 2 poses")
    return _Data(torch.from_numpy(x).float(), torch.from_numpy(np.concatenate(avails)))


def shard_indices(n: int, epoch: int, rank: int, world: int, seed: int) -> Tensor:
    """The permutation of epoch `epoch` (same on every rank), strided into disjoint per-rank shards."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    usable = (n // world) * world
    return perm[:usable][rank::world]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """CosineWarmupScheduler (spec §10.2)."""
    f = 0.5 * (1 + math.cos(math.pi * step / total))
    return f * step / warmup if warmup > 0 and step <= warmup else f


def _build_model(req: TrainRequest, device: torch.device) -> tuple[PriorConfig, nn.Module]:
    spec = PARTS[req.part]
    hidden = req.hidden_dim or spec.demo_hidden
    embed = req.embed_dim or spec.demo_embed
    if req.part is not Part.wholebody:
        cfg = PriorConfig(part=req.part.value, sde=SDEConfig(), net=NetConfig(dim=spec.dim, hidden_dim=hidden,
                                                                                embed_dim=embed, dropout=req.dropout,
                                                                                scale_by_sigma=req.scale_by_sigma,
                                                                                gaussian_skip=req.gaussian_skip))
        return cfg, build_net(cfg.net).to(device)
    # whole-body Finetune: frozen part priors + trainable MaskFC residual (spec §2.4, §10.3)
    priors = {name: read_checkpoint(_part_prior(req, name), Part(name)) for name in ("body", "hand", "face")}
    cfg = PriorConfig(part="wholebody", net=NetConfig(
        kind="wholebody", dim=256, hidden_dim=hidden, embed_dim=embed, dropout=req.dropout,
        scale_by_sigma=priors["body"].config.net.scale_by_sigma,  # the frozen part nets fix the parameterisation
        gaussian_skip=priors["body"].config.net.gaussian_skip,
        part_hidden=tuple(priors[n].config.net.hidden_dim for n in ("body", "hand", "face")),  # type: ignore[arg-type]
        part_embed=tuple(priors[n].config.net.embed_dim for n in ("body", "hand", "face")),  # type: ignore[arg-type]
    ))
    if len({(priors[n].config.net.scale_by_sigma, priors[n].config.net.gaussian_skip) for n in priors}) > 1:
        raise AssetMismatchError("the body, hand and face priors mix output parameterisations (scale_by_sigma)")
    net = build_net(cfg.net)
    for name, attr in (("body", "body_model"), ("hand", "hand_model"), ("face", "face_model")):
        c = priors[name]
        sd = dict(c.model)
        if c.ema:
            sd.update(c.ema)
        getattr(net.base_model, attr).load_state_dict(sd)
    return cfg, net.to(device)


def _part_prior(req: TrainRequest, name: str) -> Path:
    return Path((req.part_priors or {}).get(name) or demo_checkpoint(Part(name)))


def _normalizer(req: TrainRequest, train_x: Tensor) -> Normalizer:
    """Statistics: the part priors' (whole-body, so the frozen nets fit), official files, or the training split's."""
    if req.part is Part.wholebody:
        means, stds = [], []
        for name, reps in (("body", 1), ("hand", 2), ("face", 1)):
            c = read_checkpoint(_part_prior(req, name), Part(name))
            if c.normalizer is None:
                raise AssetMismatchError(f"{_part_prior(req, name)}: part prior has no normaliser statistics")
            means += [c.normalizer["mean"].float()] * reps
            stds += [c.normalizer["std"].float()] * reps
        return Normalizer.for_part(Part.wholebody, torch.cat(means), torch.cat(stds))
    if req.normalizer is not None:
        return load_official_normalizer(req.part, req.normalizer, official_dir(models_dir()))
    st = statistics(train_x, req.part)
    return Normalizer.for_part(req.part, st["mean"], st["std"])


def run(req: TrainRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Train (or resume) a prior; returns paths, final metrics and whether the prior looks healthy.

    Raises:
        InputError: a number out of range, bad data, or a run folder whose last.pt differs in data or settings.
        Interrupted: SIGINT (exit 130) or SIGTERM (exit 143); the message says what last.pt holds.
    """
    check_request(req)
    stop = _Stop(Path(req.out) / "last.pt")
    restore = stop.install()
    try:
        return _train(req, progress, stop)
    except KeyboardInterrupt:  # a second signal, or one outside the loop: stopped at once
        raise stop.error() from None
    finally:
        restore()


def _train(req: TrainRequest, progress: Callable[[int, int], None] | None, stop: "_Stop") -> Result:
    t0 = time.perf_counter()
    rank, world = init_distributed()
    device = resolve_device(req.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    with contextlib.ExitStack() as held:
        if rank == 0:
            ensure_out_dir(req.out)
            held.enter_context(_exclusive(Path(req.out)))
            _remove_orphans(Path(req.out))
        return _loop(req, progress, stop, rank, world, device, t0)


def _loop(req: TrainRequest, progress: Callable[[int, int], None] | None, stop: "_Stop", rank: int, world: int,
          device: torch.device, t0: float) -> Result:
    """Read the data, build or resume the run, train up to `--steps` / `--stop-after`, export and check."""
    tc, out = req.train, Path(req.out)
    data = _read_data(req)
    if not torch.isfinite(data.x).all():
        bad = int((~torch.isfinite(data.x)).any(1).nonzero()[0, 0])
        raise InputError(f"training data contains NaN/inf values (first bad row {bad})")
    # deterministic train/validation split
    n = len(data.x)
    n_val = max(1, int(round(n * tc.val_fraction))) if n >= 20 else 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if len(train_idx) < world:
        raise InputError(f"only {len(train_idx)} training poses for {world} processes")
    normalizer = _normalizer(req, data.x[train_idx]).to(device)
    x_all = normalizer.normalize(data.x.to(device))  # GPU-resident batches: indexing only
    avail = data.avail.to(device)
    sizes = torch.tensor(WHOLEBODY_SPLIT, device=device)
    data_fp = fingerprint(data.x, data.avail)

    torch.manual_seed(tc.seed)  # weight init and dropout draw from the global RNG: make them seeded too
    cfg, net = _build_model(req, device)
    sde = build_sde(cfg.sde)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.RAdam(params, lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=tc.weight_decay)
    ema = EMA(net, tc.ema_rate)
    gen = torch.Generator(device=device).manual_seed(tc.seed + 7919 * rank)
    step, best = 0, float("inf")
    t_bins = torch.ones(50, device=device)  # running mean DSM loss per time bin (t_weighting="adaptive")
    loss_sum, loss_count = torch.zeros((), device=device), 0  # summed on device: no per-step host sync
    warmup = effective_warmup(tc)
    reasons: list[str] = []  # why the prior looks unhealthy (logged as found; in the JSON and prior.pt)
    if warmup != tc.warmup:
        reasons.append(f"the warm-up ({tc.warmup} steps) is not shorter than the run ({tc.steps} steps), so it was "
                       f"scaled to {warmup}; a run this short is a smoke test, not a usable prior")
        if rank == 0:
            log.warning("%s", reasons[-1])

    last, logf = out / "last.pt", out / "log.jsonl"
    if last.is_file():  # resume
        ck = read_checkpoint(last, req.part)
        _check_resume(ck, cfg, tc, data_fp, len(data.x), normalizer.state(), force=req.force_resume)
        net.load_state_dict(ck.model)
        ema_state = ck.extra.get("ema_state")
        if ema_state:
            ema.load_state_dict(ema_state)
        opt.load_state_dict(ck.extra["optimizer"])
        step = int(ck.extra["step"])
        if "t_bins" in ck.extra:
            t_bins.copy_(ck.extra["t_bins"])
        if "loss_sum" in ck.extra:
            loss_sum.copy_(ck.extra["loss_sum"])
            loss_count = int(ck.extra["loss_count"])
        best = float(ck.extra.get("best_val", best))
        rng = ck.extra.get("rng", {}).get(str(rank))
        if rng is not None:
            gen.set_state(rng["gen"].to("cpu") if device.type != "cuda" else rng["gen"])
            torch.set_rng_state(rng["torch"])
            if device.type == "cuda" and "cuda" in rng:  # dropout on the GPU draws from the CUDA generator
                torch.cuda.set_rng_state(rng["cuda"], device)
        if rank == 0:
            _trim_log(logf, step)
        log.info("resuming from %s at step %d", last, step)
    stop.saved = step if last.is_file() else None

    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    def eps_fn(x: Tensor, t: Tensor, mask: Tensor | None = None, weights: dict[str, Tensor] | None = None) -> Tensor:
        args = (x, sde.label(t), mask) if cfg.net.kind == "wholebody" else (x, sde.label(t))
        # other weights (EMA) go in functionally: the module's own weights are never swapped out
        return model(*args) if weights is None else torch.func.functional_call(net, weights, args)

    per_rank_batch = max(1, tc.batch_size // world)
    train_n = len(train_idx)
    steps_per_epoch = max(1, (train_n // world) // per_rank_batch)
    if rank == 0 and per_rank_batch > train_n // world:
        log.warning("--batch-size %d is larger than the %d training poses; each step uses all of them",
                    tc.batch_size, train_n)

    def save(path: Path, *, full: bool) -> None:
        rngs: dict[str, Tensor] = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rngs["cuda"] = torch.cuda.get_rng_state(device)
        extra: dict[str, Any] = dict(step=step, best_val=best, train=tc.to_dict(), data_fingerprint=data_fp,
                                     data_poses=len(data.x))
        if full:
            extra.update(optimizer=opt.state_dict(), ema_state=ema.state_dict(), rng={str(rank): rngs},
                         t_bins=t_bins.cpu(), loss_sum=loss_sum.cpu(), loss_count=loss_count)
        save_checkpoint(path, part=req.part, config=cfg, model=net.state_dict(), ema=ema.weights(net),
                        normalizer=normalizer.state(), **extra)
        if path == last:
            stop.saved = step

    def validate() -> float:
        """Mean DSM loss of the EMA weights on the validation split (fixed noise, so comparable over time)."""
        net.eval()
        vx = x_all[val_idx.to(device)]
        vg = torch.Generator(device=device).manual_seed(12345)
        weights = ema.weights(net)
        with torch.no_grad():
            # the bare module, not the DDP wrapper: only rank 0 validates (no collectives allowed here)
            vals = [dsm_loss(lambda x, t: eps_fn(x, t, weights=weights), vx, sde=sde, generator=vg).mean()
                    for _ in range(4)]
        net.train()
        return float(torch.stack(vals).mean())

    net.train()
    stop_at = tc.steps if req.stop_after is None else min(tc.steps, step + req.stop_after)
    if rank == 0:
        log.info("training a %s prior: steps %d → %d of %d, batch %d, %d training / %d validation poses, %s",
                 req.part.value, step, stop_at, tc.steps, per_rank_batch * world, train_n, n_val, device)
    beat = _Heartbeat(req.heartbeat_s if rank == 0 else None, step, tc.steps)
    stop.phase, stop.step = "loop", step
    while step < stop_at and not stop.requested(step, world, device):
        epoch, within = divmod(step, steps_per_epoch)
        shard = shard_indices(train_n, epoch, rank, world, tc.seed)
        idx = train_idx[shard[within * per_rank_batch:(within + 1) * per_rank_batch]].to(device)
        x0 = x_all[idx]
        mask_in = loss_mask = None
        if cfg.net.kind == "wholebody":
            av = avail[idx]
            full = av.all(1, keepdim=True)
            # keep each part visible with prob mask_prob for complete samples (official behaviour, §10.3)
            rnd = (torch.rand(av.shape, generator=gen, device=device) < tc.mask_prob).float()
            mask_in = torch.where(full, rnd, av)
            loss_mask = torch.repeat_interleave(av, sizes, dim=1)
        for g_ in opt.param_groups:
            g_["lr"] = tc.lr * _lr_factor(step + 1, tc.steps, warmup)
        b = x0.shape[0]
        t = torch.rand(b, generator=gen, device=device) * (1 - tc.eps) + tc.eps
        z = torch.randn(x0.shape, generator=gen, device=device)
        alpha, std = sde.marginal(t)
        xt = alpha[:, None] * x0 + std[:, None] * z
        err = (eps_fn(xt, t, mask_in) - z) ** 2
        if loss_mask is not None:
            err = err * loss_mask
        if tc.t_weighting == "adaptive":
            # each time bin contributes its loss relative to its running mean: same optimum (the score at
            # every t), but the small high-t losses are no longer drowned by the irreducible low-t ones
            per = err.mean(-1)
            bins = (t * t_bins.numel()).long().clamp_max(t_bins.numel() - 1)
            with torch.no_grad():
                sums = torch.zeros_like(t_bins).index_add_(0, bins, per.detach())
                counts = torch.zeros_like(t_bins).index_add_(0, bins, torch.ones_like(per))
                seen = counts > 0
                t_bins[seen] = 0.99 * t_bins[seen] + 0.01 * (sums[seen] / counts[seen])
            loss = (per / t_bins[bins].clamp_min(1e-5)).mean()
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        ema.update(net)
        step += 1
        stop.step = step
        loss_sum += loss.detach()
        loss_count += 1
        if progress is not None and rank == 0:
            progress(step, tc.steps)
        beat(step, loss.detach())
        if rank == 0 and (step % tc.val_every == 0 or step == tc.steps):
            val = validate()
            rec = {"step": step, "train_loss": float(loss_sum) / max(loss_count, 1), "val_loss": val,
                   "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
            loss_sum.zero_()
            loss_count = 0
            log.info("step %d  train %.4f  val %.4f", step, rec["train_loss"], val)
            with open(logf, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            if val < best:
                best = val
                save(out / "best.pt", full=False)
        if rank == 0 and (step % tc.ckpt_every == 0 or step == tc.steps):
            save(last, full=True)
    stop.phase = "finish"

    result = Result(command="train", seconds=time.perf_counter() - t0)
    if stop.signum is not None or step < tc.steps:  # interrupted at a step boundary, or --stop-after
        if rank == 0 and stop.saved != step:
            save(last, full=True)
        if stop.signum is not None:
            raise stop.error(graceful=True)
    if rank != 0:
        return result
    if step < tc.steps:
        result.status = "partial"
        result.outputs = {"last": last, "log": logf}
        result.info = {"part": req.part.value, "steps": step, "total_steps": tc.steps}
        result.lines = [f"stopped at step {step} of {tc.steps}; re-run the same command to continue"]
        return result
    export = out / "prior.pt"
    metrics: dict[str, float] = {"val_loss": validate(), "best_val_loss": best, "steps": step}
    checks = ["warmup", "val_loss"]
    if not math.isfinite(metrics["val_loss"]):
        reasons.append("the validation loss is not finite: training diverged (try a lower --lr)")
        log.warning("the prior looks unhealthy: %s", reasons[-1])
    save_checkpoint(export, part=req.part, config=cfg, model=ema.weights(net), ema=None,
                    normalizer=normalizer.state(), half=req.half, step=step, healthy=not reasons,
                    health_reasons=list(reasons))
    if req.eval_samples > 0:
        found, more = _check_samples(export, req.part, data.x[val_idx], data.x[train_idx], req.eval_samples, device,
                                     tc.seed)
        metrics.update(found)
        reasons += more
        for reason in more:
            log.warning("the prior looks unhealthy: %s", reason)
        checks += ["samples"] + (["fid"] if "fid_heldout" in found else [])
        save_checkpoint(export, part=req.part, config=cfg, model=ema.weights(net), ema=None,
                        normalizer=normalizer.state(), half=req.half, step=step, healthy=not reasons,
                        health_reasons=list(reasons))
    result.outputs = {"last": last, "best": out / "best.pt", "prior": export, "log": logf}
    result.metrics = metrics
    result.info = {"part": req.part.value, "world_size": world, "effective_batch": per_rank_batch * world,
                   "steps": step, "warmup": warmup, "network": cfg.net.to_dict(), "healthy": not reasons,
                   "reasons": reasons, "health_checks": checks}
    result.lines = [f"trained {req.part.value} prior for {step} steps (effective batch {per_rank_batch * world}, "
                    f"{world} process(es))"]
    result.lines += [f"warning: the prior looks unhealthy: {r}" for r in reasons]
    return result


# ------------------------------------------------------------------------------------------------ resume
def fingerprint(x: Tensor, avail: Tensor | None = None) -> str:
    """SHA-256 of the training vectors as read (after --fps), their shape and the part availability."""
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(np.ascontiguousarray(x.numpy()).data)
    if avail is not None:
        h.update(np.ascontiguousarray(avail.numpy()).data)
    return "sha256:" + h.hexdigest()


def _check_resume(ck: Checkpoint, cfg: PriorConfig, tc: TrainConfig, data_fp: str, n_poses: int,
                  normalizer: dict[str, Tensor], *, force: bool) -> None:
    """Refuse to continue `ck` with another network (always), other settings or data (unless `force`).

    Raises:
        InputError: one line naming the first difference.
    """
    where = f"cannot resume from {ck.path}"
    changed = _config_difference(ck.config, cfg)
    if changed is not None:
        key, then, now = changed
        name = _FLAGS.get(key.split(".")[-1], f"PriorConfig.{key}") if key.startswith("net.") else f"PriorConfig.{key}"
        raise InputError(f"{where}: {name} is {then!r} there but {now!r} now; its weights only fit the network "
                         "they were trained with", hint=f"use another --out, or delete {ck.path} to start over")
    difference = None
    saved_train = ck.extra.get("train")
    saved_train = saved_train if isinstance(saved_train, dict) else {}
    for key, value in tc.to_dict().items():
        if key not in _CADENCE and key in saved_train and saved_train[key] != value:
            difference = f"{_FLAGS.get(key, 'TrainConfig.' + key)} is {saved_train[key]!r} there but {value!r} now"
            break
    if difference is None and ck.extra.get("data_fingerprint", data_fp) != data_fp:
        then = ck.extra.get("data_poses")
        difference = "the training data differ from the data it was trained on (" + (
            f"{then} poses then, {n_poses} now)" if then != n_poses else f"{n_poses} poses, different values)")
    if difference is None and ck.normalizer is not None and not all(
            torch.equal(ck.normalizer[k].float().cpu(), normalizer[k].float().cpu()) for k in ("mean", "std")):
        difference = "the normaliser statistics differ from the ones it was trained with (--normalizer)"
    if difference is None:
        return
    if not force:
        raise InputError(f"{where}: {difference}", hint="re-run with the same --data and settings, use another "
                                                        "--out, or pass --force-resume to continue with the new ones")
    log.warning("--force-resume: continuing %s although %s", ck.path, difference)


def _config_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """(dotted field, old value, new value) of the first field where two config dataclasses differ."""
    for f in dataclasses.fields(new):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(b):
            found = _config_difference(a, b, f"{prefix}{f.name}.")
            if found is not None:
                return found
        elif a != b:
            return f"{prefix}{f.name}", a, b
    return None


def _trim_log(logf: Path, step: int) -> None:
    """Drop log.jsonl records written after the checkpoint being resumed (and a line cut by a kill)."""
    try:
        lines = logf.read_text().splitlines()
    except OSError:
        return
    keep = []
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if int(json.loads(line).get("step")) <= step:
                keep.append(line)
    if len(keep) != len(lines):
        with atomic_write(logf, "w") as fh:
            fh.write("".join(f"{line}\n" for line in keep))


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One training run per folder: an advisory lock on OUT/.train.lock (released by the OS if killed).

    Raises:
        InputError: another process holds the folder.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = out / ".train.lock"
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise InputError(f"{out} is in use by another dposer train (pid {owner})",
                             hint="wait for it to finish, or give this run another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_orphans(out: Path) -> None:
    """Delete temporary checkpoint files left by a write that was killed (the folder lock is held)."""
    removed = [p for p in out.iterdir() if _TMP.match(p.name) and p.is_file()]
    for p in removed:
        with contextlib.suppress(OSError):
            p.unlink()
    if removed:
        log.info("removed %d temporary file(s) left in %s by a killed run", len(removed), out)


# --------------------------------------------------------------------------------------- signals, progress
class _Stop:
    """SIGINT / SIGTERM while training. In the loop the first one is only recorded and honoured at the next
    step boundary (a checkpoint there resumes bit-identically); a second one, or one outside the loop,
    raises at once (KeyboardInterrupt / core.errors.Terminated), which `run` turns into `error()`."""

    def __init__(self, last: Path) -> None:
        self.last = last
        self.signum: int | None = None
        self.phase = "setup"  # "setup" | "loop" | "finish"
        self.step = 0  # steps done
        self.saved: int | None = None  # the step last.pt holds

    def install(self) -> Callable[[], None]:
        """Handle SIGINT and SIGTERM (even if the parent ignored them); returns the restoring function.
        No-op outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, h in previous.items():
                signal.signal(sig, h)

        return restore

    def _handler(self, signum: int, frame: object) -> None:
        first = self.signum is None
        self.signum = signum
        if self.phase == "loop" and first:
            log.warning("stopping at the end of step %d (signal %d); send it again to stop at once",
                        self.step + 1, signum)
            return
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def requested(self, step: int, world: int, device: torch.device) -> bool:
        """Whether to stop before step `step + 1`; under DDP the ranks agree every `_DDP_STOP_SYNC` steps."""
        if world == 1:
            return self.signum is not None
        if step % _DDP_STOP_SYNC:
            return False
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()) and self.signum is None:
            self.signum = int(flag.item())
        return self.signum is not None

    def error(self, *, graceful: bool = False) -> Interrupted:
        """The one-line error for this stop; exit 143 for SIGTERM, else 130."""
        held = f"{self.last} holds step {self.saved}" if self.saved is not None else "no checkpoint was written"
        if graceful:
            err = Interrupted(f"interrupted at step {self.step}; checkpoint saved to {self.last}",
                              hint="re-run the same command to resume")
        elif self.phase == "setup":
            held = f"{self.last} is unchanged" if self.last.is_file() else "nothing was trained"
            err = Interrupted(f"interrupted before training started; {held}", hint="re-run the same command to start")
        elif self.phase == "loop":
            err = Interrupted(f"interrupted during step {self.step + 1}; {held}",
                              hint="re-run the same command to resume from it")
        else:
            err = Interrupted(f"interrupted after the last step, before prior.pt and its evaluation were written; "
                              f"{held}", hint="re-run the same command to export prior.pt")
        err.exit_code = ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED
        return err


class _Heartbeat:
    """A log line (step, rate, ETA, loss) at most every `every` seconds: shows a long run is alive in CI logs."""

    def __init__(self, every: float | None, step: int, total: int) -> None:
        self.every, self.total, self.step0 = every, total, step
        self.t0 = self.last = time.monotonic()

    def __call__(self, step: int, loss: Tensor) -> None:
        now = time.monotonic()
        if self.every is None or now - self.last < self.every:
            return
        self.last = now
        rate = (step - self.step0) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        log.info("step %d/%d (%d%%)  %.1f steps/s  ETA %s  loss %.4f", step, self.total, 100 * step // self.total,
                 rate, _duration(eta), float(loss))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ------------------------------------------------------------------------------------------------ health
def _check_samples(path: Path, part: Part, held_out: Tensor, train_x: Tensor, n: int, device: torch.device,
                   seed: int) -> tuple[dict[str, float], list[str]]:
    """Sample the exported prior: held-out FID (raw vectors, spec §8.1) and joint angles against the data.

    Returns:
        (metrics, reasons the prior looks unhealthy).
    """
    prior = DPoserPrior.from_checkpoint(path, part, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    samples = prior.sample(n, generator=g).cpu()
    if not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples)).any(1).sum())
        return {}, [f"{bad} of {n} samples contain NaN/inf values"]
    metrics: dict[str, float] = {}
    reasons = []
    joints = len(PARTS[part].joint_names)
    if joints:
        def angles(x: Tensor) -> Tensor:
            return x[:, :3 * joints].reshape(len(x), joints, 3).norm(dim=-1)

        limit = max(math.pi, float(angles(train_x).max()))
        share = float((angles(samples) > limit).float().mean())
        metrics["absurd_angle_fraction"] = share
        if share > ANGLE_LIMIT:
            reasons.append(f"{share:.1%} of the sampled joint rotations exceed {limit:.2f} rad, more than any in the "
                           "training data")
    if len(held_out) >= 10:
        mu, sigma = gaussian_stats(held_out.numpy())
        metrics["fid_heldout"] = value = float(fid(samples.numpy(), mu=mu, sigma=sigma))
        scale = float(np.trace(sigma))
        if not value <= FID_LIMIT * scale:
            reasons.append(f"the held-out FID {value:.4g} is over {FID_LIMIT:g}× the held-out data's total variance "
                           f"({scale:.3g}): the samples do not look like the data")
    return metrics, reasons
