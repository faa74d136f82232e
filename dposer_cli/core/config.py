"""Frozen configuration dataclasses; saved inside every checkpoint and rebuilt with `from_dict`."""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dposer_cli.core.errors import AssetMismatchError

C = TypeVar(
    "C", bound="_Config"
)  # not typing.Self: beartype (the test-time shape checker) rejects it on methods


class _Config:
    """Mixin: `to_dict()` / `from_dict()` that rejects unknown keys with a suggestion."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {}
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if key not in names:
                close = difflib.get_close_matches(key, list(names), n=1)
                tip = f" (did you mean {close[0]!r}?)" if close else ""
                raise AssetMismatchError(f"{cls.__name__}: unknown config key {key!r}{tip}")
            hint = hints[key]
            if isinstance(hint, type) and issubclass(hint, _Config) and isinstance(value, dict):
                value = hint.from_dict(value)
            elif isinstance(hint, types.UnionType | typing._UnionGenericAlias) and isinstance(value, dict):  # type: ignore[attr-defined]
                sub = [a for a in typing.get_args(hint) if isinstance(a, type) and issubclass(a, _Config)]
                if sub:
                    value = sub[0].from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class SDEConfig(_Config):
    """Forward SDE (spec §3). Released models use subVP with β ∈ [0.1, 20]."""

    kind: str = "subvp"  # "subvp" | "vp" | "ve"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01  # VE only
    sigma_max: float = 50.0  # VE only
    num_scales: int = 1000  # N: discretisation steps of the official sampler


@dataclass(frozen=True, slots=True)
class NetConfig(_Config):
    """Score network (spec §2). `kind="timefc"` for one part, `"wholebody"` for the Finetune model."""

    kind: str = "timefc"
    dim: int = 63  # input/output vector size D
    hidden_dim: int = 1024
    embed_dim: int = 512
    n_blocks: int = 2
    dropout: float = 0.1
    # the sigma table divided into the output (scale_by_sigma, spec §2.2)
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    scale_by_sigma: bool = True  # official: ε̂ = out / sigmas[floor(999t)]; False: ε̂ = out (easier to train)
    gaussian_skip: bool = False  # ε̂ += σ/(α²+σ²)·x_t (exact for N(0, I) data; subVP β 0.1–20); not official
    # whole-body Finetune only: widths of the frozen part networks (body, hand, face)
    part_hidden: tuple[int, int, int] = (1024, 1024, 1024)
    part_embed: tuple[int, int, int] = (512, 512, 512)


@dataclass(frozen=True, slots=True)
class PriorConfig(_Config):
    """Everything needed to rebuild a prior from a state dict."""

    part: str = "body"
    rot_rep: str = "axis"
    sde: SDEConfig = field(default_factory=SDEConfig)
    net: NetConfig = field(default_factory=NetConfig)


@dataclass(frozen=True, slots=True)
class TrainConfig(_Config):
    """Training hyper-parameters (spec §10); defaults sized for the CPU demo priors."""

    steps: int = 20000
    batch_size: int = 1280
    lr: float = 2e-4
    warmup: int = 500
    ema_rate: float = 0.9999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    eps: float = 1e-5  # t ~ U(eps, 1)
    seed: int = 0
    ckpt_every: int = 1000
    val_every: int = 1000
    val_fraction: float = 0.05
    mask_prob: float = 0.2  # whole-body random part masking (spec §10.3)
    t_weighting: str = "uniform"  # "uniform" (official) | "adaptive": loss per time bin / its running mean
    normalizer_stats: str = "mean-std"  # "mean-std" (official) | "robust": median and IQR (heavy-tailed data)
