"""Drawing several pictures at once: the numpy z-buffer (`soft`) and PNG encoding spend most of their time in
numpy and zlib, which release the GIL, so a few threads draw a batch of photos' pictures side by side."""

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

from dposer_cli.core.device import THREADS_ENV, available_cores, env_threads

T = TypeVar("T")
R = TypeVar("R")

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
    cap = min(
        available_cores(), MAX_PICTURE_WORKERS, env_threads(THREADS_ENV, strict=False) or MAX_PICTURE_WORKERS
    )
    return max(1, min(count, cap))


def map_each(fn: Callable[[T], R], items: Iterable[T], *, workers: int) -> list[R]:
    """`[fn(item) for item in items]`, on `workers` threads (in order on this one when 1). The first error is
    raised once the running calls end; calls not yet started are cancelled (Ctrl-C too)."""
    items = list(items)
    if workers <= 1 or len(items) < 2:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dposer-draw")
    try:
        return [future.result() for future in [pool.submit(fn, item) for item in items]]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last one shorter): `itertools.batched` before Python 3.12."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
