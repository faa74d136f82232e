"""Plumbing shared by the benchmark evaluations: the request, the run context (device, priors, body models,
seeds), dataset sharding across torchrun processes and the per-sample gather on rank 0.

Determinism across process counts: work is cut into fixed batches (`--batch-size`), batch `b` always uses
the generator seeded `seed + b`, and batches are dealt round-robin to the ranks. A batch therefore computes
the same numbers whichever process runs it, and the gathered per-sample metrics of a G-process run equal
those of a 1-process run.
"""

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from dposer_cli.core.device import init_distributed, make_generator, resolve_device
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import shared_data_dir

log = logging.getLogger(__name__)

PRIORS = ("dposer", "none", "l2", "gmm", "vposer")
NON_BODY_PRIORS = ("dposer", "none", "l2", "gmm")  # VPoser is a body prior
# paper row that each of our priors corresponds to (tables name baselines this way)
PAPER_ROW = {"dposer": "DPoser", "none": "w/o prior", "l2": "L2 prior", "gmm": "GMM", "vposer": "VPoser"}
T = TypeVar("T")


@dataclass(frozen=True)
class BenchmarkRequest:
    """Everything `dposer benchmark NAME` can be told; evaluations ignore what they do not use."""

    name: str
    data_dir: Path | None = None
    part: Part | None = None  # None → the evaluation's default part
    prior: str = "dposer"
    checkpoint: Path | None = None
    shape_checkpoint: Path | None = None  # face IK: the face-shape prior
    normalizer: Path | None = None
    body_model: Path | None = None
    limit: int | None = None  # first N dataset items
    n: int | None = None  # generation / speed: samples to draw
    reference: Path | None = None  # generation: reference poses (PRDC, dNN, FID against them)
    statistics: Path | None = None  # generation: FID statistics (mu, sigma)
    train_poses: Path | None = None  # gmm baseline: poses to fit (default: the shared reference of the part)
    gmm_components: int = 8
    sampler: str = "dpm2m"
    steps: int | None = None  # sampler / optimisation steps (None → each task's official count)
    hypo: int = 10
    settings: tuple[str, ...] = ()  # evaluation-specific settings (masks, noise levels, IK types)
    batch_size: int | None = None  # items per batch (None → the evaluation's default, 100 for tasks)
    stride: int = 1  # AMASS frame subsampling
    quick: bool = False  # speed: small sizes (tests)
    out: Path | None = None  # report JSON (default dposer_out/benchmark-NAME.json)
    device: str = "auto"
    seed: int = 0


@dataclass
class Outcome:
    """What an evaluation hands back to `benchmark.run`.

    `metrics[setting][name]` holds our numbers (unit in the name); `paper[setting]` the published table
    (`table`, `metrics`, `rows`: {method: [values in the order of `metrics`]}, optional `note`).
    """

    metrics: dict[str, dict[str, float]]
    settings: dict[str, Any]
    paper: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    items: int = 0


class Context:
    """One benchmark run: request, device, rank/world, progress; loads priors and body models once."""

    def __init__(self, req: BenchmarkRequest, *, part: Part, progress: Callable[[int, int], None] | None = None
                 ) -> None:
        self.req = req
        self.part = part
        self.rank, self.world = init_distributed()
        spec = req.device
        if self.world > 1 and spec == "auto" and torch.cuda.is_available() \
                and os.environ.get("DPOSER_DIST_BACKEND") != "gloo":
            spec = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.device = resolve_device(spec)
        self.progress = progress
        self._bodies: dict[str, Any] = {}
        self._priors: dict[Part, Any] = {}
        self._tmp: list[Path] = []
        self.notes: list[str] = []
        self.nfe = 0  # network evaluations counted by evaluations that cannot read them off a prior

    def tempdir(self) -> Path:
        """A scratch folder removed when the run ends (`cleanup`)."""
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="dposer-bench-"))
        self._tmp.append(path)
        return path

    def cleanup(self) -> None:
        import shutil

        for path in self._tmp:
            shutil.rmtree(path, ignore_errors=True)
        self._tmp.clear()

    # ---- randomness: one generator per batch, independent of which rank runs it
    def generator(self, batch: int, device: torch.device | None = None) -> torch.Generator:
        return make_generator(self.req.seed + batch, device or self.device)

    # ---- models
    def body(self, kind: str) -> Any:
        """`load_body(kind)` once per run (`--body-model`, else the search order / the mannequin)."""
        if kind not in self._bodies:
            from dposer_cli.bodies.base import load_body

            self._bodies[kind] = load_body(kind, self.req.body_model, self.device)
        return self._bodies[kind]

    def prior(self, part: Part | None = None) -> Any:
        """The prior under test for `part`: the DPoser prior, or a baseline with the same interface."""
        part = part or self.part
        if part not in self._priors:
            self._priors[part] = self._load_prior(part)
        return self._priors[part]

    def _load_prior(self, part: Part) -> Any:
        kind = self.req.prior
        if kind not in PRIORS:
            raise InputError(f"unknown --prior {kind!r}{suggest(kind, list(PRIORS))}", hint="priors: " + ", ".join(PRIORS))
        if kind == "dposer":
            from dposer_cli.engine.prior import DPoserPrior

            # --checkpoint/--normalizer name the prior of --part; other parts (speed, face shape) use their defaults
            ckpt = self.req.shape_checkpoint if part is Part.face_shape else \
                (self.req.checkpoint if part is self.part else None)
            norm = self.req.normalizer if part is self.part else None
            prior = DPoserPrior.load(part, ckpt, normalizer=norm, device=self.device)
            log.info("%s prior: %s", part.value, prior.source)
            return prior
        from dposer_cli.engine.priors import build_prior

        train = self.train_poses(part) if kind == "gmm" else None
        weights = self.req.checkpoint if kind == "vposer" else None  # --checkpoint: the weights under test
        return build_prior(kind, part, checkpoint=weights, device=self.device, train=train,
                           n_components=self.req.gmm_components, seed=self.req.seed)

    def train_poses(self, part: Part) -> torch.Tensor:
        """Training poses for the GMM: `--train-poses`, else the shared reference set of the part."""
        from dposer_cli.io.poses import read_poses

        path = self.req.train_poses if self.req.train_poses is not None and part is self.part else None
        if path is None:
            path = shared_data_dir() / PARTS[part].reference
            if not path.is_file():
                raise InputError(f"--prior gmm needs training poses to fit; {path} is not there",
                                 hint="pass --train-poses POSES.npz")
        return torch.as_tensor(np.asarray(read_poses(path, part).poses, dtype=np.float64))

    def steps(self, default: int) -> int:
        if self.req.steps is not None and self.req.steps < 1:
            raise InputError(f"--steps must be at least 1 (got {self.req.steps})")
        return self.req.steps or default

    # ---- sharding
    def limit(self, n: int) -> int:
        if self.req.limit is not None:
            if self.req.limit < 1:
                raise InputError(f"--limit must be at least 1 (got {self.req.limit})")
            return min(n, self.req.limit)
        return n

    def map_batches(self, n_items: int, fn: Callable[[int, slice], T], *, default_batch: int = 100) -> list[T]:
        """Run `fn(batch_index, item_slice)` for this rank's batches; every rank gets all results, in order."""
        size = self.req.batch_size if self.req.batch_size is not None else default_batch
        if size < 1:
            raise InputError(f"--batch-size must be at least 1 (got {size})")
        batches = math.ceil(n_items / size)
        mine = []
        for b in range(self.rank, batches, self.world):
            mine.append((b, fn(b, slice(b * size, min(n_items, (b + 1) * size)))))
            if self.progress is not None:
                self.progress(min(batches, len(mine) * self.world), batches)
        return [r for _, r in sorted(self.gather(mine), key=lambda br: br[0])]

    def gather(self, items: list[T]) -> list[T]:
        """Concatenate every rank's list (all_gather_object); the identity in a single process."""
        if self.world == 1:
            return list(items)
        import torch.distributed as dist

        parts: list[list[T] | None] = [None] * self.world
        dist.all_gather_object(parts, items)
        return [x for p in parts for x in (p or [])]


def eval_file_folders(body: Any, data_dir: Path | None) -> list[Path]:
    """Where evaluation-only model files (vertex ids, regressors, segmentations) are looked for: beside the
    body model file, then in --data-dir."""
    return [Path(body.path).parent] + ([Path(data_dir)] if data_dir is not None else [])


def find_eval_file(name: str, body: Any, data_dir: Path | None) -> Path | None:
    """The first `name` in `eval_file_folders`, or None."""
    return next((f / name for f in eval_file_folders(body, data_dir) if (f / name).is_file()), None)


def report_path(req: BenchmarkRequest) -> Path:
    """Where the JSON report goes: `--out`, else dposer_out/benchmark-NAME.json."""
    return Path(req.out) if req.out is not None else Path("dposer_out") / f"benchmark-{req.name}.json"


# ------------------------------------------------------------------------------------------------ per sample
def concat(results: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch dicts of per-sample arrays → one dict of arrays (batch order)."""
    if not results:
        return {}
    return {k: np.concatenate([np.asarray(r[k]) for r in results]) for k in results[0]}


def mean_of(per_sample: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over samples of every per-sample metric (NaN entries — e.g. no occluded joint — are skipped)."""
    out = {}
    for k, v in per_sample.items():
        v = np.asarray(v, dtype=np.float64)
        finite = v[np.isfinite(v)]
        out[k] = float(finite.mean()) if finite.size else math.nan
    return out


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def scaled_schedule(base: Any, steps: int | None) -> Any:
    """A motion-denoising schedule with about `steps` steps in all (None: unchanged); same t range and weights."""
    if steps is None or steps == base.steps:
        return base
    from dataclasses import replace

    return replace(base, steps_per_iter=max(1, math.ceil(steps / base.iterations)))
