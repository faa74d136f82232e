"""Exponential moving average of trainable weights with the official warm-up (spec §10.2)."""

import torch
from torch import Tensor, nn


class EMA:
    """shadow ← shadow − (1 − d)(shadow − θ), d = min(rate, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, rate: float = 0.9999) -> None:
        self.rate = rate
        self.num_updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.rate, (1 + self.num_updates) / (10 + self.num_updates))
        params = dict(model.named_parameters())
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach() for n in names], 1 - decay)

    def state_dict(self) -> dict[str, Tensor | int | float]:
        return {
            "rate": self.rate,
            "num_updates": self.num_updates,
            **{f"shadow.{k}": v for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Take `state_dict()`'s entries; checked first, so a failed load changes nothing.

        Raises:
            KeyError: an entry is missing. ValueError / TypeError: a shadow that is not a tensor of its weight's
                shape (copy_ would broadcast one silently), a rate outside [0, 1) or a negative update count.
        """
        rate, num_updates = float(state["rate"]), int(state["num_updates"])
        if not (0 <= rate < 1 and num_updates >= 0):
            raise ValueError(f"rate {rate} / num_updates {num_updates} out of range")
        for k, like in self.shadow.items():
            value = state[f"shadow.{k}"]
            if not isinstance(value, Tensor) or value.shape != like.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"shadow.{k} is {shape}; expected a tensor of shape {tuple(like.shape)}")
        self.rate, self.num_updates = rate, num_updates
        for k in self.shadow:
            self.shadow[k].copy_(state[f"shadow.{k}"])

    def weights(self, model: nn.Module) -> dict[str, Tensor]:
        """Full state dict of `model` with trainable weights replaced by the EMA copies."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        canonical = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        for name, p in model.named_parameters(remove_duplicate=False):  # aliased modules appear twice
            if id(p) in canonical:
                sd[name] = self.shadow[canonical[id(p)]].clone()
        return sd
