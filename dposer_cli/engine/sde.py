"""Forward SDEs with score_sde vocabulary (spec §3): `marginal(t) -> (α, σ)`, `sde(x, t)`, `label(t)`.

All functions take a per-sample time `t` of shape (B,) and broadcast with `append_dims`, so the same
code serves (B, D) poses and (B, T, D) motions.
"""

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from dposer_cli.core.config import SDEConfig
from dposer_cli.core.errors import InputError


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so `x` (B,) broadcasts against a tensor with `ndim` dims."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


@runtime_checkable
class SDE(Protocol):
    """What samplers, losses and inpainters use of a forward SDE (score_sde's `sde_lib` verbs, spec §3).

    `T` is the end time (1.0) and `N` the number of discretisation steps the network was trained with
    (`label` maps t to the network's conditioning with it).
    """

    T: float
    N: int

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α(t), σ(t)) of x_t = α·x0 + σ·z, per sample."""
        ...

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward drift f(x, t) (shaped like `x`) and diffusion g(t) (per sample)."""
        ...

    def label(self, t: Tensor) -> Tensor:
        """The network's time conditioning for time `t`."""
        ...

    def prior_sampling(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """A draw from the terminal distribution p_T."""
        ...


class VPSDE:
    """Variance-preserving SDE, β(t) = β0 + t(β1 − β0)."""

    def __init__(self, cfg: SDEConfig) -> None:
        self.cfg = cfg
        self.beta_0, self.beta_1, self.N = cfg.beta_min, cfg.beta_max, cfg.num_scales
        self.T = 1.0

    def _lmc(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α(t), σ(t)) of x_t = α·x0 + σ·z."""
        lmc = self._lmc(t)
        return torch.exp(lmc), torch.sqrt(1.0 - torch.exp(2.0 * lmc))

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward drift f(x, t) and diffusion g(t)."""
        return -0.5 * append_dims(self.beta(t), x.ndim) * x, torch.sqrt(self.beta(t))

    def label(self, t: Tensor) -> Tensor:
        """Network conditioning: 999·t for continuous VP-family models (spec §4)."""
        return t * (self.N - 1)

    def prior_sampling(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        return torch.randn(shape, generator=generator, device=device)


class SubVPSDE(VPSDE):
    """sub-VP SDE used by every released model; σ(t) = 1 − e^{2·lmc} (not square-rooted, spec §3)."""

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lmc = self._lmc(t)
        return torch.exp(lmc), 1.0 - torch.exp(2.0 * lmc)

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(t)
        discount = 1.0 - torch.exp(-2.0 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t**2)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta * discount)


class VESDE:
    """Variance-exploding SDE, σ(t) = σmin (σmax/σmin)^t."""

    def __init__(self, cfg: SDEConfig) -> None:
        self.cfg = cfg
        self.sigma_min, self.sigma_max, self.N = cfg.sigma_min, cfg.sigma_max, cfg.num_scales
        self.T = 1.0

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.ones_like(t), sigma

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.zeros_like(x), sigma * math.sqrt(
            2 * (math.log(self.sigma_max) - math.log(self.sigma_min))
        )

    def label(self, t: Tensor) -> Tensor:
        return self.marginal(t)[1]

    def prior_sampling(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        return torch.randn(shape, generator=generator, device=device) * self.sigma_max


SDES: dict[str, Callable[[SDEConfig], SDE]] = {"subvp": SubVPSDE, "vp": VPSDE, "ve": VESDE}


def build_sde(cfg: SDEConfig) -> SDE:
    """The SDE `cfg.kind` names (see SDES).

    Raises:
        InputError: an unknown kind (checkpoints are checked when read: `engine.checkpoint.read_checkpoint`).
    """
    factory = SDES.get(cfg.kind) if isinstance(cfg.kind, str) else None
    if factory is None:
        raise InputError(f"unknown SDE kind {cfg.kind!r} (known: {', '.join(SDES)})")
    return factory(cfg)
