"""`dposer benchmark` end to end through `main()` (and torchrun): table, JSON report, one-line errors, sharding."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dposer_cli.core.parts import Part
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run
from tests.io.test_datasets import write_ehf

ROOT = Path(__file__).resolve().parents[2]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_generation_prints_table_and_writes_report(tmp_path, capsys, shared_data):
    ckpt = write_tiny_prior(tmp_path / "hand.pt", Part.hand)
    report = tmp_path / "r" / "gen.json"
    code, out, err = run(
        capsys,
        "benchmark",
        "generation",
        "--part",
        "hand",
        "--checkpoint",
        str(ckpt),
        "-n",
        "30",
        "--steps",
        "2",
        "--reference",
        str(shared_data / "poses/hand_reference_train.npz"),
        "--statistics",
        str(shared_data / "official/data/hand_data/statistics.npz"),
        "--out",
        str(report),
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert out == ""  # stdout only carries --json
    assert "benchmark generation" in err and "Table S-8" in err and "fid" in err
    data = json.loads(report.read_text())
    assert data["command"] == "benchmark" and data["benchmark"] == "generation" and data["part"] == "hand"
    assert set(data["metrics"]["hand"]) >= {"fid", "fid_reference", "precision", "recall", "dnn", "apd_cm"}
    assert data["paper"]["hand"]["rows"]["DPoser"] == [2.36, 0.01, 0.82, 0.87, 1.45]
    assert data["device"] == "cpu" and data["versions"]["dposer"] and data["seconds"] > 0
    assert np.load(data["outputs"]["samples"])["hand_pose"].shape == (30, 45)


def test_json_summary_equals_report(tmp_path, capsys, shared_data):
    code, out, err = run(
        capsys,
        "benchmark",
        "generation",
        "--checkpoint",
        str(write_tiny_prior(tmp_path / "b.pt", Part.body)),
        "-n",
        "10",
        "--steps",
        "2",
        "--reference",
        str(shared_data / "poses/body_reference_train.npz"),
        "--json",
        "--out",
        str(tmp_path / "g.json"),
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["metrics"] == json.loads((tmp_path / "g.json").read_text())["metrics"]


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["generaton"], 2, "unknown benchmark 'generaton' (did you mean 'generation'?)"),
        (["completion"], 1, "benchmark completion needs --data-dir"),
        (["ehf", "--data-dir", "/nonexistent/EHF"], 1, "EHF folder not found: /nonexistent/EHF"),
        (["speed", "--setting", "gen"], 1, "unknown --setting 'gen' for benchmark speed"),
        (["generation", "--prior", "l2"], 1, "compares --prior dposer, gmm, vposer"),
        (["generation", "--part", "elbow"], 2, "elbow"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, args, code, pattern):
    got, _, err = run(capsys, "benchmark", *args, "--out", str(tmp_path / "x.json"), "--device", "cpu")
    assert got == code, err
    assert pattern in err and "Traceback" not in err
    if code == 1:
        assert len(_errors(err)) == 1


def test_unknown_name_hint_lists_the_evaluations(tmp_path, capsys):
    code, out, _ = run(capsys, "benchmark", "nope", "--json")
    assert code == 2  # a usage error: Typer's exit code, the error object still on stdout
    data = json.loads(out)
    assert data["status"] == "error" and "generation" in data["hint"] and "freihand" in data["hint"]


def test_wrong_ehf_layout_names_the_missing_file(tmp_path, capsys):
    from tests._fixtures.body_models import write_body_models_tree

    models = write_body_models_tree(tmp_path / "models")
    root = write_ehf(tmp_path / "EHF", models, np.zeros((2, 63), np.float32))
    (root / "vitpose_keypoints" / "predictions" / "02_img.json").unlink()
    code, _, err = run(
        capsys,
        "benchmark",
        "ehf",
        "--data-dir",
        str(root),
        "--body-model",
        str(models),
        "--out",
        str(tmp_path / "x.json"),
        "--device",
        "cpu",
    )
    assert code == 1
    (line,) = _errors(err)
    assert str(root / "vitpose_keypoints" / "predictions" / "02_img.json") in line.replace("\n", "")


def test_speed_quick_reports_every_task(tmp_path, capsys):
    from tests._fixtures.body_models import write_body_models_tree

    models = write_body_models_tree(tmp_path / "models")
    code, out, err = run(
        capsys,
        "benchmark",
        "speed",
        "--quick",
        "--body-model",
        str(models),
        "--json",
        "--out",
        str(tmp_path / "s.json"),
        "--device",
        "cpu",
    )
    assert code == 0, err
    data = json.loads(out)
    assert set(data["metrics"]) == {"generation", "completion", "denoise", "hand-ik", "face-ik", "fit-image"}
    assert data["metrics"]["generation"]["samples_per_second"] > 0
    assert data["metrics"]["completion"]["nfe"] == 4 and data["metrics"]["hand-ik"]["fits_per_second"] > 0
    fit = data["metrics"]["fit-image"]  # the fit task alone, and through fit-image on files (issue #16)
    assert fit["fits_per_second"] > 0 and fit["fits_per_second_with_io"] > 0
    assert all(m["peak_memory_mb"] > 0 and m["seconds"] > 0 for m in data["metrics"].values())
    assert data["settings"]["memory"].startswith("process peak RSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_metrics(tmp_path, shared_data):
    poses = np.load(shared_data / "poses/body_reference_train.npz")["poses"][:7]
    (tmp_path / "amass").mkdir()
    np.savez(tmp_path / "amass" / "a.npz", pose_body=poses)
    ckpt = write_tiny_prior(tmp_path / "b.pt", Part.body)
    common = [
        "-m",
        "dposer_cli",
        "benchmark",
        "completion",
        "--data-dir",
        str(tmp_path / "amass"),
        "--checkpoint",
        str(ckpt),
        "--steps",
        "2",
        "-H",
        "2",
        "--batch-size",
        "2",
        "--setting",
        "legs",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPOSER_DIST_BACKEND": "gloo", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    dist = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            *common,
            "--out",
            str(tmp_path / "two.json"),
            "--json",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert dist.returncode == 0, dist.stderr[-2000:]
    one = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "one.json")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two, single = (
        json.loads((tmp_path / "two.json").read_text()),
        json.loads((tmp_path / "one.json").read_text()),
    )
    assert two["world_size"] == 2 and single["world_size"] == 1
    assert two["metrics"] == single["metrics"] and two["items"] == single["items"] == 7
    assert two["nfe"] == single["nfe"] == 4 * 2  # 4 batches × 2 steps, summed over both ranks
    assert len([line for line in dist.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 only
