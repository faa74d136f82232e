"""Tiny priors in our checkpoint format for fast CLI/service tests (random weights, real statistics)."""

from pathlib import Path

import torch

from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.checkpoint import save_checkpoint
from dposer_cli.engine.nets import TimeFC
from tests._fixtures.checkpoints import tiny_net


def write_tiny_prior(
    path: Path, part: Part, *, seed: int = 0, width: int = 32, gaussian: bool = False
) -> Path:
    """A dposer/1 checkpoint with a `width`-wide random network and unit statistics. `gaussian`: a one-part
    network that is the exact Gaussian score (`gaussian_skip`, zero residual), so its samples are N(0, 1) in the
    normaliser's space (0.2 raw): plausible-sized poses where a test draws them; a random network's samples
    can be anything (thousands of radians)."""
    part = Part(part)
    net = tiny_net(part, width, 16, seed)
    if gaussian and part is not Part.wholebody:
        dim = PARTS[part].dim
        net = TimeFC(dim, dim, width, 16, scale_by_sigma=False, gaussian_skip=True)
        with torch.no_grad():
            net.post_dense.weight.zero_()
            net.post_dense.bias.zero_()
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
        cfg = PriorConfig(
            part=part.value,
            net=NetConfig(
                dim=PARTS[part].dim,
                hidden_dim=width,
                embed_dim=16,
                scale_by_sigma=not gaussian,
                gaussian_skip=gaussian,
            ),
        )
    dim = PARTS[part].dim
    stats = {"mean": torch.zeros(dim), "std": torch.full((dim,), 0.2)}
    return save_checkpoint(
        Path(path), part=part, config=cfg, model=net.state_dict(), ema=None, normalizer=stats
    )
