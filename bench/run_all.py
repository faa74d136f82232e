"""Run every benchmark in `bench/` and write JSON files into bench/results/ (`make bench`)."""

import importlib
import sys
from pathlib import Path

BENCHES = ["bench_sampling", "bench_bodies", "bench_render", "bench_train", "bench_complete", "bench_fit", "bench_ik"]


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


if __name__ == "__main__":
    main()
