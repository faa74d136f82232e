"""`evaluation.speed`: the one speed harness — workloads on tensors, and the I/O-inclusive fit-image figure."""

import torch

from dposer_cli import evaluation
from dposer_cli.bodies import load_body
from dposer_cli.evaluation import speed
from dposer_cli.tasks.fit import fit
from tests.evaluation._helpers import req


def test_quick_speed_of_the_tasks_without_the_file_service(tmp_path):
    report = evaluation.run(req(tmp_path, "speed", quick=True, settings=("completion", "fit-image")))
    assert set(report.metrics) == {"completion", "fit-image"}
    assert (
        report.metrics["completion"]["nfe"] == 4 and report.metrics["completion"]["hypotheses_per_second"] > 0
    )
    assert report.metrics["fit-image"]["fits_per_second"] > 0
    assert "fits_per_second_with_io" not in report.metrics["fit-image"]
    assert any("fit-image with file I/O not measured" in note for note in report.info["notes"])


def test_fit_io_figure_uses_the_given_service_on_written_files(tmp_path):
    calls = []

    def fake_service(job: evaluation.FileFit) -> tuple[int, int]:
        calls.append(job)
        assert all(p.is_file() for p in job.images + job.keypoints)
        return len(job.images), 7

    report = evaluation.run(
        req(tmp_path, "speed", quick=True, settings=("fit-image",)), fit_files=fake_service
    )
    m = report.metrics["fit-image"]
    assert len(calls) == 1 and m["fits_per_second_with_io"] > 0 and m["seconds_with_io"] > 0


def test_synthetic_people_are_fitted_like_their_files():
    """The task workload fits the same keypoints the files hold: 25 OpenPose body keypoints of upright bodies,
    confidence 1, the rest of the OpenPose-135 layout unused."""
    body = load_body("body")
    inputs = speed.synthetic_people(body, 2, seed=0)
    assert inputs.keypoints.shape == (2, 135, 3) and bool((inputs.keypoints[:, :25, 2] == 1).all())
    assert float(inputs.keypoints[:, 25:].abs().max()) == 0
    done: list = []
    assert speed.fitting(body, None, inputs, steps=1, out=done)() == (2, 0)
    assert torch.equal(done[0].params["body_pose"], fit(body, None, inputs, steps=1).params["body_pose"])
