"""Pictures of part vectors for the services: poses → body model → render items → one PNG.

`render_sheet` draws what each part needs: bodies through one shared camera; hands upright in their palm
frame, palm and back, centred at one scale; whole bodies with close-ups of both hands and of the face
(FLAME) or a jaw/expression chart; faces without FLAME as charts that say meshes need FLAME.
`completion_sheet` draws `complete`: one row per input, the missing part greyed, the completed part
highlighted, the ground truth last. `ik_sheet` draws `ik`: targets (seen / hidden) against the recovered joints.
"""

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.bodies.base import BodyOutput
from dposer_cli.core.errors import MissingAssetError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.io.media import save_image
from dposer_cli.render.draw import (
    GHOST_COLOR,
    HIDDEN_TARGET_COLOR,
    HIGHLIGHT_COLOR,
    TARGET_COLOR,
    TRUTH_COLOR,
    bar_chart,
    contact_sheet,
    face_chart,
    label,
    legend,
    palm_frame,
    tile,
    titled,
)
from dposer_cli.render.scene import BODY_COLOR

log = logging.getLogger(__name__)

GRID_MAX = 64  # default number of poses drawn in a picture (the first ones)
GRID_DEFAULT = {Part.wholebody: 16}  # parts whose pictures are bigger per pose
# which body model pictures each part (load_body kind)
_BODY_KIND = {Part.body: "body", Part.wholebody: "body", Part.hand: "hand", Part.face: "face", Part.face_shape: "face"}
# camera per part for single-view pictures other than "front" (none: hands are turned palm to the camera)
_VIEW: dict[Part, str] = {}
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_PERTURB = 0.3  # rad added to hidden entries to find the vertices they move (`moved_vertices`)
_MOVED_M = 0.004  # a vertex that moves more than this belongs to the hidden part
_TILT = 25.0  # degrees: hands are seen a little from their fingertips' side


def grid_count(part: Part, n: int, grid: int | None = None) -> int:
    """How many of `n` poses a picture shows: `grid` if given, else the part's default, never more than n."""
    return max(0, min(n, GRID_DEFAULT.get(Part(part), GRID_MAX) if grid is None else grid))


def view_for(part: Part) -> str:
    """The camera of single-view pictures of `part`'s `pose_items` (hands: the palm of the upright hand)."""
    return _VIEW.get(Part(part), "front")


def load_part_body(part: Part, body_model: Path | None, device: torch.device) -> BodyModel:
    """The body model that pictures `part` (faces: FLAME, else `MissingAssetError`)."""
    return load_body(_BODY_KIND[Part(part)], body_model, device)


def part_params(part: Part, poses: Tensor) -> dict[str, Tensor]:
    """Split part vectors (..., D) into body-model keyword arguments."""
    params = {k: poses[..., s] for k, s in PARTS[part].slices().items()}
    if part is Part.hand:  # hand models take `hand_pose`
        params = {"hand_pose": params["hand_pose"]}
    return params


def _mesh(out: BodyOutput, body: BodyModel) -> tuple[np.ndarray, np.ndarray]:
    """(N, V, 3) vertices and (F, 3) faces of a model that has a mesh (callers check `body.faces`)."""
    if out.vertices is None or body.faces is None:
        raise MissingAssetError(f"the {body.kind} model has no mesh to draw")
    return out.vertices.cpu().numpy(), body.faces.cpu().numpy()


def _joint(body: BodyModel, name: str) -> int:
    return body.joint_names.index(name)


def upright(points: np.ndarray, joints: np.ndarray, body: BodyModel, side: str, prefix: str = "") -> np.ndarray:
    """(N, P, 3) points of N hands moved to their wrist and turned by `draw.palm_frame`: palm facing +z,
    fingers up; `joints` (N, J, 3) in `body.joint_names` order, `prefix` e.g. "left_" on a whole body."""
    w, i, m, p = (_joint(body, prefix + n) for n in ("wrist", "index1", "middle1", "pinky1"))
    out = np.empty_like(points)
    for k, (pts, j) in enumerate(zip(points, joints, strict=True)):
        rot = palm_frame(j[w], j[i], j[m], j[p], side=side)
        out[k] = (pts - j[w]) @ rot.T
    return out


def pose_items(part: Part, poses: Tensor, body_model: Path | None, device: torch.device, *,
               body: BodyModel | None = None) -> list[dict]:
    """Meshes (or skeletons) for a contact sheet; hands upright (see `upright`). `body` reuses a loaded model
    (else it is loaded; a face without FLAME raises MissingAssetError)."""
    body = body if body is not None else load_part_body(part, body_model, device)
    with torch.no_grad():
        out = body(**part_params(part, poses.to(device)))
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
def render_sheet(part: Part, poses: Tensor, path: Path, *, body_model: Path | None, renderer: str,
                 device: torch.device, cell: int = 256, max_items: int = GRID_MAX, title: str | None = None
                 ) -> Path | None:
    """Draw the first `max_items` poses into one PNG as `part` needs them (module docstring); None (with a
    log line) when nothing can be drawn."""
    poses = poses[:max_items]
    if len(poses) == 0:
        return None
    note = None
    if part is Part.wholebody:
        image = _wholebody_sheet(poses, body_model, device, renderer)
    elif part in (Part.face, Part.face_shape):
        image, note = _face_sheet(part, poses, body_model, device, renderer, cell)
    else:
        items = pose_items(part, poses, body_model, device)
        if part is Part.hand:
            image = _hand_sheet(items, renderer)
        else:
            image = contact_sheet(items, cell=cell, renderer=renderer, view=view_for(part))
    if title or note:
        image = titled(image, title or part.value, note=note)
    return save_image(path, np.asarray(image))


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
    return contact_sheet(pairs, cols=2 * min(per_row, len(items)), cell=cell, renderer=renderer, labels=labels,
                         center=True)


def _cells(sheet: np.ndarray, n: int, cols: int, size: tuple[int, int]) -> list[np.ndarray]:
    w, h = size
    return [sheet[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] for i in range(n)]


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
        nearest[s:s + 4096] = np.linalg.norm(v[s:s + 4096, None] - skeleton[None], axis=-1).argmin(1)
    wrist, elbow = j[_joint(body, f"{side}_wrist")], j[_joint(body, f"{side}_elbow")]
    axis = (wrist - elbow) / np.linalg.norm(wrist - elbow)
    keep = in_hand[nearest] & ((v - wrist) @ axis > -0.02)
    ids = np.flatnonzero(keep)
    inside = keep[faces].all(axis=1)
    remap = np.full(len(v), -1, np.int64)
    remap[ids] = np.arange(len(ids))
    return ids, remap[faces[inside]]


def _wholebody_sheet(poses: Tensor, body_model: Path | None, device: torch.device, renderer: str,
                     per_row: int = 4) -> np.ndarray:
    """Per sample: the body, then close-ups of the left and right hand (upright, back of the hand) and of the
    face (FLAME) or its jaw and expression as a chart."""
    body = load_part_body(Part.wholebody, body_model, device)
    params = part_params(Part.wholebody, poses.to(device))
    with torch.no_grad():
        out = body(**params)
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
            items = [{"joints": j, "parents": np.full(len(j), -1)} for j in
                     upright(joints[:, [_joint(body, f"{side}_wrist")]], joints, body, side, f"{side}_")]
        else:
            ids, hand_faces = _hand_region(body, side)
            items = [{"vertices": v, "faces": hand_faces}
                     for v in upright(verts[:, ids], joints, body, side, f"{side}_")]
        items = [_turned(it) for it in items]  # the palm
        sheet = contact_sheet(items, cols=cols, cell=small, renderer=renderer, center=True)
        hand_cells[side] = _cells(sheet, n, cols, small)
    face_cells = _face_closeups(params, body_model, device, renderer, small)
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


def _face_closeups(params: dict[str, Tensor], body_model: Path | None, device: torch.device, renderer: str,
                   size: tuple[int, int]) -> list[np.ndarray]:
    """The FLAME face at each jaw pose and expression, or (no FLAME) a chart of them."""
    jaw, expression = params["jaw_pose"], params["expression"]
    try:
        flame = load_body("face", body_model, device)
    except MissingAssetError:
        lim = _limit(expression.cpu().numpy())
        return [face_chart(j, e, size=size, title="face (no FLAME)", limit=lim) for j, e in
                zip(jaw.cpu().numpy(), expression.cpu().numpy(), strict=True)]
    with torch.no_grad():
        verts, faces = _mesh(flame(jaw_pose=jaw, expression=expression), flame)
    items = [{"vertices": v, "faces": faces} for v in verts]
    cols = min(8, len(items))
    sheet = contact_sheet(items, cols=cols, cell=size, renderer=renderer, center=True, labels=["face"] * len(items))
    return _cells(sheet, len(items), cols, size)


def _limit(values: np.ndarray) -> float:
    """One bar-chart range for every sample (so bars compare), rounded up to half units."""
    top = float(np.abs(values).max()) if values.size else 0.0
    return max(0.5, np.ceil(top * 2) / 2)


def _face_sheet(part: Part, poses: Tensor, body_model: Path | None, device: torch.device, renderer: str,
                cell: int) -> tuple[np.ndarray, str | None]:
    """FLAME meshes (centred, one scale); without FLAME, per sample a chart of the numbers and a note."""
    try:
        items = pose_items(part, poses, body_model, device)
    except MissingAssetError:
        log.info("no FLAME model: the %s picture shows the coefficients (meshes need FLAME)", part.value)
        data = poses.cpu().numpy()
        if part is Part.face:
            sl = PARTS[part].slices()
            lim = _limit(data[:, sl["expression"]])
            charts = [face_chart(x[sl["jaw_pose"]], x[sl["expression"]], size=cell, title=f"{i + 1}", limit=lim)
                      for i, x in enumerate(data)]
            what = "jaw rotation and expression coefficients"
        else:
            lim = _limit(data)
            charts = [bar_chart(x, size=(cell, cell // 2), title=f"{i + 1} · shape coefficients (betas)", limit=lim)
                      for i, x in enumerate(data)]
            what = "shape coefficients"
        note = f"no FLAME model found, so the {what} are drawn as numbers; meshes need FLAME (--body-model)"
        return tile(charts, cols=min(len(charts), 4), gap=4), note
    labels = [str(i + 1) for i in range(len(items))]
    return contact_sheet(items, cell=cell, renderer=renderer, center=True, labels=labels), None


# ---------------------------------------------------------------------------------------------- complete
def moved_vertices(part: Part, body: BodyModel, poses: Tensor, hidden: Tensor) -> np.ndarray:
    """(N, V) bool: the vertices that the hidden entries (N, D) of each pose move (found by turning them
    `_PERTURB` rad further and comparing the meshes)."""
    with torch.no_grad():
        a, _ = _mesh(body(**part_params(part, poses)), body)
        b, _ = _mesh(body(**part_params(part, poses + _PERTURB * hidden.to(poses.dtype))), body)
    return np.linalg.norm(a - b, axis=-1) > _MOVED_M


def completion_sheet(part: Part, inputs: Tensor, completed: Tensor, hidden: Tensor, *, truth: bool,
                     path: Path, body_model: Path | None, renderer: str, device: torch.device,
                     max_rows: int = 16, cell: int = 224, title: str | None = None) -> Path | None:
    """One row per input: the input with its missing part greyed (posed at zero), the hypotheses with the
    completed part highlighted, and (`truth`: the input was complete) the ground truth.

    Args:
        inputs: (N, D) poses as given (NaN where missing); completed: (N, H, D); hidden: (N, D) bool.
    """
    inputs, completed, hidden = inputs[:max_rows], completed[:max_rows], hidden[:max_rows]
    n, h, _ = completed.shape
    try:
        body = load_part_body(part, body_model, device)
    except MissingAssetError as exc:
        log.warning("no picture for --part %s: %s", part.value, exc.message)
        return None
    given = torch.where(hidden, torch.zeros_like(inputs), torch.nan_to_num(inputs))
    if body.faces is None:  # a model without a mesh: skeletons, completed joints not coloured
        rows = [pose_items(part, torch.cat([given[i:i + 1], completed[i]] + ([inputs[i:i + 1]] if truth else [])),
                           body_model, device, body=body) for i in range(n)]
    else:
        poses = torch.cat([given[:, None], completed] + ([inputs[:, None]] if truth else []), dim=1)
        with torch.no_grad():
            out = body(**part_params(part, poses.reshape(-1, poses.shape[-1])))
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
    entries = [("square", GHOST_COLOR, "missing in the input"), ("square", HIGHLIGHT_COLOR, "completed by the prior")]
    if truth:
        entries.append(("square", TRUTH_COLOR, "ground truth"))
    image = np.concatenate([legend(entries, width=sheet.shape[1], px=14), sheet], axis=0)
    if title:
        image = titled(image, title)
    return save_image(path, image)



# ---------------------------------------------------------------------------------------------- ik
# skeleton over the IK joint orders (`tasks.ik` joint sets): OpenPose hand21; FLAME's 5 joints + landmarks
IK_PARENTS = {
    "hand21": (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19),
    "flame73": (-1, 0, 1, 1, 1) + (-1,) * 68,
}
_HAND21_PALM = (0, 5, 9, 17)  # wrist, index1, middle1, pinky1 in hand21 order


def ik_sheet(joint_set: str, joints: Tensor, targets: Tensor, visible: Tensor, *, path: Path, renderer: str,
             side: str = "right", max_items: int = 8, cell: int = 256, title: str | None = None) -> Path:
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
        item = {"joints": j[k], "parents": parents, "targets": t[k], "target_visible": vis[k],
                "colors": (0.25, 0.36, 0.6)}
        items.append(_turned(item, tilt=15.0) if joint_set == "hand21" else item)
    sheet = contact_sheet(items, cols=min(4, len(items)), cell=cell, renderer=renderer, labels=labels, center=True)
    entries = [("dot", TARGET_COLOR, "target the solver saw"), ("ring", HIDDEN_TARGET_COLOR, "target hidden from it"),
               ("line", (64, 92, 153), "recovered joints")]
    image = np.concatenate([legend(entries, width=sheet.shape[1], px=14), sheet], axis=0)
    return save_image(path, titled(image, title) if title else image)
