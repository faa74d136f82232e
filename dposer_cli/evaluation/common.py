"""Plumbing shared by the evaluations: the request, the run context (device, priors, body models, seeds),
dataset sharding across torchrun processes and the per-sample gather, and the SMPL-X evaluation files.

Determinism across process counts: work is cut into fixed batches (`--batch-size`), batch `b` always uses
the generator seeded `seed + b`, and batches are dealt round-robin to the ranks. A batch therefore computes
the same numbers whichever process runs it, and the gathered per-sample metrics of a G-process run equal
those of a 1-process run.
"""

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.bodies.pickle_compat import load_npy_object, load_pickle
from dposer_cli.core.device import init_distributed, make_generator, resolve_device
from dposer_cli.core.errors import DposerError, InputError, MissingAssetError, suggest
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.engine.optimize import PosePrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.priors import build_prior
from dposer_cli.engine.samplers import DEFAULT_SAMPLER
from dposer_cli.io.poses import read_poses
from dposer_cli.tasks.denoise_motion import MotionSchedule

log = logging.getLogger(__name__)

PRIORS = ("dposer", "none", "l2", "gmm", "vposer")
NON_BODY_PRIORS = ("dposer", "none", "l2", "gmm")  # VPoser is a body prior
# paper row that each of our priors corresponds to (tables name baselines this way)
PAPER_ROW = {"dposer": "DPoser", "none": "w/o prior", "l2": "L2 prior", "gmm": "GMM", "vposer": "VPoser"}
T = TypeVar("T")
Progress = Callable[[int, int], None]


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
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # sampler / optimisation steps (None → each task's official count)
    hypo: int = 10
    settings: tuple[str, ...] = ()  # evaluation-specific settings (masks, noise levels, IK types)
    batch_size: int | None = None  # items per batch (None → the evaluation's default, 100 for tasks)
    stride: int = 1  # AMASS frame subsampling
    quick: bool = False  # speed: small sizes (tests)
    out: Path | None = None  # report JSON (default dposer_out/benchmark-NAME.json)
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class FileFit:
    """One fit-image run on files (the speed evaluation's I/O-inclusive figure); `FitFiles` runs it."""

    images: tuple[Path, ...]
    keypoints: tuple[Path, ...]
    out: Path
    part: Part
    steps: int
    prior: PosePrior
    body_model: Path | None
    device: str
    seed: int


# runs the fit-image service on files → (persons fitted, network evaluations); provided by the service layer
FitFiles = Callable[[FileFit], tuple[int, int]]


@dataclass
class Outcome:
    """What an evaluation hands back to `evaluation.run`.

    `metrics[setting][name]` holds our numbers (unit in the name); `paper[setting]` the published table.
    `body_model` is the kind of the body model the body-dependent metrics were computed with (its `role`
    picks the paper's model to compare with); metrics in `body_independent` do not depend on it.
    """

    metrics: dict[str, dict[str, float]]
    settings: dict[str, Any]
    paper: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. generation samples (the service saves)
    info: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    items: int = 0
    body_model: str | None = None
    body_role: str = "body"
    body_independent: tuple[str, ...] = ()


class Context:
    """One benchmark run: request, device, rank/world, progress; loads priors and body models once."""

    def __init__(
        self,
        req: BenchmarkRequest,
        *,
        part: Part,
        progress: Progress | None = None,
        fit_files: FitFiles | None = None,
    ) -> None:
        self.req = req
        self.part = part
        self.rank, self.world = init_distributed()
        spec = req.device
        if (
            self.world > 1
            and spec == "auto"
            and torch.cuda.is_available()
            and os.environ.get("DPOSER_DIST_BACKEND") != "gloo"
        ):
            spec = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.device = resolve_device(spec)
        self.progress = progress
        self.fit_files = fit_files
        self._bodies: dict[str, BodyModel] = {}
        self._priors: dict[Part, PosePrior] = {}
        self._means: dict[Part, Tensor | None] = {}
        self._tmp: list[Path] = []
        self.notes: list[str] = []
        self.nfe = 0  # network evaluations counted by evaluations that cannot read them off a prior

    def tempdir(self) -> Path:
        """A scratch folder removed when the run ends (`close`)."""
        path = Path(tempfile.mkdtemp(prefix="dposer-bench-"))
        self._tmp.append(path)
        return path

    def close(self) -> None:
        """Remove scratch folders; tear down the process group (torchrun) once every rank is done."""
        for path in self._tmp:
            shutil.rmtree(path, ignore_errors=True)
        self._tmp.clear()
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # ---- randomness: one generator per batch, independent of which rank runs it
    def generator(self, batch: int, device: torch.device | None = None) -> torch.Generator:
        return make_generator(self.req.seed + batch, device or self.device)

    # ---- models
    def body(self, kind: str) -> BodyModel:
        """`load_body(kind)` once per run (`--body-model`, else the search order / the mannequin)."""
        if kind not in self._bodies:
            self._bodies[kind] = load_body(kind, self.req.body_model, self.device)
        return self._bodies[kind]

    def prior(self, part: Part | None = None) -> Any:
        """The prior under test for `part`: the DPoser prior, or a baseline with the same interface."""
        part = part or self.part
        if part not in self._priors:
            self._priors[part] = self._load_prior(part)
        return self._priors[part]

    def _load_prior(self, part: Part) -> PosePrior:
        kind = self.req.prior
        if kind not in PRIORS:
            raise InputError(
                f"unknown --prior {kind!r}{suggest(kind, list(PRIORS))}", hint="priors: " + ", ".join(PRIORS)
            )
        if kind == "dposer":
            # --checkpoint/--normalizer name the prior of --part; other parts (speed, face shape) use their defaults
            ckpt = (
                self.req.shape_checkpoint
                if part is Part.face_shape
                else (self.req.checkpoint if part is self.part else None)
            )
            norm = self.req.normalizer if part is self.part else None
            prior = DPoserPrior.load(part, ckpt, normalizer=norm, device=self.device)
            log.info("%s prior: %s", part.value, prior.source)
            return prior
        train = self.train_poses(part) if kind == "gmm" else None
        weights = self.req.checkpoint if kind == "vposer" else None  # --checkpoint: the weights under test
        return build_prior(
            kind,
            part,
            checkpoint=weights,
            device=self.device,
            train=train,
            n_components=self.req.gmm_components,
            seed=self.req.seed,
        )

    def mean_pose(self, part: Part) -> Tensor | None:
        """Where fits start for the priors without a mean pose of their own (none, l2): the DPoser prior's
        normaliser mean when one is found (as fit-image does), else None."""
        if self.req.prior not in ("none", "l2"):
            return None
        if part not in self._means:
            try:
                dposer = DPoserPrior.load(
                    part, self.req.checkpoint, normalizer=self.req.normalizer, device=self.device
                )
                self._means[part] = dposer.normalizer.mean
            except DposerError as exc:
                log.info("no prior for the initial mean pose (%s); starting from the zero pose", exc.message)
                self._means[part] = None
        return self._means[part]

    def train_poses(self, part: Part) -> Tensor:
        """Training poses for the GMM: `--train-poses`, else the shared reference set of the part."""
        path = self.req.train_poses if self.req.train_poses is not None and part is self.part else None
        if path is None:
            path = shared_data_dir() / PARTS[part].reference
            if not path.is_file():
                raise InputError(
                    f"--prior gmm needs training poses to fit; {path} is not there",
                    hint="pass --train-poses POSES.npz",
                )
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

    def map_batches(
        self, n_items: int, fn: Callable[[int, slice], T], *, default_batch: int = 100
    ) -> list[T]:
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
        parts: list[list[T] | None] = [None] * self.world
        dist.all_gather_object(parts, items)
        return [x for p in parts for x in (p or [])]


# --------------------------------------------------------------------------------------- evaluation files
SMPLX_VERTICES = 10475
HAND_IDS_FILE, FACE_IDS_FILE, J14_FILE = (
    "MANO_SMPLX_vertex_ids.pkl",
    "SMPL-X__FLAME_vertex_ids.npy",
    "SMPLX_to_J14.pkl",
)
HAND_SIDES = ("left", "right")


def eval_file_folders(body: BodyModel, data_dir: Path | None) -> list[Path]:
    """Where evaluation-only model files (vertex ids, regressors, segmentations) are looked for: beside the
    body model file, then in --data-dir."""
    path = getattr(body, "path", None)
    return ([Path(path).parent] if path is not None else []) + (
        [Path(data_dir)] if data_dir is not None else []
    )


def find_eval_file(name: str, body: BodyModel, data_dir: Path | None) -> Path | None:
    """The first `name` in `eval_file_folders`, or None."""
    return next((f / name for f in eval_file_folders(body, data_dir) if (f / name).is_file()), None)


def smplx_eval_files(body: BodyModel, data_dir: Path | None, device: torch.device) -> dict[str, Any]:
    """The SMPL-X evaluation files: hand and face vertex ids (required) and the J14 regressor (optional).

    Looked for beside the SMPL-X model file, then in `data_dir`. Returns {"files": {name: path}, "hand":
    {side: ids}, "face": ids, "j14": (14, V) regressor or None}.

    Raises:
        MissingAssetError: a required file is in none of those folders.
        AssetMismatchError / InputError: a file is unreadable or holds the wrong arrays.
    """
    folders = eval_file_folders(body, data_dir)
    where = " or ".join(str(f) for f in folders)
    found = {name: find_eval_file(name, body, data_dir) for name in (HAND_IDS_FILE, FACE_IDS_FILE, J14_FILE)}
    missing = [n for n in (HAND_IDS_FILE, FACE_IDS_FILE) if found[n] is None]
    if missing:
        raise MissingAssetError(
            f"benchmark arctic needs {' and '.join(missing)} (looked in {where})",
            hint="download 'MANO and FLAME vertex indices' from https://smpl-x.is.tue.mpg.de "
            "and put them beside SMPLX_NEUTRAL.npz",
        )
    hand_path, face_path = found[HAND_IDS_FILE], found[FACE_IDS_FILE]
    assert hand_path is not None and face_path is not None
    hand = load_pickle(hand_path)
    out: dict[str, Any] = {"files": {k: str(v) for k, v in found.items() if v is not None}}

    def ids(value: Any, path: Path, what: str) -> Tensor:
        arr = np.asarray(value)
        if (
            arr.ndim != 1
            or arr.size == 0
            or not np.issubdtype(arr.dtype, np.integer)
            or arr.min() < 0
            or arr.max() >= SMPLX_VERTICES
        ):
            raise InputError(
                f"{path}: {what} must be a list of SMPL-X vertex indices (0–{SMPLX_VERTICES - 1})"
            )
        return torch.as_tensor(arr.astype(np.int64), device=device)

    if not isinstance(hand, dict) or not {"left_hand", "right_hand"} <= set(hand):
        raise InputError(f"{hand_path}: expected a dict with 'left_hand' and 'right_hand' vertex ids")
    out["hand"] = {side: ids(hand[f"{side}_hand"], hand_path, f"{side}_hand") for side in HAND_SIDES}
    out["face"] = ids(load_npy_object(face_path), face_path, "the face ids")
    out["j14"] = None
    j14_path = found[J14_FILE]
    if j14_path is not None:
        j14 = np.asarray(load_pickle(j14_path), dtype=np.float64)
        if j14.ndim != 2 or j14.shape[1] != SMPLX_VERTICES or not np.isfinite(j14).all():
            raise InputError(
                f"{j14_path}: expected a (14, {SMPLX_VERTICES}) joint regressor, got shape {j14.shape}"
            )
        out["j14"] = torch.as_tensor(j14, dtype=torch.float32, device=device)
    return out


# ------------------------------------------------------------------------------------------------ per sample
def concat(results: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch dicts of per-sample arrays → one dict of arrays (batch order)."""
    if not results:
        return {}
    return {k: np.concatenate([np.asarray(r[k]) for r in results]) for k in results[0]}


def mean_of(per_sample: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over samples of every per-sample metric. NaN entries (e.g. no occluded joint in a sample) are
    skipped; a metric with no finite entry at all measured nothing and is left out (not reported as a number)."""
    out = {}
    for k, v in per_sample.items():
        v = np.asarray(v, dtype=np.float64)
        finite = v[np.isfinite(v)]
        if finite.size:
            out[k] = float(finite.mean())
    return out


def to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def scaled_schedule(base: MotionSchedule, steps: int | None) -> MotionSchedule:
    """A motion-denoising schedule with about `steps` steps in all (None: unchanged); same t range and weights."""
    if steps is None or steps == base.steps:
        return base
    return replace(base, steps_per_iter=max(1, math.ceil(steps / base.iterations)))
