"""`DPoserPrior`: network + SDE + normaliser behind one object (the public Python API).

prior = DPoserPrior.load("body")              # official weights if downloaded, else the demo prior
poses = prior.sample(10)                       # (10, 63) axis-angle, SDE-DPM-Solver++(2M), 50 NFE
loss = prior.loss(poses, t=0.1)               # (10,) per-sample prior loss, differentiable in `poses`
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dposer_cli.core import validate
from dposer_cli.core.config import PriorConfig
from dposer_cli.core.device import resolve_device
from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import demo_checkpoint, models_dir, official_checkpoint, official_dir
from dposer_cli.core.trace import TraceCache
from dposer_cli.engine import samplers as smp
from dposer_cli.engine.checkpoint import Checkpoint, read_checkpoint
from dposer_cli.engine.loss import WEIGHTINGS, dposer_loss, time_schedule, weight
from dposer_cli.engine.nets import TimeFC, build_net
from dposer_cli.engine.normalize import Normalizer, load_official_normalizer
from dposer_cli.engine.optimize import T_RANGES
from dposer_cli.engine.sde import append_dims, build_sde

log = logging.getLogger(__name__)


class _Prepared(NamedTuple):
    """What `DPoserPrior.loss` needs at one diffusion time given to `prepare_times` (one row each)."""

    label: Tensor  # (1,) the network's time conditioning
    terms: tuple[Tensor, ...]  # the network's time projections: one (1, K, H) per TimeFC in it (or none)
    alpha: Tensor  # (1, 1)
    std: Tensor  # (1, 1)
    weights: dict[str, Tensor]  # weighting kind → w(t), (1,)


class _Target(nn.Module):
    """The DPoser loss's one-step denoising target x̂0 = (x_t − σ·ε̂(x_t, t)) / α at x_t = α·x0 + σ·z."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, x: Tensor, z: Tensor, alpha: Tensor, std: Tensor, label: Tensor, *terms: Tensor
    ) -> Tensor:
        """`terms`: the network's precomputed time projections (one tensor for a TimeFC, one per TimeFC inside
        a composite network), or none."""
        x_t = alpha * x + std * z
        if not terms:
            eps = self.net(x_t, label)
        else:
            eps = self.net(x_t, label, time_terms=terms[0] if isinstance(self.net, TimeFC) else terms)
        return (x_t - std * eps) / alpha


class DPoserPrior(nn.Module):
    """A diffusion pose prior for one part, working in raw axis-angle / coefficient space."""

    nfe_per_call = 1  # network evaluations per `loss` call (engine.optimize.PosePrior)

    def __init__(self, config: PriorConfig, net: nn.Module, normalizer: Normalizer, source: str = "") -> None:
        super().__init__()
        self.part = Part(config.part)
        self.config = config
        self.net = net.eval()
        self.normalizer = normalizer
        self.sde = build_sde(config.sde)
        self.source = source  # human-readable origin ("official: PATH", "demo: PATH", "checkpoint: PATH")
        self.nfe = 0  # network evaluations since construction (reset freely)
        self.healthy: bool | None = None  # what `dposer train` concluded (None: not recorded)
        # `prepare_times`: diffusion time → what `loss` needs at it
        self._prepared: dict[float, _Prepared] = {}
        self._trace = TraceCache()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        part: Part | str | None = None,
        *,
        normalizer: Path | None = None,
        device: str | torch.device = "cpu",
        use_ema: bool = True,
    ) -> "DPoserPrior":
        """Load ours or an official checkpoint. Official ones need normaliser statistics (spec §1.3).

        Raises:
            InputError: file missing. AssetMismatchError: wrong part / corrupt / unsafe.
            MissingAssetError: official checkpoint and no normaliser found.
        """
        ckpt = read_checkpoint(Path(path), part)
        return cls.from_loaded(ckpt, normalizer=normalizer, device=device, use_ema=use_ema)

    @classmethod
    def from_loaded(
        cls,
        ckpt: Checkpoint,
        *,
        normalizer: Path | None = None,
        device: str | torch.device = "cpu",
        use_ema: bool = True,
        source: str | None = None,
    ) -> "DPoserPrior":
        """A prior from a checkpoint already read (`read_checkpoint`).

        Normaliser: the statistics a dposer checkpoint carries are the ones its network was trained
        with, so they are always used (a `normalizer` given as well is ignored with a warning naming
        both); official checkpoints carry none and use `normalizer`, else the downloaded copy.

        Raises:
            AssetMismatchError: weights that do not fit the configured network, or bad statistics.
            MissingAssetError: an official checkpoint and no normaliser found.
        """
        net = build_net(ckpt.config.net)
        try:
            net.load_state_dict(ckpt.model, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0][:200]
            raise AssetMismatchError(
                f"{ckpt.path}: weights do not fit the configured network ({first})"
            ) from None
        if use_ema and ckpt.ema:
            params = dict(net.named_parameters())
            with torch.no_grad():
                for name, value in ckpt.ema.items():
                    if name in params:  # buffers and aliased modules are in `model` already
                        params[name].copy_(value)
        if ckpt.normalizer is not None:
            if normalizer is not None:
                log.warning(
                    "--normalizer %s is ignored: %s carries the statistics its network was trained with "
                    "(used)",
                    normalizer,
                    ckpt.path,
                )
            stats = ckpt.normalizer
            if not (isinstance(stats, dict) and "mean" in stats and "std" in stats):
                raise AssetMismatchError(f"{ckpt.path}: malformed normaliser (expected mean and std tensors)")
            norm = Normalizer.for_part(
                ckpt.part, stats["mean"], stats["std"], where=f"{ckpt.path}: normaliser"
            )
        else:
            cache = official_dir(models_dir())
            norm = load_official_normalizer(ckpt.part, normalizer, cache)
        prior = cls(ckpt.config, net, norm, source or f"{ckpt.format}: {ckpt.path}")
        # `dposer train` records whether the prior looked healthy (issue #17): every command warns on a bad one
        prior.healthy = ckpt.extra.get("healthy")
        if prior.healthy is False:
            reasons = "; ".join(map(str, ckpt.extra.get("health_reasons") or [])) or "no reason recorded"
            log.warning("%s was marked unhealthy by `dposer train`: %s", ckpt.path, reasons)
        return prior.to(resolve_device(device))

    @classmethod
    def load(
        cls,
        part: Part | str,
        checkpoint: Path | None = None,
        *,
        normalizer: Path | None = None,
        device: str | torch.device = "cpu",
    ) -> "DPoserPrior":
        """Resolve `--checkpoint` > downloaded official weights > the bundled demo prior."""
        part = Part(part)
        if checkpoint is not None:
            return cls.from_checkpoint(checkpoint, part, normalizer=normalizer, device=device)
        official = official_checkpoint(part)
        if official.is_file():
            prior = cls.from_checkpoint(official, part, normalizer=normalizer, device=device)
            prior.source = f"official: {official}"
            return prior
        demo = demo_checkpoint(part)
        if demo.is_file():
            prior = cls.from_checkpoint(demo, part, normalizer=normalizer, device=device)  # warns if given
            prior.source = f"demo: {demo}"
            return prior
        raise MissingAssetError(
            f"no {part.value} prior found (looked for {official} and the bundled demo prior {demo})",
            hint=f"run `dposer download {part.value}` or pass --checkpoint",
        )

    # ---- network in normalised space -----------------------------------------------------------
    @property
    def dim(self) -> int:
        return PARTS[self.part].dim

    @property
    def device(self) -> torch.device:
        return self.normalizer.mean.device

    def eps(self, x: Float[Tensor, "*batch D"], t: Float[Tensor, "..."]) -> Float[Tensor, "*batch D"]:
        """Predicted noise ε̂(x_t, t) for normalised x_t; leading dims are flattened for the network."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if t.numel() == 1:
            tt = t.reshape(-1).expand(flat.shape[0])
        elif t.numel() == flat.shape[0]:
            tt = t.reshape(-1)
        else:  # per-sample times (B,) for (B, T, D) inputs: broadcast over the inner dims
            tt = t.reshape(t.shape[0], *([1] * (len(lead) - 1))).expand(lead).reshape(-1)
        self.nfe += 1
        return self.net(flat, self.sde.label(tt)).reshape(*lead, -1)

    def prepare_times(self, times: Sequence[float] | None) -> None:
        """Get ready for `loss` calls at these diffusion times (an annealed optimisation knows them in advance):
        per time, the noise scales and weights, and the time projections of every TimeFC in the network (~30 %
        of an evaluation at batch 1), computed in one batch; the loss's network call is then replayed from a recording
        (`TraceCache`). `None` forgets them."""
        self._prepared = {}
        self._trace.clear()
        if not times:
            return
        for v in times:
            validate.diffusion_time(v)
        t = torch.tensor(list(times), dtype=torch.float32, device=self.device)
        label = self.sde.label(t)
        with torch.no_grad():
            # TimeFC: one (T, K, H) tensor; composite networks: a tuple of them, one per TimeFC inside
            time_terms = getattr(self.net, "time_terms", None)
            terms = time_terms(label) if callable(time_terms) else None
            alpha, std = self.sde.marginal(t)  # the same float32 arithmetic as `dposer_loss`
            weights = {kind: weight(alpha, std, kind) for kind in WEIGHTINGS}
        parts = () if terms is None else (terms,) if isinstance(terms, Tensor) else tuple(terms)
        for i, v in enumerate(times):
            one = slice(i, i + 1)
            self._prepared[float(v)] = _Prepared(
                label[one],
                tuple(part[one] for part in parts),
                alpha[one, None],
                std[one, None],
                {k: w[one] for k, w in weights.items()},
            )

    def prepared_tensors(self, t: float, weighting: str, dtype: torch.dtype) -> tuple[Tensor, ...] | None:
        """The tensors a `loss` call at time `t` reads when `t` was given to `prepare_times` (None if it was not, or
        that call would not use them) — for a replayed optimisation step (`engine.optimize.StepPlan`), which
        must be handed every tensor that changes from step to step."""
        prep = None if self.net.training else self._prepared.get(t)
        if prep is None or prep.alpha.dtype != dtype or weighting not in prep.weights:
            return None
        return (prep.label, *prep.terms, prep.alpha, prep.std, prep.weights[weighting])

    def denoise(
        self, x_t: Float[Tensor, "*batch D"], t: Float[Tensor, "*batch"]
    ) -> Float[Tensor, "*batch D"]:
        """Tweedie one-step estimate x̂0 = (x_t − σ ε̂)/α in normalised space."""
        alpha, std = self.sde.marginal(t)
        return (x_t - append_dims(std, x_t.ndim) * self.eps(x_t, t)) / append_dims(alpha, x_t.ndim)

    def normalize(self, pose: Tensor) -> Tensor:
        return self.normalizer.normalize(pose)

    def denormalize(self, x: Tensor) -> Tensor:
        return self.normalizer.denormalize(x)

    # ---- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        sampler: str = smp.DEFAULT_SAMPLER,
        steps: int | None = None,
        t_end: float = 1e-3,
        generator: torch.Generator | None = None,
        progress: Callable[[int, int], None] | None = None,
        shape: tuple[int, ...] = (),
        callback: Callable[[smp.SamplerStep], None] | None = None,
    ) -> Float[Tensor, "n *shape D"]:
        """Draw `n` raw poses (axis-angle / coefficients); `shape` adds inner dims, e.g. (T,) for motions.

        Args:
            sampler, steps, t_end: one of `engine.samplers.SAMPLERS` (default `DEFAULT_SAMPLER`,
                SDE-DPM-Solver++(2M)), its step count (= NFE; default per sampler) and the last grid time.
            progress: called as `progress(done, total)` after each step.
            callback: called once per step with an `engine.samplers.SamplerStep` whose `x` (noisy state
                x_t) and `denoised` (x̂0) are in raw pose space, as the returned samples; for figures of
                the sampling process (`tasks.sample.sample(..., return_trajectory=True)` records them).
        """
        _check_sample(self, n, shape)
        if sampler not in smp.SAMPLERS:
            from dposer_cli.core.errors import suggest

            raise InputError(
                f"unknown sampler {sampler!r}{suggest(sampler, list(smp.SAMPLERS))}",
                hint="samplers: " + ", ".join(smp.SAMPLERS),
            )
        steps = steps or smp.DEFAULT_STEPS[sampler]
        x = self.sde.prior_sampling((n, *shape, self.dim), generator, self.device)

        def on_step(s: smp.SamplerStep) -> None:
            if callback is not None:
                callback(replace(s, x=self.denormalize(s.x), denoised=self.denormalize(s.denoised)))
            if progress is not None:
                progress(s.i + 1, s.steps)

        x0 = smp.SAMPLERS[sampler](
            self.eps,
            x,
            sde=self.sde,
            steps=steps,
            t_end=t_end,
            generator=generator,
            callback=on_step if progress is not None or callback is not None else None,
        )
        return self.denormalize(x0)

    # ---- the prior as a loss --------------------------------------------------------------------
    def loss(
        self,
        pose: Float[Tensor, "*batch D"],
        t: float | Tensor = 0.1,
        *,
        weighting: str = "snr",
        generator: torch.Generator | None = None,
        normalized: bool = False,
        noise: Tensor | None = None,
    ) -> Float[Tensor, "*batch"]:
        """Per-sample DPoser loss (spec §6.1) of raw poses (or normalised ones with `normalized=True`).

        Differentiable w.r.t. `pose` only (stop-gradient target, one network evaluation).

        Raises:
            InputError: `t` outside (0, 1] or not finite.
        """
        if isinstance(t, Tensor):
            if t.numel() and not bool(((t > 0) & (t <= 1)).all()):  # NaN fails both comparisons
                bad = t.detach().flatten()[~((t > 0) & (t <= 1)).flatten()][0]
                raise InputError(f"t must be a diffusion time in (0, 1] (got {float(bad)})")
        else:
            prepared = None if self.net.training else self._prepared.get(t)
            if prepared is not None and prepared.alpha.dtype == pose.dtype and weighting in prepared.weights:
                x0 = pose if normalized else self.normalize(pose)
                return self._prepared_loss(x0, prepared, weighting, generator, noise)
            validate.diffusion_time(t)
        x0 = pose if normalized else self.normalize(pose)
        return dposer_loss(
            self.eps, x0, t, sde=self.sde, weighting=weighting, generator=generator, noise=noise
        )

    def _target(self) -> "_Target":
        """The `_Target` of this network, built once (kept out of `_modules`: not a second copy in state dicts)."""
        target = self.__dict__.get("_target_module")
        if target is None or target.net is not self.net:
            target = _Target(self.net)
            self.__dict__["_target_module"] = target
        return target

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "DPoserPrior":
        self._trace.clear()  # recordings hold the old tensors
        return super()._apply(fn, recurse)

    def _prepared_loss(
        self,
        x0: Tensor,
        prep: "_Prepared",
        weighting: str,
        generator: torch.Generator | None,
        noise: Tensor | None,
    ) -> Tensor:
        """`dposer_loss` at a time given to `prepare_times`: the same values (same noise draw, or `noise`; same
        float32 arithmetic), with the network's evaluation replayed from a recording (`TraceCache`)."""
        lead, dim = x0.shape[:-1], x0.shape[-1]
        flat = x0.reshape(-1, dim)
        z = (
            noise.reshape(-1, dim)
            if noise is not None
            else torch.randn(flat.shape, generator=generator, device=flat.device, dtype=flat.dtype)
        )
        self.nfe += 1
        with torch.no_grad():
            target = self._trace.run(
                "target",
                self._target(),
                flat.detach(),
                z,
                prep.alpha,
                prep.std,
                prep.label.expand(len(flat)),
                *prep.terms,
            )
        return (prep.weights[weighting] * ((flat - target) ** 2).sum(-1)).reshape(lead)

    @staticmethod
    def time_at(step: int, total: int, task: str | tuple[float, float] = "completion") -> float:
        """Annealed diffusion time for optimisation step `step` of `total` (spec §6.2)."""
        t_min, t_max = T_RANGES[task] if isinstance(task, str) else task
        return time_schedule(step, total, t_min, t_max)


def load_prior(
    part: Part | str,
    checkpoint: Path | None = None,
    *,
    normalizer: Path | None = None,
    device: str | torch.device = "cpu",
) -> DPoserPrior:
    """Convenience alias of `DPoserPrior.load`."""
    return DPoserPrior.load(part, checkpoint, normalizer=normalizer, device=device)


def _check_sample(prior: DPoserPrior, n: int, shape: tuple[int, ...]) -> None:
    """`sample(n, shape=...)`: n ≥ 1 and the sampler's peak memory (estimated from the network width) fits."""
    validate.integer("n", n, lo=1)
    inner = 1
    for size in shape:
        inner *= validate.integer("shape", size, lo=1)
    width = max((m.out_features for m in prior.net.modules() if isinstance(m, nn.Linear)), default=0)
    free: int | None
    if prior.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(prior.device)
    else:
        free = validate.available_memory()
    validate.memory(
        f"sampling {n * inner} {prior.part.value} poses",
        validate.sample_bytes(n, dim=prior.dim, width=width, inner=inner),
        free,
        hint="ask for fewer samples (-n)",
    )
