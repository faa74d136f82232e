"""`evaluation.ik`: hand and face IK metrics equal `tasks.ik.evaluate_ik` of `tasks.ik.solve_ik` (same seed)."""

import numpy as np
import pytest
import torch

from dposer_cli import evaluation
from dposer_cli.bodies import load_body
from dposer_cli.core.device import make_generator
from dposer_cli.core.parts import Part
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.priors import build_prior
from dposer_cli.evaluation.ik import parse_setting
from dposer_cli.tasks import ik
from tests._fixtures.priors import write_tiny_prior
from tests.evaluation._helpers import req


def _ik_reference(part, params, body, setting, prior_kind, priors, steps):
    kind, noise = parse_setting(setting)
    gen = make_generator(0, torch.device("cpu"))  # batch 0 of setting 0: seed + 0
    problem = ik.apply_type(ik.problem_from_params(part, body, params), kind, noise_std=noise, generator=gen)
    if prior_kind == "l2":
        priors = {p: build_prior("l2", p) for p in ik.IK[part].prior_parts}
    prior = ik.ik_prior(part, priors, scale=ik.PRIOR_SCALES.get(prior_kind, 1.0))
    result = ik.solve_ik(problem, body, prior, ik_type=kind, noise_std=noise, steps=steps, generator=gen)
    return ik.evaluate_ik(problem, body, result)


def test_parse_setting():
    assert parse_setting("noisy-5mm") == ("noisy", 0.005) and parse_setting("sparse") == ("sparse", None)


def test_hand_ik_equals_the_task_evaluator(tmp_path, shared_data):
    ckpt = write_tiny_prior(tmp_path / "hand.pt", Part.hand)
    hands = np.load(shared_data / "poses/hand_reference_train.npz")["poses"][:6]
    (tmp_path / "hands").mkdir()
    np.savez(tmp_path / "hands" / "h.npz", hand_pose=hands)
    report = evaluation.run(
        req(
            tmp_path,
            "hand-ik",
            data_dir=tmp_path / "hands",
            checkpoint=ckpt,
            steps=4,
            settings=("sparse", "noisy-5mm"),
        )
    )
    body = load_body("hand")
    prior = DPoserPrior.load(Part.hand, ckpt)
    ref = _ik_reference(
        Part.hand, {"hand_pose": torch.as_tensor(hands)}, body, "sparse", "dposer", {Part.hand: prior}, 4
    )
    m = report.metrics["sparse"]
    for key in ("mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_all_mm", "mpvpe_mm"):
        assert m[key] == pytest.approx(ref[key], rel=1e-5), key
    assert report.info["nfe"] == 2 * 4
    # nothing is hidden in the noisy setting: no occluded error at all (not a NaN, not a 0)
    assert "mpjpe_occluded_mm" not in report.metrics["noisy-5mm"]


def test_face_ik_with_flame_equals_the_task_evaluator(tmp_path, shared_data, body_tree):
    face = np.load(shared_data / "poses/face_expression_reference_train.npz")["poses"][:4]
    betas = np.load(shared_data / "poses/face_shape_reference_train.npz")["poses"][:4]
    (tmp_path / "faces").mkdir()
    np.savez(tmp_path / "faces" / "f.npz", jaw_pose=face[:, :3], expression=face[:, 3:], betas=betas)
    report = evaluation.run(
        req(
            tmp_path,
            "face-ik",
            data_dir=tmp_path / "faces",
            prior="l2",
            steps=3,
            settings=("noisy-2mm",),
            body_model=body_tree,
        )
    )
    body = load_body("face", body_tree)
    params = {
        "jaw_pose": torch.as_tensor(face[:, :3]),
        "expression": torch.as_tensor(face[:, 3:]),
        "betas": torch.as_tensor(betas),
    }
    ref = _ik_reference(Part.face, params, body, "noisy-2mm", "l2", {}, 3)
    m = report.metrics["noisy-2mm"]
    assert m["mpjpe_all_mm"] == pytest.approx(ref["mpjpe_all_mm"], rel=1e-5)
    assert m["mpvpe_mm"] == pytest.approx(ref["mpvpe_mm"], rel=1e-5)
    row = next(r for r in report.info["rows"] if r["metric"] == "mpvpe_mm")
    assert (
        report.info["paper_row"] == "L2 prior"
        and row["paper"] == 1.626
        and row["table"].startswith("Table S-13")
    )
    assert row["body_model"] == "flame"
