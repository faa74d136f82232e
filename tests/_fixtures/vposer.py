"""A synthetic VPoser v2 checkpoint in the published layout (V02_05/snapshots/*.ckpt, Lightning keys `vp_model.`)."""

from pathlib import Path

import torch


class ExperimentConfig:
    """Stands for the OmegaConf object a real checkpoint pickles in `hyper_parameters` (a class the loader
    does not import)."""

    def __init__(self) -> None:
        self.model_params = {"num_neurons": 48, "latentD": 8}


def vposer_state(hidden: int = 48, latent: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the V02_05 key names (BatchNorm statistics included)."""
    g = torch.Generator().manual_seed(seed)

    def lin(prefix: str, n_in: int, n_out: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": torch.randn(n_out, n_in, generator=g) / n_in**0.5,
            f"{prefix}.bias": 0.1 * torch.randn(n_out, generator=g),
        }

    def bn(prefix: str, n: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_mean": 0.2 * torch.randn(n, generator=g),
            f"{prefix}.running_var": 0.5 + torch.rand(n, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(7),
        }

    # decoder output near the identity rotation (6D [1, 0, 0, 1, 0, 0] per joint): moderate joint angles, as
    # a trained VPoser gives
    out = lin("decoder_net.5", hidden, 126)
    out["decoder_net.5.weight"] *= 0.3
    out["decoder_net.5.bias"] = (
        torch.tensor([1.0, 0, 0, 1, 0, 0]).repeat(21) + 0.05 * out["decoder_net.5.bias"]
    )
    return {
        **bn("encoder_net.1", 63),
        **lin("encoder_net.2", 63, hidden),
        **bn("encoder_net.4", hidden),
        **lin("encoder_net.6", hidden, hidden),
        **lin("encoder_net.7", hidden, hidden),
        **lin("encoder_net.8.mu", hidden, latent),
        **lin("encoder_net.8.logvar", hidden, latent),
        **lin("decoder_net.0", latent, hidden),
        **lin("decoder_net.3", hidden, hidden),
        **out,
    }


def write_vposer(root: Path, *, hidden: int = 48, latent: int = 8, drop: str | None = None) -> Path:
    """Write `root/V02_05/snapshots/V02_05_epoch=13_val_loss=0.03.ckpt`; return the V02_05 folder."""
    state = {f"vp_model.{k}": v for k, v in vposer_state(hidden, latent).items() if k != drop}
    folder = Path(root) / "V02_05"
    (folder / "snapshots").mkdir(parents=True)
    torch.save(
        {"state_dict": state, "hyper_parameters": ExperimentConfig(), "epoch": 13},
        folder / "snapshots" / "V02_05_epoch=13_val_loss=0.03.ckpt",
    )
    return folder
