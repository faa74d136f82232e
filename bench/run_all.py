"""Run every benchmark in `bench/` and `dposer benchmark speed`, writing JSON files into bench/results/
(`make bench`).

`speed.json` is the speed evaluation at the official sizes (`dposer_cli.evaluation.speed`: samples/s, fits/s
of the fit task and with file I/O, NFE and peak memory per task); the `bench_*.py` sweeps time the same
workloads over batch sizes, samplers and loops.
"""

import importlib
import sys
from pathlib import Path

from dposer_cli.services import benchmark

BENCHES = [
    "bench_sampling",
    "bench_bodies",
    "bench_render",
    "bench_train",
    "bench_complete",
    "bench_fit",
    "bench_ik",
]


def speed(out: Path, quick: bool) -> None:
    result = benchmark.run(benchmark.BenchmarkRequest(name="speed", quick=quick, out=out))
    for line in result.lines:
        print(line, file=sys.stderr)


def main() -> None:
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    quick = "--quick" in sys.argv
    for name in BENCHES:
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            continue
        print(f"running {name}", file=sys.stderr)
        sys.argv = [name, "--out", str(out_dir / f"{name[6:]}.json")] + (["--quick"] if quick else [])
        mod.main()
    print("running dposer benchmark speed", file=sys.stderr)
    speed(out_dir / "speed.json", quick)


if __name__ == "__main__":
    main()
