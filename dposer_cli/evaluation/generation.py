"""`benchmark generation`: sample the prior, then FID, precision/recall/density/coverage, APD and dNN (spec §8.1).

All metrics work on raw axis-angle / coefficient vectors, as the official evaluation does. FID compares the
Gaussian fit of the samples with `--statistics` (mu, sigma; default: the official statistics when
downloaded) and/or with the Gaussian fit of `--reference` poses; PRDC (k = 3) and dNN need `--reference`.
APD (cm) uses the first 500 samples posed by the body model: body → body22 joints; hand → hand21 joints;
whole body → body22 joints and the root-relative left/right hand21 joints (mean of both hands); the face
has no APD (Table S-11 reports none). Only the APD depends on the body model.
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import official_dir
from dposer_cli.evaluation.common import Context, Outcome, to_numpy
from dposer_cli.evaluation.paper import paper_for
from dposer_cli.io.poses import load_key, open_npz, read_poses
from dposer_cli.metrics import apd, dnn, fid, fid_from_stats, gaussian_stats, prdc
from dposer_cli.tasks.export import part_params
from dposer_cli.tasks.sample import DEFAULT_STEPS, check_sampler
from dposer_cli.tasks.sample import sample as sample_poses

log = logging.getLogger(__name__)

DEFAULT_N = 50_000  # the official eval_generation sample count (spec §7.1)
APD_SAMPLES = 500
SAMPLE_BATCH = 10_000  # samples per shard batch
PRDC_K = 3
DNN_MEASURE = {
    Part.body: "rotation",
    Part.hand: "rotation",
    Part.face: "absolute",
    Part.face_shape: "absolute",
    Part.wholebody: "absolute",
}  # spec §8.1
BODY_INDEPENDENT = ("fid", "fid_reference", "precision", "recall", "density", "coverage", "dnn")


def read_statistics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`mu` (D,) and `sigma` (D, D) of an FID statistics npz."""
    with open_npz(Path(path), "statistics file") as npz:
        missing = [k for k in ("mu", "sigma") if k not in npz.files]
        if missing:
            raise InputError(
                f"{path}: no {' and '.join(missing)} (keys: {', '.join(npz.files)}); "
                "expected FID statistics with `mu` (D,) and `sigma` (D, D)"
            )
        mu = np.asarray(load_key(npz, "mu", path), np.float64)
        sigma = np.asarray(load_key(npz, "sigma", path), np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InputError(
            f"{path}: `mu` has shape {mu.shape} and `sigma` {sigma.shape}; expected (D,) and (D, D)"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise InputError(f"{path}: the FID statistics hold NaN or infinite values")
    return mu, sigma


def _statistics_path(ctx: Context, part: Part) -> Path | None:
    if ctx.req.statistics is not None:
        if not Path(ctx.req.statistics).is_file():
            raise InputError(f"statistics file not found: {ctx.req.statistics}")
        return Path(ctx.req.statistics)
    official = official_dir() / PARTS[part].statistics
    return official if official.is_file() else None


def run(ctx: Context) -> Outcome:
    req, part = ctx.req, ctx.part
    if req.prior in ("none", "l2"):
        raise InputError(
            f"--prior {req.prior} cannot generate poses; generation compares dposer, gmm and vposer",
            hint="use --prior dposer, gmm or vposer",
        )
    stats_path = _statistics_path(ctx, part)
    if stats_path is None and req.reference is None:
        raise InputError(
            f"generation needs FID statistics or reference poses: no --statistics, no --reference, and "
            f"no downloaded official statistics at {official_dir() / PARTS[part].statistics}",
            hint=f"run `dposer download {part.value}` or pass --statistics statistics.npz / "
            "--reference POSES.npz",
        )
    n = req.n if req.n is not None else DEFAULT_N
    if n < 2:
        raise InputError(f"-n must be at least 2 for generation metrics (got {n})")
    check_sampler(req.sampler)
    steps = ctx.steps(DEFAULT_STEPS[req.sampler])
    mu_sigma = read_statistics(stats_path) if stats_path is not None else None
    reference = None
    if req.reference is not None:
        reference = np.asarray(read_poses(Path(req.reference), part).poses, dtype=np.float64)
    prior = ctx.prior(part)

    # ---- sampling, sharded by batches of SAMPLE_BATCH (batch b seeded seed + b) -----------------------------
    def sample(b: int, sl: slice) -> np.ndarray:
        count = sl.stop - sl.start
        x = sample_poses(prior, count, sampler=req.sampler, steps=steps, generator=ctx.generator(b)).poses
        return to_numpy(x).astype(np.float32)  # baselines (gmm, vposer) sample directly

    prior.nfe = 0
    batches = ctx.map_batches(n, sample, default_batch=SAMPLE_BATCH)
    samples = np.concatenate(batches)
    nfe = prior.nfe  # this rank's network evaluations
    if not np.isfinite(samples).all():
        raise InputError("sampling produced non-finite values; try another --sampler or more --steps")
    if ctx.rank != 0:
        return Outcome(metrics={}, settings={}, info={"nfe": nfe}, items=n)

    # ---- metrics (rank 0) -------------------------------------------------------------------------------
    m: dict[str, float] = {}
    if mu_sigma is not None:
        m["fid"] = fid(samples, mu=mu_sigma[0], sigma=mu_sigma[1])
    if reference is not None:
        mu_r, sigma_r = gaussian_stats(reference)
        m["fid_reference"] = fid_from_stats(*gaussian_stats(samples), mu_r, sigma_r)
        if len(reference) > PRDC_K and n > PRDC_K:
            m.update(prdc(reference, samples, k=PRDC_K))
        m["dnn"] = dnn(samples, reference, measure=DNN_MEASURE[part])
    apd_metrics, apd_model = _apd(ctx, part, samples[:APD_SAMPLES])
    m.update(apd_metrics)

    key = part.value
    settings: dict[str, Any] = {
        "part": part.value,
        "n": n,
        "sampler": req.sampler if req.prior == "dposer" else req.prior,
        "steps": steps,
        "statistics": str(stats_path) if stats_path else None,
        "reference": str(req.reference) if req.reference else None,
        "reference_size": None if reference is None else len(reference),
        "prdc_k": PRDC_K,
        "dnn_measure": DNN_MEASURE[part],
        "apd_samples": min(n, APD_SAMPLES),
        "apd_body_model": apd_model,
        "fid_space": "raw axis-angle / coefficient vectors (spec §8.1)",
        "source": prior.source,
    }
    entry = paper_for("generation", key)
    return Outcome(
        metrics={key: m},
        settings=settings,
        paper={key: entry} if entry else {},
        arrays={"samples": samples},
        info={"nfe": nfe},
        items=n,
        body_model=apd_model,
        body_role="hand" if part is Part.hand else "body",
        body_independent=BODY_INDEPENDENT,
        lines=[
            f"sampled {n} {part.value} poses with {settings['sampler']} ({steps} steps) from {prior.source}"
        ],
    )


def _apd(ctx: Context, part: Part, samples: np.ndarray) -> tuple[dict[str, float], str | None]:
    """APD in cm through the body model's joints (spec §8.1) and the model's kind; ({}, None) for the face."""
    if len(samples) < 2 or part in (Part.face, Part.face_shape):
        return {}, None
    body = ctx.body("hand" if part is Part.hand else "body")
    x = torch.as_tensor(samples, dtype=torch.float32, device=ctx.device)
    with torch.no_grad():
        joints = body(**part_params(part, x), return_vertices=False).joints
    if part is Part.hand:
        return {"apd_cm": float(apd(joints[:, body.joint_set("hand21")])) * 100}, body.kind
    body22 = joints[:, body.joint_set("body22")]
    if part is Part.body:
        return {"apd_cm": float(apd(body22)) * 100}, body.kind
    hands = []
    for name in ("lhand21", "rhand21"):
        h = joints[:, body.joint_set(name)]
        hands.append(float(apd(h - h[:, :1])) * 100)  # root-relative (spec §8.1)
    return {"apd_body_cm": float(apd(body22)) * 100, "apd_hands_cm": sum(hands) / 2}, body.kind
