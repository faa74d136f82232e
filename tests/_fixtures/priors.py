"""Tiny priors in our checkpoint format for fast CLI/service tests (random weights, real statistics)."""

from pathlib import Path

import torch

from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.checkpoint import save_checkpoint
from tests._fixtures.checkpoints import tiny_net


def write_tiny_prior(path: Path, part: Part, *, seed: int = 0, width: int = 32) -> Path:
    """A dposer/1 checkpoint with a `width`-wide network and unit statistics (samples are N(0,1)-ish)."""
    part = Part(part)
    net = tiny_net(part, width, 16, seed)
    if part is Part.wholebody:
        cfg = PriorConfig(
            part=part.value,
            net=NetConfig(
                kind="wholebody",
                dim=256,
                hidden_dim=width,
                embed_dim=16,
                part_hidden=(width,) * 3,
                part_embed=(16, 16, 16),
            ),
        )
    else:
        cfg = PriorConfig(part=part.value, net=NetConfig(dim=PARTS[part].dim, hidden_dim=width, embed_dim=16))
    dim = PARTS[part].dim
    stats = {"mean": torch.zeros(dim), "std": torch.full((dim,), 0.2)}
    return save_checkpoint(
        Path(path), part=part, config=cfg, model=net.state_dict(), ema=None, normalizer=stats
    )
