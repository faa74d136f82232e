"""Photos through `dposer fit-image` as a user runs it, this checkout against a baseline checkout, in the same
run: process wall time (start-up included), the command's own time, the fit's optimisation time (all per
image), and how far the two fits are apart (reprojection error, 3D joints). Cases: the official example photos
(body, hand, whole body) one per command, and eight synthetic one-person photos in one command.

Each case is fitted by both versions alternately (`--repeat` rounds, medians reported), each in a fresh
process with `OMP_NUM_THREADS=1` (one thread, as the issue measures), the default body, prior and schedule.
The baseline is any other checkout of this repository (e.g. `git worktree add /tmp/dposer-base <commit>`), run
with this interpreter and `PYTHONPATH` pointing at it.

    .venv/bin/python -m bench.bench_photo --baseline /tmp/dposer-base --out bench/results/photo.json
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench._common import environment, parser, write
from dposer_cli.bodies import load_body
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.evaluation import speed

PHOTOS = ("01_img", "image_00077")  # the official example photos with their ViTPose keypoints
PEOPLE = 8  # the batch case: synthetic photos of this many people (one each), fitted in one command


@dataclass(frozen=True)
class Case:
    name: str
    part: str
    images: tuple[Path, ...]
    keypoints: tuple[Path, ...]


def _cases(tmp: Path) -> list[Case]:
    examples = shared_data_dir() / "official" / "examples"

    def photo(part: str, folder: str, stem: str, label: str = "") -> Case:
        ex = examples / folder
        image = next(ex.glob(f"images/{stem}.*"))
        return Case(label or stem, part, (image,), (ex / "predictions" / f"{stem}.json",))

    people = tmp / "people"
    people.mkdir()
    images, keypoints = speed.write_people(people, speed.synthetic_people(load_body("body"), PEOPLE, seed=3))
    return [
        *(photo("body", "body", stem) for stem in PHOTOS),
        photo("hand", "hands", "00000014", "00000014 (hand)"),
        photo("wholebody", "body", "image_00077", "image_00077 (wholebody)"),
        Case(f"{PEOPLE} synthetic photos in one command (body)", "body", tuple(images), tuple(keypoints)),
    ]


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fit(repo: Path, case: Case, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "DPOSER_PROGRESS_INTERVAL": "1000"}
    cmd = [sys.executable, "-m", "dposer_cli", "fit-image", *map(str, case.images), "--part", case.part]
    for k in case.keypoints:
        cmd += ["--keypoints", str(k)]
    t0 = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--out", str(out), "--json"], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{repo}: fit-image failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout)
    joints = []
    for image in case.images:
        with np.load(out / f"{image.stem}.npz", allow_pickle=False) as z:
            joints.append(z["joints"].astype(np.float64))
    n = len(case.images)
    return {
        "wall_seconds": wall / n,
        "command_seconds": summary["seconds"] / n,
        "fit_seconds": summary["fit_seconds"] / n,
        "reprojection_error_px": summary["metrics"]["reprojection_error_px"],
        "joints": np.concatenate(joints),
    }


def _median(rows: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    p.add_argument("--repeat", type=int, default=3, help="rounds per version and case (medians)")
    args = p.parse_args()
    here = Path(__file__).resolve().parents[1]
    versions = {"baseline": args.baseline.resolve(), "current": here}
    report: dict = {
        "benchmark": "fit_image_photo",
        "environment": environment(),
        "threads": 1,
        "note": "seconds are per image (a command's time divided by its number of images)",
        "versions": {
            k: {"path": str(v), "commit": _git(v, "rev-parse", "HEAD")} for k, v in versions.items()
        },
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="dposer-bench-photo-") as tmp:
        for case in _cases(Path(tmp)):
            runs: dict[str, list[dict]] = {k: [] for k in versions}
            for r in range(args.repeat):
                order = list(versions) if r % 2 == 0 else list(reversed(versions))  # alternate who goes first
                for name in order:
                    out = Path(tmp) / f"{len(report['results'])}-{name}-{r}"
                    runs[name].append(_fit(versions[name], case, out))
            row: dict = {"case": case.name, "part": case.part, "images": len(case.images)}
            for name, rows in runs.items():
                row[name] = {
                    key: _median(rows, key)
                    for key in ("wall_seconds", "command_seconds", "fit_seconds", "reprojection_error_px")
                }
                row[name]["fit_seconds_all"] = [r["fit_seconds"] for r in rows]
                row[name]["wall_seconds_all"] = [r["wall_seconds"] for r in rows]
            base, cur = row["baseline"], row["current"]
            row["speedup_wall"] = base["wall_seconds"] / cur["wall_seconds"]
            row["speedup_command"] = base["command_seconds"] / cur["command_seconds"]
            row["speedup_fit"] = base["fit_seconds"] / cur["fit_seconds"]
            diff = np.linalg.norm(runs["baseline"][0]["joints"] - runs["current"][0]["joints"], axis=-1)
            row["joints_mm_between_versions"] = {
                "mean": 1000 * float(diff.mean()),
                "max": 1000 * float(diff.max()),
            }
            report["results"].append(row)
            print(
                f"{case.name}: per image wall {base['wall_seconds']:.2f} → {cur['wall_seconds']:.2f} s "
                f"(×{row['speedup_wall']:.1f}), command ×{row['speedup_command']:.1f}, "
                f"fit {base['fit_seconds']:.2f} → {cur['fit_seconds']:.2f} s (×{row['speedup_fit']:.1f}), "
                f"reprojection {base['reprojection_error_px']:.2f} → {cur['reprojection_error_px']:.2f} px, "
                f"joints {row['joints_mm_between_versions']['mean']:.2f} mm apart",
                file=sys.stderr,
                flush=True,
            )
    write(report, args.out)


if __name__ == "__main__":
    main()
