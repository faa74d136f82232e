"""`dposer train`: denoising score matching on the subVP SDE (spec §9–§10), resumable, DDP via torchrun.

Single process by default; under `torchrun --nproc-per-node G -m dposer_cli train ...` it runs PyTorch
DDP (NCCL on GPUs, gloo on CPU) with each rank drawing a disjoint shard of every epoch. Rank 0 writes
checkpoints and logs. Re-running the same command resumes from `OUT/last.pt`.
"""

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dposer_cli.core.config import NetConfig, PriorConfig, SDEConfig, TrainConfig
from dposer_cli.core.device import init_distributed, resolve_device
from dposer_cli.core.errors import AssetMismatchError, InputError, Interrupted
from dposer_cli.core.parts import PARTS, WHOLEBODY_SPLIT, Part
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.checkpoint import read_checkpoint, save_checkpoint
from dposer_cli.engine.ema import EMA
from dposer_cli.engine.loss import dsm_loss
from dposer_cli.engine.nets import build_net
from dposer_cli.engine.normalize import Normalizer, load_official_normalizer, mirror_mask, statistics
from dposer_cli.engine.sde import build_sde
from dposer_cli.io.poses import pose_files, read_poses

log = logging.getLogger(__name__)

# whole-body slots filled by part-only data ("mixed" training, spec §10.3)
_SLOT_OF_PART = {Part.body: [0], Part.hand: [2, 1], Part.face: [3]}


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
    priors = {}
    for name in ("body", "hand", "face"):
        path = (req.part_priors or {}).get(name)
        if path is None:
            from dposer_cli.core.paths import demo_checkpoint

            path = demo_checkpoint(Part(name))
        priors[name] = read_checkpoint(Path(path), Part(name))
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


def _wholebody_normalizer(req: TrainRequest) -> Normalizer:
    """Whole-body statistics = concatenation of the part priors' statistics (so the frozen nets fit)."""
    means, stds = [], []
    from dposer_cli.core.paths import demo_checkpoint

    for name, reps in (("body", 1), ("hand", 2), ("face", 1)):
        path = (req.part_priors or {}).get(name) or demo_checkpoint(Part(name))
        c = read_checkpoint(Path(path), Part(name))
        if c.normalizer is None:
            raise AssetMismatchError(f"{path}: part prior has no normaliser statistics")
        means += [c.normalizer["mean"].float()] * reps
        stds += [c.normalizer["std"].float()] * reps
    return Normalizer.for_part(Part.wholebody, torch.cat(means), torch.cat(stds))


def run(req: TrainRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Train (or resume) a prior; returns paths and final metrics."""
    t0 = time.perf_counter()
    tc = req.train
    if tc.steps < 1 or tc.batch_size < 1:
        raise InputError("--steps and --batch-size must be ≥ 1")
    rank, world = init_distributed()
    device = resolve_device(req.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out = ensure_out_dir(req.out) if rank == 0 else Path(req.out)

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

    if req.part is Part.wholebody:
        normalizer = _wholebody_normalizer(req)
    elif req.normalizer is not None:
        from dposer_cli.core.paths import models_dir, official_dir

        normalizer = load_official_normalizer(req.part, req.normalizer, official_dir(models_dir()))
    else:
        st = statistics(data.x[train_idx], req.part)
        normalizer = Normalizer.for_part(req.part, st["mean"], st["std"])
    normalizer = normalizer.to(device)
    x_all = normalizer.normalize(data.x.to(device))  # GPU-resident batches: indexing only
    avail = data.avail.to(device)
    sizes = torch.tensor(WHOLEBODY_SPLIT, device=device)

    torch.manual_seed(tc.seed)  # weight init and dropout draw from the global RNG: make them seeded too
    cfg, net = _build_model(req, device)
    sde = build_sde(cfg.sde)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.RAdam(params, lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=tc.weight_decay)
    ema = EMA(net, tc.ema_rate)
    gen = torch.Generator(device=device).manual_seed(tc.seed + 7919 * rank)
    step, best = 0, float("inf")
    t_bins = torch.ones(50, device=device)  # running mean DSM loss per time bin (t_weighting="adaptive")
    if tc.t_weighting not in ("uniform", "adaptive"):
        raise InputError(f"--t-weighting must be uniform or adaptive (got {tc.t_weighting!r})")

    last = Path(req.out) / "last.pt"
    if last.is_file():  # resume
        ck = read_checkpoint(last, req.part)
        if ck.config != cfg:
            raise AssetMismatchError(f"{last} was trained with a different network/config; use another --out "
                                     "or delete it to start over")
        net.load_state_dict(ck.model)
        ema_state = ck.extra.get("ema_state")
        if ema_state:
            ema.load_state_dict(ema_state)
        opt.load_state_dict(ck.extra["optimizer"])
        step = int(ck.extra["step"])
        if "t_bins" in ck.extra:
            t_bins.copy_(ck.extra["t_bins"])
        best = float(ck.extra.get("best_val", best))
        rng = ck.extra.get("rng", {}).get(str(rank))
        if rng is not None:
            gen.set_state(rng["gen"].to("cpu") if device.type != "cuda" else rng["gen"])
            torch.set_rng_state(rng["torch"])
        log.info("resuming from %s at step %d", last, step)

    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    def eps_fn(x: Tensor, t: Tensor, mask: Tensor | None = None, module: nn.Module | None = None) -> Tensor:
        m = module or model
        label = sde.label(t)
        return m(x, label, mask) if cfg.net.kind == "wholebody" else m(x, label)

    per_rank_batch = max(1, tc.batch_size // world)
    logf = Path(req.out) / "log.jsonl"
    train_n = len(train_idx)
    steps_per_epoch = max(1, (train_n // world) // per_rank_batch)

    def save(path: Path, *, full: bool) -> None:
        rngs = {str(rank): {"gen": gen.get_state(), "torch": torch.get_rng_state()}}
        extra: dict[str, Any] = dict(step=step, best_val=best, train=tc.to_dict(), data_sha=_fingerprint(data.x))
        if full:
            extra.update(optimizer=opt.state_dict(), ema_state=ema.state_dict(), rng=rngs, t_bins=t_bins.cpu())
        save_checkpoint(path, part=req.part, config=cfg, model=net.state_dict(), ema=ema.weights(net),
                        normalizer=normalizer.state(), **extra)

    def validate() -> float:
        net.eval()
        vx = x_all[val_idx.to(device)]
        vg = torch.Generator(device=device).manual_seed(12345)
        swap = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(ema.weights(net))
        with torch.no_grad():
            # the bare module, not the DDP wrapper: only rank 0 validates (no collectives allowed here)
            vals = [dsm_loss(lambda x, t: eps_fn(x, t, module=net), vx, sde=sde, generator=vg).mean()
                    for _ in range(4)]
        net.load_state_dict(swap)
        net.train()
        return float(torch.stack(vals).mean())

    net.train()
    loss_sum, loss_count = torch.zeros((), device=device), 0  # summed on device: no per-step host sync
    stop_at = tc.steps if req.stop_after is None else min(tc.steps, step + req.stop_after)
    restore = _trap_signals()  # Ctrl-C / SIGTERM (schedulers) → checkpoint, then exit 130
    try:
        while step < stop_at:
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
                g_["lr"] = tc.lr * _lr_factor(step + 1, tc.steps, tc.warmup)
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
            loss_sum += loss.detach()
            loss_count += 1
            if progress is not None and rank == 0:
                progress(step, tc.steps)
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
                    save(Path(req.out) / "best.pt", full=False)
            if rank == 0 and (step % tc.ckpt_every == 0 or step == tc.steps):
                save(last, full=True)
    except KeyboardInterrupt:
        if rank == 0 and step > 0:
            save(last, full=True)
            raise Interrupted(f"interrupted at step {step}; checkpoint saved to {last}",
                              hint="re-run the same command to resume") from None
        raise
    finally:
        restore()
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()

    result = Result(command="train", seconds=time.perf_counter() - t0)
    if rank != 0:
        return result
    if step < tc.steps:  # stopped early on request: checkpoint and report progress
        save(last, full=True)
        result.status = "partial"
        result.outputs = {"last": last, "log": logf}
        result.info = {"part": req.part.value, "steps": step, "total_steps": tc.steps}
        result.lines = [f"stopped at step {step} of {tc.steps}; re-run the same command to continue"]
        return result
    export = Path(req.out) / "prior.pt"
    save_checkpoint(export, part=req.part, config=cfg, model=ema.weights(net), ema=None,
                    normalizer=normalizer.state(), half=req.half, step=step)
    metrics: dict[str, float] = {"val_loss": validate(), "best_val_loss": best, "steps": step}
    if req.eval_samples > 0:
        metrics.update(_eval_samples(export, req.part, data.x[val_idx], req.eval_samples, device, tc.seed))
    result.outputs = {"last": last, "best": Path(req.out) / "best.pt", "prior": export, "log": logf}
    result.metrics = metrics
    result.info = {"part": req.part.value, "world_size": world, "effective_batch": per_rank_batch * world,
                   "steps": step, "network": cfg.net.to_dict()}
    result.lines = [f"trained {req.part.value} prior for {step} steps (effective batch {per_rank_batch * world}, "
                    f"{world} process(es))"]
    return result


def _trap_signals() -> Callable[[], None]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt while training (even if the parent ignored them).

    Returns a function restoring the previous handlers. No-op outside the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    return restore


def _fingerprint(x: Tensor) -> str:
    return hashlib.sha1(x.numpy().tobytes()[:1_000_000] + str(tuple(x.shape)).encode()).hexdigest()[:16]


def _eval_samples(path: Path, part: Part, held_out: Tensor, n: int, device: torch.device, seed: int) -> dict[str, float]:
    """FID of fast-sampler samples against the held-out split (raw vectors, spec §8.1)."""
    from dposer_cli.engine.prior import DPoserPrior
    from dposer_cli.metrics import fid, gaussian_stats

    prior = DPoserPrior.from_checkpoint(path, part, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    samples = prior.sample(n, generator=g).cpu().numpy()
    ref = held_out.numpy()
    if len(ref) < 10:
        return {}
    mu, sigma = gaussian_stats(ref)
    return {"fid_heldout": float(fid(samples, mu=mu, sigma=sigma))}
