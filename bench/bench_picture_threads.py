"""Pictures drawn on one thread against `render.threads`' default, in the same process, alternating rounds:
fit-image's pictures of eight one-person photos in one command (the command's time minus its fit) and the
denoise-motion comparison video (60 frames of the official Gestures example, ms per frame).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_picture_threads --out bench/results/picture_threads.json

Torch runs on one thread in both arms; only the drawing threads differ. The gain depends on idle cores: on a
shared machine another process may hold them.
"""

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._common import environment, parser, write
from dposer_cli.bodies import load_body
from dposer_cli.core.device import available_cores
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.evaluation import speed
from dposer_cli.render.threads import picture_workers
from dposer_cli.services import _fit_outputs
from dposer_cli.services import fit_image as svc
from dposer_cli.tasks import pictures

PEOPLE = 8  # one-person photos fitted in one command
FRAMES = 60  # comparison-video frames
STEPS = 5  # fit iterations per stage: the pictures are the same whatever the fit


def _photos(tmp: Path, files: tuple[list[Path], list[Path]], workers: int) -> float:
    """Seconds of one fit-image command (per photo) that are not its fit, drawing on `workers` threads."""
    _fit_outputs.picture_workers = lambda count, renderer: min(count, workers)  # type: ignore[assignment]
    images, keypoints = files
    req = svc.FitImageRequest(
        images=tuple(images),
        keypoints=tuple(keypoints),
        part=Part.body,
        out=tmp / f"out-{time.perf_counter_ns()}",
        steps=STEPS,
        device="cpu",
        renderer="soft",
    )
    result = svc.run(req)
    return (result.seconds - float(result.info["fit_seconds"])) / len(images)


def _video(workers: int, data: tuple) -> float:
    """Milliseconds per comparison-video frame on `workers` threads."""
    obs, visible, result, body = data
    pictures.picture_workers = lambda count, renderer: min(count, workers)  # type: ignore[assignment]
    t0 = time.perf_counter()
    pictures.comparison_frames(obs, visible, result, body, renderer="soft", clean=result.vertices)
    return (time.perf_counter() - t0) / len(obs) * 1000


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="alternating rounds (medians)")
    args = p.parse_args()
    torch.set_num_threads(1)
    body = load_body("body")
    threads = picture_workers(PEOPLE, "soft")
    with np.load(shared_data_dir() / "official/examples/Gestures_3_poses_batch005.npz") as z:
        pose = torch.as_tensor(z["pose_body"][:FRAMES], dtype=torch.float32)
    with torch.no_grad():
        posed = body(body_pose=pose)
    noise = 0.02 * torch.randn(posed.joints[:, :22].shape, generator=torch.Generator().manual_seed(0))
    video = (posed.joints[:, :22] + noise, torch.ones(FRAMES, 22, dtype=torch.bool), posed, body)
    rows: dict[str, dict[int, list[float]]] = {"photo": {1: [], threads: []}, "video": {1: [], threads: []}}
    with tempfile.TemporaryDirectory(prefix="dposer-bench-pictures-") as tmp:
        files = speed.write_people(Path(tmp), speed.synthetic_people(body, PEOPLE, seed=3))
        _photos(Path(tmp), files, 1)  # warm: recordings, fonts
        for r in range(args.repeat):
            for w in (1, threads) if r % 2 == 0 else (threads, 1):
                rows["photo"][w].append(_photos(Path(tmp), files, w))
                rows["video"][w].append(_video(w, video))
    report: dict[str, Any] = {
        "benchmark": "picture_threads",
        "environment": environment(),
        "available_cores": available_cores(),
        "drawing_threads": threads,
        "fit_image_pictures_seconds_per_photo": {
            "one_thread": statistics.median(rows["photo"][1]),
            "threads": statistics.median(rows["photo"][threads]),
            "all": {str(k): v for k, v in rows["photo"].items()},
        },
        "comparison_video_ms_per_frame": {
            "one_thread": statistics.median(rows["video"][1]),
            "threads": statistics.median(rows["video"][threads]),
            "all": {str(k): v for k, v in rows["video"].items()},
        },
        "note": f"{PEOPLE} one-person 640x480 photos in one fit-image command (its time minus the fit, per photo); "
        f"{FRAMES} frames of the denoise-motion comparison video (input, observed joints, denoised). The same "
        "bytes either way (tests). Torch on one thread in both arms.",
    }
    for key in ("fit_image_pictures_seconds_per_photo", "comparison_video_ms_per_frame"):
        entry = report[key]
        entry["speedup"] = entry["one_thread"] / entry["threads"]
    write(report, args.out)


if __name__ == "__main__":
    main()
