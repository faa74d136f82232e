"""Rendering speed: ms per frame, pyrender (EGL) vs the numpy `soft` renderer, on a 10k-vertex mesh.

    OMP_NUM_THREADS=1 python bench/bench_render.py [--out bench/results/render.json] [--repeats 10]

Prints one JSON object; both backends render the same mesh with the same camera in one process.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np


def _mesh() -> tuple[np.ndarray, np.ndarray]:
    """10,242 vertices / 20,480 faces: an icosphere squashed to a body-like ellipsoid, bumped a little."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=5)
    v = np.asarray(m.vertices) * [0.25, 0.85, 0.18]
    v += 0.01 * np.sin(8 * v[:, [1, 2, 0]])  # so shading isn't trivially smooth
    return v, np.asarray(m.faces)


def _time(fn, repeats: int) -> float:
    fn()  # warm: shader compile / first-use costs are reported separately
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def run(repeats: int = 10) -> dict:
    from dposer_cli.render import draw, scene

    v, f = _mesh()
    t0 = time.perf_counter()
    backend = scene.select_renderer("auto")
    probe_ms = (time.perf_counter() - t0) * 1000
    renderers = ["soft"] + (["pyrender"] if backend == "pyrender" else [])
    frame_ms: dict[str, dict[str, float]] = {}
    for r in renderers:
        frame_ms[r] = {
            str(size): round(
                _time(lambda r=r, s=size: draw.render_mesh(v, f, size=s, renderer=r), repeats), 2
            )
            for size in (256, 512)
        }
    items = [{"vertices": v * [1, 1 + 0.02 * i, 1], "faces": f} for i in range(16)]
    sheet_ms = {
        r: round(_time(lambda r=r: draw.contact_sheet(items, cell=256, renderer=r), max(1, repeats // 5)), 1)
        for r in renderers
    }
    ratio = (
        {s: round(frame_ms["soft"][s] / frame_ms["pyrender"][s], 2) for s in frame_ms["soft"]}
        if "pyrender" in frame_ms
        else None
    )
    return {
        "benchmark": "render",
        "mesh": {"vertices": len(v), "faces": len(f)},
        "ms_per_frame": frame_ms,
        "soft_over_pyrender": ratio,
        "contact_sheet_16x256_ms": sheet_ms,
        "pyrender_probe_ms": round(probe_ms, 1),
        "pyrender_unavailable_reason": None if backend == "pyrender" else scene._probe.get("reason"),
        "repeats": repeats,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = run(args.repeats)
    text = json.dumps(result, indent=2)
    if args.out:
        from dposer_cli.core.paths import atomic_write

        with atomic_write(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
