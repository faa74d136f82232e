"""Built-in keypoint detection (MediaPipe Holistic, the `detect` extra) vs the ViTPose keypoints shipped with the
official example photos, and what the difference does to a fit.

    OMP_NUM_THREADS=1 python -m bench.bench_detect --out bench/results/detect.json [--steps 100] [--part body]

1. Detection on `shared/data/official/examples/body/images/*.jpg`: per photo the seconds per image (the first
   call of the process, which loads the graph, and the best of `--repeat` further calls) and the pixel
   distance of every mapped keypoint (OpenPose-135 order, points both detectors report) to the shipped
   `predictions/<stem>.json`; per keypoint the median over the photos, and medians per group (body 25, feet,
   hands, face). Timing is reported, never asserted.
2. `dposer fit-image` on the photos twice, once with the shipped keypoints and once with the detections
   saved as COCO-WholeBody JSON (`io.detect.write_coco_wholebody`) and passed with `--keypoints`; per photo
   the PA-MPJPE (mm, `dposer_cli.metrics.pa_mpjpe`) between the two fits' joints (`joints` in the npz).
"""

import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench._common import environment, parser, write

GROUPS = {"body25": slice(0, 25), "feet": slice(19, 25), "left_hand": slice(25, 46), "right_hand": slice(46, 67),
          "face": slice(67, 135)}  # fmt: skip


def _names() -> list[str]:
    from dposer_cli.io.keypoints import HAND21_NAMES, OPENPOSE25_NAMES

    face = [f"face{i}" for i in range(68)]
    return [
        *OPENPOSE25_NAMES,
        *(f"left_hand_{n}" for n in HAND21_NAMES),
        *(f"right_hand_{n}" for n in HAND21_NAMES),
        *face,
    ]


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return round(float(np.median(values)), 2) if len(values) else None


def _fit(
    images: list[Path], keypoints: list[Path], out: Path, part: str, steps: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """`dposer fit-image` (the CLI, as a user runs it); the fitted joints per image stem."""
    cmd = [sys.executable, "-m", "dposer_cli", "fit-image", *map(str, images), "--out", str(out), "--part", part,
           "--steps", str(steps), "--seed", str(seed), "--no-overlay", "--device", "cpu", "--quiet", "--json"]  # fmt: skip
    for k in keypoints:
        cmd += ["--keypoints", str(k)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fit-image failed ({done.returncode}): {done.stderr.strip()}")
    joints = {}
    for image in images:
        with np.load(out / f"{image.stem}.npz", allow_pickle=False) as data:
            joints[image.stem] = data["joints"]
    return joints


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=100, help="fit-image --steps (Adam iterations per stage)")
    p.add_argument("--part", default="body", help="fit-image --part (body or wholebody)")
    p.add_argument("--repeat", type=int, default=3, help="timed detections per photo after the first")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeat = 10, 1

    import torch

    from dposer_cli.core.paths import shared_data_dir
    from dposer_cli.io.detect import DETECTOR, detect_keypoints, write_coco_wholebody
    from dposer_cli.io.keypoints import read_keypoints
    from dposer_cli.io.media import read_image
    from dposer_cli.metrics import pa_mpjpe

    torch.set_num_threads(args.threads)
    body = shared_data_dir() / "official" / "examples" / "body"
    images = sorted((body / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no example photos in {body / 'images'}")
    shipped = [body / "predictions" / f"{image.stem}.json" for image in images]
    names = _names()
    report: dict = {
        "environment": environment(),
        "detector": DETECTOR,
        "photos": {},
        "per_keypoint_median_px": {},
    }
    try:
        import mediapipe

        report["environment"]["mediapipe"] = mediapipe.__version__
    except ImportError:
        raise SystemExit('MediaPipe is not installed: pip install "dposer[detect]"') from None

    dists = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        detected = []
        for image_path, ref_path in zip(images, shipped):
            image = read_image(image_path)
            t0 = time.perf_counter()
            found = detect_keypoints(image, path=image_path)
            first = time.perf_counter() - t0
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                detect_keypoints(image, path=image_path)
                times.append(time.perf_counter() - t0)
            ref = read_keypoints(ref_path, part="wholebody")
            kp, gt = found.keypoints[0], ref.keypoints[0]
            both = (kp[:, 2] > 0) & (gt[:, 2] > 0)
            dist = np.where(both, np.linalg.norm(kp[:, :2] - gt[:, :2], axis=1), np.nan)
            dists.append(dist)
            json_path = write_coco_wholebody(
                tmp / f"{image_path.stem}.json", found, image_size=image.shape[:2]
            )
            detected.append(json_path)
            height, width = image.shape[:2]
            report["photos"][image_path.name] = {
                "size": [int(width), int(height)],
                "seconds_first_call": round(first, 3),
                "seconds_per_image": round(min(times), 3) if times else None,
                "found": {g: int((kp[sl, 2] > 0).sum()) for g, sl in GROUPS.items()},
                "median_px": {g: _median(dist[sl]) for g, sl in GROUPS.items()},
                "median_px_all": _median(dist),
                "per_keypoint_px": {
                    n: (None if np.isnan(d) else round(float(d), 1)) for n, d in zip(names, dist)
                },
            }
        stack = np.stack(dists)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: points neither photo has
            per_joint = np.nanmedian(stack, axis=0)
        report["per_keypoint_median_px"] = {
            n: (None if np.isnan(d) else round(float(d), 1)) for n, d in zip(names, per_joint)
        }
        report["median_px"] = {g: _median(stack[:, sl].reshape(-1)) for g, sl in GROUPS.items()}

        # the same fits with shipped and with detected keypoints
        t0 = time.perf_counter()
        with_shipped = _fit(images, shipped, tmp / "fit_shipped", args.part, args.steps)
        with_detected = _fit(images, detected, tmp / "fit_detected", args.part, args.steps)
        seconds = time.perf_counter() - t0
        # noise floor: the shipped keypoints fitted again with another seed
        reseeded = _fit(images, shipped, tmp / "fit_seed1", args.part, args.steps, seed=1)

        def pa_mm(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
            return {image.name: round(float(pa_mpjpe(torch.as_tensor(a[image.stem]),
                                                     torch.as_tensor(b[image.stem])).mean()) * 1000, 1)
                    for image in images}  # fmt: skip

        report["fit"] = {
            "command": f"dposer fit-image IMAGES --keypoints K... --part {args.part} --steps {args.steps} "
            "--no-overlay --device cpu",
            "seconds_two_runs": round(seconds, 1),
            "pa_mpjpe_mm_detected_vs_shipped": pa_mm(with_detected, with_shipped),
            "pa_mpjpe_mm_seed1_vs_seed0_shipped": pa_mm(reseeded, with_shipped),
        }
    write(report, args.out)


if __name__ == "__main__":
    main()
