"""Counting replayed optimisation steps (`core.trace.record_step` recordings) in task tests."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dposer_cli.core.trace import TraceCache, record_step


@contextmanager
def step_calls() -> Iterator[list[Any]]:
    """Within the block, one entry per optimisation step run through a step-recording cache: the recording it
    replayed, or None (a warm-up step, the recording's own eager run, or a refused recording)."""
    calls: list[Any] = []
    real = TraceCache.run

    def spy(self: TraceCache, key: Any, fn: Any, *args: Any) -> Any:
        if self.recorder is record_step:
            calls.append(self.recording_for(key, *args))
        return real(self, key, fn, *args)

    TraceCache.run = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        TraceCache.run = real  # type: ignore[method-assign]
