"""`evaluation.denoise`: the metrics of `tasks.denoise_motion` on the same clip, seed and schedule."""

import numpy as np
import pytest
import torch

from dposer_cli import evaluation
from dposer_cli.bodies import load_body
from dposer_cli.core.device import make_generator
from dposer_cli.core.parts import Part
from dposer_cli.engine.baselines import NoPrior
from dposer_cli.evaluation.common import scaled_schedule
from dposer_cli.tasks import denoise_motion as dm
from tests.evaluation._helpers import req


def test_denoise_equals_the_task_on_the_same_clip(tmp_path, shared_data):
    motion = np.load(shared_data / "official/examples/Gestures_3_poses_batch005.npz")
    (tmp_path / "he").mkdir()
    np.savez(
        tmp_path / "he" / "a.npz", pose_body=motion["pose_body"][:70], root_orient=motion["root_orient"][:70]
    )
    report = evaluation.run(req(tmp_path, "denoise", data_dir=tmp_path / "he", prior="none", steps=3))
    m = report.metrics["40mm"]
    # the same clip, seed and schedule through tasks.denoise_motion directly; metrics by numpy
    body = load_body("body")
    b22 = body.joint_set("body22")
    pose = torch.as_tensor(motion["pose_body"][:60], dtype=torch.float32)
    with torch.no_grad():
        gt = body(body_pose=pose, return_vertices=False).joints[:, b22]
    gen = make_generator(0, torch.device("cpu"))
    obs = gt + 0.04 * torch.randn(gt.shape, generator=gen)
    sched = scaled_schedule(dm.SCHEDULES[0.04], 3)
    fit = dm.denoise_motion(
        NoPrior(Part.body),
        body,
        obs,
        torch.ones(60, 22, dtype=torch.bool),
        schedule=sched,
        temporal="vertices",
        generator=gen,
    )
    with torch.no_grad():
        pred = body(body_pose=fit.params["body_pose"], return_vertices=False).joints[:, b22].numpy()
    expected = np.linalg.norm(pred - gt.numpy(), axis=-1).mean() * 1000
    assert report.info["items"] == 1 and sched.steps == 3
    assert m["mpjpe_mm"] == pytest.approx(expected, rel=1e-5)
    assert m["mpjpe_input_mm"] == pytest.approx(
        np.linalg.norm((obs - gt).numpy(), axis=-1).mean() * 1000, rel=1e-5
    )
    assert report.info["body_model"] == "mannequin"
