"""`dposer benchmark NAME`: the paper's evaluations and the speed harness, as one JSON report.

A shell around `dposer_cli.evaluation`: run the evaluation on tensors, then (on rank 0 of a torchrun launch)
write the report JSON and, for generation, the samples beside it. The speed evaluation's I/O-inclusive
fit-image figure runs the fit-image service through `fit_files`.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

from dposer_cli import __version__
from dposer_cli.core.paths import atomic_write
from dposer_cli.core.result import Result
from dposer_cli.evaluation import EVALUATIONS, PRIORS, BenchmarkRequest, Evaluation, FileFit
from dposer_cli.evaluation import run as evaluate
from dposer_cli.io.poses import write_poses
from dposer_cli.io.report import result_dict
from dposer_cli.services import fit_image

__all__ = ["EVALUATIONS", "PRIORS", "BenchmarkRequest", "Evaluation", "report_path", "run"]


def report_path(req: BenchmarkRequest) -> Path:
    """Where the JSON report goes: `--out`, else dposer_out/benchmark-NAME.json."""
    return Path(req.out) if req.out is not None else Path("dposer_out") / f"benchmark-{req.name}.json"


def fit_files(job: FileFit) -> tuple[int, int]:
    """fit-image on files, no overlays → (persons fitted, network evaluations)."""
    result = fit_image.run(
        fit_image.FitImageRequest(
            images=job.images,
            keypoints=job.keypoints,
            out=job.out,
            part=job.part,
            steps=job.steps,
            prior="dposer",
            prior_model=job.prior,
            body_model=job.body_model,
            overlay=False,
            device=job.device,
            seed=job.seed,
        )
    )
    return int(result.info["persons"]), int(result.info["nfe"])


def run(req: BenchmarkRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Run one evaluation and (on rank 0) write the JSON report atomically."""
    t0 = time.perf_counter()
    report = evaluate(req, progress, fit_files=fit_files)
    if report.rank != 0:
        return Result(command="benchmark", info=report.info, seconds=time.perf_counter() - t0)
    path = report_path(req)
    outputs: dict[str, Path | list[Path]] = {"report": path}
    if "samples" in report.arrays:
        outputs["samples"] = write_poses(
            path.with_name(path.stem + ".samples.npz"), report.part, report.arrays["samples"]
        )
    result = Result(
        command="benchmark",
        outputs=outputs,
        metrics=report.metrics,
        info=report.info,
        seconds=time.perf_counter() - t0,
        lines=report.lines,
    )
    with atomic_write(path, "w") as fh:
        json.dump(result_dict(result, __version__), fh, indent=2)
        fh.write("\n")
    return result
