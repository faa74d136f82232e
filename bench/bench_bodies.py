"""Body forward kinematics / skinning speed: our torch mannequin vs mannequin-x (NumPy) vs smplx.

    OMP_NUM_THREADS=1 python -m bench.bench_bodies [--out bench/results/bodies.json] [--quick]

Batches 1 / 256 / 4096, forward and forward+backward, in two modes: `joints` (skeleton + landmark
joints; ours skips the mesh, mannequin-x runs `joint_transforms`, smplx must build the mesh anyway) and
`vertices` (full mesh; batches up to --max-vertex-batch). smplx runs SMPL-X (10,475 vertices) on the
synthetic test fixture through `SMPLXBody`. Every row carries `speedup_vs_mannequin_x`: the mannequin-x
forward time of the same mode and batch, measured in this process, divided by the row's time.
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._common import environment, parser, timeit, write


def _poses(batch: int, seed: int = 0) -> np.ndarray:
    from dposer_cli.core.paths import shared_data_dir

    path = shared_data_dir() / "poses" / "body_reference_train.npz"
    if path.is_file():
        poses = np.load(path)["poses"]
        return poses[np.arange(batch) % len(poses)].astype(np.float32)
    return (np.random.default_rng(seed).standard_normal((batch, 63)) * 0.3).astype(np.float32)


def _torch_row(model: torch.nn.Module, poses: np.ndarray, mode: str, backward: bool, repeat: int) -> float:
    vertices = mode == "vertices"

    def run() -> None:
        pose = torch.from_numpy(poses).requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = model(body_pose=pose, return_vertices=vertices)
            if backward:
                (out.vertices if vertices else out.joints).square().sum().backward()

    return timeit(run, repeat=repeat)


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--max-vertex-batch",
        type=int,
        default=256,
        help="largest batch in vertices mode (full meshes of 4096 bodies need several GB)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 64] if args.quick else [1, 256, 4096]

    from mannequin import Mannequin

    from dposer_cli.bodies.mannequin import MannequinBody
    from dposer_cli.bodies.smplx_family import SMPLXBody
    from tests._fixtures.body_models import write_smplx

    ours = MannequinBody()
    numpy_model = Mannequin("wooden")
    with tempfile.TemporaryDirectory() as tmp:
        smplx_body = SMPLXBody(write_smplx(Path(tmp)))

    rows: list[dict] = []
    for mode in ("joints", "vertices"):
        for batch in batches:
            if mode == "vertices" and batch > args.max_vertex_batch:
                continue
            poses = _poses(batch)
            repeat = 10 if batch == 1 else 3 if batch <= 256 else 1
            mx_pose = {
                "body_pose": poses.reshape(batch, 21, 3),
                "head_pose": np.zeros((batch, 3, 3), np.float32),
                "hand_pose": np.zeros((batch, 30, 3), np.float32),
            }
            mx_fn = numpy_model.joint_transforms if mode == "joints" else numpy_model.vertices
            baseline = timeit(lambda fn=mx_fn, pose=mx_pose: fn(pose), repeat=repeat)
            rows.append(
                {
                    "model": "mannequin-x (NumPy)",
                    "mode": mode,
                    "batch": batch,
                    "pass": "fwd",
                    "seconds": baseline,
                    "ms_per_sample": 1e3 * baseline / batch,
                    "speedup_vs_mannequin_x": 1.0,
                }
            )
            for name, model in (("dposer torch mannequin", ours), ("smplx SMPL-X (fixture)", smplx_body)):
                for backward in (False, True):
                    sec = _torch_row(model, poses, mode, backward, repeat)
                    rows.append(
                        {
                            "model": name,
                            "mode": mode,
                            "batch": batch,
                            "pass": "fwd+bwd" if backward else "fwd",
                            "seconds": sec,
                            "ms_per_sample": 1e3 * sec / batch,
                            "speedup_vs_mannequin_x": baseline / sec,
                        }
                    )
    report = {
        "benchmark": "bodies",
        "env": environment(),
        "notes": (
            "mannequin-x has no autograd (fwd only); smplx builds the full mesh even for joints; "
            "ours: float32, neutral shape (cached sparse skinning matrix for meshes)"
        ),
        "results": rows,
    }
    write(report, args.out)


if __name__ == "__main__":
    main()
