"""Device selection, CPU threads, seeded generators and the torchrun process group (spec-free, torch only)."""

import logging
import os

import torch

from dposer_cli.core.errors import InputError, UnavailableError

log = logging.getLogger(__name__)


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
            raise UnavailableError(
                f"--device {spec}: CUDA is not available on this machine", hint="use --device cpu"
            )
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise InputError(
                f"--device {spec!r} is not a valid device (expected auto, cpu, cuda or cuda:N)"
            ) from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnavailableError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    raise InputError(f"--device {spec!r} is not a valid device (expected auto, cpu, cuda or cuda:N)")


THREADS_ENV = "DPOSER_THREADS"
# Samples per call from which every core is used (torch's own default); below it, one thread. Measured with
# `python -m bench.bench_threads` (bench/results/threads.json) on the project's busy 2-core machine, one thread
# won at every size: two threads made a batch-1 network call 4-190x slower, a batch-1000 call and a
# 1280-sample training step 4-6x slower. Small work (fitting, IK, completion) is per-operation overhead that
# threads only add to; from this size on the split pays on an idle multi-core machine (not measurable here).
# On a busy machine set DPOSER_THREADS=1.
PARALLEL_MIN_ITEMS = 1000


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def env_threads(name: str, *, strict: bool) -> int | None:
    """A thread count from the environment variable `name`; None when unset (or, unless `strict`, malformed)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    first = raw.split(",")[0].strip()  # OpenMP allows a nesting list "4,2": the outer level counts
    if first.isdigit() and int(first) >= 1:
        return int(first)
    if strict:
        raise InputError(f"${name}={raw!r} is not a positive whole number of threads", hint=f"e.g. {name}=1")
    return None


def configure_threads(requested: int | None, work_items: int | None = None) -> int:
    """Choose torch's CPU thread count for this run, set it, and return it.

    Order: `requested` (the `--threads` option) > `$DPOSER_THREADS` > `$OMP_NUM_THREADS` > the policy:
    one thread, unless `work_items` (samples per network call, e.g. the batch) reaches
    `PARALLEL_MIN_ITEMS`, then every available core. Small calls are dominated by per-operation overhead,
    which extra threads only add to (and on a busy machine they wait for a core). A count above the available
    cores is lowered to them, with a warning.

    Raises:
        InputError: `requested` below 1, or `$DPOSER_THREADS` not a positive integer.
    """
    if requested is not None and requested < 1:
        raise InputError(f"--threads {requested}: need at least 1 thread")
    sources = (
        ("--threads", requested),
        (f"${THREADS_ENV}", env_threads(THREADS_ENV, strict=True)),
        ("$OMP_NUM_THREADS", env_threads("OMP_NUM_THREADS", strict=False)),
    )
    source, threads = next(((name, n) for name, n in sources if n), ("", None))
    cores = available_cores()
    if threads is None:
        large = work_items is not None and work_items >= PARALLEL_MIN_ITEMS
        threads = cores if large else 1
    elif threads > cores:  # more threads than cores only wait for each other (and thousands crash OpenMP)
        log.warning(
            "%s %d: this process may run on %d cores; using %d threads", source, threads, cores, cores
        )
        threads = cores
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """One generator per run, on the target device; samplers never touch the global RNG.

    The seed is taken modulo 2^64, torch's seed range: `--seed 2**64-1` plus a batch offset wraps around
    instead of failing; every seed within the range gives the generator it always gave.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) % 2**64)
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
        backend = (
            "nccl"
            if torch.cuda.is_available() and os.environ.get("DPOSER_DIST_BACKEND") != "gloo"
            else "gloo"
        )
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()
