"""The paper's evaluations (`dposer benchmark`) and the speed harness, calling the tasks directly on tensors.

    from dposer_cli.evaluation import BenchmarkRequest, run
    report = run(BenchmarkRequest("hand-ik", data_dir=Path("reinterhand_test"), settings=("sparse",)))
    report.metrics["sparse"]["mpjpe_all_mm"], report.info["rows"]

One module per evaluation family: `generation`, `completion` (body and whole body), `denoise`, `ik` (hand and
face), `hmr` (EHF, FreiHAND, ARCTIC), `speed`; `common` holds the request, the run context (devices, priors,
body models, batching and torchrun sharding) and `paper` the published numbers (`paper_results.json`).
"""

from dposer_cli.evaluation.common import PRIORS, BenchmarkRequest, FileFit, FitFiles
from dposer_cli.evaluation.runner import EVALUATIONS, Evaluation, Report, lookup, names_hint, run, validate

__all__ = [
    "EVALUATIONS",
    "PRIORS",
    "BenchmarkRequest",
    "Evaluation",
    "FileFit",
    "FitFiles",
    "Report",
    "lookup",
    "names_hint",
    "run",
    "validate",
]
