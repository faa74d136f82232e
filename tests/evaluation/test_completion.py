"""`evaluation.completion`: MPJPE/MPVPE/APD of completed poses against closed forms and numpy, official vertex
sets, and masks a metric cannot measure."""

import json
import pickle

import numpy as np
import pytest
import torch

from dposer_cli import evaluation
from dposer_cli.bodies import load_body
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part, mask_dims
from tests._fixtures.priors import write_tiny_prior
from tests.evaluation._helpers import req


def _amass(tmp_path, poses: np.ndarray):
    (tmp_path / "amass").mkdir()
    np.savez(tmp_path / "amass" / "x.npz", pose_body=poses)
    return tmp_path / "amass"


def test_completion_l2_matches_closed_form(tmp_path, shared_data):
    poses = np.load(shared_data / "poses/body_reference_train.npz")["poses"][:5]
    report = evaluation.run(
        req(
            tmp_path,
            "completion",
            data_dir=_amass(tmp_path, poses),
            prior="l2",
            hypo=2,
            settings=("legs",),
            batch_size=2,
        )
    )
    m = report.metrics["legs"]
    body = load_body("body")  # the mannequin: the same default the benchmark used
    filled = poses.copy()
    filled[:, list(mask_dims(Part.body, ["legs"]))] = 0  # the L2 minimiser
    with torch.no_grad():
        pj = body(body_pose=torch.as_tensor(filled)).joints.numpy()
        gj = body(body_pose=torch.as_tensor(poses)).joints.numpy()
    legs = [j + 1 for j in (0, 1, 3, 4, 6, 7, 9, 10)]  # body22 = pelvis + body joints
    expected = np.linalg.norm(pj[:, legs] - gj[:, legs], axis=-1).mean(-1).mean() * 1000
    assert m["mpjpe_min_mm"] == pytest.approx(expected, rel=1e-5)
    assert m["mpjpe_mean_mm"] == pytest.approx(expected, rel=1e-5)
    assert m["mpjpe_std_mm"] == pytest.approx(0, abs=1e-6) and m["apd_cm"] == pytest.approx(0, abs=1e-6)
    assert report.info["items"] == 5 and report.info["settings"]["masks"] == ["legs"]
    # computed on the mannequin: the rows say so and carry no SMPL-X number from the paper
    row = next(r for r in report.info["rows"] if r["metric"] == "mpvpe_min_mm")
    assert row["body_model"] == "mannequin" and row["paper"] is None and row["table"].startswith("Table S-5")


def test_completion_dposer_reports_min_below_mean(tmp_path, shared_data):
    ckpt = write_tiny_prior(tmp_path / "body.pt", Part.body)
    (tmp_path / "amass").mkdir()
    np.savez(
        tmp_path / "amass" / "x.npz",
        poses=np.concatenate(
            [
                np.zeros((4, 3)),
                np.load(shared_data / "poses/body_reference_train.npz")["poses"][:4],
                np.zeros((4, 90)),
            ],
            1,
        ),
        mocap_framerate=60.0,
    )
    report = evaluation.run(
        req(
            tmp_path,
            "completion",
            data_dir=tmp_path / "amass",
            checkpoint=ckpt,
            hypo=3,
            steps=4,
            settings=("left_leg", "torso"),
        )
    )
    for s in ("left_leg", "torso"):
        m = report.metrics[s]
        assert m["mpjpe_min_mm"] <= m["mpjpe_mean_mm"] and m["apd_cm"] > 0 and m["mpvpe_min_mm"] > 0
    assert report.info["nfe"] == 2 * 4  # one network evaluation per step, per mask
    assert report.info["paper"]["left_leg"]["rows"]["DPoser"][0] == 38.79


def test_a_mask_the_joint_error_cannot_see_reports_no_perfect_zero(tmp_path, shared_data):
    """`hands` rotates the wrists: the wrist joints the MPJPE is taken over do not move, so MPJPE (and APD) are
    left out with a note; the MPVPE over the hand vertices does measure it."""
    poses = np.load(shared_data / "poses/body_reference_train.npz")["poses"][:3]
    report = evaluation.run(
        req(
            tmp_path,
            "completion",
            data_dir=_amass(tmp_path, poses),
            prior="l2",
            hypo=2,
            settings=("hands", "legs"),
        )
    )
    assert not any(k.startswith(("mpjpe", "apd")) for k in report.metrics["hands"])
    assert report.metrics["hands"]["mpvpe_min_mm"] > 0
    assert report.metrics["legs"]["mpjpe_min_mm"] > 0  # other masks keep theirs
    assert any(note.startswith("hands: mpjpe not reported") for note in report.info["notes"])


def test_wholebody_completion_l2_matches_closed_form(tmp_path, shared_data):
    toy = np.load(shared_data / "official/examples/toy_wholebody_data.npz")
    (tmp_path / "wb").mkdir()
    np.savez(tmp_path / "wb" / "x.npz", **{k: toy[k][:4] for k in toy.files})
    report = evaluation.run(
        req(
            tmp_path,
            "wholebody-completion",
            data_dir=tmp_path / "wb",
            prior="l2",
            hypo=2,
            settings=("lhand",),
        )
    )
    body = load_body("body")
    lhand = body.joint_set("lhand21")
    keys = ("body_pose", "left_hand_pose", "right_hand_pose")
    truth = {k: torch.as_tensor(toy[k][:4], dtype=torch.float32) for k in keys}
    filled = dict(truth, left_hand_pose=torch.zeros(4, 45))
    filled["body_pose"] = truth["body_pose"].clone()
    filled["body_pose"][:, 57:60] = 0  # the left wrist belongs to the hand mask (spec §7.3)
    with torch.no_grad():
        err = (body(**filled).joints[:, lhand] - body(**truth).joints[:, lhand]).norm(dim=-1).mean(-1)
    m = report.metrics["lhand"]
    assert m["mpjpe_min_mm"] == pytest.approx(float(err.mean()) * 1000, rel=1e-5)
    assert m["mpjpe_std_mm"] == pytest.approx(0, abs=1e-6)
    with pytest.raises(InputError, match="needs a body model with a face"):
        evaluation.run(
            req(tmp_path, "wholebody-completion", data_dir=tmp_path / "wb", prior="l2", settings=("face",))
        )


def test_vposer_baseline_completes_keeping_the_observed_joints(tmp_path, shared_data):
    from tests._fixtures.vposer import write_vposer

    weights = write_vposer(tmp_path)
    data = _amass(tmp_path, np.load(shared_data / "poses/body_reference_train.npz")["poses"][:3])
    report = evaluation.run(
        req(
            tmp_path,
            "completion",
            data_dir=data,
            prior="vposer",
            checkpoint=weights,
            hypo=2,
            settings=("left_arm",),
        )
    )
    m = report.metrics["left_arm"]
    assert 0 < m["mpjpe_min_mm"] <= m["mpjpe_mean_mm"] and report.info["paper_row"] == "VPoser"
    with pytest.raises(InputError, match="compares --prior dposer, none, l2, gmm, not 'vposer'"):
        evaluation.run(req(tmp_path, "hand-ik", prior="vposer", checkpoint=weights, data_dir=tmp_path))


def test_completion_uses_the_official_vertex_sets_when_given(tmp_path, shared_data, body_tree):
    """With smplx_vert_segmentation.json in --data-dir, MPVPE of `legs` is over its leg segments (numpy check);
    a vertex count that differs from the official evaluator's is noted. With MANO_SMPLX_vertex_ids.pkl the
    whole-body hand masks use its hand vertices."""
    from tests.io.test_datasets import write_smplx_eval_files

    poses = np.load(shared_data / "poses/body_reference_train.npz")["poses"][:3]
    data = _amass(tmp_path, poses)
    rng = np.random.default_rng(0)
    names = [
        "leftLeg",
        "leftUpLeg",
        "leftFoot",
        "leftToeBase",
        "rightLeg",
        "rightUpLeg",
        "rightFoot",
        "rightToeBase",
    ]
    seg = {name: rng.choice(10475, 40, replace=False).tolist() for name in names}
    (data / "smplx_vert_segmentation.json").write_text(json.dumps(seg))
    report = evaluation.run(
        req(
            tmp_path,
            "completion",
            data_dir=data,
            prior="l2",
            hypo=2,
            settings=("legs",),
            body_model=body_tree,
        )
    )
    body = load_body("body", body_tree)
    ids = sorted({i for v in seg.values() for i in v})
    filled = poses.copy()
    filled[:, list(mask_dims(Part.body, ["legs"]))] = 0
    with torch.no_grad():
        pv = body(body_pose=torch.as_tensor(filled)).vertices.numpy()[:, ids]
        gv = body(body_pose=torch.as_tensor(poses)).vertices.numpy()[:, ids]
    expected = np.linalg.norm(pv - gv, axis=-1).mean(-1).mean() * 1000
    assert report.metrics["legs"]["mpvpe_min_mm"] == pytest.approx(expected, rel=1e-4)
    assert "official sets from smplx_vert_segmentation.json for legs" in report.info["settings"]["vertex_set"]
    assert any(f"mask legs has {len(ids)} vertices" in note for note in report.info["notes"])
    row = next(r for r in report.info["rows"] if r["metric"] == "mpvpe_min_mm")
    assert row["body_model"] == "smplx" and "paper_note" not in row  # SMPL-X: comparable with the paper

    toy = np.load(shared_data / "official/examples/toy_wholebody_data.npz")
    (tmp_path / "wb").mkdir()
    np.savez(tmp_path / "wb" / "x.npz", **{k: toy[k][:2] for k in toy.files})
    write_smplx_eval_files(tmp_path / "wb", j14=False)
    wb = evaluation.run(
        req(
            tmp_path,
            "wholebody-completion",
            data_dir=tmp_path / "wb",
            prior="l2",
            hypo=1,
            settings=("rhand",),
            body_model=body_tree,
        )
    )
    with open(tmp_path / "wb" / "MANO_SMPLX_vertex_ids.pkl", "rb") as fh:
        rh = pickle.load(fh)["right_hand"]
    keys = ("body_pose", "left_hand_pose", "right_hand_pose")
    truth = {k: torch.as_tensor(toy[k][:2], dtype=torch.float32) for k in keys}
    filled = dict(truth, right_hand_pose=torch.zeros(2, 45))
    filled["body_pose"] = truth["body_pose"].clone()
    filled["body_pose"][:, 60:63] = 0  # the right wrist belongs to the hand mask
    with torch.no_grad():
        err = np.linalg.norm(
            body(**filled).vertices.numpy()[:, rh] - body(**truth).vertices.numpy()[:, rh], axis=-1
        )
    assert wb.metrics["rhand"]["mpvpe_min_mm"] == pytest.approx(err.mean(-1).mean() * 1000, rel=1e-4)
    assert "MANO_SMPLX_vertex_ids.pkl" in wb.info["settings"]["vertex_set"]
