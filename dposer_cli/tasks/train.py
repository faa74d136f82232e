"""Training a DPoser prior: denoising score matching on the subVP SDE (spec §9–§10), on tensors.

    x, avail = stack_parts(Part.hand, [(Part.hand, poses)])                  # (N, D) raw vectors
    val_idx, train_idx = split(len(x), tc)
    normalizer = make_normalizer(Part.hand, x[train_idx])
    cfg, net = build_model(Part.hand, hidden_dim=256, embed_dim=64, seed=tc.seed)
    done = train(net, cfg, tc, TrainData(x, avail, train_idx, val_idx), normalizer, save=write_checkpoint)
    done.state.ema.weights(done.state.net)                                   # the weights to export

The loop: RAdam with a cosine schedule and linear warm-up (spec §10.2), gradient clipping, an EMA of the
weights, DSM loss (`uniform`, official) or each diffusion-time bin weighted by 1/its running loss
(`adaptive`), validation of the EMA weights on a fixed-noise validation split (`torch.func.functional_call`:
the module's own weights are never swapped, so an interrupt cannot leave EMA weights in place), whole-body
part masking (spec §10.3). Under DDP (`world > 1`, torch.distributed initialised) each rank draws a disjoint
shard of every epoch (`shard_indices`) and rank 0 validates, records and saves.

Files are the caller's: `train` calls `save(state, "last" | "best")` at checkpoint / validation cadence and
`record(entry)` with each validation's log entry, and resumes from a `Checkpoint` it is given (written from
`TrainState.resumable()`): a resumed run gives the same weights bit for bit as an uninterrupted one. A
`StopFlag` set by a signal stops the loop at the next step boundary, with `last` saved there.
"""

import dataclasses
import hashlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor, nn

from dposer_cli.core import validate as v
from dposer_cli.core.config import NetConfig, PriorConfig, SDEConfig, TrainConfig
from dposer_cli.core.errors import AssetMismatchError, InputError, Terminated
from dposer_cli.core.parts import PARTS, WHOLEBODY_SPLIT, Part
from dposer_cli.engine.checkpoint import Checkpoint
from dposer_cli.engine.ema import EMA
from dposer_cli.engine.loss import dsm_loss
from dposer_cli.engine.nets import GNORM_GROUPS, build_net
from dposer_cli.engine.normalize import STATISTICS, Normalizer, mirror_mask, statistics
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.sde import build_sde
from dposer_cli.metrics import fid, gaussian_stats

log = logging.getLogger(__name__)

MAX_TRAIN_STEPS = 10_000_000  # official runs are 100k–400k steps (spec §10.2)
MIN_POSES = 10  # smallest training set: 1 pose is held out for validation, the statistics need the rest
MAX_VALUE = 1e4  # |value| of a training pose (radians) or coefficient beyond this: a broken file, not data
# TimeFC widths: multiples of the 32 GroupNorm groups; below 128 a network gets fewer groups of 4 channels
# (`engine.nets.gnorm_groups`: 32 groups of one channel would output their biases alone, for every input)
MIN_HIDDEN = GNORM_GROUPS
MIN_EMBED = 4  # the sinusoidal time embedding needs ≥ 2 frequencies (spec §2.2)
MAX_WIDTH = 16_384  # --hidden-dim / --embed-dim (official 1024 / 512)
T_WEIGHTINGS = ("uniform", "adaptive")
WARMUP_FRACTION = (
    TrainConfig().warmup / TrainConfig().steps
)  # a too-long warm-up is scaled to this share of the run
FID_LIMIT = 10.0  # unhealthy: held-out FID above this many times the held-out data's total variance
ANGLE_LIMIT = 0.01  # unhealthy: more than this share of sampled joint rotations beyond any in the data
DDP_STOP_SYNC = 10  # steps between the ranks' agreement on a stop request (one tiny all-reduce)
VAL_SEED = 12345  # the validation noise: fixed, so validation losses are comparable over a run
# whole-body slots filled by part-only data ("mixed" training, spec §10.3); hands alternate right/left
SLOT_OF_PART: Mapping[Part, tuple[int, ...]] = {Part.body: (0,), Part.hand: (2, 1), Part.face: (3,)}
# TrainConfig / NetConfig field → command-line flag, for messages
FLAGS: Mapping[str, str] = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "warmup": "--warmup",
    "ema_rate": "--ema-rate",
    "seed": "--seed",
    "t_weighting": "--t-weighting",
    "normalizer_stats": "--robust-stats",
    "hidden_dim": "--hidden-dim",
    "embed_dim": "--embed-dim",
    "dropout": "--dropout",
    "scale_by_sigma": "--sigma-scaling",
    "gaussian_skip": "--gaussian-skip",
}
CADENCE = ("ckpt_every", "val_every")  # how often last is saved / validation runs: never changes weights

SaveKind = Literal["last", "best"]
Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------ settings, data
def check_config(tc: TrainConfig) -> None:
    """Range-check every number of `tc` (one `InputError` line naming the flag).

    Raises:
        InputError: the first value out of range.
    """
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
    if tc.normalizer_stats not in STATISTICS:
        raise InputError(f"normalizer_stats must be mean-std or robust (got {tc.normalizer_stats!r})")


def check_widths(hidden_dim: int | None, embed_dim: int | None) -> None:
    """Range-check explicit network widths (None: the part's default); one `InputError` line naming the flag.

    Raises:
        InputError: a width that is not an integer, out of range or (hidden) not a multiple of the groups.
    """
    if hidden_dim is not None:
        v.integer("--hidden-dim", hidden_dim, lo=MIN_HIDDEN, hi=MAX_WIDTH)
        if hidden_dim % GNORM_GROUPS:
            raise InputError(
                f"--hidden-dim must be a multiple of {GNORM_GROUPS}, the GroupNorm group count (got {hidden_dim})"
            )
    if embed_dim is not None:
        v.integer("--embed-dim", embed_dim, lo=MIN_EMBED, hi=MAX_WIDTH)


def effective_warmup(tc: TrainConfig) -> int:
    """The warm-up used: `tc.warmup`, or `WARMUP_FRACTION` of the run (≥ 1 step) when it is not shorter (#17)."""
    return tc.warmup if tc.warmup < tc.steps else max(1, round(tc.steps * WARMUP_FRACTION))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """CosineWarmupScheduler (spec §10.2): the learning-rate multiplier of step `step` (1-based)."""
    f = 0.5 * (1 + math.cos(math.pi * step / total))
    return f * step / warmup if warmup > 0 and step <= warmup else f


def shard_indices(n: int, epoch: int, rank: int, world: int, seed: int) -> Int[Tensor, " _"]:
    """The permutation of epoch `epoch` (same on every rank), strided into disjoint per-rank shards."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    usable = (n // world) * world
    return perm[:usable][rank::world]


def split(n: int, tc: TrainConfig) -> tuple[Int[Tensor, " _"], Int[Tensor, " _"]]:
    """Deterministic (validation, training) index split: `tc.val_fraction` of ≥ 20 poses (≥ 1), else 1.

    Raises:
        InputError: fewer than `MIN_POSES` poses.
    """
    if n < MIN_POSES:
        raise InputError(
            f"the training data hold {n} pose{'' if n == 1 else 's'}; training needs at least {MIN_POSES} "
            "(one is held out for validation)"
        )
    n_val = max(1, int(round(n * tc.val_fraction))) if n >= 20 else 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed))
    return perm[:n_val], perm[n_val:]


def stack_parts(
    part: Part, blocks: Sequence[tuple[Part, Float[Tensor, "_ _"]]]
) -> tuple[Float[Tensor, "B D"], Float[Tensor, "B 4"]]:
    """Training vectors and part availability from blocks of poses, each of `part` or (whole-body) of one part.

    Whole-body "mixed" training (spec §10.3): a body, hand or face block fills its slot of zero vectors and
    is marked available there only; hand rows alternate between the right and the left slot (the left slot
    holds mirrored right hands, the whole-body convention).

    Raises:
        InputError: a block of another part (not whole-body), or values that are NaN/inf or beyond `MAX_VALUE`
            (`check_values`).
    """
    xs, avails = [], []
    offs = np.cumsum((0,) + WHOLEBODY_SPLIT)
    for sub, arr in blocks:
        arr = arr.float()
        if sub is part:
            xs.append(arr)
            avails.append(torch.ones(len(arr), 4))
            continue
        if part is not Part.wholebody or sub not in SLOT_OF_PART:
            raise InputError(f"{sub.value} poses cannot train a {part.value} prior")
        full = torch.zeros(len(arr), PARTS[part].dim)
        av = torch.zeros(len(arr), 4)
        slots = SLOT_OF_PART[sub]
        for i, slot in enumerate(slots):
            rows = slice(i, None, len(slots))
            block = arr[rows]
            if slot == 1:  # left slot stores left-hand convention: mirror the right-hand data
                block = block * mirror_mask(Part.wholebody)[63:108]
            full[rows, offs[slot] : offs[slot + 1]] = block
            av[rows, slot] = 1.0
        xs.append(full)
        avails.append(av)
    x = torch.cat(xs) if xs else torch.zeros(0, PARTS[part].dim)
    check_values(x, part)
    return x, torch.cat(avails) if avails else torch.zeros(0, 4)


def check_values(x: Float[Tensor, "B D"], part: Part, where: str = "training data") -> None:
    """Refuse NaN/inf and values beyond ±`MAX_VALUE` in (B, D) vectors of `part`, naming the first bad row.

    Raises:
        InputError: "<where> contains NaN/inf values (first bad row 3)" or "<where>: body_pose has values as
            large as 1e+30 (first in row 3, column 7) ...".
    """
    finite = torch.isfinite(x)
    if not finite.all():
        bad = int((~finite).any(1).nonzero()[0, 0])
        raise InputError(f"{where} contains NaN/inf values (first bad row {bad})")
    big = x.abs() > MAX_VALUE
    if big.any():
        row, col = (int(i) for i in big.nonzero()[0])
        start, key = 0, ""
        for seg in PARTS[part].segments:  # the segment holding that column, as named in pose files
            if col < start + seg.dim:
                key, col = seg.key, col - start
                break
            start += seg.dim
        raise InputError(
            f"{where}: {key} has values as large as {float(x.abs().max()):.3g} (first in row {row}, "
            f"column {col}); expected |value| ≤ {MAX_VALUE:g} (radians or coefficients)"
        )


def fingerprint(x: Float[Tensor, "B D"], avail: Float[Tensor, "B 4"] | None = None) -> str:
    """SHA-256 of the training vectors as read (after --fps), their shape and the part availability."""
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(np.ascontiguousarray(x.numpy()).data)
    if avail is not None:
        h.update(np.ascontiguousarray(avail.numpy()).data)
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------------------ model, statistics
PART_NETS = (("body", "body_model"), ("hand", "hand_model"), ("face", "face_model"))


def build_model(
    part: Part,
    *,
    hidden_dim: int | None = None,
    embed_dim: int | None = None,
    dropout: float = 0.1,
    scale_by_sigma: bool = True,
    gaussian_skip: bool = False,
    part_priors: Mapping[str, Checkpoint] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[PriorConfig, nn.Module]:
    """The score network to train and its config; seeds torch's global RNG with `seed` first (the weight
    init and dropout draw from it). Widths default to the part's demo widths.

    Whole-body is the official Finetune (spec §2.4, §10.3): the frozen `part_priors` ("body", "hand", "face"
    checkpoints) plus a trainable MaskFC residual; they fix the output parameterisation.

    Raises:
        InputError: a width out of range (`check_widths`).
        AssetMismatchError: the part priors mix output parameterisations.
    """
    check_widths(hidden_dim, embed_dim)
    torch.manual_seed(seed)
    spec = PARTS[part]
    hidden = hidden_dim or spec.demo_hidden
    embed = embed_dim or spec.demo_embed
    if part is not Part.wholebody:
        cfg = PriorConfig(
            part=part.value,
            sde=SDEConfig(),
            net=NetConfig(
                dim=spec.dim,
                hidden_dim=hidden,
                embed_dim=embed,
                dropout=dropout,
                scale_by_sigma=scale_by_sigma,
                gaussian_skip=gaussian_skip,
            ),
        )
        return cfg, build_net(cfg.net).to(device)
    priors = dict(part_priors or {})
    cfg = PriorConfig(
        part="wholebody",
        net=NetConfig(
            kind="wholebody",
            dim=256,
            hidden_dim=hidden,
            embed_dim=embed,
            dropout=dropout,
            scale_by_sigma=priors["body"].config.net.scale_by_sigma,
            gaussian_skip=priors["body"].config.net.gaussian_skip,
            part_hidden=tuple(priors[n].config.net.hidden_dim for n, _ in PART_NETS),  # type: ignore[arg-type]
            part_embed=tuple(priors[n].config.net.embed_dim for n, _ in PART_NETS),  # type: ignore[arg-type]
        ),
    )
    if len({(priors[n].config.net.scale_by_sigma, priors[n].config.net.gaussian_skip) for n in priors}) > 1:
        raise AssetMismatchError(
            "the body, hand and face priors mix output parameterisations (scale_by_sigma)"
        )
    net = build_net(cfg.net)
    for name, attr in PART_NETS:
        c = priors[name]
        sd = dict(c.model)
        if c.ema:
            sd.update(c.ema)
        getattr(net.base_model, attr).load_state_dict(sd)
    return cfg, net.to(device)


def make_normalizer(
    part: Part,
    train_x: Float[Tensor, "B D"],
    part_priors: Mapping[str, Checkpoint] | None = None,
    kind: str = "mean-std",
) -> Normalizer:
    """Statistics (`kind`: `engine.normalize.statistics`) of the training split, or (whole-body) the part
    priors' own, so the frozen nets fit.

    Raises:
        AssetMismatchError: a part prior without normaliser statistics.
    """
    if part is not Part.wholebody:
        st = statistics(train_x, part, kind)
        return Normalizer.for_part(part, st["mean"], st["std"])
    means, stds = [], []
    for name, reps in (("body", 1), ("hand", 2), ("face", 1)):
        c = (part_priors or {})[name]
        if c.normalizer is None:
            raise AssetMismatchError(f"{c.path}: part prior has no normaliser statistics")
        means += [c.normalizer["mean"].float()] * reps
        stds += [c.normalizer["std"].float()] * reps
    return Normalizer.for_part(Part.wholebody, torch.cat(means), torch.cat(stds))


# ------------------------------------------------------------------------------------------------ resume
def resume_conflict(
    ck: Checkpoint,
    cfg: PriorConfig,
    tc: TrainConfig,
    data_fp: str,
    n_poses: int,
    normalizer: Mapping[str, Tensor],
) -> tuple[str, bool] | None:
    """Why `ck` cannot simply be continued with `cfg`, `tc` and these data, or None.

    Returns:
        (the first difference, as "X is A there but B now", fatal); fatal when the network differs (its
        weights cannot be loaded); the rest (settings, data, statistics) may be overridden.
    """
    changed = _config_difference(ck.config, cfg)
    if changed is not None:
        key, then, now = changed
        name = (
            FLAGS.get(key.split(".")[-1], f"PriorConfig.{key}")
            if key.startswith("net.")
            else f"PriorConfig.{key}"
        )
        return f"{name} is {then!r} there but {now!r} now", True
    saved_train = ck.extra.get("train")
    saved_train = saved_train if isinstance(saved_train, dict) else {}
    for key, value in tc.to_dict().items():
        if key not in CADENCE and key in saved_train and saved_train[key] != value:
            return (
                f"{FLAGS.get(key, 'TrainConfig.' + key)} is {saved_train[key]!r} there but {value!r} now",
                False,
            )
    if ck.extra.get("data_fingerprint", data_fp) != data_fp:
        then = ck.extra.get("data_poses")
        return "the training data differ from the data it was trained on (" + (
            f"{then} poses then, {n_poses} now)" if then != n_poses else f"{n_poses} poses, different values)"
        ), False
    if ck.normalizer is not None and not all(
        torch.equal(ck.normalizer[k].float().cpu(), normalizer[k].float().cpu()) for k in ("mean", "std")
    ):
        return "the normaliser statistics differ from the ones it was trained with (--normalizer)", False
    return None


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


# --------------------------------------------------------------------------------------- signals, progress
class StopFlag:
    """SIGINT / SIGTERM while training. In the loop the first one is only recorded and honoured at the next
    step boundary (a checkpoint there resumes bit-identically); a second one, or one outside the loop,
    raises at once (KeyboardInterrupt / core.errors.Terminated)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "setup"  # "setup" | "loop" | "finish"
        self.step = 0  # steps done
        self.saved: int | None = None  # the step the last checkpoint holds

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
            log.warning(
                "stopping at the end of step %d (signal %d); send it again to stop at once",
                self.step + 1,
                signum,
            )
            return
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def requested(self, step: int, world: int, device: torch.device) -> bool:
        """Whether to stop before step `step + 1`; under DDP the ranks agree every `DDP_STOP_SYNC` steps."""
        if world == 1:
            return self.signum is not None
        if step % DDP_STOP_SYNC:
            return False
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()) and self.signum is None:
            self.signum = int(flag.item())
        return self.signum is not None


class Heartbeat:
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
        log.info(
            "step %d/%d (%d%%)  %.1f steps/s  ETA %s  loss %.4f",
            step,
            self.total,
            100 * step // self.total,
            rate,
            _duration(eta),
            float(loss),
        )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


# ------------------------------------------------------------------------------------------------ the loop
@dataclass(frozen=True)
class TrainData:
    """Raw training vectors, whole-body part availability (ones otherwise) and the index split (`split`)."""

    x: Float[Tensor, "B D"]
    avail: Float[Tensor, "B 4"]
    train_idx: Int[Tensor, " _"]
    val_idx: Int[Tensor, " _"]


@dataclass
class TrainState:
    """Everything a step changes. `resumable()` is what a checkpoint needs to continue bit for bit."""

    net: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    gen: torch.Generator  # time, noise and whole-body masks of this rank
    device: torch.device
    t_bins: Tensor  # (50,) running mean DSM loss per time bin (t_weighting="adaptive")
    loss_sum: Tensor  # () training loss summed since the last validation (on device: no host sync)
    loss_count: int = 0
    rank: int = 0
    step: int = 0
    best: float = float("inf")  # best validation loss so far

    def resumable(self) -> dict[str, Any]:
        """Optimiser, EMA, RNG and loss-tracking state (the checkpoint's `extra` keys for resuming)."""
        rngs: dict[str, Tensor] = {"gen": self.gen.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rngs["cuda"] = torch.cuda.get_rng_state(self.device)
        return dict(
            optimizer=self.opt.state_dict(),
            ema_state=self.ema.state_dict(),
            rng={str(self.rank): rngs},
            t_bins=self.t_bins.cpu(),
            loss_sum=self.loss_sum.cpu(),
            loss_count=self.loss_count,
        )

    def restore(self, ck: Checkpoint) -> None:
        """Continue from a checkpoint written with `resumable()` (and the model weights).

        Raises:
            AssetMismatchError: a resume field is missing, of the wrong type or shape (a damaged or crafted
                last.pt): one line naming the file and the field.
        """
        x = ck.extra

        def put(name: str, apply: Callable[[], None]) -> None:
            try:
                apply()
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError) as exc:
                why = f"{exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
                raise AssetMismatchError(
                    f"{ck.path}: cannot resume from its {name}: {why[:200]}",
                    hint="the file is damaged or was not written by `dposer train`; remove it (or use another "
                    "--out) to train afresh",
                ) from None

        def same_shape(name: str, value: Any, like: Tensor) -> Tensor:
            if not isinstance(value, Tensor) or value.shape != like.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} is {shape}; expected a tensor of shape {tuple(like.shape)}")
            return value

        def optimizer() -> None:
            self.opt.load_state_dict(x["optimizer"])
            # loading copies moment tensors of any shape; the first step would fail on them
            for group in self.opt.param_groups:
                for p in group["params"]:
                    for key, value in self.opt.state.get(p, {}).items():
                        if isinstance(value, Tensor) and value.ndim:
                            same_shape(f"state {key!r}", value, p)

        def ema() -> None:
            if x.get("ema_state"):
                self.ema.load_state_dict(x["ema_state"])  # checks shapes and ranges itself

        def counters() -> None:
            if "t_bins" in x:
                self.t_bins.copy_(same_shape("t_bins", x["t_bins"], self.t_bins))
            if "loss_sum" in x:
                self.loss_sum.copy_(same_shape("loss_sum", x["loss_sum"], self.loss_sum))
                self.loss_count = int(x["loss_count"])
            self.best = float(x.get("best_val", self.best))

        def generators() -> None:
            rng = x.get("rng", {}).get(str(self.rank))
            if rng is not None:
                self.gen.set_state(rng["gen"].to("cpu") if self.device.type != "cuda" else rng["gen"])
                torch.set_rng_state(rng["torch"])
                if self.device.type == "cuda" and "cuda" in rng:  # dropout on the GPU draws from CUDA's
                    torch.cuda.set_rng_state(rng["cuda"], self.device)

        def step() -> None:
            self.step = int(x["step"])  # a whole number ≥ 0, checked when read
            run = x.get("train")
            total = run.get("steps") if isinstance(run, dict) else None
            if isinstance(total, int) and self.step > total:
                raise ValueError(f"step {self.step} is beyond the {total} steps of its run")

        self.net.load_state_dict(ck.model)
        put("EMA state", ema)
        put("optimizer state", optimizer)
        put("step", step)
        put("loss counters", counters)
        put("random generator states", generators)


@dataclass
class TrainOutcome:
    """How `train` ended. `complete`: all `tc.steps` done (else stopped by `stop` or `stop_after`, with `last`
    saved at `state.step`)."""

    state: TrainState
    complete: bool
    val_loss: float | None  # final validation loss of the EMA weights (rank 0, complete runs)
    reasons: list[str]  # why the prior looks unhealthy (so far: the warm-up)
    warmup: int  # the warm-up used (`effective_warmup`)
    effective_batch: int  # per-rank batch × world size


def train(
    net: nn.Module,
    cfg: PriorConfig,
    tc: TrainConfig,
    data: TrainData,
    normalizer: Normalizer,
    *,
    save: Callable[[TrainState, SaveKind], None],
    record: Callable[[dict[str, float]], None] | None = None,
    resume: Checkpoint | None = None,
    stop_after: int | None = None,
    stop: StopFlag | None = None,
    progress: Progress | None = None,
    heartbeat_s: float | None = None,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> TrainOutcome:
    """Train `net` (from `build_model`) for `tc.steps` steps, or `stop_after` more, or until `stop` is set.

    Args:
        data: raw vectors (normalised here with `normalizer`) and the split.
        save: called with the state and "last" every `tc.ckpt_every` steps, at the last step and when stopped
            early, and with "best" after a validation that improved (rank 0 only).
        record: called (rank 0) every `tc.val_every` steps with {"step", "train_loss" (mean since the last
            record), "val_loss", "lr"}.
        resume: a checkpoint written from this run's `TrainState` (model weights + `resumable()`); its
            settings are not checked here (see `resume_conflict`).
        stop: a flag set by a signal (`StopFlag.install`); read at step boundaries.
        progress: called (rank 0) with (steps done, tc.steps) after each step.
        heartbeat_s: a progress log line at most this often (rank 0; None: off).
        rank, world: this process under torch.distributed (initialised by the caller when world > 1).

    Returns:
        The trained state (EMA weights: `state.ema.weights(state.net)`), whether the run is complete, the
        final validation loss and the health reasons found.

    Raises:
        InputError: the training loss (or gradient) or the validation loss became NaN/inf ("training
            diverged ... at step N"); found at the next validation or checkpoint, before anything is saved.
    """
    device = torch.device("cpu") if device is None else device
    stop = StopFlag() if stop is None else stop
    x_all = normalizer.to(device).normalize(data.x.to(device))  # device-resident batches: indexing only
    avail = data.avail.to(device)
    train_idx, val_idx = data.train_idx, data.val_idx
    sizes = torch.tensor(WHOLEBODY_SPLIT, device=device)
    sde = build_sde(cfg.sde)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.RAdam(params, lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=tc.weight_decay)
    state = TrainState(
        net=net,
        ema=EMA(net, tc.ema_rate),
        opt=opt,
        device=device,
        rank=rank,
        gen=torch.Generator(device=device).manual_seed(tc.seed + 7919 * rank),
        t_bins=torch.ones(50, device=device),
        loss_sum=torch.zeros((), device=device),
    )
    t_bins, loss_sum = state.t_bins, state.loss_sum
    warmup = effective_warmup(tc)
    reasons: list[str] = []
    if warmup != tc.warmup:
        reasons.append(
            f"the warm-up ({tc.warmup} steps) is not shorter than the run ({tc.steps} steps), so it was "
            f"scaled to {warmup}; a run this short is a smoke test, not a usable prior"
        )
        if rank == 0:
            log.warning("%s", reasons[-1])
    if resume is not None:
        state.restore(resume)
    stop.saved = state.step if resume is not None else None

    model = net
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def eps_fn(
        x: Tensor, t: Tensor, mask: Tensor | None = None, weights: dict[str, Tensor] | None = None
    ) -> Tensor:
        args = (x, sde.label(t), mask) if cfg.net.kind == "wholebody" else (x, sde.label(t))
        if weights is None:
            return model(*args)
        # other weights (EMA) go in functionally: the module's own weights are never swapped out; tied
        # modules (the whole-body net registers its output layer twice) get the same EMA copy under both names
        return torch.func.functional_call(net, weights, args, tie_weights=False)

    per_rank_batch = max(1, tc.batch_size // world)
    train_n = len(train_idx)
    steps_per_epoch = max(1, (train_n // world) // per_rank_batch)
    if rank == 0 and per_rank_batch > train_n // world:
        log.warning(
            "--batch-size %d is larger than the %d training poses; each step uses all of them",
            tc.batch_size,
            train_n,
        )

    # the first step whose loss or gradient norm was NaN/inf (0: none), kept on the device (no host sync
    # per step) and checked before anything is validated or saved, so no checkpoint holds diverged weights
    bad_step = torch.zeros((), dtype=torch.long, device=device)

    def check_finite() -> None:
        bad = int(bad_step)
        if bad:
            raise _diverged(f"the training loss or its gradient is not finite at step {bad}", tc, stop.saved)

    def save_last() -> None:
        check_finite()
        save(state, "last")
        stop.saved = state.step

    def validate() -> float:
        """Mean DSM loss of the EMA weights on the validation split (fixed noise, so comparable over time)."""
        net.eval()
        vx = x_all[val_idx.to(device)]
        vg = torch.Generator(device=device).manual_seed(VAL_SEED)
        weights = state.ema.weights(net)
        with torch.no_grad():
            # the bare module, not the DDP wrapper: only rank 0 validates (no collectives allowed here)
            vals = [
                dsm_loss(lambda x, t: eps_fn(x, t, weights=weights), vx, sde=sde, generator=vg).mean()
                for _ in range(4)
            ]
        net.train()
        return float(torch.stack(vals).mean())

    net.train()
    step = state.step
    gen = state.gen
    stop_at = tc.steps if stop_after is None else min(tc.steps, step + stop_after)
    if rank == 0:
        log.info(
            "training a %s prior: steps %d → %d of %d, batch %d, %d training / %d validation poses, %s",
            cfg.part,
            step,
            stop_at,
            tc.steps,
            per_rank_batch * world,
            train_n,
            len(val_idx),
            device,
        )
    beat = Heartbeat(heartbeat_s if rank == 0 else None, step, tc.steps)
    stop.phase, stop.step = "loop", step
    while step < stop_at and not stop.requested(step, world, device):
        epoch, within = divmod(step, steps_per_epoch)
        shard = shard_indices(train_n, epoch, rank, world, tc.seed)
        idx = train_idx[shard[within * per_rank_batch : (within + 1) * per_rank_batch]].to(device)
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
            g_["lr"] = tc.lr * lr_factor(step + 1, tc.steps, warmup)
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
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        state.ema.update(net)
        step += 1
        state.step = stop.step = step
        finite = torch.isfinite(loss.detach() + grad_norm)  # the sum is NaN/inf when either is
        bad_step.masked_fill_((bad_step == 0) & ~finite, step)
        loss_sum += loss.detach()
        state.loss_count += 1
        if progress is not None and rank == 0:
            progress(step, tc.steps)
        beat(step, loss.detach())
        if step % tc.val_every == 0 or step % tc.ckpt_every == 0 or step == tc.steps:
            check_finite()  # every rank: under DDP they all see the same (all-reduced) gradients
        if rank == 0 and (step % tc.val_every == 0 or step == tc.steps):
            val = validate()
            if not math.isfinite(val):
                raise _diverged(f"the validation loss is not finite at step {step}", tc, stop.saved)
            rec = {
                "step": step,
                "train_loss": float(loss_sum) / max(state.loss_count, 1),
                "val_loss": val,
                "lr": opt.param_groups[0]["lr"],
            }
            loss_sum.zero_()
            state.loss_count = 0
            log.info("step %d  train %.4f  val %.4f", step, rec["train_loss"], val)
            if record is not None:
                record(rec)
            if val < state.best:
                state.best = val
                save(state, "best")
        if rank == 0 and (step % tc.ckpt_every == 0 or step == tc.steps):
            save_last()
    stop.phase = "finish"

    done = TrainOutcome(
        state=state,
        complete=step >= tc.steps and stop.signum is None,
        val_loss=None,
        reasons=reasons,
        warmup=warmup,
        effective_batch=per_rank_batch * world,
    )
    if not done.complete:  # stopped at a step boundary, or stop_after
        if rank == 0 and stop.saved != step:
            save_last()
        return done
    if rank == 0:
        done.val_loss = validate()
        if not math.isfinite(done.val_loss):
            raise _diverged(f"the validation loss is not finite at step {step}", tc, stop.saved)
    return done


def _diverged(what: str, tc: TrainConfig, saved: int | None) -> InputError:
    """The one-line error for a run whose loss became NaN/inf (nothing diverged is saved)."""
    kept = f"; the last checkpoint holds step {saved}" if saved else ""
    return InputError(
        f"training diverged: {what}",
        hint=f"try a lower --lr (now {tc.lr:g}) or check the training data for outliers{kept}",
    )


# ------------------------------------------------------------------------------------------------ health
def check_samples(
    prior: DPoserPrior,
    part: Part,
    held_out: Float[Tensor, "_ D"],
    train_x: Float[Tensor, "_ D"],
    n: int,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], list[str]]:
    """Sample a trained prior: held-out FID (raw vectors, spec §8.1) and joint angles against the data.

    Returns:
        (metrics, reasons the prior looks unhealthy): `absurd_angle_fraction` (share of sampled joint
        rotations beyond max(π, the largest in `train_x`)), `fid_heldout` (with ≥ 10 held-out poses).
    """
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
            return x[:, : 3 * joints].reshape(len(x), joints, 3).norm(dim=-1)

        limit = max(math.pi, float(angles(train_x).max()))
        share = float((angles(samples) > limit).float().mean())
        metrics["absurd_angle_fraction"] = share
        if share > ANGLE_LIMIT:
            reasons.append(
                f"{share:.1%} of the sampled joint rotations exceed {limit:.2f} rad, more than any in the "
                "training data"
            )
    if len(held_out) >= 10:
        mu, sigma = gaussian_stats(held_out.numpy())
        metrics["fid_heldout"] = value = float(fid(samples.numpy(), mu=mu, sigma=sigma))
        scale = float(np.trace(sigma))
        if not value <= FID_LIMIT * scale:
            reasons.append(
                f"the held-out FID {value:.4g} is over {FID_LIMIT:g}× the held-out data's total variance "
                f"({scale:.3g}): the samples do not look like the data"
            )
    return metrics, reasons
