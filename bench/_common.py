"""Shared benchmark helpers: environment record, timing (the speed harness of `dposer_cli.evaluation.speed`),
JSON output (atomic)."""

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from dposer_cli.evaluation.speed import best_of


def environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def timeit(fn: Callable[[], object], *, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeat` runs (seconds), after `warmup` runs (`evaluation.speed.best_of`)."""

    def run() -> tuple[int, int]:
        fn()
        return 1, 0

    return best_of(device(), run, repeat=repeat, warmup=warmup)["seconds"]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    return p


def write(report: dict, out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
