"""Tiny official-format checkpoints (Lightning `last.ckpt` layout, spec §2.7) written by the tests.

The pickled config is an instance of a class defined here under a module name that does not exist at
load time, exactly like `ml_collections.ConfigDict` for a user without ml_collections.
"""

import pickle
import sys
import types
from pathlib import Path

import torch

from dposer_cli.core.config import NetConfig
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.nets import FinetuneWholebody, TimeFC


def tiny_net(part: Part, hidden: int = 32, embed: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if part is Part.wholebody:
        return FinetuneWholebody(
            NetConfig(
                kind="wholebody",
                dim=256,
                hidden_dim=hidden,
                embed_dim=embed,
                part_hidden=(hidden,) * 3,
                part_embed=(embed,) * 3,
            )
        )
    dim = PARTS[part].dim
    return TimeFC(dim, dim, hidden, embed)


def write_official_ckpt(
    path: Path,
    part: Part,
    *,
    hidden: int = 32,
    embed: int = 16,
    seed: int = 0,
    ema_offset: float = 0.5,
    extra_state: bool = True,
) -> Path:
    """Write `last.ckpt` with `model.*` weights, a positional EMA list (weights + ema_offset) and a foreign config."""
    net = tiny_net(Part(part), hidden, embed, seed)
    state = {f"model.{k}": v.clone() for k, v in net.state_dict().items()}
    if extra_state:  # licensed body-model buffers the real files embed; a loader must ignore them
        state["body_model_vis.bm.v_template"] = torch.zeros(10, 3)
    shadow = [p.detach().clone() + ema_offset for p in net.parameters() if p.requires_grad]
    mod = types.ModuleType("ml_collections_fake")

    class ConfigDict:  # pickled by reference to a module that will not exist at load time
        def __init__(self, d):
            self.d = d

    ConfigDict.__module__ = "ml_collections_fake"
    ConfigDict.__qualname__ = "ConfigDict"
    mod.ConfigDict = ConfigDict
    sys.modules["ml_collections_fake"] = mod
    try:
        ckpt = {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "2.1.0",
            "state_dict": state,
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"config": ConfigDict({"model": {"HIDDEN_DIM": hidden}}), "N_POSES": 21},
            "model_ema": {"decay": 0.9999, "num_updates": 1234, "shadow_params": shadow},
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, path)
    finally:
        del sys.modules["ml_collections_fake"]
    return Path(path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def write_malicious_ckpt(path: Path) -> Path:
    """A checkpoint whose unpickling would call os.system."""
    torch.save(
        {"state_dict": {"model.x": torch.zeros(1)}, "payload": _Evil()},
        path,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    return Path(path)
