"""`services.benchmark`: the shell around `dposer_cli.evaluation` — the report JSON, the generation samples
beside it, and the fit-image service behind the speed evaluation's I/O-inclusive figure."""

import json

import numpy as np

from dposer_cli.core.parts import Part
from dposer_cli.services import benchmark as svc
from tests._fixtures.priors import write_tiny_prior


def test_report_json_and_samples_are_written_beside_each_other(tmp_path, shared_data):
    ckpt = write_tiny_prior(tmp_path / "hand.pt", Part.hand)
    req = svc.BenchmarkRequest(
        name="generation",
        part=Part.hand,
        checkpoint=ckpt,
        n=12,
        steps=2,
        device="cpu",
        reference=shared_data / "poses/hand_reference_train.npz",
        out=tmp_path / "r" / "g.json",
    )
    result = svc.run(req)
    assert result.outputs == {
        "report": tmp_path / "r" / "g.json",
        "samples": tmp_path / "r" / "g.samples.npz",
    }
    assert np.load(result.outputs["samples"])["hand_pose"].shape == (12, 45)
    report = json.loads(result.outputs["report"].read_text())
    assert report["command"] == "benchmark" and report["metrics"] == json.loads(json.dumps(result.metrics))
    assert report["rows"] == json.loads(json.dumps(result.info["rows"])) and report["part"] == "hand"
    assert svc.report_path(svc.BenchmarkRequest(name="ehf")).as_posix() == "dposer_out/benchmark-ehf.json"


def test_speed_measures_fit_image_with_file_io_through_the_service(tmp_path):
    result = svc.run(
        svc.BenchmarkRequest(
            name="speed", quick=True, settings=("fit-image",), device="cpu", out=tmp_path / "s.json"
        )
    )
    m = result.metrics["fit-image"]
    assert m["fits_per_second"] > 0 and m["fits_per_second_with_io"] > 0
    assert any(line.startswith("fit-image with file I/O:") for line in result.lines)
