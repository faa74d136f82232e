"""Device selection, seeded generators and the torchrun process group (spec-free, torch only)."""

import os

import torch

from dposer_cli.core.errors import InputError, UnavailableError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """`auto` → CUDA when available, else CPU; `cuda[:N]` without CUDA raises UnavailableError."""
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnavailableError(f"--device {spec}: CUDA is not available on this machine", hint="use --device cpu")
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise InputError(f"--device {spec!r} is not a valid device (expected auto, cpu, cuda or cuda:N)") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnavailableError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise InputError(f"--device {spec!r} is not a valid device (expected auto, cpu, cuda or cuda:N)")


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """One generator per run, on the target device; samplers never touch the global RNG."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def init_distributed() -> tuple[int, int]:
    """(rank, world); initialises torch.distributed when launched by torchrun (WORLD_SIZE > 1).

    NCCL on CUDA, gloo otherwise or when `DPOSER_DIST_BACKEND=gloo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DPOSER_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()
