"""Drawing several pictures at once: the numpy z-buffer (`soft`) and PNG encoding spend most of their time in
numpy and zlib, which release the GIL, so a few threads draw a batch of photos' pictures side by side."""

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dposer_cli.core.device import THREADS_ENV, available_cores

T = TypeVar("T")

MAX_PICTURE_WORKERS = 4  # more gained nothing measurable on the pictures of one command


def picture_workers(count: int, renderer: str) -> int:
    """Threads for drawing `count` independent pictures with `renderer`.

    One for a single picture, for pyrender (one OpenGL context), and where Python runs without its GIL (Pillow's
    FreeType text drawing is not thread-safe there before Pillow 12.2); else up to the available cores, at most
    `MAX_PICTURE_WORKERS`, and at most `$DPOSER_THREADS` when set (`$OMP_NUM_THREADS` is OpenMP's, for torch).
    """
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    if count < 2 or renderer == "pyrender" or not gil:
        return 1
    cap = min(available_cores(), MAX_PICTURE_WORKERS)
    first = os.environ.get(THREADS_ENV, "").split(",")[0].strip()
    if first.isdigit() and int(first) >= 1:
        cap = min(cap, int(first))
    return max(1, min(count, cap))


def run_each(fn: Callable[[T], object], items: Sequence[T], *, workers: int) -> None:
    """`fn(item)` for every item, on `workers` threads (in order on this one when 1). The first error is
    raised once the running calls end; calls not yet started are cancelled (Ctrl-C too)."""
    if workers <= 1 or len(items) < 2:
        for item in items:
            fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dposer-draw")
    try:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
