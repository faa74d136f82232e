"""`benchmark completion` (body, AMASS test split) and `benchmark wholebody-completion` (spec §7.2–§7.3, §8.2).

Every pose of the AMASS-style npz tree in `--data-dir` (every `--stride`-th frame) gets a body part masked
and completed with `--hypo` hypotheses by `tasks.complete` (DPoserComp, 200 steps). Ground truth is the pose
itself; body model with zero shape and global orientation.

Per sample and hypothesis: MPJPE over the masked part's joints (body22 indices = mask joint + 1, mm) and
MPVPE over the part's vertices (mm); then min / mean / std over the hypotheses; APD over the hypotheses on
the part's joints (cm). Averaged over samples. The part's vertex set is the official one when its files are
beside the SMPL-X model (or in `--data-dir`): body masks from `smplx_vert_segmentation.json` (the segments
of spec §8.2 `BodySegIndices`; a count that differs from the published one is noted), whole-body hands from
`MANO_SMPLX_vertex_ids.pkl`. Otherwise it is taken from the body model's skinning weights (vertices whose
strongest joint is a masked one, the way that segmentation was made); a model without skinning weights uses
all vertices. The report says which.

A metric whose points do not move when the masked parameters change cannot measure the mask (the `hands`
mask rotates the wrists, which moves the hands but not the wrist joints the MPJPE is taken over): it is left
out with a note instead of being reported as a perfect 0.

Baselines: `--prior gmm` samples the GMM's exact conditional p(x_hidden | x_visible); `--prior l2` puts the
hidden joints at zero (the L2 minimiser); `--prior none` has no completion.
"""

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.errors import InputError, MissingAssetError
from dposer_cli.core.parts import PARTS, Part, mask_dims
from dposer_cli.evaluation.common import (
    HAND_IDS_FILE,
    Context,
    Outcome,
    concat,
    find_eval_file,
    mean_of,
    smplx_eval_files,
    to_numpy,
)
from dposer_cli.evaluation.paper import paper_for
from dposer_cli.io.datasets import read_amass_poses, read_json_file
from dposer_cli.metrics import apd, mpjpe
from dposer_cli.tasks.complete import ITERATIONS, complete
from dposer_cli.tasks.export import part_params

log = logging.getLogger(__name__)

BODY_SETTINGS = ("left_leg", "legs", "arms", "trunk")  # Table S-5 columns (torso = trunk)
BODY_CHOICES = tuple(sorted(PARTS[Part.body].mask_groups)) + tuple(PARTS[Part.body].mask_aliases)
WHOLEBODY_SETTINGS = ("one_hand",)  # Table 7: one random hand per batch
WHOLEBODY_CHOICES = ("one_hand", "lhand", "rhand", "face")
STEPS = 200  # DPoserComp, spec §11
SEGMENTATION_FILE = "smplx_vert_segmentation.json"
# spec §8.2 BodySegIndices: body mask → segments of the SMPL-X segmentation and the published vertex count
_LEG, _ARM = ("Leg", "UpLeg", "Foot", "ToeBase"), ("Arm", "ForeArm")
BODY_SEGMENTS: dict[str, tuple[tuple[str, ...], int]] = {
    "left_leg": (tuple(f"left{s}" for s in _LEG), 690),
    "right_leg": (tuple(f"right{s}" for s in _LEG), 690),
    "legs": (tuple(f"{side}{s}" for side in ("left", "right") for s in _LEG), 1380),
    "left_arm": (tuple(f"left{s}" for s in _ARM), 512),
    "right_arm": (tuple(f"right{s}" for s in _ARM), 512),
    "arms": (tuple(f"{side}{s}" for side in ("left", "right") for s in _ARM), 1024),
    "trunk": (("spine1", "spine2", "leftShoulder", "rightShoulder"), 1098),
    "hands": (("leftHand", "rightHand"), 648),
}
PROBE_RAD = 0.5  # masked parameters are moved this much to see whether a metric's points follow
JOINT_METRICS = ("mpjpe", "apd")


def run_body(ctx: Context) -> Outcome:
    return _run(ctx, Part.body, tuple(ctx.req.settings) or BODY_SETTINGS, "completion")


def run_wholebody(ctx: Context) -> Outcome:
    return _run(ctx, Part.wholebody, tuple(ctx.req.settings) or WHOLEBODY_SETTINGS, "wholebody-completion")


def _run(ctx: Context, part: Part, settings: tuple[str, ...], name: str) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    poses_np = read_amass_poses(req.data_dir, part, stride=req.stride)
    n = ctx.limit(len(poses_np))
    poses = torch.as_tensor(poses_np[:n], device=ctx.device)
    prior = ctx.prior(part)
    body = ctx.body("body")
    if "face" in settings and not int(getattr(body, "num_expression", 0) or 0):
        raise InputError(
            f"scoring face completion needs a body model with a face (SMPL-X); the {body.kind} has none",
            hint="pass --body-model with smplx/SMPLX_NEUTRAL.npz",
        )
    official = _official_vertex_sets(ctx, body, part, settings)
    steps = ctx.steps(STEPS)
    if req.prior == "dposer":  # DPoserComp splits the steps evenly over its outer iterations
        steps = ITERATIONS * -(-steps // ITERATIONS)
    hypo = req.hypo
    metrics: dict[str, dict[str, float]] = {}
    paper: dict[str, Any] = {}
    nfe = 0
    for k, setting in enumerate(settings):
        masks = ("lhand", "rhand") if setting == "one_hand" else (_mask_name(part, setting, None),)
        unmeasured = {
            m: _unmeasurable(part, body, m, poses[:1], official.get(m, (None, ""))[0]) for m in masks
        }
        for m, families in unmeasured.items():
            for family in families:
                ctx.notes.append(
                    f"{setting}: {family} not reported — the points it is taken over do not move with "
                    f"the parameters of mask {m} on the {body.kind} body (it would read a perfect 0)"
                )

        def batch(
            b: int,
            sl: slice,
            setting: str = setting,
            k: int = k,
            unmeasured: dict[str, tuple[str, ...]] = unmeasured,
        ) -> dict[str, np.ndarray]:
            gen = ctx.generator(b + 1_000_003 * k)
            mask = _mask_name(part, setting, gen)
            dims = list(mask_dims(part, [mask]))
            x = poses[sl]
            observed = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
            observed[dims] = False
            if req.prior == "dposer":
                out = complete(
                    prior, x, observed.expand_as(x), hypo=hypo, mode="dposer", steps=steps, generator=gen
                ).poses
            else:
                out = prior.complete(x, observed, hypo=hypo, generator=gen)
            per = _per_sample(part, body, mask, out, x, official.get(mask, (None, ""))[0])
            skip = unmeasured[mask]
            return {
                key: (np.full_like(v, np.nan) if key.split("_")[0] in skip else v) for key, v in per.items()
            }

        prior.nfe = 0
        per = concat(ctx.map_batches(n, batch))
        nfe += prior.nfe
        metrics[setting] = mean_of(per)
        entry = paper_for(name, setting)
        if entry:
            paper[setting] = entry
    vertex_set = (
        "skinning-weight segment of the masked joints"
        if _skin_weights(body) is not None
        else "all vertices (this body model exposes no skinning weights)"
    )
    if official:
        files = ", ".join(sorted({src for _, src in official.values()}))
        vertex_set = (
            f"official sets from {files} for {', '.join(sorted(official))}; other masks: {vertex_set}"
        )
    return Outcome(
        metrics=metrics,
        paper=paper,
        items=n,
        info={"nfe": nfe},
        body_model=body.kind,
        settings={
            "part": part.value,
            "masks": list(settings),
            "hypotheses": hypo,
            "steps": steps,
            "mode": "DPoserComp (lr 0.1, t 0.15→0.05)" if req.prior == "dposer" else req.prior,
            "stride": req.stride,
            "poses": n,
            "body_model": body.kind,
            "vertex_set": vertex_set,
            "std": "population std over hypotheses",
            "data_dir": str(req.data_dir),
            "source": prior.source,
        },
        lines=[f"completed {n} {part.value} poses × {hypo} hypotheses for masks {', '.join(settings)}"],
    )


def _mask_name(part: Part, setting: str, gen: torch.Generator | None) -> str:
    """The mask group of a setting; `one_hand` draws lhand or rhand once per batch (spec §7.3)."""
    if setting == "one_hand":
        assert gen is not None
        return "lhand" if float(torch.rand((), generator=gen, device=gen.device)) < 0.5 else "rhand"
    return PARTS[part].mask_aliases.get(setting, setting)


def _skin_weights(body: BodyModel) -> Tensor | None:
    """(V, J) skinning weights of an SMPL-X-family model, if it exposes them."""
    return getattr(getattr(body, "model", None), "lbs_weights", None)


def _part_joints(part: Part, body: BodyModel, mask: str) -> list[int]:
    """Model joint indices scored for a mask (spec §8.2): body joints + 1 on body22; hands → hand21 sets."""
    if part is Part.wholebody and mask in ("lhand", "rhand"):
        return body.joint_set(f"{mask}21").tolist()
    dims = mask_dims(part, [mask])
    b22 = body.joint_set("body22").tolist()
    return [b22[j + 1] for j in sorted({d // 3 for d in dims if d < 63})]


def _unmeasurable(
    part: Part, body: BodyModel, mask: str, sample: Tensor, verts: Tensor | None
) -> tuple[str, ...]:
    """Metric families ("mpjpe" with "apd", "mpvpe") whose points stay put when the mask's parameters move."""
    if len(sample) == 0:
        return ()
    moved = sample.clone()
    moved[:, list(mask_dims(part, [mask]))] += PROBE_RAD
    joints = _part_joints(part, body, mask)
    with torch.no_grad():
        a = body(**part_params(part, sample), return_vertices=True)
        b = body(**part_params(part, moved), return_vertices=True)
    out: list[str] = []
    if joints and float((a.joints[:, joints] - b.joints[:, joints]).abs().max()) < 1e-7:
        out += JOINT_METRICS
    if a.vertices is not None and b.vertices is not None:
        if verts is None:
            verts = _vertex_ids(body, joints, part, mask, a.vertices.shape[-2])
        if float((a.vertices[:, verts] - b.vertices[:, verts]).abs().max()) < 1e-7:
            out.append("mpvpe")
    return tuple(out)


def _official_vertex_sets(
    ctx: Context, body: BodyModel, part: Part, settings: tuple[str, ...]
) -> dict[str, tuple[Tensor, str]]:
    """mask → (vertex ids, source file) for the masks the official files cover (SMPL-X only)."""
    if getattr(body, "kind", "") != "smplx" or getattr(body, "path", None) is None:
        return {}
    masks = {
        m for s in settings for m in (("lhand", "rhand") if s == "one_hand" else (_mask_name(part, s, None),))
    }
    out: dict[str, tuple[Tensor, str]] = {}
    if part is Part.body:
        seg_path = find_eval_file(SEGMENTATION_FILE, body, ctx.req.data_dir)
        if seg_path is None:
            return {}
        seg = read_json_file(seg_path)
        for mask in sorted(masks & set(BODY_SEGMENTS)):
            names, published = BODY_SEGMENTS[mask]
            try:
                ids = sorted({int(i) for name in names for i in seg[name]})  # type: ignore[index]
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{seg_path}: expected lists of vertex ids for {', '.join(names)}") from None
            if len(ids) != published:
                ctx.notes.append(
                    f"{SEGMENTATION_FILE}: mask {mask} has {len(ids)} vertices; the official "
                    f"evaluator's set has {published}"
                )
            out[mask] = (torch.tensor(ids, device=ctx.device), SEGMENTATION_FILE)
    elif masks & {"lhand", "rhand"}:
        try:
            files = smplx_eval_files(body, ctx.req.data_dir, ctx.device)
        except MissingAssetError:
            return {}
        for side, mask in (("left", "lhand"), ("right", "rhand")):
            out[mask] = (files["hand"][side], HAND_IDS_FILE)
    return out


def _per_sample(
    part: Part, body: BodyModel, mask: str, out: Tensor, truth: Tensor, verts: Tensor | None = None
) -> dict[str, np.ndarray]:
    b, h, _ = out.shape
    joints = _part_joints(part, body, mask)
    with torch.no_grad():
        pred = body(**part_params(part, out.reshape(b * h, -1)), return_vertices=True)
        gt = body(**part_params(part, truth), return_vertices=True)
    res: dict[str, np.ndarray] = {}
    if joints:
        pj = pred.joints[:, joints].reshape(b, h, len(joints), 3)
        gj = gt.joints[:, joints]
        err = mpjpe(pj, gj[:, None].expand_as(pj)) * 1000  # (B, H) mm
        res.update(_summary("mpjpe", err))
        if h > 1:
            res["apd_cm"] = to_numpy(apd(pj) * 100)
    if pred.vertices is not None and gt.vertices is not None:
        if verts is None:
            verts = _vertex_ids(body, joints, part, mask, pred.vertices.shape[-2])
        pv = pred.vertices[:, verts].reshape(b, h, len(verts), 3)
        gv = gt.vertices[:, verts]
        res.update(_summary("mpvpe", mpjpe(pv, gv[:, None].expand_as(pv)) * 1000))
    if not res:
        raise InputError(f"mask {mask!r} of --part {part.value} has no joints or vertices to score")
    return res


def _summary(name: str, err: Tensor) -> dict[str, np.ndarray]:
    return {
        f"{name}_min_mm": to_numpy(err.min(1).values),
        f"{name}_mean_mm": to_numpy(err.mean(1)),
        f"{name}_std_mm": to_numpy(err.std(1, unbiased=False)),
    }


def _vertex_ids(body: BodyModel, joints: list[int], part: Part, mask: str, num_vertices: int) -> Tensor:
    """Vertices of the masked part (strongest skinning joint among `joints`); all vertices without weights.

    Whole-body face masks use all vertices (spec §8.2 whole-body evaluator)."""
    weights = _skin_weights(body)
    if weights is None or (part is Part.wholebody and mask == "face") or not joints:
        return torch.arange(num_vertices)
    owner = weights.argmax(-1)
    return torch.nonzero(torch.isin(owner, torch.tensor(joints, device=owner.device))).flatten()
