"""Pictures of the commands' results as uint8 arrays: poses → body model → render items → one image.

Loaded body models and tensors in, (H, W, 3) uint8 arrays out (no paths, no files: the services load the
models and write the pictures with `io.media`).

- `pose_sheet` draws part vectors as each part needs them: bodies through one shared camera; hands upright
  in their palm frame, palm and back, centred at one scale; whole bodies with close-ups of both hands and of
  the face (FLAME) or a jaw/expression chart; faces without FLAME as charts that say meshes need FLAME.
- `completion_sheet` draws `complete`: one row per input, the missing part greyed, the completed part
  highlighted, the ground truth last. `ik_sheet` draws `ik`: targets (seen / hidden) against the recovered
  joints.
- `fit_pictures` and `fit_video_frame` draw `fit-image`: meshes and keypoints over the photo, and the bodies
  seen from above; `comparison_frames` draws `denoise-motion`: observations beside the result over an error plot.
"""

import logging
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies import BodyModel
from dposer_cli.bodies.base import BodyOutput
from dposer_cli.core.errors import MissingAssetError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.render.draw import (
    GHOST_COLOR,
    HIDDEN_TARGET_COLOR,
    HIGHLIGHT_COLOR,
    TARGET_COLOR,
    TRUTH_COLOR,
    Color,
    bar_chart,
    contact_sheet,
    draw_keypoints,
    draw_segments,
    face_chart,
    fit_within,
    fit_within_size,
    label,
    legend,
    line_plot,
    overhead_view,
    overlay_mesh,
    palm_frame,
    tile,
    titled,
)
from dposer_cli.render.process import caption_band, draw_caption
from dposer_cli.render.scene import BODY_COLOR, PERSON_COLORS, frame_points
from dposer_cli.render.threads import map_each, picture_workers
from dposer_cli.tasks.export import part_params
from dposer_cli.tasks.fit import FitInput, FitResult, body_vertices

log = logging.getLogger(__name__)

GRID_MAX = 64  # default number of poses drawn in a picture (the first ones)
GRID_DEFAULT = {Part.wholebody: 16}  # parts whose pictures are bigger per pose
# which body model pictures each part (load_body kind)
BODY_KINDS = {
    Part.body: "body",
    Part.wholebody: "body",
    Part.hand: "hand",
    Part.face: "face",
    Part.face_shape: "face",
}
# camera per part for single-view pictures other than "front" (none: hands are turned palm to the camera)
_VIEW: dict[Part, str] = {}
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_PERTURB = 0.3  # rad added to hidden entries to find the vertices they move (`moved_vertices`)
_MOVED_M = 0.004  # a vertex that moves more than this belongs to the hidden part
_TILT = 25.0  # degrees: hands are seen a little from their fingertips' side
VIEWS_SIDE = 1280  # fit-image's views picture shows the photo at most this large (its longer side, pixels)
VIEWS_MIN_WIDTH = 240  # narrower photos are padded in the views picture (its legend and view from above)


def grid_count(part: Part, n: int, grid: int | None = None) -> int:
    """How many of `n` poses a picture shows: `grid` if given, else the part's default, never more than n."""
    return max(0, min(n, GRID_DEFAULT.get(Part(part), GRID_MAX) if grid is None else grid))


def view_for(part: Part) -> str:
    """The camera of single-view pictures of `part`'s `pose_items` (hands: the palm of the upright hand)."""
    return _VIEW.get(Part(part), "front")


def _mesh(out: BodyOutput, body: BodyModel) -> tuple[np.ndarray, np.ndarray]:
    """(N, V, 3) vertices and (F, 3) faces of a model that has a mesh (callers check `body.faces`)."""
    if out.vertices is None or body.faces is None:
        raise MissingAssetError(f"the {body.kind} model has no mesh to draw")
    return out.vertices.cpu().numpy(), body.faces.cpu().numpy()


def _joint(body: BodyModel, name: str) -> int:
    return body.joint_names.index(name)


def upright(
    points: np.ndarray, joints: np.ndarray, body: BodyModel, side: str, prefix: str = ""
) -> np.ndarray:
    """(N, P, 3) points of N hands moved to their wrist and turned by `draw.palm_frame`: palm facing +z,
    fingers up; `joints` (N, J, 3) in `body.joint_names` order, `prefix` e.g. "left_" on a whole body."""
    w, i, m, p = (_joint(body, prefix + n) for n in ("wrist", "index1", "middle1", "pinky1"))
    out = np.empty_like(points)
    for k, (pts, j) in enumerate(zip(points, joints, strict=True)):
        rot = palm_frame(j[w], j[i], j[m], j[p], side=side)
        out[k] = (pts - j[w]) @ rot.T
    return out


def pose_items(part: Part, poses: Tensor, body: BodyModel) -> list[dict]:
    """Meshes (or skeletons) of `part` vectors (N, D) posed by `body`, for a contact sheet; hands upright
    (see `upright`)."""
    with torch.no_grad():
        out = body(**part_params(part, poses.to(body.parents.device)), return_vertices=True)
    joints = out.joints.cpu().numpy()
    side = getattr(body, "side", "right")
    if out.vertices is not None and body.faces is not None:
        faces = body.faces.cpu().numpy()
        verts = out.vertices.cpu().numpy()
        if part is Part.hand:
            verts = upright(verts, joints, body, side)
        return [{"vertices": v, "faces": faces} for v in verts]
    parents = body.parents.cpu().numpy()
    skel = upright(joints, joints, body, side) if part is Part.hand else joints
    return [{"joints": j[: len(parents)], "parents": parents} for j in skel]


# ---------------------------------------------------------------------------------------------- grids
def pose_sheet(
    part: Part,
    poses: Tensor,
    body: BodyModel | None,
    *,
    renderer: str,
    cell: int = 256,
    flame: BodyModel | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Draw the poses (N, D) as `part` needs them (module docstring). `body` is the part's model (FLAME for
    faces; None for a face without FLAME: charts of the numbers, with a note); `flame` draws the faces of
    whole bodies (None: a jaw/expression chart)."""
    note = None
    if part in (Part.face, Part.face_shape):
        image, note = _face_sheet(part, poses, body, renderer, cell)
    elif body is None:
        raise MissingAssetError(f"no body model to draw --part {Part(part).value}")
    elif part is Part.wholebody:
        image = _wholebody_sheet(poses, body, flame, renderer)
    else:
        items = pose_items(part, poses, body)
        if part is Part.hand:
            image = _hand_sheet(items, renderer)
        else:
            image = contact_sheet(items, cell=cell, renderer=renderer, view=view_for(part))
    if title or note:
        image = titled(image, title or part.value, note=note)
    return np.asarray(image)


def _turned(item: dict, *, back: bool = False, tilt: float = _TILT) -> dict:
    """The item turned 180° about the vertical axis when `back` (front ↔ back, so one sheet and one scale
    shows both), then its top tilted `tilt` degrees towards the camera (curled fingers show)."""
    key = "vertices" if "vertices" in item else "joints"
    a = np.radians(tilt)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    if back:
        rot = rot @ np.diag([-1.0, 1.0, -1.0])
    out = {**item, key: item[key] @ rot.T}
    if item.get("targets") is not None:
        out["targets"] = item["targets"] @ rot.T
    return out


def _hand_sheet(items: list[dict], renderer: str, cell: int = 160, per_row: int = 4) -> np.ndarray:
    """Each hand upright, palm then back, centred in its cell, every hand at one scale."""
    pairs = [x for it in items for x in (_turned(it), _turned(it, back=True))]
    labels = [f"{i + 1} {v}" for i in range(len(items)) for v in ("palm", "back")]
    return contact_sheet(
        pairs, cols=2 * min(per_row, len(items)), cell=cell, renderer=renderer, labels=labels, center=True
    )


def _cells(sheet: np.ndarray, n: int, cols: int, size: tuple[int, int]) -> list[np.ndarray]:
    w, h = size
    return [
        sheet[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] for i in range(n)
    ]


def _hand_region(body: BodyModel, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertex ids and re-indexed faces of one hand of a whole-body mesh: vertices whose nearest skeleton
    joint (at the rest pose) is the wrist, the palm or a finger, beyond 2 cm up the forearm."""
    with torch.no_grad():
        rest = body(body_pose=torch.zeros(1, 63, device=body.parents.device))
    verts, faces = _mesh(rest, body)
    v, j = verts[0], rest.joints[0].cpu().numpy()
    skeleton = j[: len(body.parents)]
    names = body.joint_names[: len(body.parents)]
    hand = {f"{side}_wrist", f"{side}_hand"} | {f"{side}_{f}{k}" for f in _FINGERS for k in (1, 2, 3)}
    in_hand = np.array([n in hand for n in names])
    nearest = np.empty(len(v), np.int64)
    for s in range(0, len(v), 4096):  # (chunk, J) distances
        nearest[s : s + 4096] = np.linalg.norm(v[s : s + 4096, None] - skeleton[None], axis=-1).argmin(1)
    wrist, elbow = j[_joint(body, f"{side}_wrist")], j[_joint(body, f"{side}_elbow")]
    axis = (wrist - elbow) / np.linalg.norm(wrist - elbow)
    keep = in_hand[nearest] & ((v - wrist) @ axis > -0.02)
    ids = np.flatnonzero(keep)
    inside = keep[faces].all(axis=1)
    remap = np.full(len(v), -1, np.int64)
    remap[ids] = np.arange(len(ids))
    return ids, remap[faces[inside]]


def _wholebody_sheet(
    poses: Tensor, body: BodyModel, flame: BodyModel | None, renderer: str, per_row: int = 4
) -> np.ndarray:
    """Per sample: the body, then close-ups of the left and right hand (upright, back of the hand) and of the
    face (FLAME) or its jaw and expression as a chart."""
    params = part_params(Part.wholebody, poses.to(body.parents.device))
    with torch.no_grad():
        out = body(**params, return_vertices=True)
    n, big, small = len(poses), (192, 384), (160, 128)
    joints = out.joints.cpu().numpy()
    if out.vertices is not None and body.faces is not None:
        verts, faces = out.vertices.cpu().numpy(), body.faces.cpu().numpy()
        bodies = [{"vertices": v, "faces": faces} for v in verts]
    else:
        parents = body.parents.cpu().numpy()
        verts, faces, bodies = None, None, [{"joints": j[: len(parents)], "parents": parents} for j in joints]
    cols = min(8, n)
    body_cells = _cells(contact_sheet(bodies, cols=cols, cell=big, renderer=renderer), n, cols, big)
    hand_cells = {}
    for side in ("left", "right"):
        if verts is None:
            items = [
                {"joints": j, "parents": np.full(len(j), -1)}
                for j in upright(joints[:, [_joint(body, f"{side}_wrist")]], joints, body, side, f"{side}_")
            ]
        else:
            ids, hand_faces = _hand_region(body, side)
            items = [
                {"vertices": v, "faces": hand_faces}
                for v in upright(verts[:, ids], joints, body, side, f"{side}_")
            ]
        items = [_turned(it) for it in items]  # the palm
        sheet = contact_sheet(items, cols=cols, cell=small, renderer=renderer, center=True)
        hand_cells[side] = _cells(sheet, n, cols, small)
    face_cells = _face_closeups(params, flame, renderer, small)
    blocks = []
    for i in range(n):
        column = np.concatenate([hand_cells["left"][i], hand_cells["right"][i], face_cells[i]], axis=0)
        block = np.concatenate([body_cells[i], column], axis=1)
        px = 12
        label(block, str(i + 1), px // 2, px // 3, px + 2)
        for k, text in enumerate(("left hand", "right hand")):
            label(block, text, big[0] + px // 2, k * small[1] + px // 3, px)
        blocks.append(block)
    return tile(blocks, cols=min(per_row, n), gap=4)


def _face_closeups(
    params: dict[str, Tensor], flame: BodyModel | None, renderer: str, size: tuple[int, int]
) -> list[np.ndarray]:
    """The FLAME face at each jaw pose and expression, or (no FLAME) a chart of them."""
    jaw, expression = params["jaw_pose"], params["expression"]
    if flame is None:
        lim = _limit(expression.cpu().numpy())
        return [
            face_chart(j, e, size=size, title="face (no FLAME)", limit=lim)
            for j, e in zip(jaw.cpu().numpy(), expression.cpu().numpy(), strict=True)
        ]
    with torch.no_grad():
        verts, faces = _mesh(flame(jaw_pose=jaw, expression=expression), flame)
    items = [{"vertices": v, "faces": faces} for v in verts]
    cols = min(8, len(items))
    sheet = contact_sheet(
        items, cols=cols, cell=size, renderer=renderer, center=True, labels=["face"] * len(items)
    )
    return _cells(sheet, len(items), cols, size)


def _limit(values: np.ndarray) -> float:
    """One bar-chart range for every sample (so bars compare), rounded up to half units."""
    top = float(np.abs(values).max()) if values.size else 0.0
    return max(0.5, np.ceil(top * 2) / 2)


def _face_sheet(
    part: Part, poses: Tensor, flame: BodyModel | None, renderer: str, cell: int
) -> tuple[np.ndarray, str | None]:
    """FLAME meshes (centred, one scale); without FLAME, per sample a chart of the numbers and a note."""
    if flame is not None:
        items = pose_items(part, poses, flame)
        labels = [str(i + 1) for i in range(len(items))]
        return contact_sheet(items, cell=cell, renderer=renderer, center=True, labels=labels), None
    log.info("no FLAME model: the %s picture shows the coefficients (meshes need FLAME)", part.value)
    data = poses.cpu().numpy()
    charts = coefficient_charts(part, data, cell, limit=_limit(_chart_values(part, data)))
    what = "jaw rotation and expression coefficients" if part is Part.face else "shape coefficients"
    note = f"no FLAME model found, so the {what} are drawn as numbers; meshes need FLAME (--body-model)"
    return tile(charts, cols=min(len(charts), 4), gap=4), note


def _chart_values(part: Part, data: np.ndarray) -> np.ndarray:
    """The numbers drawn as bars: the expression of a face pose, every shape coefficient."""
    return data[..., PARTS[part].slices()["expression"]] if part is Part.face else data


def coefficient_charts(
    part: Part, data: np.ndarray, cell: int, *, limit: float, titles: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Per row of `data` (N, D) a chart of a face (`face_chart`: jaw hinge over expression bars, cell × cell)
    or of face-shape coefficients (`bar_chart`, cell × cell/2); bars share ±`limit`. Titles default to 1..N."""
    titles = [str(i + 1) for i in range(len(data))] if titles is None else list(titles)
    if part is Part.face:
        sl = PARTS[part].slices()
        return [
            face_chart(x[sl["jaw_pose"]], x[sl["expression"]], size=cell, title=t, limit=limit)
            for t, x in zip(titles, data)
        ]
    return [
        bar_chart(x, size=(cell, cell // 2), title=f"{t} · shape coefficients (betas)", limit=limit)
        for t, x in zip(titles, data)
    ]


def chart_process_frames(
    part: Part,
    rows: Sequence[np.ndarray],
    *,
    captions: Sequence[str],
    row_labels: Sequence[str],
    cell: int,
    hold: int = 0,
) -> np.ndarray:
    """A sampling process of faces without FLAME, as numbers: frame k shows, per row r (e.g. x_t, then x̂0),
    the charts of `rows[r][k]` (M, D) side by side under a caption band; the bars share one range (that of
    the last frame's last row, the result), so noisy values run off it and clip. The layout of
    `render.process.process_frames`; returns (F + hold, H, W, 3) uint8."""
    n_frames, m = len(captions), rows[0].shape[1]
    limit = _limit(_chart_values(part, rows[-1][-1]))

    def one(k: int) -> np.ndarray:
        charts = [
            c
            for r, data in enumerate(rows)
            for c in coefficient_charts(
                part, data[k], cell, limit=limit, titles=[f"{row_labels[r]} {i + 1}" for i in range(m)]
            )
        ]
        grid = tile(charts, cols=m, gap=4)
        band = caption_band(cell)
        frame = np.empty((band + grid.shape[0], grid.shape[1], 3), np.uint8)
        frame[band:] = grid
        draw_caption(frame, str(captions[k]), band)
        return frame

    frames = map_each(one, range(n_frames), workers=picture_workers(n_frames, "soft"))
    return np.stack(list(frames) + [frames[-1]] * hold)


# ---------------------------------------------------------------------------------------------- complete
def moved_vertices(part: Part, body: BodyModel, poses: Tensor, hidden: Tensor) -> np.ndarray:
    """(N, V) bool: the vertices that the hidden entries (N, D) of each pose move (found by turning them
    `_PERTURB` rad further and comparing the meshes)."""
    with torch.no_grad():
        a, _ = _mesh(body(**part_params(part, poses), return_vertices=True), body)
        b, _ = _mesh(
            body(**part_params(part, poses + _PERTURB * hidden.to(poses.dtype)), return_vertices=True), body
        )
    return np.linalg.norm(a - b, axis=-1) > _MOVED_M


def completion_sheet(
    part: Part,
    inputs: Tensor,
    completed: Tensor,
    hidden: Tensor,
    body: BodyModel,
    *,
    truth: bool,
    renderer: str,
    cell: int = 224,
    title: str | None = None,
) -> np.ndarray:
    """One row per input: the input with its missing part greyed (posed at zero), the hypotheses with the
    completed part highlighted, and (`truth`: the input was complete) the ground truth.

    Args:
        inputs: (N, D) poses as given (NaN where missing); completed: (N, H, D); hidden: (N, D) bool.
    """
    n, h, _ = completed.shape
    given = torch.where(hidden, torch.zeros_like(inputs), torch.nan_to_num(inputs))
    if body.faces is None:  # a model without a mesh: skeletons, completed joints not coloured
        rows = [
            pose_items(
                part,
                torch.cat([given[i : i + 1], completed[i]] + ([inputs[i : i + 1]] if truth else [])),
                body,
            )
            for i in range(n)
        ]
    else:
        poses = torch.cat([given[:, None], completed] + ([inputs[:, None]] if truth else []), dim=1)
        with torch.no_grad():
            out = body(**part_params(part, poses.reshape(-1, poses.shape[-1])), return_vertices=True)
        verts, faces = _mesh(out, body)
        if part is Part.hand:
            verts = upright(verts, out.joints.cpu().numpy(), body, getattr(body, "side", "right"))
        verts = verts.reshape(n, poses.shape[1], *verts.shape[1:])
        moved = moved_vertices(part, body, torch.zeros_like(inputs), hidden)
        rows = []
        for i in range(n):
            colors = [GHOST_COLOR] + [HIGHLIGHT_COLOR] * h + ([TRUTH_COLOR] if truth else [])
            row = []
            for v, col in zip(verts[i], colors, strict=True):
                c = np.broadcast_to(np.asarray(BODY_COLOR), v.shape).copy()
                c[moved[i]] = col
                row.append({"vertices": v, "faces": faces, "colors": c})
            rows.append(row)
    cols = len(rows[0])
    labels = (["input"] + [f"{k + 1}" for k in range(h)] + (["truth"] if truth else [])) * n
    items = [it for row in rows for it in row]
    sheet = contact_sheet(items, cols=cols, cell=cell, renderer=renderer, labels=labels, view=view_for(part))
    entries = [
        ("square", GHOST_COLOR, "missing in the input"),
        ("square", HIGHLIGHT_COLOR, "completed by the prior"),
    ]
    if truth:
        entries.append(("square", TRUTH_COLOR, "ground truth"))
    image = np.concatenate([legend(entries, width=sheet.shape[1], px=14), sheet], axis=0)
    return titled(image, title) if title else image


# ---------------------------------------------------------------------------------------------- ik
# skeleton over the IK joint orders (`tasks.ik` joint sets): OpenPose hand21; FLAME's 5 joints + landmarks
IK_PARENTS = {
    "hand21": (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19),
    "flame73": (-1, 0, 1, 1, 1) + (-1,) * 68,
}
_HAND21_PALM = (0, 5, 9, 17)  # wrist, index1, middle1, pinky1 in hand21 order


def ik_sheet(
    joint_set: str,
    joints: Tensor,
    targets: Tensor,
    visible: Tensor,
    *,
    renderer: str,
    side: str = "right",
    max_items: int = 8,
    cell: int = 256,
    title: str | None = None,
) -> np.ndarray:
    """Targets against recovered joints for the first `max_items` solves: recovered skeleton, targets the
    solver saw as filled dots, hidden ones (where known; NaN = unknown) as rings, each joined to its joint.

    Args:
        joints, targets: (N, J, 3) metres in `joint_set` order (`IK_PARENTS`); visible: (N, J) bool.
    """
    j = joints[:max_items].detach().cpu().numpy().astype(np.float64)
    t = targets[:max_items].detach().cpu().numpy().astype(np.float64)
    vis = visible[:max_items].cpu().numpy()
    parents = np.asarray(IK_PARENTS[joint_set])
    if joint_set == "hand21":  # upright in the palm frame of the recovered hand
        for k in range(len(j)):
            w, i, m, p = (j[k, n] for n in _HAND21_PALM)
            rot = palm_frame(w, i, m, p, side=side)
            j[k], t[k] = (j[k] - w) @ rot.T, (t[k] - w) @ rot.T
    items, labels = [], []
    for k in range(len(j)):
        err = np.linalg.norm(j[k] - t[k], axis=-1) * 1000
        seen_mm = f"seen {np.nanmean(err[vis[k]]):.1f} mm" if vis[k].any() else "nothing seen"
        hid = ~vis[k] & np.isfinite(err)
        labels.append(f"{k + 1} · {seen_mm}" + (f" · hidden {err[hid].mean():.1f} mm" if hid.any() else ""))
        item = {
            "joints": j[k],
            "parents": parents,
            "targets": t[k],
            "target_visible": vis[k],
            "colors": (0.25, 0.36, 0.6),
        }
        items.append(_turned(item, tilt=15.0) if joint_set == "hand21" else item)
    sheet = contact_sheet(
        items, cols=min(4, len(items)), cell=cell, renderer=renderer, labels=labels, center=True
    )
    entries = [
        ("dot", TARGET_COLOR, "target the solver saw"),
        ("ring", HIDDEN_TARGET_COLOR, "target hidden from it"),
        ("line", (64, 92, 153), "recovered joints"),
    ]
    image = np.concatenate([legend(entries, width=sheet.shape[1], px=14), sheet], axis=0)
    return titled(image, title) if title else image


# ---------------------------------------------------------------------------------------------- fit-image
def _dark(color: tuple[float, float, float]) -> tuple[int, int, int]:
    """A person's keypoint colour: the mesh colour (sRGB 0-1), darker."""
    r, g, b = (int(round(255 * 0.55 * c)) for c in color)
    return r, g, b


def fit_pictures(
    image: np.ndarray,
    model: BodyModel,
    fitted: FitResult,
    inputs: FitInput,
    rows: Tensor,
    keypoints: np.ndarray,
    per_person: Sequence[dict],
    *,
    renderer: str,
    conf_threshold: float,
    posed: BodyOutput | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The overlay and the views picture of the fitted persons `rows` of one photo (`image`, uint8 RGB);
    `posed`: their bodies (`body_vertices` of their parameters) when the caller has them; `workers`: threads for
    the two renders (default `picture_workers(2, renderer)`; 1 when the caller already draws photos side by side).

    Overlay: meshes over the photo (camera coordinates = model output: the camera rotation is the identity),
    the keypoints (dots; (P, K, 3) the kept ones) and the model joints projected (rings), each pair joined by
    a line. Views: that (scaled down to `VIEWS_SIDE` when larger) over the bodies seen from above (depth errors
    show there), with a legend and the reprojection error and depth of each person (`per_person`: "person",
    "reprojection_error_px").
    """
    if posed is None:
        posed = frame_bodies(model, fitted.params, inputs, rows)
    focal = float(inputs.focal[rows[0]])
    cx, cy = (float(c) for c in inputs.center[rows[0]])
    center = (cx, cy)
    faces = model.faces.cpu().numpy() if model.faces is not None else None
    verts = posed.vertices.cpu().numpy() if posed.vertices is not None and faces is not None else None
    depth = fitted.joints[rows, 0, 2].cpu().numpy()  # the root joint (pelvis / wrist)
    joints = posed.joints[:, fitted.layout.model_idx].cpu().numpy()  # (P, K, 3), one per kept keypoint
    # the views picture: the overlay (scaled down to VIEWS_SIDE; a tiny photo centred on a white band wide
    # enough for the legend) over the bodies seen from above, as wide: people keep (about) their left-right place
    h, w = fit_within_size(image.shape[0], image.shape[1], VIEWS_SIDE)
    pad = max(0, VIEWS_MIN_WIDTH - w)

    def overlay() -> np.ndarray:
        photo = image
        if verts is not None and faces is not None:
            photo = overlay_mesh(
                photo, list(verts), faces, focal=focal, center=center, alpha=0.7, renderer=renderer
            )
        projected = joints[..., :2] / joints[..., 2:] * focal + np.asarray(center)
        seen = keypoints[..., 2] >= conf_threshold
        for p in range(len(keypoints)):
            color = _dark(PERSON_COLORS[p % len(PERSON_COLORS)])
            photo = draw_segments(
                photo, keypoints[p, seen[p], :2], projected[p, seen[p]], color=(255, 255, 255)
            )
            photo = draw_keypoints(
                photo, keypoints[p], edges=fitted.layout.edges, conf_threshold=conf_threshold, color=color
            )
            rings = np.concatenate([projected[p], seen[p, :, None].astype(np.float64)], axis=-1)
            photo = draw_keypoints(photo, rings, conf_threshold=0.5, color=color, marker="ring")
        return photo

    def from_above() -> np.ndarray | None:
        if verts is None or faces is None:
            return None
        names = [f"{entry['person']}: {d:.2f} m" for entry, d in zip(per_person, depth, strict=True)]
        return overhead_view(
            list(verts),
            faces,
            size=(w + pad, max(96, round(0.45 * h))),
            labels=names,
            half_fov=image.shape[1] / 2 / focal,
            renderer=renderer,
        )

    # the two renders side by side (`render.threads`)
    workers = picture_workers(2, renderer) if workers is None else workers
    drawn, above = map_each(lambda draw: draw(), [overlay, from_above], workers=workers)
    image = cast(np.ndarray, drawn)  # (`overlay` always draws)
    panels = [fit_within(image, VIEWS_SIDE)]  # (the overlay keeps the photo's size)
    if pad:
        panels[0] = np.pad(panels[0], ((0, 0), (pad // 2, pad - pad // 2), (0, 0)), constant_values=255)
    if above is not None:
        panels.append(above)
    picture = np.concatenate(panels, axis=0)
    entries: list[tuple[str, Color | tuple[int, int, int], str]] = [
        ("dot", (90, 90, 90), "keypoints (input)"),
        ("ring", (90, 90, 90), "model joints (projected)"),
    ]
    entries += [
        (
            "square",
            PERSON_COLORS[i % len(PERSON_COLORS)],
            f"person {e['person']}: {e['reprojection_error_px']:.1f} px, depth {d:.2f} m",
        )
        for i, (e, d) in enumerate(zip(per_person, depth, strict=True))
    ]
    band = legend(entries, width=picture.shape[1], px=max(13, min(24, picture.shape[1] // 55)))
    return image, np.concatenate([picture, band], axis=0)


def frame_bodies(
    model: BodyModel, params: dict[str, Tensor], inputs: FitInput, rows: np.ndarray | Tensor
) -> BodyOutput:
    """The bodies of batch `rows` at `params` (vertices when the model has a mesh): what `fit_pictures` and
    `fit_video_frame` draw."""
    index = torch.as_tensor(rows, device=inputs.focal.device)
    with torch.no_grad():
        return body_vertices(
            model, {k: v[index] for k, v in params.items()}, vertices=model.faces is not None
        )


def fit_video_frame(
    image: np.ndarray,
    model: BodyModel,
    params: dict[str, Tensor],
    inputs: FitInput,
    rows: np.ndarray,
    keypoints: np.ndarray,
    edges: Sequence[tuple[int, int]],
    *,
    step: int,
    renderer: str,
    conf_threshold: float,
    posed: BodyOutput | None = None,
) -> np.ndarray:
    """One frame of a fit's overlay video: the bodies of batch `rows` (at `params`; `posed`: their
    `frame_bodies` when the caller has them) and their keypoints ((P, K, 3), the kept ones) over the
    picture, downsampled by the integer `step`."""
    image = np.ascontiguousarray(image[::step, ::step])
    if not len(rows):
        return image
    faces = model.faces.cpu().numpy() if model.faces is not None else None
    index = torch.as_tensor(rows, device=inputs.focal.device)
    if posed is None:
        posed = frame_bodies(model, params, inputs, rows)
    cx, cy = (float(c) / step for c in inputs.center[index[0]])
    if posed.vertices is not None and faces is not None:
        image = overlay_mesh(
            image,
            list(posed.vertices.cpu().numpy()),
            faces,
            focal=float(inputs.focal[index[0]]) / step,
            center=(cx, cy),
            alpha=0.7,
            renderer=renderer,
        )
    kp = keypoints.copy()
    kp[..., :2] /= step
    return draw_keypoints(image, kp, edges=list(edges), conf_threshold=conf_threshold)


# ---------------------------------------------------------------------------------------------- denoise-motion
def _frame_errors_mm(a: Tensor, b: Tensor, mask: Tensor) -> np.ndarray:
    """Mean distance per frame over the joints in `mask` (T, J), in mm; NaN for frames without any."""
    d = torch.where(mask, (a - b).norm(dim=-1), torch.zeros((), device=a.device)).sum(-1)
    return (1000 * d / mask.sum(-1)).cpu().numpy()  # 0/0 → NaN


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The shortest rotation (3, 3) taking unit vector `a` to unit vector `b` (Rodrigues)."""
    cos = float(np.clip(a @ b, -1.0, 1.0))
    axis = np.cross(a, b)
    sin = float(np.linalg.norm(axis))
    if sin < 1e-8:  # parallel (identity) or opposite (half a turn about any axis normal to them)
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis, sin = axis / np.linalg.norm(axis), 0.0
    else:
        axis = axis / sin
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + sin * k + (1.0 - cos) * (k @ k)


def _facing_turn(joints: np.ndarray, body: BodyModel, tolerance_deg: float = 30.0) -> np.ndarray | None:
    """A rotation (3, 3) that shows a sequence (joints (T, J, 3)) upright and from the front: its mean
    pelvis-to-neck direction to +y, then, when the body keeps one facing (the mean of its per-frame facings is
    at least half a unit long), that facing to +z, as the body frame has them. None when both are already
    within `tolerance_deg` (body-frame inputs stay as they are)."""
    pelvis, neck, left, right = (_joint(body, n) for n in ("pelvis", "neck", "left_hip", "right_hip"))
    up = np.nanmean(joints[:, neck] - joints[:, pelvis], axis=0)
    if not np.isfinite(up).all() or not np.linalg.norm(up) > 0:
        return None
    turn = _rotation_between(up / np.linalg.norm(up), np.array([0.0, 1.0, 0.0]))
    across = (joints[:, left] - joints[:, right]) @ turn.T  # the body's +x (its left) per frame
    facing = np.stack([-across[:, 2], np.zeros(len(across)), across[:, 0]], axis=-1)  # x × y, horizontal
    facing /= np.maximum(np.linalg.norm(facing, axis=-1, keepdims=True), 1e-12)
    mean = np.nanmean(facing, axis=0)
    if np.isfinite(mean).all() and np.linalg.norm(mean) >= 0.5:
        turn = _rotation_between(mean / np.linalg.norm(mean), np.array([0.0, 0.0, 1.0])) @ turn
    angle = np.degrees(np.arccos(np.clip((np.trace(turn) - 1.0) / 2.0, -1.0, 1.0)))
    return None if angle < tolerance_deg else turn.astype(np.float32)


def comparison_frames(
    obs: Tensor,
    visible: Tensor,
    result: BodyOutput,
    body: BodyModel,
    *,
    renderer: str,
    gt: Tensor | None = None,
    clean: Tensor | None = None,
    hidden_parts: tuple[str, ...] = (),
    cell: tuple[int, int] = (224, 288),
) -> np.ndarray:
    """(T, H, W, 3) frames: [the input pose (mesh `clean`), when it is the ground truth,] the observed joints
    (T, 22, 3; hidden ones left out) and the denoised body `result`, all through one fixed camera and scale,
    over a plot of the joint error per frame (against `gt` when there is one, else the observations)."""
    parents = body.parents[:22].cpu().numpy()
    noisy, vis = obs.cpu().numpy(), visible.cpu().numpy()
    faces = body.faces.cpu().numpy() if body.faces is not None else None
    verts = result.vertices.cpu().numpy() if result.vertices is not None and faces is not None else None
    clean_v = clean.cpu().numpy() if clean is not None and verts is not None else None
    joints = result.joints[:, :22].cpu().numpy()
    if gt is not None:
        series = {
            "observed": _frame_errors_mm(obs, gt, visible),
            "denoised": _frame_errors_mm(result.joints[:, :22], gt, torch.ones_like(visible)),
        }
        title = "joint error per frame vs ground truth"
    else:
        series = {"denoised vs observed": _frame_errors_mm(result.joints[:, :22], obs, visible)}
        title = "joint distance per frame"
    # world-frame sequences (e.g. AMASS: z up, facing anywhere) are turned to be seen upright and from the front
    turn = _facing_turn(joints, body)
    if turn is not None:
        noisy, joints = noisy @ turn.T, joints @ turn.T
        verts = None if verts is None else verts @ turn.T
        clean_v = None if clean_v is None else clean_v @ turn.T
    # one camera for every panel of every frame (a subsample of each mesh is enough to frame it)
    pts = [noisy[vis]] + [m[:, ::7].reshape(-1, 3) for m in (verts, clean_v) if m is not None]
    if verts is None:
        pts.append(joints.reshape(-1, 3))
    framing = frame_points(np.concatenate(pts), "front", cell)
    hidden_note = f" ({', '.join(hidden_parts)} hidden)" if hidden_parts else ""
    labels = (["input (ground truth)"] if clean_v is not None else []) + [
        f"observed joints{hidden_note}",
        "denoised",
    ]

    def frame(t: int) -> np.ndarray:
        items = [{"vertices": clean_v[t], "faces": faces}] if clean_v is not None else []
        items.append(
            {"joints": np.where(vis[t][:, None], noisy[t], np.nan), "parents": parents, "hidden": ~vis[t]}
        )
        items.append(
            {"vertices": verts[t], "faces": faces}
            if verts is not None
            else {"joints": joints[t], "parents": parents}
        )
        panels = contact_sheet(
            items, cols=len(items), cell=cell, renderer=renderer, labels=labels, framing=framing
        )
        plot = line_plot(series, size=(panels.shape[1], 120), cursor=t, title=title, unit="mm")
        return np.concatenate([panels, plot], axis=0)

    first = frame(0)
    out = np.empty((len(noisy), *first.shape), np.uint8)
    out[0] = first

    def fill(t: int) -> None:
        out[t] = frame(t)

    rest = range(1, len(noisy))
    map_each(fill, rest, workers=picture_workers(len(rest), renderer))  # frames side by side (numpy, zlib)
    return out
