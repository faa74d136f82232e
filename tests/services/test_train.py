"""Training: loss goes down on real data, resume equals an uninterrupted run, DDP shards, bad input."""

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from dposer_cli.core.config import TrainConfig
from dposer_cli.core.errors import AssetMismatchError, InputError, Interrupted
from dposer_cli.core.parts import Part
from dposer_cli.engine.checkpoint import read_checkpoint, save_checkpoint
from dposer_cli.engine.loss import dsm_loss
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.services import train as svc
from dposer_cli.tasks import train as task


def _req(tmp_path, data, steps, **kw):
    tc = TrainConfig(
        steps=steps,
        batch_size=64,
        lr=1e-3,
        warmup=5,
        ckpt_every=kw.pop("ckpt_every", 10),
        val_every=kw.pop("val_every", 10),
        seed=0,
    )
    return svc.TrainRequest(
        part=kw.pop("part", Part.hand),
        data=[data],
        out=kw.pop("out", tmp_path / "run"),
        train=tc,
        hidden_dim=128,
        embed_dim=16,
        device="cpu",
        eval_samples=0,
        **kw,
    )


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


@pytest.mark.slow
def test_interrupt_flushes_checkpoint_and_resume_continues(tmp_path, hand_data):
    script = (
        "import sys, signal, os\n"
        "from dposer_cli.cli.app import main\n"
        f"main(['train','--part','hand','--data',{str(hand_data)!r},'--out',{str(tmp_path / 'k')!r},"
        "'--steps','10000000','--batch-size','32','--hidden-dim','128','--embed-dim','16','--ckpt-every','50',"
        "'--val-every','1000000','--eval-samples','0','--device','cpu','--quiet'])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
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
    shards = [task.shard_indices(103, 4, r, 2, 0) for r in range(2)]
    a, b = set(shards[0].tolist()), set(shards[1].tolist())
    assert not a & b and len(a) == len(b) == 51


@pytest.mark.slow
def test_ddp_two_gloo_processes_write_a_valid_checkpoint(tmp_path, hand_data):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29731",
        "-m",
        "dposer_cli",
        "train",
        "--part",
        "hand",
        "--data",
        str(hand_data),
        "--out",
        str(out),
        "--steps",
        "6",
        "--batch-size",
        "32",
        "--hidden-dim",
        "128",
        "--embed-dim",
        "16",
        "--ckpt-every",
        "3",
        "--val-every",
        "3",
        "--eval-samples",
        "0",
        "--device",
        "cpu",
        "--json",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPOSER_DIST_BACKEND": "gloo"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rank0 = [s for s in summaries if s.get("world_size") == 2]
    assert rank0 and rank0[0]["effective_batch"] == 32
    ck = read_checkpoint(out / "last.pt", Part.hand)
    assert ck.extra["step"] == 6


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("empty_dir", "no .npz files"),
        ("no_keys", "no usable|expected"),
        ("wrong_dim", "expected|45"),
        ("nan", "NaN|non-finite|nan"),
    ],
)
def test_bad_training_data_is_a_one_line_error(tmp_path, content, pattern):
    if content == "empty_dir":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = tmp_path / "d.npz"
        arrays = {
            "no_keys": {"foo": np.zeros((5, 3))},
            "wrong_dim": {"hand_pose": np.zeros((5, 44))},
            "nan": {"hand_pose": np.full((5, 45), np.nan)},
        }[content]
        np.savez(data, **arrays)
    with pytest.raises(InputError, match=pattern) as exc:
        svc.run(_req(tmp_path, data, 5))
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------- interrupts (issue #14)
def _assert_same_run(a, b):
    """Two run folders hold bit-identical weights, EMA, optimiser state, exported prior and log."""
    ca, cb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    assert ca.extra["step"] == cb.extra["step"]
    for sa, sb in (
        (ca.model, cb.model),
        (ca.ema, cb.ema),
        (read_checkpoint(a / "prior.pt").model, read_checkpoint(b / "prior.pt").model),
    ):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = ca.extra["optimizer"]["state"], cb.extra["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])

    def records(folder):
        return [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "log.jsonl").read_text().splitlines()
        ]

    assert records(a) == records(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(data file, folder of an uninterrupted 30-step run) shared by the interrupt tests."""
    from tests.conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    root = tmp_path_factory.mktemp("uninterrupted")
    data = root / "hands.npz"
    np.savez(data, hand_pose=np.load(SHARED / "poses/hand_reference_train.npz")["poses"][:600])
    svc.run(_req(root, data, 30, out=root / "ref"))
    return data, root / "ref"


def _kill_at(step, *signums):
    """A progress callback that sends this process `signums` after step `step`."""

    def cb(done, total):
        if done == step:
            for s in signums:
                os.kill(os.getpid(), s)

    return cb


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_at_a_step_boundary_and_resume_is_bit_identical(tmp_path, uninterrupted, signum, code):
    data, ref = uninterrupted
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted, match="interrupted at step 13; checkpoint saved") as exc:
        svc.run(_req(tmp_path, data, 30), progress=_kill_at(13, signum))
    assert exc.value.exit_code == code and "\n" not in str(exc.value) and "resume" in exc.value.hint
    assert read_checkpoint(tmp_path / "run/last.pt").extra["step"] == 13
    assert signal.getsignal(signum) is before  # handlers restored
    svc.run(_req(tmp_path, data, 30))
    _assert_same_run(ref, tmp_path / "run")


def test_interrupt_during_validation_keeps_the_training_weights(tmp_path, uninterrupted, monkeypatch):
    data, ref = uninterrupted
    calls = []

    def dsm_then_interrupt(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # inside the first validation, while the EMA weights are in use
            os.kill(os.getpid(), signal.SIGINT)
        return dsm_loss(*args, **kw)

    monkeypatch.setattr(task, "dsm_loss", dsm_then_interrupt)
    with pytest.raises(Interrupted, match="interrupted at step 10"):
        svc.run(_req(tmp_path, data, 30))
    ck = read_checkpoint(tmp_path / "run/last.pt")
    assert ck.extra["step"] == 10 and len(calls) == 4  # validation finished before the stop
    assert any(not torch.equal(ck.model[k], ck.ema[k]) for k in ck.ema)  # training weights, not the EMA copy
    monkeypatch.setattr(task, "dsm_loss", dsm_loss)
    svc.run(_req(tmp_path, data, 30))
    _assert_same_run(ref, tmp_path / "run")


def test_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, uninterrupted):
    data, _ = uninterrupted
    with pytest.raises(Interrupted, match=r"interrupted during step 14; .*last.pt holds step 10") as exc:
        svc.run(_req(tmp_path, data, 30), progress=_kill_at(13, signal.SIGINT, signal.SIGTERM))
    assert exc.value.exit_code == 143
    assert read_checkpoint(tmp_path / "run/last.pt").extra["step"] == 10


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_before_the_loop_is_an_interrupt(tmp_path, uninterrupted, monkeypatch, signum, code):
    data, _ = uninterrupted
    read = svc._read_data

    def read_then_signal(req):
        os.kill(os.getpid(), signum)
        return read(req)

    monkeypatch.setattr(svc, "_read_data", read_then_signal)
    with pytest.raises(Interrupted, match="before training started; nothing was trained") as exc:
        svc.run(_req(tmp_path, data, 30))
    assert exc.value.exit_code == code and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- resume refusals
@pytest.mark.parametrize(
    "change,pattern,overridable",
    [
        (dict(lr=2e-3), r"--lr is 0.001 there but 0.002 now", True),
        (dict(steps=40), r"--steps is 30 there but 40 now", True),
        (dict(data_rows=500), r"training data differ .*\(600 poses then, 500 now\)", True),
        (dict(data_shift=1e-3), r"training data differ .*\(600 poses, different values\)", True),
        (dict(hidden_dim=256), r"--hidden-dim is 128 there but 256 now", False),
    ],
)
def test_resume_with_other_data_or_settings_is_refused(tmp_path, hand_data, change, pattern, overridable):
    svc.run(_req(tmp_path, hand_data, 30, stop_after=5))
    poses = np.load(hand_data)["hand_pose"]
    data = hand_data
    if "data_rows" in change or "data_shift" in change:
        data = tmp_path / "other.npz"
        np.savez(data, hand_pose=poses[: change.get("data_rows", 600)] + change.get("data_shift", 0.0))
    req = _req(tmp_path, data, change.get("steps", 30), stop_after=5)
    req = dataclasses.replace(
        req,
        hidden_dim=change.get("hidden_dim", 128),
        train=dataclasses.replace(req.train, lr=change.get("lr", 1e-3)),
    )
    with pytest.raises(InputError, match=pattern) as exc:
        svc.run(req)
    assert "\n" not in str(exc.value) and str(tmp_path / "run/last.pt") in str(exc.value)
    assert read_checkpoint(tmp_path / "run/last.pt").extra["step"] == 5  # untouched
    if overridable:
        assert "--force-resume" in exc.value.hint
        res = svc.run(dataclasses.replace(req, force_resume=True))
        assert res.status == "partial" and read_checkpoint(tmp_path / "run/last.pt").extra["step"] == 10
    else:
        with pytest.raises(InputError, match=pattern):
            svc.run(dataclasses.replace(req, force_resume=True))


def _shadow(state, fn):
    state["ema_state"].update({k: fn(v) for k, v in state["ema_state"].items() if k.startswith("shadow.")})


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (lambda c: c.pop("optimizer"), r"its optimizer state: 'optimizer' is missing"),
        (lambda c: c.update(optimizer="x"), r"its optimizer state: "),
        (
            lambda c: [st.update(exp_avg=torch.zeros(2)) for st in c["optimizer"]["state"].values()],
            r"its optimizer state: state 'exp_avg' is \(2,\); expected a tensor of shape \(128, 45\)",
        ),
        (
            lambda c: _shadow(c, lambda v: v[:1]),
            r"its EMA state: shadow\.\S+ is \(1, 45\); expected .*\(128, 45\)",
        ),
        (lambda c: c["ema_state"].pop("rate"), r"its EMA state: 'rate' is missing"),
        (
            lambda c: c.update(t_bins=torch.zeros(1)),
            r"its loss counters: t_bins is \(1,\); expected .*\(50,\)",
        ),
        (lambda c: c.update(loss_count="x"), r"its loss counters: invalid literal"),
        (lambda c: c.update(rng="x"), r"its random generator states: "),
        (lambda c: c.update(step=31), r"its step: step 31 is beyond the 30 steps of its run"),
        (
            lambda c: c["rng"]["0"].update(gen=torch.zeros(3, dtype=torch.uint8)),
            r"its random generator states: ",
        ),
    ],
    ids=[
        "no-optimizer",
        "optimizer-str",
        "moment-shape",
        "ema-broadcastable",
        "ema-rate",
        "t-bins",
        "count",
        "rng",
        "step",
        "generator",
    ],
)
def test_a_damaged_resume_state_is_a_one_line_error(tmp_path, hand_data, damage, pattern):
    """A last.pt whose resume fields are missing, of another type or another shape (a broadcastable one too,
    which copy_ would have taken silently) is refused naming the file and the field; nothing is written."""
    svc.run(_req(tmp_path, hand_data, 30, stop_after=5))
    last = tmp_path / "run/last.pt"
    state = torch.load(last, weights_only=True)
    damage(state)
    torch.save(state, last)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(
        AssetMismatchError, match=re.escape(str(last)) + ": cannot resume from " + pattern
    ) as exc:
        svc.run(_req(tmp_path, hand_data, 30, stop_after=5))
    assert "\n" not in str(exc.value) and exc.value.exit_code == 4
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_changed_cadence_resumes(tmp_path, hand_data):
    svc.run(_req(tmp_path, hand_data, 30, stop_after=5))
    res = svc.run(_req(tmp_path, hand_data, 30, ckpt_every=7, val_every=3, stop_after=5))
    assert res.status == "partial"


def test_orphan_temporary_files_are_removed_and_log_trimmed(tmp_path, hand_data):
    svc.run(_req(tmp_path, hand_data, 30, stop_after=20))
    out = tmp_path / "run"
    orphans = [
        out / name
        for name in (".last.pt.k2j3h4.tmp", ".prior.pt.x9.tmp", ".best.pt.a.tmp", ".dposer-write-test-7")
    ]
    for p in orphans:
        p.write_bytes(b"partial")
    (out / ".notes.tmp").write_text("not ours")
    ck = read_checkpoint(out / "last.pt")
    save_checkpoint(
        out / "last.pt",
        part=Part.hand,
        config=ck.config,
        model=ck.model,
        ema=ck.ema,
        normalizer=ck.normalizer,
        **{**ck.extra, "step": 10},
    )  # killed after step 10's checkpoint
    with open(out / "log.jsonl", "a") as fh:
        fh.write('{"step": 30, "val_lo')  # a line cut by the kill
    svc.run(_req(tmp_path, hand_data, 30, stop_after=5))
    assert not any(p.exists() for p in orphans) and (out / ".notes.tmp").exists()
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [10]


def test_two_runs_in_one_folder_are_refused(tmp_path, hand_data):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".train.lock", "w") as fh:
        fh.write("4242")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(InputError, match=r"in use by another dposer train \(pid 4242\)"):
            svc.run(_req(tmp_path, hand_data, 5))
        assert (out / ".train.lock").read_text() == "4242"  # the other run's lock is left alone


def test_a_lock_file_deleted_as_it_was_locked_is_not_trusted(tmp_path, hand_data, monkeypatch):
    """The lock file goes at the end of a run: a run that locked it just as it was deleted, while a third run
    made and locked a new one, must look again and be refused (else two runs would share the folder)."""
    import fcntl

    real, held = svc.exclusive, []

    @contextlib.contextmanager
    def racing(out):
        with real(out):
            if not held:
                (out / ".train.lock").unlink()
                fh = open(out / ".train.lock", "w")  # noqa: SIM115 (held past the with block)
                fh.write("4242")
                fh.flush()
                fcntl.flock(fh, fcntl.LOCK_EX)
                held.append(fh)
            yield

    monkeypatch.setattr(svc, "exclusive", racing)
    try:
        with pytest.raises(InputError, match=r"in use by another dposer train \(pid 4242\)"):
            svc.run(_req(tmp_path, hand_data, 5))
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".train.lock"]
    finally:
        held[0].close()


def test_the_lock_file_is_deleted_when_a_run_ends(tmp_path, hand_data):
    out = tmp_path / "run"
    svc.run(_req(tmp_path, hand_data, 30, stop_after=5))
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]
    with pytest.raises(InputError, match="cannot resume"):  # refused: the earlier run's files stay
        svc.run(dataclasses.replace(_req(tmp_path, hand_data, 30), hidden_dim=256))
    svc.run(_req(tmp_path, hand_data, 30))
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.jsonl", "prior.pt"]


# ------------------------------------------------------------------------- failed runs leave nothing behind
def _nan_validation_after(monkeypatch, calls):
    """Validation losses turn infinite after `calls` dsm_loss calls (4 per validation)."""
    done = []

    def dsm(*args, **kw):
        done.append(1)
        value = dsm_loss(*args, **kw)
        return value if len(done) <= calls else value * float("inf")

    monkeypatch.setattr(task, "dsm_loss", dsm)


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("missing", "not found"),
        ("two_poses", r"hold 2 poses; training needs at least 10"),
        ("absurd", r"as large as 1e\+30 \(first in row 3"),
        ("narrow", r"--hidden-dim must be at least 32"),
        ("diverges", r"^training diverged: the validation loss is not finite at step 10$"),
        ("diverges_after_best", r"^training diverged: the validation loss is not finite at step 10$"),
    ],
)
def test_a_failed_run_leaves_no_folder_behind(tmp_path, hand_data, monkeypatch, case, pattern):
    poses = np.load(hand_data)["hand_pose"]
    data, kw, hidden = hand_data, {}, 128
    if case == "missing":
        data = tmp_path / "nope.npz"
    elif case in ("two_poses", "absurd"):
        data = tmp_path / "bad.npz"
        bad = poses[:2] if case == "two_poses" else poses.copy()
        bad[3:, 5] = 1e30 if case == "absurd" else bad[3:, 5]
        np.savez(data, hand_pose=bad)
    elif case == "narrow":
        hidden = 16
    else:  # best.pt and log.jsonl are written at step 5, then training diverges before any last.pt
        _nan_validation_after(monkeypatch, 0 if case == "diverges" else 4)
        kw = dict(val_every=10 if case == "diverges" else 5, ckpt_every=20)
    req = dataclasses.replace(_req(tmp_path, data, 30, out=tmp_path / "runs/a/run", **kw), hidden_dim=hidden)
    with pytest.raises(InputError, match=pattern) as exc:
        svc.run(req)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "runs").exists()


def test_a_failed_run_in_an_existing_folder_removes_only_what_it_wrote(tmp_path, hand_data, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _nan_validation_after(monkeypatch, 4)
    with pytest.raises(InputError, match="training diverged"):
        svc.run(_req(tmp_path, hand_data, 30, val_every=5, ckpt_every=20))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_run_that_diverges_after_a_checkpoint_keeps_it_and_resumes_bit_identically(
    tmp_path, uninterrupted, monkeypatch
):
    data, ref = uninterrupted
    svc.run(_req(tmp_path, data, 30, stop_after=10))
    _nan_validation_after(monkeypatch, 0)
    with pytest.raises(InputError, match="not finite at step 20") as exc:
        svc.run(_req(tmp_path, data, 30))
    assert "the last checkpoint holds step 10" in exc.value.hint
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    assert read_checkpoint(out / "last.pt").extra["step"] == 10
    monkeypatch.setattr(task, "dsm_loss", dsm_loss)
    svc.run(_req(tmp_path, data, 30))
    _assert_same_run(ref, out)


def test_absurd_values_are_refused_naming_the_file_before_training(tmp_path, hand_data, monkeypatch):
    def read(path, part, fps):
        poses = np.zeros((50, 45), np.float32)
        poses[7, 44] = -3e5
        return part, poses

    monkeypatch.setattr(svc, "read_training_file", read)
    with pytest.raises(InputError) as exc:
        svc.run(_req(tmp_path, hand_data, 5))
    assert str(exc.value) == (
        f"{hand_data}: hand_pose has values as large as 3e+05 (first in row 7, column 44); "
        "expected |value| ≤ 10000 (radians or coefficients)"
    )
    assert not (tmp_path / "run").exists()


def test_the_summary_names_only_files_that_exist(tmp_path, hand_data):
    res = svc.run(_req(tmp_path, hand_data, 30, stop_after=5))  # no validation yet: no log.jsonl, no best.pt
    assert res.status == "partial" and set(res.outputs) == {"last"}
    svc.run(_req(tmp_path, hand_data, 30))
    (tmp_path / "run/best.pt").unlink()
    res = svc.run(_req(tmp_path, hand_data, 30))  # already complete: exports again, writes no best.pt
    assert set(res.outputs) == {"last", "prior", "log"} and all(p.is_file() for p in res.outputs.values())


def test_twenty_poses_train_with_the_default_batch_and_one_validation_pose(tmp_path, hand_data):
    data = tmp_path / "twenty.npz"
    np.savez(data, hand_pose=np.load(hand_data)["hand_pose"][:20])
    req = _req(tmp_path, data, 3)
    res = svc.run(dataclasses.replace(req, train=dataclasses.replace(req.train, batch_size=1280)))
    assert res.status == "ok" and np.isfinite(res.metrics["val_loss"])


# ------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize(
    "change,pattern",
    [
        (dict(steps=0), "--steps must be at least 1"),
        (dict(batch_size=0), "--batch-size must be at least 1"),
        (dict(lr=0.0), "--lr must be a positive learning rate"),
        (dict(lr=float("nan")), "--lr must be a finite learning rate"),
        (dict(warmup=-1), "--warmup must be at least 0"),
        (dict(ema_rate=1.0), "--ema-rate must be less than 1"),
        (dict(ckpt_every=0), "--ckpt-every must be at least 1"),
        (dict(val_every=0), "--val-every must be at least 1"),
        (dict(seed=-1), "--seed must be an integer between 0"),
        (dict(t_weighting="cubic"), "--t-weighting must be uniform or adaptive"),
        (dict(hidden_dim=50), "--hidden-dim must be a multiple of 32"),
        (dict(hidden_dim=0), "--hidden-dim must be at least 32"),
        (dict(embed_dim=2), "--embed-dim must be at least 4"),
        (dict(dropout=1.0), "--dropout must be less than 1"),
        (dict(dropout=-0.1), "--dropout must be a non-negative probability"),
        (dict(fps=0.0), "--fps must be a positive frame rate"),
        (dict(eval_samples=-1), "--eval-samples must be at least 0"),
        (dict(stop_after=0), "--stop-after must be at least 1"),
    ],
)
def test_numbers_out_of_range_are_one_line_errors(tmp_path, hand_data, change, pattern):
    req = _req(tmp_path, hand_data, 5)
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    req = dataclasses.replace(
        req,
        train=dataclasses.replace(req.train, **{k: v for k, v in change.items() if k in train_keys}),
        **{k: v for k, v in change.items() if k not in train_keys},
    )
    with pytest.raises(InputError, match=pattern) as exc:
        svc.run(req)
    assert (
        "\n" not in str(exc.value) and not (tmp_path / "run").exists()
    )  # refused before anything is written


# ------------------------------------------------------------------------------ honest reports (#17)
def test_run_shorter_than_the_warmup_scales_it_and_is_unhealthy(tmp_path, hand_data):
    req = _req(tmp_path, hand_data, 8)
    req = dataclasses.replace(req, eval_samples=40, train=dataclasses.replace(req.train, warmup=500))
    res = svc.run(req)
    assert res.status == "ok" and res.info["warmup"] == 1 and res.info["healthy"] is False
    assert any("warm-up (500 steps) is not shorter than the run (8 steps)" in r for r in res.info["reasons"])
    assert any("held-out FID" in r for r in res.info["reasons"])  # 8 steps: samples far from the data
    assert set(res.info["health_checks"]) == {"warmup", "val_loss", "samples", "fid"}
    assert any(line.startswith("warning: the prior looks unhealthy") for line in res.lines)
    prior = read_checkpoint(res.outputs["prior"])
    assert prior.extra["healthy"] is False and prior.extra["health_reasons"] == res.info["reasons"]


def test_warmup_is_scaled_only_when_not_shorter_than_the_run():
    assert task.effective_warmup(TrainConfig(steps=100, warmup=99)) == 99
    assert task.effective_warmup(TrainConfig(steps=100, warmup=100)) == 2  # 2.5 % of the run
    assert task.effective_warmup(TrainConfig(steps=8, warmup=500)) == 1  # at least one step
    assert task.effective_warmup(TrainConfig(steps=4000, warmup=5000)) == 100
    assert task.effective_warmup(TrainConfig(steps=3, warmup=0)) == 0


def test_sample_checks_pass_for_the_demo_prior(shared_data):
    from dposer_cli.core.paths import demo_checkpoint

    poses = torch.from_numpy(np.load(shared_data / "poses/hand_reference_train.npz")["poses"]).float()
    prior = DPoserPrior.from_checkpoint(demo_checkpoint(Part.hand), Part.hand)
    metrics, reasons = task.check_samples(prior, Part.hand, poses[-300:], poses[:3000], 100, seed=0)
    assert reasons == [] and metrics["fid_heldout"] < 5 and metrics["absurd_angle_fraction"] == 0


def test_progress_lines_name_step_rate_eta_and_loss(tmp_path, hand_data):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(task.__name__)  # the heartbeat lines come from the task
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        svc.run(dataclasses.replace(_req(tmp_path, hand_data, 12), heartbeat_s=1e-6))
        svc.run(dataclasses.replace(_req(tmp_path, hand_data, 12, out=tmp_path / "off"), heartbeat_s=None))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    beats = [r.getMessage() for r in records if "steps/s" in r.getMessage()]
    assert len(beats) == 12, beats
    assert re.fullmatch(r"step 12/12 \(100%\)  [\d.]+ steps/s  ETA 0s  loss [\d.]+", beats[-1]), beats[-1]


# ------------------------------------------------------------------------------------- robust statistics
def test_robust_statistics_are_median_and_iqr_and_the_run_stores_them(tmp_path, hand_data):
    from dposer_cli.engine.normalize import mirror_mask, statistics

    poses = torch.as_tensor(np.load(hand_data)["hand_pose"]).float()
    st = statistics(poses, Part.hand, "robust")
    x = (poses * mirror_mask(Part.hand)).numpy().astype(np.float64)
    q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=0)
    iqr, std = (q75 - q25) / 1.349, x.std(0, ddof=1)
    expect = np.where(iqr > 0.25 * std, iqr, std)
    np.testing.assert_allclose(st["mean"].numpy(), q50, atol=1e-5)
    np.testing.assert_allclose(st["std"].numpy(), expect, rtol=1e-4, atol=1e-6)
    spiky = torch.zeros(100, 45)
    spiky[:3, 0] = 5.0  # a dimension that is zero in 97 % of the poses: its IQR is 0, its std is kept
    assert float(statistics(spiky, Part.hand, "robust")["std"][0]) == pytest.approx(float(spiky[:, 0].std()))

    req = _req(tmp_path, hand_data, 10)
    res = svc.run(dataclasses.replace(req, train=dataclasses.replace(req.train, normalizer_stats="robust")))
    ck = read_checkpoint(res.outputs["prior"], Part.hand)
    train_idx = task.split(600, req.train)[1]
    ref = statistics(poses[train_idx], Part.hand, "robust")
    assert torch.allclose(ck.normalizer["mean"].float(), ref["mean"], atol=1e-6)
    assert torch.allclose(ck.normalizer["std"].float(), ref["std"], atol=1e-6)
    with pytest.raises(InputError, match=r"--robust-stats is 'robust' there but 'mean-std' now"):
        svc.run(req)  # resuming that run with the other statistics
