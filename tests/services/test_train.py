"""Training: loss goes down on real data, resume equals an uninterrupted run, DDP shards, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dposer_cli.core.config import TrainConfig
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.engine.checkpoint import read_checkpoint
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.services import train as svc


def _req(tmp_path, data, steps, **kw):
    tc = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup=5, ckpt_every=kw.pop("ckpt_every", 10),
                     val_every=kw.pop("val_every", 10), seed=0)
    return svc.TrainRequest(part=kw.pop("part", Part.hand), data=[data], out=kw.pop("out", tmp_path / "run"),
                            train=tc, hidden_dim=32, embed_dim=16, device="cpu", eval_samples=0, **kw)


@pytest.fixture
def hand_data(tmp_path, shared_data):
    poses = np.load(shared_data / "poses/hand_reference_train.npz")["poses"][:600]
    path = tmp_path / "hands.npz"
    np.savez(path, hand_pose=poses)
    return path


def test_short_run_lowers_validation_loss_and_loads_in_generate(tmp_path, hand_data):
    res = svc.run(_req(tmp_path, hand_data, 60, val_every=20))
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [20, 40, 60]
    assert log[-1]["val_loss"] < log[0]["val_loss"]
    prior = DPoserPrior.from_checkpoint(res.outputs["prior"], "hand")
    x = prior.sample(4, steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 45) and torch.isfinite(x).all()
    ck = read_checkpoint(res.outputs["last"], Part.hand)
    assert ck.extra["step"] == 60 and "optimizer" in ck.extra


def test_resume_matches_uninterrupted_run(tmp_path, hand_data):
    full = svc.run(_req(tmp_path, hand_data, 30, out=tmp_path / "a"))
    part = svc.run(_req(tmp_path, hand_data, 30, out=tmp_path / "b", stop_after=17))  # interrupted at step 17
    assert part.status == "partial" and read_checkpoint(tmp_path / "b/last.pt").extra["step"] == 17
    resumed = svc.run(_req(tmp_path, hand_data, 30, out=tmp_path / "b"))
    a = read_checkpoint(full.outputs["last"]).model
    b = read_checkpoint(resumed.outputs["last"]).model
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_interrupt_flushes_checkpoint_and_resume_continues(tmp_path, hand_data):
    script = (
        "import sys, signal, os\n"
        "from dposer_cli.cli.app import main\n"
        f"main(['train','--part','hand','--data',{str(hand_data)!r},'--out',{str(tmp_path / 'k')!r},"
        "'--steps','10000000','--batch-size','32','--hidden-dim','32','--embed-dim','16','--ckpt-every','50',"
        "'--val-every','1000000','--eval-samples','0','--device','cpu','--quiet'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "k/last.pt").is_file():  # in the training loop
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    step = read_checkpoint(tmp_path / "k/last.pt").extra["step"]
    assert step >= 50 and f"interrupted at step {step}" in err


def test_shards_are_disjoint_and_cover_the_epoch():
    shards = [svc.shard_indices(103, 4, r, 2, 0) for r in range(2)]
    a, b = set(shards[0].tolist()), set(shards[1].tolist())
    assert not a & b and len(a) == len(b) == 51


def test_ddp_two_gloo_processes_write_a_valid_checkpoint(tmp_path, hand_data):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29731",
           "-m", "dposer_cli", "train", "--part", "hand", "--data", str(hand_data), "--out", str(out), "--steps", "6",
           "--batch-size", "32", "--hidden-dim", "32", "--embed-dim", "16", "--ckpt-every", "3", "--val-every", "3",
           "--eval-samples", "0", "--device", "cpu", "--json", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPOSER_DIST_BACKEND": "gloo"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rank0 = [s for s in summaries if s.get("world_size") == 2]
    assert rank0 and rank0[0]["effective_batch"] == 32
    ck = read_checkpoint(out / "last.pt", Part.hand)
    assert ck.extra["step"] == 6


@pytest.mark.parametrize("content,pattern", [
    ("empty_dir", "no .npz files"),
    ("no_keys", "no usable|expected"),
    ("wrong_dim", "expected|45"),
    ("nan", "NaN|non-finite|nan"),
])
def test_bad_training_data_is_a_one_line_error(tmp_path, content, pattern):
    if content == "empty_dir":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = tmp_path / "d.npz"
        arrays = {"no_keys": {"foo": np.zeros((5, 3))}, "wrong_dim": {"hand_pose": np.zeros((5, 44))},
                  "nan": {"hand_pose": np.full((5, 45), np.nan)}}[content]
        np.savez(data, **arrays)
    with pytest.raises(InputError, match=pattern) as exc:
        svc.run(_req(tmp_path, data, 5))
    assert "\n" not in str(exc.value)
