"""Body-model forward speed as fitting, IK and motion denoising call it, before vs after the joints-only work.

    OMP_NUM_THREADS=1 python -m bench.bench_body [--out bench/results/body_forward.json] [--quick]

The default body (the built-in mannequin) and the SMPL-X test fixture, at batch 1, 10 and 100, joints only
(`return_vertices=False`, what fitting and IK use) and with vertices, in three passes:

* `fwd`: no autograd, constant betas (IK / denoising evaluation, overlays, mesh outputs);
* `fwd+bwd pose`: gradients for the pose, constant betas (IK, motion denoising);
* `fwd+bwd pose+shape`: gradients for the pose and the betas (fit-image's pose stages).

Parameters are what fit-image passes: `global_orient`, `body_pose`, `transl`, `betas` (one row per sample,
random, not the neutral shape). "before" is, for the mannequin, the code of commit `BEFORE`
(bodies/kinematics.py and bodies/mannequin.py read with `git show` and imported under other names); for
SMPL-X, smplx's full-mesh forward, which is what a joints-only call ran before (`_FullMesh`). Both run in this
same process, so `speedup_vs_before` compares like with like; `max_joint_diff_m` is the largest joint
difference between before and after on the same inputs (no autograd, constant betas). Times are the best of several repeats of process CPU time (the benchmark
machine is shared; CPU time is far less noisy than wall time), with the wall time of the same repeat.
"""

import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from bench._common import environment, parser, write

BEFORE = "521f1c3"  # last commit before the joints-only body work (issue #16)
PASSES = ("fwd", "fwd+bwd pose", "fwd+bwd pose+shape")


def load_before(commit: str = BEFORE) -> type | None:
    """`MannequinBody` as it was at `commit` (None when git or the commit is unavailable)."""
    root = Path(__file__).resolve().parents[1]
    sources = {}
    for name in ("kinematics", "mannequin"):
        try:
            sources[name] = subprocess.run(
                ["git", "-C", str(root), "show", f"{commit}:dposer_cli/bodies/{name}.py"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
    for name, src in sources.items():
        module = types.ModuleType(f"_bench_before_{name}")
        module.__file__ = f"<{commit}:dposer_cli/bodies/{name}.py>"
        sys.modules[module.__name__] = module
        src = src.replace("dposer_cli.bodies.kinematics", "_bench_before_kinematics")
        exec(compile(src, module.__file__, "exec"), module.__dict__)  # noqa: S102 - this repository's own code
    return sys.modules["_bench_before_mannequin"].MannequinBody


class _FullMesh(torch.nn.Module):
    """A body whose joints-only calls build the whole mesh anyway (the SMPL-X adapter before the twin)."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, *, return_vertices: bool = True, **params: torch.Tensor):  # type: ignore[no-untyped-def]
        out = self.body(**params, return_vertices=True)
        return out if return_vertices else type(out)(joints=out.joints, vertices=None)


def _inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "global_orient": torch.randn(batch, 3, generator=g) * 0.5,
        "body_pose": torch.randn(batch, 63, generator=g) * 0.3,
        "transl": torch.randn(batch, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0]),
        "betas": torch.randn(batch, 10, generator=g),
    }


def _call(
    model: torch.nn.Module, params: dict[str, torch.Tensor], mode: str, pass_: str
) -> Callable[[], None]:
    vertices = mode == "vertices"

    def run() -> None:
        grads = {"fwd": (), "fwd+bwd pose": ("global_orient", "body_pose", "transl")}.get(
            pass_, tuple(params)
        )
        p = {k: v.clone().requires_grad_(k in grads) for k, v in params.items()}
        with torch.set_grad_enabled(bool(grads)):
            out = model(**p, return_vertices=vertices)
            if grads:
                (out.vertices if vertices else out.joints).square().sum().backward()

    return run


def _time(fn: Callable[[], None], repeat: int, inner: int) -> tuple[float, float]:
    """Best (CPU seconds, wall seconds) per call over `repeat` runs of `inner` calls, after a warm-up."""
    fn()
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            fn()
        cpu, wall = (time.process_time() - c0) / inner, (time.perf_counter() - w0) / inner
        best = min(best, (cpu, wall))
    return best


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--max-vertex-batch", type=int, default=10, help="largest batch with vertices in the pose+shape pass"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 10] if args.quick else [1, 10, 100]

    from dposer_cli.bodies.mannequin import MannequinBody
    from dposer_cli.bodies.smplx_family import SMPLXBody
    from tests._fixtures.body_models import write_smplx

    before_cls = load_before()
    models: list[tuple[str, str, torch.nn.Module]] = [("mannequin", "after", MannequinBody())]
    if before_cls is not None:
        models.insert(0, ("mannequin", "before", before_cls()))
    with tempfile.TemporaryDirectory() as tmp:
        smplx_body = SMPLXBody(write_smplx(Path(tmp)))
    models += [("smplx fixture", "before", _FullMesh(smplx_body)), ("smplx fixture", "after", smplx_body)]

    rows: list[dict] = []
    for mode in ("joints", "vertices"):
        for batch in batches:
            params = _inputs(batch)
            with torch.no_grad():
                joints = {(n, v): m(**params, return_vertices=False).joints for n, v, m in models}
            diff = {
                n: float((joints[n, "after"] - joints[n, "before"]).abs().max())
                for n, v, _ in models
                if (n, "before") in joints and v == "after"
            }
            for pass_ in PASSES:
                if mode == "vertices" and pass_ == "fwd+bwd pose+shape" and batch > args.max_vertex_batch:
                    continue
                repeat, inner = (5, 20) if batch == 1 else (5, 5) if batch <= 10 else (3, 2)
                for name, version, model in models:
                    if mode == "vertices" and isinstance(model, _FullMesh):
                        continue  # the same call as "after"
                    cpu, wall = _time(_call(model, params, mode, pass_), repeat, inner)
                    rows.append(
                        {
                            "model": name,
                            "version": version,
                            "mode": mode,
                            "batch": batch,
                            "pass": pass_,
                            "cpu_ms": round(1e3 * cpu, 3),
                            "wall_ms": round(1e3 * wall, 3),
                            "cpu_ms_per_sample": round(1e3 * cpu / batch, 4),
                            "max_joint_diff_m": diff.get(name),
                        }
                    )
    _ratios(rows)
    report = {
        "benchmark": "body_forward",
        "env": environment(),
        "before_commit": BEFORE if before_cls is not None else None,
        "notes": (
            "cpu_ms: best process CPU time per call; speedup_vs_before: before cpu / after cpu (same mode, "
            "batch, pass); batch_gain: per-sample throughput at this batch / at batch 1 (same model, version, "
            "mode, pass). SMPL-X: the synthetic test fixture (10,475 vertices; its random contour table "
            "keeps 3,513 of them in the joints-only twin, a real SMPL-X jaw line far fewer)."
        ),
        "results": rows,
    }
    write(report, args.out)


def _ratios(rows: list[dict]) -> None:
    def key(r: dict, **kw: object) -> tuple:
        r = {**r, **kw}
        return (r["model"], r["version"], r["mode"], r["batch"], r["pass"])

    index = {key(r): r for r in rows}
    for r in rows:
        old = index.get(key(r, version="before"))
        if r["version"] == "after" and old is not None:
            r["speedup_vs_before"] = round(old["cpu_ms"] / r["cpu_ms"], 2)
        one = index.get(key(r, batch=1))
        if one is not None:
            r["batch_gain"] = round(one["cpu_ms"] * r["batch"] / r["cpu_ms"], 2)


if __name__ == "__main__":
    main()
