"""Procedural test subjects for rendering: a posable stick figure made of capsules (no body model)."""

import numpy as np

from dposer_cli.render import scene

# joint: (name, parent); rest positions in metres, y up, facing +z (the SMPL-X convention)
PARENTS = np.array([-1, 0, 1, 2, 2, 4, 5, 2, 7, 8, 0, 10, 11, 0, 13, 14])
REST = np.array(
    [
        [0.00, 0.95, 0.0],  # 0 pelvis
        [0.00, 1.20, 0.0],  # 1 spine
        [0.00, 1.45, 0.0],  # 2 neck
        [0.00, 1.65, 0.0],  # 3 head
        [0.18, 1.42, 0.0],  # 4 left shoulder (+x is the body's left)
        [0.45, 1.42, 0.0],  # 5 left elbow
        [0.70, 1.42, 0.0],  # 6 left wrist
        [-0.18, 1.42, 0.0],  # 7 right shoulder
        [-0.45, 1.42, 0.0],  # 8 right elbow
        [-0.70, 1.42, 0.0],  # 9 right wrist
        [0.10, 0.90, 0.0],  # 10 left hip
        [0.10, 0.50, 0.0],  # 11 left knee
        [0.10, 0.08, 0.0],  # 12 left ankle
        [-0.10, 0.90, 0.0],  # 13 right hip
        [-0.10, 0.50, 0.0],  # 14 right knee
        [-0.10, 0.08, 0.0],  # 15 right ankle
    ]
)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def pose_joints(arm_l: float = 0.0, arm_r: float = 0.0, leg_l: float = 0.0, leg_r: float = 0.0) -> np.ndarray:
    """Joint positions: arms raised/lowered about z at the shoulder, legs swung forward about x at the hip."""
    j = REST.copy()
    for shoulder, chain, angle in ((4, (5, 6), arm_l), (7, (8, 9), -arm_r)):
        j[list(chain)] = (j[list(chain)] - j[shoulder]) @ _rot_z(angle).T + j[shoulder]
    for hip, chain, angle in ((10, (11, 12), -leg_l), (13, (14, 15), -leg_r)):
        j[list(chain)] = (j[list(chain)] - j[hip]) @ _rot_x(angle).T + j[hip]
    return j


def stick_mesh(joints: np.ndarray, radius: float = 0.045) -> tuple[np.ndarray, np.ndarray]:
    """Capsules along every bone plus a head sphere, as one (V, 3), (F, 3) mesh."""
    import trimesh

    parts = []
    for j, p in enumerate(PARENTS):
        if p < 0:
            continue
        a, b = joints[p], joints[j]
        length = float(np.linalg.norm(b - a))
        cap = trimesh.creation.capsule(height=length, radius=radius, count=[10, 10])
        transform = trimesh.geometry.align_vectors([0, 0, 1], (b - a) / length)
        transform[:3, 3] = (a + b) / 2
        cap.apply_transform(transform)
        parts.append(cap)
    head = trimesh.creation.icosphere(subdivisions=3, radius=0.11)
    head.apply_translation(joints[3] + [0, 0.06, 0])
    parts.append(head)
    mesh = trimesh.util.concatenate(parts)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


POSES = [
    {},
    {"arm_l": 1.2, "arm_r": 1.2},
    {"arm_l": -1.2, "arm_r": 0.5, "leg_l": 0.6},
    {"arm_l": 0.6, "arm_r": -1.0, "leg_r": 1.2},
    {"arm_l": 1.5, "arm_r": -0.3, "leg_l": -0.4, "leg_r": 0.4},
    {"arm_l": -0.4, "arm_r": 1.4, "leg_l": 1.4},
]


def covered(image: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background colour."""
    bg = (np.asarray(scene.BACKGROUND) * 255 + 0.5).astype(np.int16)
    return np.abs(image.astype(np.int16) - bg).sum(axis=-1) > 6


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))
