"""`dposer benchmark speed` (every task at the official sizes, one thread) by this checkout and a baseline checkout,
alternating in the same run: items per second per task, medians over the rounds, and their ratios.

Generation is also compared per network evaluation (the default sampler's evaluations changed in issue #15).

    .venv/bin/python -m bench.bench_speed_ab --baseline /tmp/dposer-base --out bench/results/speed_ab.json
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import environment, parser, write
from bench.bench_photo import _git

UNITS = {
    "generation": "samples_per_second",
    "completion": "hypotheses_per_second",
    "denoise": "frames_per_second",
    "hand-ik": "fits_per_second",
    "fit-image": "fits_per_second",
}


def _speed(repo: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    with tempfile.TemporaryDirectory(prefix="dposer-bench-speed-") as out:  # not into the checkouts
        cmd = [
            sys.executable,
            "-m",
            "dposer_cli",
            "benchmark",
            "speed",
            "--json",
            "--out",
            f"{out}/speed.json",
        ]
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{repo}: benchmark speed failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)["metrics"]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    p.add_argument("--rounds", type=int, default=2, help="runs per version (medians)")
    args = p.parse_args()
    versions = {"baseline": args.baseline.resolve(), "current": Path(__file__).resolve().parents[1]}
    runs: dict[str, list[dict]] = {k: [] for k in versions}
    for r in range(args.rounds):
        for name in list(versions) if r % 2 == 0 else list(reversed(versions)):
            runs[name].append(_speed(versions[name]))
            print(f"round {r + 1}: {name} done", file=sys.stderr, flush=True)
    rows = []
    for task, unit in UNITS.items():
        med = {k: statistics.median(m[task][unit] for m in v) for k, v in runs.items()}
        nfe = {k: v[0][task]["nfe"] for k, v in runs.items()}
        row = {
            "task": task,
            "unit": unit,
            "baseline": round(med["baseline"], 3),
            "current": round(med["current"], 3),
            "ratio": round(med["current"] / med["baseline"], 2),
            "baseline_nfe": nfe["baseline"],
            "current_nfe": nfe["current"],
            "items": runs["current"][0][task]["items"],
        }
        if nfe["baseline"] != nfe["current"]:
            per_eval = (med["current"] * nfe["current"]) / (med["baseline"] * nfe["baseline"])
            row["per_evaluation_ratio"] = round(per_eval, 2)
        rows.append(row)
        print(
            f"{task:12s} {row['baseline']:10.3f} → {row['current']:10.3f} {unit} (×{row['ratio']})",
            file=sys.stderr,
        )
    write(
        {
            "benchmark": "speed_before_after",
            "issue": 16,
            "what": (
                "`dposer benchmark speed` (official sizes, one thread) run by a baseline checkout and this one, "
                f"alternating, {args.rounds} rounds each, same machine and minutes; medians. Generation: compare "
                "its per-evaluation rate where the default sampler's evaluations differ."
            ),
            "environment": environment(),
            "versions": {
                k: {"path": str(v), "commit": _git(v, "rev-parse", "HEAD")} for k, v in versions.items()
            },
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
