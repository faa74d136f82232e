"""`dposer complete`: fill in masked joints / coefficients with the prior, H hypotheses per input (spec §6.4, §7.2–7.3).

Which entries are missing: named mask groups (`--mask legs`), joint indices (`--mask-joints 0,3`), or NaN
entries in the input. All N inputs × H hypotheses are completed in one batched run (shape (N, H, D)), in
normalised space; visible entries are returned bit-for-bit unchanged. When the input is complete and the
mask was named, the input is its own ground truth and the §8.2 metrics are reported.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import PARTS, Part, mask_dims
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine import inpaint
from dposer_cli.engine.loss import T_RANGES
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.poses import read_poses, write_poses
from dposer_cli.metrics import apd, mpjpe

log = logging.getLogger(__name__)

MODES = ("dposer", "scoresde", "dps", "mcg")
DEFAULT_STEPS = {"dposer": 200, "scoresde": 1000, "dps": 1000, "mcg": 1000}  # spec §11
ITERATIONS = 2  # DPoserComp outer iterations; --steps is split evenly over them (spec §6.4)
CHUNK = 1 << 16  # vectors per batched run: bounds memory for very large inputs, not a per-sample loop


@dataclass(frozen=True)
class CompleteRequest:
    input: Path
    part: Part = Part.body
    masks: tuple[str, ...] = ()  # mask group names of PARTS[part].mask_groups (or aliases)
    mask_joints: tuple[int, ...] = ()  # indices into PARTS[part].joint_names (3 dims each)
    hypo: int = 1
    out: Path = Path("dposer_out")
    mode: str = "dposer"
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint: Path | None = None
    normalizer: Path | None = None
    render: bool = False
    renderer: str = "auto"
    body_model: Path | None = None


@dataclass(frozen=True)
class Masking:
    observed: Tensor  # (N, D) bool, True = visible
    has_truth: bool  # a named mask over a complete input: the input is the ground truth
    dims: tuple[int, ...]  # masked dims (named masks) or () for NaN masks
    source: str  # "mask" | "nan"


def _entry_name(part: Part, dim: int, keys: tuple[str, ...]) -> str:
    """`key[col]` of a vector dim, with the input file's own key names where they map one-to-one."""
    segments = list(PARTS[part].slices().items())
    if len(keys) == 1 and len(segments) > 1:
        return f"{keys[0]}[{dim}]"
    for i, (key, sl) in enumerate(segments):
        if sl.start <= dim < sl.stop:
            name = keys[i] if len(keys) == len(segments) else key
            return f"{name}[{dim - sl.start}]"
    raise AssertionError(dim)


def joint_mask_dims(part: Part, joints: tuple[int, ...]) -> tuple[int, ...]:
    """Vector dims of joint indices into `PARTS[part].joint_names` (3 axis-angle dims per joint)."""
    names = PARTS[part].joint_names
    if not names:
        raise InputError(f"--mask-joints: --part {part.value} has no joints (it is a coefficient vector)",
                         hint="use NaN entries in the input to mark missing coefficients")
    bad = [j for j in joints if not 0 <= j < len(names)]
    if bad:
        raise InputError(f"--mask-joints: joint index {bad[0]} is out of range for --part {part.value} "
                         f"(0..{len(names) - 1})", hint="joints: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    return tuple(3 * j + k for j in joints for k in range(3))


def resolve_masking(part: Part, poses: Tensor, masks: tuple[str, ...], joints: tuple[int, ...],
                    where: str = "input", keys: tuple[str, ...] = ()) -> Masking:
    """Observed-entry mask from names / joint indices / NaN entries, with the checks of the brief.

    Raises:
        InputError: unknown mask name, out-of-range joint, NaN outside a given mask, nothing masked,
            everything masked.
    """
    n, dim = poses.shape
    nan = torch.isnan(poses)
    if masks or joints:
        dims = tuple(sorted(set(mask_dims(part, list(masks)) if masks else ()) | set(joint_mask_dims(part, joints))))
        if len(dims) == dim:
            raise InputError(f"the mask covers all {dim} dims of --part {part.value}: nothing is left to "
                             "condition on", hint="mask fewer joints, or use `dposer generate` for unconditional poses")
        hidden = torch.zeros(dim, dtype=torch.bool, device=poses.device)
        hidden[list(dims)] = True
        stray = nan & ~hidden
        if stray.any():
            row, d = (int(v) for v in stray.nonzero()[0])
            raise InputError(f"{where}: row {row}, {_entry_name(part, d, keys)} is NaN but outside the mask "
                             f"({int(stray.sum())} such entries)",
                             hint="add the joint to --mask/--mask-joints, or leave out --mask to use NaN entries as the mask")
        return Masking(~hidden.expand(n, dim).clone(), has_truth=not bool(nan.any()), dims=dims, source="mask")
    if not nan.any():
        raise InputError(f"{where}: nothing to complete: no --mask/--mask-joints given and no NaN entries",
                         hint="pass --mask NAME (e.g. " + ", ".join(sorted(PARTS[part].mask_groups)[:4])
                              + ") or mark missing entries with NaN")
    full = nan.all(dim=1)
    if full.any():
        row = int(full.nonzero()[0])
        raise InputError(f"{where}: row {row} is entirely NaN ({int(full.sum())} such rows): nothing to condition on")
    return Masking(~nan, has_truth=False, dims=(), source="nan")


def run(req: CompleteRequest, progress: Callable[[int, int], None] | None = None, *,
        prior: DPoserPrior | None = None) -> Result:
    """Run the command; `prior` overrides --checkpoint (Python API: any DPoserPrior of the right part)."""
    t0 = time.perf_counter()
    if req.mode not in MODES:
        raise InputError(f"unknown --mode {req.mode!r}{suggest(req.mode, list(MODES))}", hint="modes: " + ", ".join(MODES))
    if req.hypo < 1:
        raise InputError(f"--hypo must be at least 1 (got {req.hypo})")
    if req.steps is not None and req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    pf = read_poses(Path(req.input), req.part, allow_nan=True)
    device = resolve_device(req.device)
    poses = torch.as_tensor(np.asarray(pf.poses, dtype=np.float32), device=device)
    if poses.ndim != 2 or poses.shape[0] == 0:
        raise InputError(f"{req.input}: no poses to complete (shape {tuple(poses.shape)})")
    masking = resolve_masking(req.part, poses, tuple(req.masks), tuple(req.mask_joints), where=str(req.input),
                              keys=tuple(pf.keys))
    out_dir = ensure_out_dir(req.out)
    if prior is None:
        prior = DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    elif prior.part is not req.part:
        raise InputError(f"the given prior is for --part {prior.part.value}, not {req.part.value}")
    log.info("using %s prior (%s)", req.part.value, prior.source)

    gen = make_generator(req.seed, device)
    steps = req.steps or DEFAULT_STEPS[req.mode]
    if req.mode == "dposer":  # split evenly over the outer iterations
        steps = ITERATIONS * math.ceil(steps / ITERATIONS)
    prior.nfe = 0
    t_run = time.perf_counter()
    completed = complete(prior, poses, masking.observed, hypo=req.hypo, mode=req.mode, steps=steps, generator=gen,
                         progress=progress)
    run_seconds = time.perf_counter() - t_run
    if not torch.isfinite(completed).all():
        raise InputError(f"--mode {req.mode} produced non-finite values; try --mode dposer or more --steps")

    n, h, dim = completed.shape
    array = completed.cpu().numpy()
    outputs: dict[str, Path] = {
        "completed": write_poses(out_dir / "completed.npz", req.part, array if h > 1 else array[:, 0],
                                 extras=pf.extras, keys_like=pf),
    }
    metrics: dict[str, float] = {}
    info: dict = {}
    if masking.has_truth:
        metrics, info = evaluate(req.part, completed, poses, masking.dims, body_model=req.body_model, device=device)
    metrics["hypotheses_per_second"] = n * h / max(run_seconds, 1e-9)
    if req.render:
        from dposer_cli.services._render import render_sheet

        grid = render_sheet(req.part, completed.reshape(n * h, dim), out_dir / "completed.png",
                            body_model=req.body_model, renderer=req.renderer, device=device)
        if grid is not None:
            outputs["grid"] = grid
    nfe = prior.nfe
    masked = int((~masking.observed).sum())
    lines = [(f"completed {n} {req.part.value} pose(s) × {h} hypothes{'is' if h == 1 else 'es'} with --mode "
             f"{req.mode} ({nfe} network evaluations, {masked} masked entries) from {prior.source}")]
    return Result(
        command="complete",
        outputs=outputs,
        metrics=metrics,
        info={"part": req.part.value, "n": n, "hypo": h, "mode": req.mode, "steps": steps, "nfe": nfe,
              "mask": list(req.masks) or None, "mask_joints": list(req.mask_joints) or None,
              "mask_source": masking.source, "masked_entries": masked, "checkpoint": prior.source,
              "seed": req.seed, "device": str(device), **info},
        seconds=time.perf_counter() - t0,
        lines=lines,
    )


def complete(prior: DPoserPrior, poses: Tensor, observed: Tensor, *, hypo: int = 1, mode: str = "dposer",
             steps: int | None = None, generator: torch.Generator | None = None,
             progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Complete raw poses (N, D) (NaN allowed where not observed) → (N, H, D) raw, visible entries unchanged.

    `mode="dposer"` is DPoserComp (spec §6.4: Adam lr 0.1, betas (0.9, 0.99), 2 × steps/2 iterations,
    t 0.15 → 0.05, weighting snr); the others are diffusion inpainting samplers with `steps` network calls.
    """
    steps = steps or DEFAULT_STEPS[mode]
    observed = observed.to(torch.bool)
    filled = torch.where(observed, poses, torch.zeros((), dtype=poses.dtype, device=poses.device))
    y = prior.normalize(filled)
    n, dim = poses.shape
    per_iter = math.ceil(steps / ITERATIONS)
    rows = max(1, CHUNK // hypo)
    total_chunks = math.ceil(n / rows)
    outs = []
    for c, start in enumerate(range(0, n, rows)):  # one chunk unless N·H > CHUNK (memory bound only)
        sl = slice(start, start + rows)
        yc, oc = y[sl, None, :], observed[sl, None, :]
        shape = (yc.shape[0], hypo, dim)
        cb = _chunk_progress(progress, c, total_chunks)
        if mode == "dposer":
            noise = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
            x = torch.where(oc, yc, noise)  # masked dims start from N(0, 1) in normalised space (spec §6.4)
            lo, hi = T_RANGES["completion"]
            out = inpaint.dposer_complete(prior.eps, x, oc, yc, sde=prior.sde, iterations=ITERATIONS,
                                          steps_per_iter=per_iter, t_range=(lo, hi), lr=0.1, betas=(0.9, 0.99),
                                          weighting="snr", generator=generator, callback=cb)
        else:
            x = prior.sde.prior_sampling(shape, generator, y.device)
            out = inpaint.INPAINTERS[mode](prior.eps, x, oc, yc, sde=prior.sde, steps=steps, generator=generator,
                                           callback=cb)
        with torch.no_grad():
            raw = prior.denormalize(out.detach())
            outs.append(torch.where(oc, poses[sl, None, :], raw))  # visible entries: the input's own values
    return torch.cat(outs, 0)


def _chunk_progress(progress: Callable[[int, int], None] | None, chunk: int,
                    chunks: int) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(chunk * total + done, chunks * total)


# ---- metrics (spec §8.2) ---------------------------------------------------------------------------
_HAND_SETS = {"left_hand_pose": "lhand21", "right_hand_pose": "rhand21"}
_BODY_KIND = {Part.body: "body", Part.wholebody: "body", Part.hand: "hand"}


def evaluate(part: Part, completed: Tensor, truth: Tensor, dims: tuple[int, ...], *, body_model: Path | None,
             device: torch.device) -> tuple[dict[str, float], dict]:
    """MPJPE (mm, min/mean over hypotheses) and APD (cm) on the masked part's joints; per-dim L2 where no joints.

    Joints: body → the masked body joints among body22 (official protocol: BodyPartIndices + 1); whole-body
    hands → the 21 joints of each masked hand; hand → the hand model's 21 joints. Jaw / expression / face-shape
    dims have no joints here: their error is the L2 norm over the masked dims (radians / coefficients).
    """
    from dposer_cli.services._render import part_params

    spec = PARTS[part]
    joint_dims = [d for d in dims if d < 3 * len(spec.joint_names) and _joint_scored(part, d)]
    param_dims = [d for d in dims if d not in set(joint_dims)]
    metrics: dict[str, float] = {}
    info: dict = {}
    if joint_dims:
        from dposer_cli.bodies.base import load_body

        body = load_body(_BODY_KIND[part], body_model, device)
        idx, names = _metric_joints(part, body, joint_dims)
        with torch.no_grad():
            pred = body(**part_params(part, completed), return_vertices=False).joints[..., idx, :]
            gt = body(**part_params(part, truth), return_vertices=False).joints[..., idx, :]
        err = mpjpe(pred, gt[:, None].expand_as(pred)) * 1000.0  # (N, H) mm
        metrics["mpjpe_min_mm"] = float(err.min(1).values.mean())
        metrics["mpjpe_mean_mm"] = float(err.mean())
        if completed.shape[1] > 1:
            metrics["apd_cm"] = float(apd(pred).mean() * 100.0)
        info["metric_joints"] = names
        info["body_model"] = body.kind
    if param_dims:
        sel = torch.tensor(param_dims, device=completed.device)
        err = (completed[..., sel] - truth[:, None, sel]).norm(dim=-1)  # (N, H)
        metrics["param_l2_min"] = float(err.min(1).values.mean())
        metrics["param_l2_mean"] = float(err.mean())
        if completed.shape[1] > 1:
            x, h = completed[..., sel], completed.shape[1]
            pair = (x[:, :, None] - x[:, None]).norm(dim=-1)  # (N, H, H), zero diagonal
            metrics["param_apd"] = float((pair.sum((1, 2)) / (h * (h - 1))).mean())
        info["param_metric"] = (f"L2 norm over {len(param_dims)} masked dims without joints "
                                "(axis-angle radians / expression or shape coefficients)")
    return metrics, info


def _joint_scored(part: Part, dim: int) -> bool:
    """Dims whose error is measured through joint positions (body and hand rotations; not the jaw)."""
    return part in _BODY_KIND and not (part is Part.wholebody and dim >= 153)


def _metric_joints(part: Part, body, dims: list[int]) -> tuple[Tensor, list[str]]:  # type: ignore[no-untyped-def]
    """Indices into the body model's joints (and their names) for the masked joint dims."""
    if part is Part.hand:
        idx = body.joint_set("hand21")
        return idx, [body.joint_names[i] for i in idx.tolist()]
    spec = PARTS[part]
    slices = spec.slices()
    picked: list[int] = []
    body22 = body.joint_set("body22").tolist()
    b22_names = [body.joint_names[i] for i in body22]
    for key, set_name in _HAND_SETS.items():
        sl = slices.get(key)
        if sl is not None and any(sl.start <= d < sl.stop for d in dims):
            picked += body.joint_set(set_name).tolist()
    for j in sorted({d // 3 for d in dims if d < 63}):
        name = spec.joint_names[j]
        picked.append(body22[b22_names.index(name)])
    idx = list(dict.fromkeys(picked))
    return torch.tensor(idx, device=body.joint_set("body22").device), [body.joint_names[i] for i in idx]

