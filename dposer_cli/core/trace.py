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

import functools
import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

TRACE_ENV = "DPOSER_TRACE"
_FAILED = object()  # a signature whose recording failed: always eager


def enabled() -> bool:
    return os.environ.get(TRACE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class TraceCache:
    """Recordings of pure functions per call signature (least recently used ones dropped beyond `size`)."""

    def __init__(self, warmup: int = 2, size: int = 16, recorder: "Callable[..., Any] | None" = None) -> None:
        self.warmup, self.size = warmup, size
        self.recorder = recorder  # how a recording is made (default: `torch.jit.trace` of `fn`)
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
        if not enabled() or getattr(_state, "recording", False):
            return fn(*args)
        sig = self._signature(key, args)
        traced = self._traced.get(sig)
        if traced is None:
            seen = self._seen.get(sig, 0) + 1
            self._seen[sig] = seen
            if seen <= self.warmup:
                return fn(*args)
            traced, result = (self.recorder or self._record)(fn, args)
            self._traced[sig] = traced
            if len(self._traced) > self.size:
                old, _ = self._traced.popitem(last=False)
                self._seen.pop(old, None)
            if result is not None:  # the recorder ran the call itself: not twice
                return result
        else:
            self._traced.move_to_end(sig)
        if traced is _FAILED:
            return fn(*args)
        with torch.jit.optimized_execution(False):
            return traced(*args)

    def recording_for(self, key: Hashable, *args: Tensor) -> Any:
        """The recording `run(key, fn, *args)` would replay now, or None (tests and benchmarks count replays)."""
        traced = self._traced.get(self._signature(key, args))
        return None if traced is _FAILED else traced

    @staticmethod
    def _signature(key: Hashable, args: tuple[Tensor, ...]) -> Hashable:
        shapes = tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args)
        return (key, torch.is_grad_enabled(), shapes)

    @staticmethod
    def _record(fn: Callable[..., Any], args: tuple[Tensor, ...]) -> tuple[Any, None]:
        # the tracer wants a named function (partials have none); a module keeps its parameters shared
        def replayed(*tensors: Tensor) -> Any:
            return fn(*tensors)

        try:
            with warnings.catch_warnings():  # deprecation and "may not generalise" notes: the key guards both
                warnings.simplefilter("ignore")
                target = fn if isinstance(fn, nn.Module) else replayed
                return _shallow(lambda: torch.jit.trace(target, args, check_trace=False, strict=False)), None
        except Exception as exc:  # noqa: BLE001 — any recording failure means eager calls, never a wrong result
            log.debug("not recorded (eager calls instead): %s", exc)
            return _FAILED, None


def _shallow(make: Callable[[], Any]) -> Any:
    """`make()` run on a fresh thread (same grad mode, thread count and current GPU) and waited for.

    The tracer stores the Python call stack with every operator it records, so a recording made deep inside a
    command (typer, a service, a task, the optimiser: ~50 frames) costs ~3× one made on a thread's shallow
    stack."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    # the current GPU is per thread
    cuda = torch.cuda.current_device() if torch.cuda.is_initialized() else None
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            torch.set_num_threads(threads)
            if cuda is not None:
                torch.cuda.set_device(cuda)
            with torch.set_grad_enabled(grad), torch.jit.optimized_execution(False):
                box["value"] = make()
        except BaseException as exc:  # noqa: BLE001 — handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="dposer-trace", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------- whole steps, backward included
# .recording: this thread records a step (inner `TraceCache.run` calls run eagerly, recorded inline)
_state = threading.local()

# operators a step recording refuses on tensors computed in the call: results shaped by values (nonzero) and
# values read into Python (.item()); and random draws anywhere (a replay would draw from the global generator)
_VALUE_TAGS = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)


class _Refused(Exception):
    pass


class _OpRecorder(TorchDispatchMode):
    """Every operator a call dispatches below autograd, backward included, with its arguments as references to
    the call's inputs, to earlier results, or to tensors that existed before (constants)."""

    def __init__(self, inputs: Sequence[Tensor]) -> None:
        super().__init__()
        self.slot = {id(t): i for i, t in enumerate(inputs)}
        self.alive: list[Tensor] = list(inputs)  # keeps ids unique while recording
        self.derived = set(range(len(inputs)))  # slots computed from the inputs (not from constants alone)
        self.ops: list[tuple[Any, list[tuple[int, Any]], Any, list[int | None]]] = []

    def _dispatch(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        leaves, spec = _flatten(args, kwargs or {})
        refs = [
            (0, self.slot[id(x)]) if isinstance(x, Tensor) and id(x) in self.slot else (1, x) for x in leaves
        ]
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise _Refused(f"{func} draws random numbers")
        derived = any(k == 0 and v in self.derived for k, v in refs)
        if derived and any(tag in func.tags for tag in _VALUE_TAGS) and not _integer_index(func, args):
            raise _Refused(f"{func} depends on the values of the call's tensors")
        # (on constants alone, e.g. a model's parent table read in Python, the values are frozen like them)
        out = func(*args, **(kwargs or {}))
        outs: list[int | None] = []
        for o in _results(out):
            if isinstance(o, Tensor):
                self.slot[id(o)] = len(self.alive)
                if derived:
                    self.derived.add(len(self.alive))
                outs.append(len(self.alive))
                self.alive.append(o)
            else:
                outs.append(None)
        self.ops.append((func, refs, spec, outs))
        return out


# An operator's arguments nest one level at most (Tensor[], int[], Tensor?[]): flattened without pytree, whose
# generality costs a third of a recording.
_Spec = tuple[tuple[int, ...], tuple[str, ...]]


def _flatten(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[Any], _Spec]:
    """Leaves of an operator's arguments and how to put them back: per argument, -1 (a leaf) or its length."""
    leaves: list[Any] = []
    sizes: list[int] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, list | tuple):
            leaves.extend(value)
            sizes.append(len(value))
        else:
            leaves.append(value)
            sizes.append(-1)
    return leaves, (tuple(sizes), tuple(kwargs))


def _unflatten(leaves: list[Any], spec: _Spec) -> tuple[list[Any], dict[str, Any]]:
    sizes, names = spec
    values: list[Any] = []
    i = 0
    for size in sizes:
        if size < 0:
            values.append(leaves[i])
            i += 1
        else:
            values.append(leaves[i : i + size])
            i += size
    n_args = len(sizes) - len(names)
    return values[:n_args], dict(zip(names, values[n_args:], strict=True))


def _results(out: Any) -> list[Any]:
    return list(out) if isinstance(out, list | tuple) else [out]


def _integer_index(func: Any, args: Any) -> bool:
    """Indexing by integer tensors: its result's shape does not depend on values (a mask's does)."""
    if func is not torch.ops.aten.index.Tensor:
        return False
    return all(i is None or i.dtype not in (torch.bool, torch.uint8) for i in args[1])


# set after the class is made: TorchDispatchMode wraps a subclass's own method in torch._disable_dynamo, whose
# first call imports torch._dynamo (~1.5 s)
_OpRecorder.__torch_dispatch__ = _OpRecorder._dispatch  # type: ignore[method-assign,assignment]


def _scalars_cast(
    func: Any, refs: list[tuple[int, Any]], spec: _Spec, out: Any
) -> tuple[Any, list[tuple[int, Any]], _Spec]:
    """A float32 arithmetic operator with a Python number as its second operand, given that number as a float32
    tensor (the same operator; the `.Tensor` overload for a `.Scalar` one, its `alpha` then by keyword).

    TensorIterator turns the number into a double tensor and casts it to float32 on every call (an allocation
    and a copy, ~2 µs; ~70 per whole-body fit step); cast once here it is the same value, so the same results."""
    target = _SCALAR_OPERATORS.get(func)
    if (
        target is None
        or len(refs) < 2
        or not isinstance(out, Tensor)
        or out.dtype != torch.float32
        or refs[0][0] != 0
        or refs[1][0] != 1
        or not isinstance(refs[1][1], int | float)
        or isinstance(refs[1][1], bool)
    ):
        return func, refs, spec
    sizes, names = spec
    if target is not func and len(sizes) == 3:  # `.Scalar`'s positional alpha is keyword-only in `.Tensor`
        if names or sizes != (-1, -1, -1):
            return func, refs, spec
        spec = (sizes, ("alpha",))
    value = torch.tensor(refs[1][1], dtype=torch.float64 if isinstance(refs[1][1], float) else torch.int64)
    return target, [refs[0], (1, value.to(torch.float32)), *refs[2:]], spec


_aten = torch.ops.aten
# operators whose Python-number operand TensorIterator casts to the result's dtype (pow does not: its exponent
# stays a double), and the overload that takes that operand as a tensor
_SCALAR_OPERATORS = {
    _aten.add.Tensor: _aten.add.Tensor,
    _aten.sub.Tensor: _aten.sub.Tensor,
    _aten.mul.Tensor: _aten.mul.Tensor,
    _aten.div.Tensor: _aten.div.Tensor,
    _aten.add.Scalar: _aten.add.Tensor,
    _aten.sub.Scalar: _aten.sub.Tensor,
    _aten.mul.Scalar: _aten.mul.Tensor,
    _aten.div.Scalar: _aten.div.Tensor,
    _aten.rsub.Scalar: _aten.rsub.Tensor,
}


class _WithExtras:
    """A recording called with the call's tensors; it is handed its extra inputs (sparse constants) itself."""

    def __init__(self, traced: Any, extras: tuple[Tensor, ...]) -> None:
        self.traced, self.extras = traced, extras

    @property
    def graph(self) -> Any:
        return self.traced.graph

    def __call__(self, *xs: Tensor) -> Any:
        return self.traced(*xs, *self.extras)


class _Unflattened:
    """A recording built by `_built` (it returns its results flat) giving them back in the call's structure."""

    def __init__(self, function: Any, spec: Any) -> None:
        self.function, self.spec = function, spec

    @property
    def graph(self) -> Any:
        return self.function.graph

    def __call__(self, *xs: Tensor) -> Any:
        return tree_unflatten(list(self.function(*xs)), self.spec)


def _tensor_type(tensor: Tensor) -> Any:
    """A value's type in a recording: the recorded tensor's, without `requires_grad` (a replay runs without
    autograd, and common subexpressions only merge between values of equal types)."""
    return torch._C.TensorType.create_from_tensor(tensor.detach())


@functools.cache
def _schema_text(func: Any) -> str:
    return str(func._schema)


# a new tensor of the same values in the same memory (autograd's detach for saved tensors, `.detach()`)
_ALIASES = {_aten.detach.default, _aten.alias.default}

_MEMORY_FORMATS = {
    torch.contiguous_format: 0,
    torch.preserve_format: 1,
    torch.channels_last: 2,
    torch.channels_last_3d: 3,
}


def _built(
    ops: Sequence[tuple[Any, list[tuple[int, Any]], _Spec, list[int | None]]],
    tensors: Sequence[Tensor],
    n_in: int,
    n_extra: int,
    out_slots: Sequence[int],
) -> Any:
    """The TorchScript graph of the recorded operators, built node by node: what `torch.jit.trace` of their
    replay makes, without running them again (the tracer's bookkeeping, a Python stack walk per operator
    among it, costs ~4× the operators themselves). Every operator's arguments are given in its schema's order,
    defaults filled in, so the interpreter finds the same overload. `tensors`: the recorded call's tensors by
    slot (inputs, then results), for the values' types. Raises on anything it does not handle (the caller then
    traces)."""
    graph = torch._C.Graph()
    env: list[Any] = [None] * (len(tensors) + n_extra)
    for i in range(n_in):
        env[i] = graph.addInput()
        env[i].setType(_tensor_type(tensors[i]))
    for i in range(n_extra):
        env[len(tensors) + i] = graph.addInput()
        env[len(tensors) + i].setType(torch._C.TensorType.get())

    def constant(value: Any) -> Any:
        if isinstance(value, torch.memory_format):
            value = _MEMORY_FORMATS[value]
        return graph.insertConstant(value)  # type: ignore[attr-defined]

    def leaf(ref: tuple[int, Any]) -> Any:
        kind, value = ref
        if kind == 0:
            if env[value] is None:
                raise ValueError(f"slot {value} used before it is computed")
            return env[value]
        return constant(value)

    for func, refs, spec, outs in ops:
        schema = func._schema
        if all(slot is None for slot in outs) and not any(
            arg.alias_info is not None and arg.alias_info.is_write for arg in schema.arguments
        ):
            continue  # a value read into Python (from constants: `.item()` of a parent table), frozen there
        if func in _ALIASES and refs[0][0] == 0 and outs[0] is not None:
            env[outs[0]] = env[refs[0][1]]  # the same values in the same memory: without autograd, the same
            continue
        values, given = _unflatten(refs, spec)  # per argument: a ref, or a list of refs
        n_pos = len(values)
        inputs = []
        for index, arg in enumerate(schema.arguments):
            if index < n_pos:
                value = values[index]
            elif arg.name in given:
                value = given.pop(arg.name)
            elif arg.has_default_value():
                inputs.append(constant(arg.default_value))
                continue
            else:
                raise ValueError(f"{func}: argument {arg.name} missing")
            if isinstance(value, list):
                if value and all(k == 1 and not isinstance(v, Tensor) for k, v in value):
                    inputs.append(constant([v for _, v in value]))
                    continue
                kind = arg.type  # the list's own type (an empty list says nothing of its items)
                kind = kind.getElementType() if isinstance(kind, torch._C.OptionalType) else kind
                items = graph.create("prim::ListConstruct", [leaf(r) for r in value], 1)
                graph.insertNode(items)
                items.output().setType(kind)
                inputs.append(items.output())
            else:
                inputs.append(leaf(value))
        if given or n_pos > len(schema.arguments):
            raise ValueError(f"{func}: arguments {sorted(given)} not in its schema")
        returns = schema.returns
        node = graph.create(schema.name, inputs, len(returns))
        graph.insertNode(node)
        if len(returns) == 1 and isinstance(returns[0].type, torch._C.ListType):
            node.output().setType(returns[0].type)
            unpack = graph.create("prim::ListUnpack", [node.output()], len(outs))
            graph.insertNode(unpack)
            results = [unpack.outputsAt(k) for k in range(len(outs))]
        elif len(returns) == len(outs):  # (`outputsAt`: `outputs()` costs ~10 µs)
            results = [node.outputsAt(k) for k in range(len(outs))]
        else:
            raise ValueError(f"{func}: {len(outs)} results for {len(returns)} returns")
        for k, (value, slot) in enumerate(zip(results, outs, strict=True)):
            if slot is None:  # not a tensor (a gradient a backward was asked not to compute): never read
                value.setType(returns[min(k, len(returns) - 1)].type)
                continue
            value.setType(_tensor_type(tensors[slot]))
            env[slot] = value
        found = node.schema()  # the overload the interpreter will run
        if found != _schema_text(func) and not (
            # a Python number as `other` of a `.Tensor` overload: the `.Scalar` one runs, as in a traced replay
            schema.overload_name == "Tensor" and found.startswith(f"{schema.name}.Scalar(")
        ):
            raise ValueError(f"{func}: its node runs {found}")
    pack = graph.create("prim::TupleConstruct", [env[i] for i in out_slots], 1)
    graph.insertNode(pack)
    pack.output().setType(torch._C.TupleType([env[i].type() for i in out_slots]))
    graph.registerOutput(pack.output())
    return graph


def _simplify(graph: Any) -> None:
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_cse(graph)  # alias-aware: operators that write in place are left as they are
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_constant_pooling(graph)  # type: ignore[attr-defined]


def _simplified(traced: Any) -> Any:
    """The recording with its constant-only operations computed once (module buffers reshaped, identity
    matrices), operations repeated on the same values done once (the backward pass recomputes some of the
    forward's, e.g. a rotation's sines) and unused results dropped: ~8 % of a batch-1 body fit step, ~7 % more
    of a whole-body one; same values (checked by the caller)."""
    try:
        graph = traced.graph.copy()
        _simplify(graph)
        return torch._C._create_function_from_graph("replayed_step", graph)
    except Exception as exc:  # noqa: BLE001 — the recording as traced is as good, only slower
        log.debug("step recording kept unsimplified: %s", exc)
        return traced


def record_step(fn: Callable[..., Any], args: Sequence[Tensor]) -> tuple[Any, Any]:
    """A replayable recording of `fn(*args)` (a tuple of tensors), backward passes inside it included, and the
    call's own result (`fn` runs once, eagerly, while it is recorded; None if it was stopped).

    `torch.jit.trace` alone cannot record a backward pass faithfully: tensors that a composite operator
    (`matmul`, `linear`) makes internally and autograd saves are unknown to the tracer, so they would be baked
    in as constants. Here every operator is first recorded below autograd (a `TorchDispatchMode`), where no
    tensor is hidden, then the TorchScript graph of that list is built node by node (`_built`; where that
    fails, the list is replayed once under `torch.jit.trace`, ~3× slower to record). The recording runs
    without autograd (call it under `torch.no_grad()`). Refused (eager calls instead, `_FAILED`): operators
    whose results' shapes or Python values depend on the values of tensors computed in the call (`nonzero`,
    `.item()`; on constants they are frozen like the constants), random draws, results that are not tensors
    computed in the call, and a recording that does not give back the call's results bit for bit.

    Only tensors that are arguments of `fn` may change between calls; everything else it reads is frozen into
    the recording, as for `TraceCache` (here that includes tensors a Python cache hands out).
    """
    inputs = tuple(args)
    result: Any = None
    try:
        rec = _OpRecorder(inputs)
        _state.recording = True
        try:
            with rec:
                result = fn(*inputs)
        finally:
            _state.recording = False
        leaves, out_spec = tree_flatten(result)
        if not all(isinstance(x, Tensor) and id(x) in rec.slot for x in leaves):
            raise _Refused("results not computed from the call")
        out_slots = [rec.slot[id(x)] for x in leaves]
        n_in, n = len(inputs), len(rec.alive)
        # constants (module parameters among them) enter the recording as plain values; sparse ones (a
        # skinning matrix), which TorchScript cannot hold as constants, as extra inputs
        extras: list[Tensor] = []
        ops = []
        for func, refs, spec, outs in rec.ops:
            out = rec.alive[outs[0]] if outs and outs[0] is not None else None
            func, refs, spec = _scalars_cast(func, refs, spec, out)  # noqa: PLW2901 — the same call, a copy less
            plain = []
            for k, v in refs:
                if k == 1 and isinstance(v, Tensor):
                    if v.layout != torch.strided:
                        extras.append(v.detach())
                        k, v = 0, n + len(extras) - 1
                    else:
                        v = v.detach()
                plain.append((k, v))
            ops.append((func, plain, spec, outs))
        tensors = rec.alive
        del rec

        def replayed(*xs: Tensor) -> Any:
            env: list[Any] = [*xs[:n_in], *([None] * (n - n_in)), *xs[n_in:]]
            for func, refs, spec, outs in ops:
                a, kw = _unflatten([env[v] if k == 0 else v for k, v in refs], spec)
                for i, o in zip(outs, _results(func(*a, **kw)), strict=True):
                    if i is not None:
                        env[i] = o
            return tree_unflatten([env[i] for i in out_slots], out_spec)

        def gives_the_results(recording: Any) -> bool:
            again = tree_flatten(recording(*inputs))[0]
            return len(again) == len(leaves) and all(
                torch.equal(a, b) for a, b in zip(again, leaves, strict=True)
            )

        with warnings.catch_warnings(), torch.no_grad(), torch.jit.optimized_execution(False):
            warnings.simplefilter("ignore")
            recording: Any = None
            try:  # built node by node; traced where that fails
                graph = _built(ops, tensors, n_in, len(extras), out_slots)
                _simplify(graph)
                recording = _Unflattened(
                    torch._C._create_function_from_graph("replayed_step", graph), out_spec
                )
                if extras:
                    recording = _WithExtras(recording, tuple(extras))
                if not gives_the_results(recording):
                    raise _Refused("the built recording does not give the call's results")
            except Exception as exc:  # noqa: BLE001
                log.debug("step recording traced instead of built: %s", exc)
                recording = None
            tensors.clear()  # the call's intermediate tensors are not needed any more
            if recording is None:
                everything = (*inputs, *extras)
                traced = _shallow(
                    lambda: torch.jit.trace(replayed, everything, check_trace=False, strict=False)
                )
                recording = _simplified(traced)
                if extras:
                    recording = _WithExtras(recording, tuple(extras))
                if not gives_the_results(recording):
                    raise _Refused("the recording does not give the call's results")
        return recording, result
    except Exception as exc:  # noqa: BLE001 — any recording failure means eager calls, never a wrong result
        log.debug("step not recorded (eager calls instead): %s", exc)
        return _FAILED, result
