"""Render the README gallery: run each command as a user would, keep its picture, shrink it into docs/gallery/.

    python docs/make_gallery.py            # all pictures (a few minutes on a CPU)
    python docs/make_gallery.py fit ik     # only some of them

Uses the bundled demo priors and whatever body models `dposer` finds (the built-in mannequin on a clean
machine), the CPU, fixed seeds, and the example data in ../shared/data (`dposer_cli.core.paths.shared_data_dir`)
and examples/fit/. Every picture is saved as a palette PNG of at most ~150 KB.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dposer_cli.core.paths import shared_data_dir  # noqa: E402  (after the sys.path line: run as a script)

GALLERY = ROOT / "docs" / "gallery"
MAX_WIDTH = 1100  # pixels; pictures are shrunk to this width at most
MAX_BYTES = 150_000


def dposer(*args: str) -> None:
    """Run `python -m dposer_cli ARGS` (CPU, seed 0 unless given), failing loudly."""
    cmd = [sys.executable, "-m", "dposer_cli", *args, "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    print("$ dposer " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def save(picture: Path | np.ndarray, name: str) -> Path:
    """Shrink to MAX_WIDTH, quantise to a palette (fewer colours until it fits MAX_BYTES), write docs/gallery."""
    img = Image.open(picture).convert("RGB") if isinstance(picture, Path) else Image.fromarray(picture)
    if img.width > MAX_WIDTH:
        img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.Resampling.LANCZOS)
    GALLERY.mkdir(parents=True, exist_ok=True)
    path = GALLERY / f"{name}.png"
    for colors in (256, 128, 64, 32):
        img.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
        if path.stat().st_size <= MAX_BYTES:
            break
    print(f"  -> {path.relative_to(ROOT)} ({img.width}x{img.height}, {path.stat().st_size // 1024} KB)")
    return path


def video_frame(path: Path, index: int) -> np.ndarray:
    with imageio.get_reader(str(path)) as reader:
        for i, frame in enumerate(reader):
            if i == index:
                return np.asarray(frame)
    raise SystemExit(f"{path} has fewer than {index + 1} frames")


# ---------------------------------------------------------------------------------------------- pictures
def generate(tmp: Path) -> None:
    for part, n in (("body", 8), ("hand", 4), ("wholebody", 4), ("face", 4)):
        out = tmp / f"gen_{part}"
        dposer("generate", "--part", part, "-n", str(n), "--seed", "0", "--out", str(out))
        save(out / "grid.png", f"generate_{part}")


def complete(tmp: Path) -> None:
    data = np.load(shared_data_dir() / "official" / "examples" / "toy_body_data.npz")["pose_samples"][:3]
    np.savez(tmp / "toy3.npz", pose_samples=data)
    out = tmp / "complete"
    dposer(
        "complete",
        str(tmp / "toy3.npz"),
        "--mask",
        "legs",
        "--hypo",
        "4",
        "--render",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    save(out / "completed.png", "complete_legs")


def denoise(tmp: Path) -> None:
    data = np.load(shared_data_dir() / "official" / "examples" / "Gestures_3_poses_batch005.npz")
    np.savez(tmp / "gestures60.npz", pose_body=data["pose_body"][:60], root_orient=data["root_orient"][:60])
    out = tmp / "denoise"
    dposer(
        "denoise-motion", str(tmp / "gestures60.npz"), "--noise-std", "0.04", "--seed", "0", "--out", str(out)
    )
    save(video_frame(out / "comparison.mp4", 30), "denoise_motion")


def fit(tmp: Path) -> None:
    out = tmp / "fit"
    dposer(
        "fit-image",
        "examples/fit/three_people.png",
        "--keypoints",
        "examples/fit/three_people.json",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    save(out / "three_people_fit.png", "fit_three_people")


def ik(tmp: Path) -> None:
    poses = np.load(shared_data_dir() / "poses" / "hand_reference_train.npz")["poses"]
    np.savez(
        tmp / "hands.npz", hand_pose=poses[np.random.default_rng(0).choice(len(poses), 8, replace=False)]
    )
    out = tmp / "ik"
    dposer(
        "ik",
        "--part",
        "hand",
        "--targets",
        str(tmp / "hands.npz"),
        "--type",
        "sparse",
        "--render",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    save(out / "ik.png", "ik_hand")


PICTURES: dict[str, Callable[[Path], None]] = {
    "generate": generate,
    "complete": complete,
    "denoise": denoise,
    "fit": fit,
    "ik": ik,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help=f"pictures to make: {', '.join(PICTURES)} (default all)")
    args = parser.parse_args()
    unknown = sorted(set(args.only) - set(PICTURES))
    if unknown:
        parser.error(f"unknown picture(s) {', '.join(unknown)}; choose from {', '.join(PICTURES)}")
    with tempfile.TemporaryDirectory(prefix="dposer-gallery-") as tmp:
        for name in args.only or list(PICTURES):
            PICTURES[name](Path(tmp))


if __name__ == "__main__":
    main()
