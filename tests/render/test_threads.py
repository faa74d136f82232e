"""render.threads: how many threads draw a command's pictures, and errors raised from them."""

import threading

import pytest

from dposer_cli.render import threads


def test_picture_workers_policy(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("DPOSER_THREADS", raising=False)
    assert threads.picture_workers(1, "soft") == 1  # one picture: this thread
    assert threads.picture_workers(3, "auto") == 3
    assert threads.picture_workers(50, "soft") == threads.MAX_PICTURE_WORKERS
    assert threads.picture_workers(50, "pyrender") == 1  # one OpenGL context
    monkeypatch.setenv("DPOSER_THREADS", "2")
    assert threads.picture_workers(50, "soft") == 2
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert threads.picture_workers(50, "soft") == 1


def test_run_each_runs_every_item_and_raises_the_first_error():
    seen, names = [], set()

    def fn(x):
        seen.append(x)
        names.add(threading.current_thread().name)

    threads.map_each(fn, list(range(20)), workers=3)
    assert sorted(seen) == list(range(20))
    assert all(n.startswith("dposer-draw") for n in names)

    def fail(x):
        if x == 5:
            raise ValueError("picture 5")

    with pytest.raises(ValueError, match="picture 5"):
        threads.map_each(fail, list(range(10)), workers=2)
    seen.clear()
    threads.map_each(seen.append, [1, 2, 3], workers=1)
    assert seen == [1, 2, 3]  # in order on this thread


def test_map_each_keeps_the_order_and_windows_split_a_stream():
    import time

    def slow_square(x):
        time.sleep(0.001 * (x % 3))  # later items may finish first
        return x * x

    assert threads.map_each(slow_square, range(12), workers=4) == [x * x for x in range(12)]
    assert list(threads.windows(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(threads.windows([], 3)) == []
