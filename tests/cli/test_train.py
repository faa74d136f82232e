"""`dposer train` end to end through `main()` and real processes: signals, exit codes, one-line errors, reports."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dposer_cli.engine.checkpoint import read_checkpoint
from dposer_cli.services import train as svc
from tests.cli._run import run

TINY = [
    "--part",
    "hand",
    "--batch-size",
    "16",
    "--hidden-dim",
    "32",
    "--embed-dim",
    "16",
    "--warmup",
    "5",
    "--eval-samples",
    "0",
    "--device",
    "cpu",
]


@pytest.fixture
def hand_data(tmp_path, shared_data):
    path = tmp_path / "hands.npz"
    np.savez(path, hand_pose=np.load(shared_data / "poses/hand_reference_train.npz")["poses"][:600])
    return path


def _same_weights(a, b):
    ca, cb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    assert ca.extra["step"] == cb.extra["step"]
    for sa, sb in (
        (ca.model, cb.model),
        (ca.ema, cb.ema),
        (read_checkpoint(a / "prior.pt").model, read_checkpoint(b / "prior.pt").model),
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = ca.extra["optimizer"]["state"], cb.extra["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_real_signal_then_resume_equals_an_uninterrupted_run(tmp_path, capsys, hand_data, signum, code):
    args = [
        "train",
        *TINY,
        "--data",
        str(hand_data),
        "--steps",
        "1500",
        "--ckpt-every",
        "25",
        "--val-every",
        "500",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dposer_cli", *args, "--out", str(tmp_path / "b")],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (tmp_path / "b/last.pt").is_file():
        time.sleep(0.05)  # until the loop has written its first checkpoint
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    step = read_checkpoint(tmp_path / "b/last.pt").extra["step"]
    assert 25 <= step < 1500 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: interrupted at step {step}; checkpoint saved to {tmp_path / 'b/last.pt'}"], err
    assert "hint: re-run the same command to resume" in err
    assert run(capsys, *args, "--out", str(tmp_path / "b"), "--quiet")[0] == 0  # resume
    assert run(capsys, *args, "--out", str(tmp_path / "a"), "--quiet")[0] == 0  # uninterrupted
    _same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_before_the_loop_exits_130_or_143(tmp_path, capsys, hand_data, monkeypatch, signum, code):
    read = svc._read_data

    def read_then_signal(req):
        os.kill(os.getpid(), signum)
        return read(req)

    monkeypatch.setattr(svc, "_read_data", read_then_signal)
    code_, out, err = run(
        capsys,
        "train",
        *TINY,
        "--data",
        str(hand_data),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "5",
        "--json",
    )
    assert code_ == code, err
    assert json.loads(out)["exit_code"] == code and "before training started" in err


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["--lr", "0"], 1, "--lr must be a positive learning rate"),
        (["--lr", "inf"], 1, "--lr must be a finite learning rate"),
        (["--dropout", "1"], 1, "--dropout must be less than 1"),
        (["--ema-rate", "1.5"], 1, "--ema-rate must be less than 1"),
        (["--hidden-dim", "50"], 1, "--hidden-dim must be a multiple of 32"),
        (["--embed-dim", "0"], 1, "--embed-dim must be at least 4"),
        (["--ckpt-every", "0"], 1, "--ckpt-every must be at least 1"),
        (["--val-every", "-5"], 1, "--val-every must be at least 1"),
        (["--steps", "0"], 1, "--steps must be at least 1"),
        (["--steps", "99999999999"], 1, "--steps must be at most"),
        (["--batch-size", "0"], 1, "--batch-size must be at least 1"),
        (["--warmup", "-1"], 1, "--warmup must be at least 0"),
        (["--eval-samples", "-1"], 1, "--eval-samples must be at least 0"),
        (["--stop-after", "0"], 1, "--stop-after must be at least 1"),
        (["--fps", "0"], 1, "--fps must be a positive frame rate"),
        (["--t-weighting", "cubic"], 2, "unknown --t-weighting 'cubic'"),
        (["--steps", "many"], 2, "Invalid value for '--steps'"),
    ],
)
def test_bad_numbers_are_one_error_line(tmp_path, capsys, hand_data, args, code, pattern):
    code_, _, err = run(capsys, "train", *TINY, "--data", str(hand_data), "--out", str(tmp_path / "o"), *args)
    assert code_ == code and pattern in err, err
    if code == 1:
        assert len([line for line in err.splitlines() if line.strip()]) == 1 and not (tmp_path / "o").exists()


def test_resume_refusal_and_force_resume(tmp_path, capsys, hand_data):
    base = [
        "train",
        *TINY,
        "--data",
        str(hand_data),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "20",
        "--stop-after",
        "5",
        "--quiet",
    ]
    assert run(capsys, *base)[0] == 0
    code, out, err = run(capsys, *base, "--lr", "0.001", "--json")
    assert code == 1 and "--lr is 0.0002 there but 0.001 now" in err, err
    assert err.count("error:") == 1 and "--force-resume" in json.loads(out)["hint"]
    code, out, err = run(capsys, *base, "--lr", "0.001", "--force-resume", "--json")
    assert code == 0 and json.loads(out)["steps"] == 10, err


def test_json_reports_health_and_progress_lines_without_a_terminal(tmp_path, capsys, hand_data, monkeypatch):
    monkeypatch.setattr(
        svc, "HEARTBEAT_S", 1e-6
    )  # stderr is captured, not a terminal: log lines instead of a bar
    code, out, err = run(
        capsys,
        "train",
        *TINY,
        "--data",
        str(hand_data),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "12",
        "--warmup",
        "500",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["healthy"] is False and summary["warmup"] == 1
    assert any("warm-up (500 steps)" in r for r in summary["reasons"])
    assert "step 12/12 (100%)" in err and "steps/s" in err and "ETA" in err and "loss" in err
    assert read_checkpoint(tmp_path / "o/prior.pt").extra["healthy"] is False
