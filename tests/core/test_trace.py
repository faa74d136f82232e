"""TraceCache: replays equal eager calls (values and gradients) for new inputs, records only repeated
signatures, and falls back to eager calls when a recording is impossible or turned off."""

import warnings

import pytest
import torch

from dposer_cli.bodies.kinematics import batch_rodrigues, forward_kinematics
from dposer_cli.core.trace import _FAILED, TRACE_ENV, TraceCache, record_step

PARENTS = (-1, 0, 1, 1, 3, 0, 5)


def _chain(aa: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """A pure function with a tree walk, gathers and matrix products (what fits replay)."""
    return forward_kinematics(batch_rodrigues(aa), rest, PARENTS)[1]


def _call(cache: TraceCache, aa: torch.Tensor, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = aa.clone().requires_grad_(True)
    out = cache.run("chain", _chain, x, rest)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grad


def test_replays_equal_eager_calls_on_new_values_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    rest = torch.randn(len(PARENTS), 3, generator=g)
    cache, eager = TraceCache(warmup=2), TraceCache(warmup=10**9)
    for _ in range(6):  # the first two calls are eager, the third records, the rest replay
        aa = torch.randn(4, len(PARENTS), 3, generator=g)
        replayed, grad = _call(cache, aa, rest)
        reference, grad_ref = _call(eager, aa, rest)
        assert torch.equal(replayed, reference)
        assert torch.equal(grad, grad_ref)
    assert cache.recorded() == 1 and not eager._traced


def test_records_once_per_signature_after_the_warmup():
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return 2 * x

    cache = TraceCache(warmup=2)
    for _ in range(5):
        cache.run("double", double, torch.ones(3))
    assert len(calls) == 3  # two eager calls, then the recording; replays run no Python
    assert torch.equal(cache.run("double", double, torch.full((3,), 4.0)), torch.full((3,), 8.0))
    for _ in range(3):  # a new shape is a new signature: eager twice, then its own recording
        assert torch.equal(cache.run("double", double, torch.ones(2, 2)), torch.full((2, 2), 2.0))
    assert len(calls) == 6 and len(cache._traced) == 2
    with torch.no_grad():  # the grad mode is part of the signature too
        cache.run("double", double, torch.ones(3))
    assert len(calls) == 7


def test_turned_off_by_the_environment(monkeypatch):
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return 2 * x

    monkeypatch.setenv(TRACE_ENV, "0")
    cache = TraceCache(warmup=0)
    for _ in range(4):
        cache.run("double", double, torch.ones(3))
    assert len(calls) == 4 and not cache._traced


def test_a_function_that_cannot_be_recorded_stays_eager():
    def unrecordable(x: torch.Tensor) -> object:
        return {"not": "a tensor output"}  # the tracer refuses non-tensor outputs

    cache = TraceCache(warmup=0)
    for _ in range(3):
        assert cache.run("bad", unrecordable, torch.ones(2)) == {"not": "a tensor output"}
    assert len(cache._traced) == 1 and cache.recorded() == 0


def test_least_recently_used_recordings_are_dropped():
    cache = TraceCache(warmup=0, size=2)
    for n in (1, 2, 3):
        cache.run("f", torch.neg, torch.ones(n))
    assert len(cache._traced) == 2
    assert [sig[2][0][0] for sig in cache._traced] == [torch.Size([2]), torch.Size([3])]


@pytest.mark.parametrize("warmup", [0, 2])
def test_module_parameters_stay_shared_with_the_recording(warmup):
    lin = torch.nn.Linear(3, 2)
    cache = TraceCache(warmup=warmup)
    x = torch.randn(5, 3)
    with torch.no_grad():
        for _ in range(warmup + 2):
            cache.run("lin", lin, x)
        lin.weight.mul_(2.0)  # an in-place update (an EMA copy, load_state_dict) is seen by the replay
        assert torch.allclose(cache.run("lin", lin, x), lin(x))


# ---------------------------------------------------------------------------- whole steps (record_step)
def _replays_exactly(step, example: tuple, new: tuple):
    """`step` recorded on `example` replays the eager step's results bit for bit on `new`; the recording."""
    recording, _ = record_step(step, example)
    assert recording is not _FAILED
    with torch.no_grad():
        got = recording(*new)
    assert all(torch.equal(a, b) for a, b in zip(got, step(*new), strict=True))
    return recording


def _step(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Loss and gradient of a small network: composite operators (`linear`, `matmul`) whose internal tensors
    autograd saves, an operator whose backward reads its result (`exp`), gathers and a reduction."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        h = torch.nn.functional.linear(x, w, b)
        y = (h @ w).exp().index_select(-1, torch.tensor([0, 2])).sum(-1)
        loss = (y * y).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def test_a_recorded_step_replays_forward_and_backward_bit_for_bit_on_new_values():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(4, 4, generator=g) * 0.3, torch.randn(4, generator=g)
    cache = TraceCache(warmup=2, recorder=record_step)
    for _ in range(5):  # two eager calls, one recording (its own eager result), two replays
        x = torch.randn(3, 4, generator=g)
        with torch.no_grad():
            got = cache.run("step", _step, x, w, b)
        want = _step(x, w, b)
        assert all(torch.equal(a, e) for a, e in zip(got, want, strict=True))
    assert cache.recorded() == 1
    # what a plain `torch.jit.trace` of the same step gets wrong: matmul's saved internals become constants
    with pytest.raises(RuntimeError, match="requires grad as a constant"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_step, (x, w, b), check_trace=False)


@pytest.mark.parametrize(
    "body",
    [
        lambda x: x[x > 0].sum(),  # a mask: the shape depends on values
        lambda x: x * torch.randn(x.shape),  # a random draw: a replay would use the global generator
        lambda x: x * float(x.sum()),  # a value read into Python
    ],
    ids=["mask", "random", "item"],
)
def test_a_step_that_depends_on_values_or_draws_noise_is_never_recorded(body):
    x = torch.randn(5)
    recording, result = record_step(lambda t: (body(t),), (x,))
    assert recording is _FAILED
    cache = TraceCache(warmup=0, recorder=record_step)
    for _ in range(3):
        cache.run("v", lambda t: (body(t),), x)
    assert cache.recorded() == 0


def test_values_read_from_constants_are_frozen_into_a_step_recording():
    """smplx walks its kinematic tree by reading its parent table into Python: allowed, the table is constant."""
    parents = torch.tensor([0, 0, 1, 1])

    def walk(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = [x[0]]
        for i in range(1, len(parents)):
            rows.append(rows[int(parents[i])] * 2 + x[i])
        return (torch.stack(rows),)

    recording, _ = record_step(walk, (torch.randn(4, 3),))
    assert recording is not _FAILED
    x = torch.randn(4, 3)
    with torch.no_grad():
        (got,) = recording(x)
    assert torch.equal(got, walk(x)[0])


def test_a_sparse_constant_enters_a_step_recording_as_an_input():
    """TorchScript holds no sparse constants (a skinning matrix): the recording takes it as an extra input."""
    dense = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    dense[dense.abs() < 0.8] = 0
    matrix = dense.to_sparse_csr()

    def step(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = (matrix @ x).square().sum()
            (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    _replays_exactly(step, (torch.randn(4, 3),), (torch.randn(4, 3),))


def test_python_numbers_in_float32_arithmetic_are_cast_once_in_a_step_recording():
    """TensorIterator casts a Python number to float32 on every call; the recording holds it as a float32
    tensor instead, with the same results (numbers that float32 cannot hold exactly included)."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = (1 - x) * 0.1 + x / 3 - 2.2 * x.square() + torch.add(x, 1e-8, alpha=3) - (x - 7) / 0.3
            z = z + torch.rsub(x, 0.7, alpha=2) + x.mul(1 / 3) + x.div(3) + x * 5
            loss = z.sum() + (y * 0.1).sum()  # float64: no cast to save, kept as it was
            (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad, z.detach()

    g = torch.Generator().manual_seed(3)
    args = (torch.randn(5, 3, generator=g) * 1e3, torch.randn(4, dtype=torch.float64, generator=g))
    recording, _ = record_step(step, args)
    assert recording is not _FAILED
    arithmetic = {f"aten::{op}" for op in ("add", "sub", "mul", "div", "rsub")}
    operands = [
        node.inputsAt(1).type()
        for node in recording.graph.nodes()
        if node.kind() in arithmetic and node.output().type().dtype() == torch.float32
    ]
    assert operands and all(isinstance(t, torch._C.TensorType) for t in operands), operands
    for scale in (1e-3, 1.0, 1e4):
        x = torch.randn(5, 3, generator=g) * scale
        y = torch.randn(4, dtype=torch.float64, generator=g)
        with torch.no_grad():
            got = recording(x, y)
        assert all(torch.equal(a, b) for a, b in zip(got, step(x, y), strict=True))


def test_a_step_recording_computes_a_repeated_operation_once():
    """sin's backward computes cos(x), which the step has computed already: the replay computes it once."""

    def step(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = (x.sin() * x.cos().detach()).sum()
            (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    recording = _replays_exactly(step, (torch.randn(6),), (torch.randn(6),))
    assert [node.kind() for node in recording.graph.nodes()].count("aten::cos") == 1


@pytest.mark.parametrize("path", ["built", "traced"])
def test_a_step_recording_is_built_node_by_node_or_else_traced(path, monkeypatch):
    """Built from the operator list (no tracer); where that fails, `torch.jit.trace` of the replay: the same
    results either way."""
    from dposer_cli.core import trace

    def fail(*args, **kwargs):
        raise ValueError("not this way")

    if path == "built":
        monkeypatch.setattr(torch.jit, "trace", fail)
    else:
        monkeypatch.setattr(trace, "_built", fail)
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(4, 4, generator=g) * 0.3, torch.randn(4, generator=g)
    _replays_exactly(_step, (torch.randn(3, 4, generator=g), w, b), (torch.randn(3, 4, generator=g), w, b))


def test_a_backward_that_skips_some_gradients_is_recorded():
    """Normalisation layers with frozen weights: their backward returns no weight gradients (None results),
    which a built recording leaves unread (the tracer could not record this step at all)."""
    torch.manual_seed(0)
    ln, gn = torch.nn.LayerNorm(6), torch.nn.GroupNorm(2, 6)
    for p in [*ln.parameters(), *gn.parameters()]:
        p.requires_grad_(False)

    def step(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = (ln(x) * gn(x[..., None])[..., 0]).square().sum()
            (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    _replays_exactly(step, (torch.randn(4, 6),), (torch.randn(4, 6),))
