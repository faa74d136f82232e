"""Replay pure tensor functions from a recorded trace: the small-batch hot loops' dispatch cost, cut by half.

A fit or an IK solve calls the same body model and prior network hundreds of times on one or a few rows,
where the cost is Python and operator dispatch, not arithmetic: ~0.5 ms of a ~1 ms joints-only body forward
at batch 1. `TraceCache.run(fn, *tensors)` records `fn` once the same call signature (shapes, dtypes,
devices, which inputs need gradients, grad mode) has been seen `warmup` times, and from then on replays the
recording through TorchScript's interpreter with its optimising passes off: the same operators in the same
order (the results and gradients are the eager ones, bit for bit), without the Python in between, and with
no profiling warm-up runs. One-off calls never pay for a recording.

`fn` must be pure: its result may depend only on its tensor arguments, their shapes, and tensors it captures
that never change afterwards (module buffers). An `nn.Module` is recorded as a module: its parameters stay
shared, so in-place updates (an EMA copy, `load_state_dict`) are seen. No `.item()`, no
branching on tensor values. A recording that fails falls back to eager calls for that signature, and
`DPOSER_TRACE=0` turns replays off everywhere (for debugging).
"""

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

TRACE_ENV = "DPOSER_TRACE"
_FAILED = object()  # a signature whose recording failed: always eager


def enabled() -> bool:
    return os.environ.get(TRACE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class TraceCache:
    """Recordings of pure functions per call signature (least recently used ones dropped beyond `size`)."""

    def __init__(self, warmup: int = 2, size: int = 16) -> None:
        self.warmup, self.size = warmup, size
        self._seen: dict[Hashable, int] = {}
        self._traced: OrderedDict[Hashable, Any] = OrderedDict()

    def recorded(self) -> int:
        """How many signatures are replayed from a recording now (failed recordings not counted)."""
        return sum(1 for v in self._traced.values() if v is not _FAILED)

    def clear(self) -> None:
        """Forget every recording (call it when the captured tensors are replaced, e.g. after `.to()`)."""
        self._seen.clear()
        self._traced.clear()

    def run(self, key: Hashable, fn: Callable[..., Any], *args: Tensor) -> Any:
        """`fn(*args)`, replayed from a recording once this `key` and signature of `args` repeat.

        `key` names everything `fn` closes over that changes its operations (which parameters are present,
        a stage index baked in as a number, ...); tensors' shapes, dtypes, devices and `requires_grad` and the
        grad mode are added to it here.
        """
        if not enabled():
            return fn(*args)
        sig = (
            key,
            torch.is_grad_enabled(),
            tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args),
        )
        traced = self._traced.get(sig)
        if traced is None:
            seen = self._seen.get(sig, 0) + 1
            self._seen[sig] = seen
            if seen <= self.warmup:
                return fn(*args)
            traced = self._record(fn, args)
            self._traced[sig] = traced
            if len(self._traced) > self.size:
                old, _ = self._traced.popitem(last=False)
                self._seen.pop(old, None)
        else:
            self._traced.move_to_end(sig)
        if traced is _FAILED:
            return fn(*args)
        with torch.jit.optimized_execution(False):
            return traced(*args)

    @staticmethod
    def _record(fn: Callable[..., Any], args: tuple[Tensor, ...]) -> Any:
        # the tracer wants a named function (partials have none); a module keeps its parameters shared
        def replayed(*tensors: Tensor) -> Any:
            return fn(*tensors)

        try:
            with warnings.catch_warnings():  # deprecation and "may not generalise" notes: the key guards both
                warnings.simplefilter("ignore")
                with torch.jit.optimized_execution(False):
                    target = fn if isinstance(fn, nn.Module) else replayed
                    return torch.jit.trace(target, args, check_trace=False, strict=False)
        except Exception as exc:  # noqa: BLE001 — any recording failure means eager calls, never a wrong result
            log.debug("not recorded (eager calls instead): %s", exc)
            return _FAILED
