"""`tasks.train` on tensors: a tiny hand prior's validation loss falls, the save callback runs at the checkpoint
cadence, a resume from the saved state equals an uninterrupted run bit for bit, a stop flag ends the loop at a
step boundary, whole-body mixed data and the whole-body net train. No files are written (the tests run in a
read-only working directory)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from dposer_cli.core.config import TrainConfig
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, WHOLEBODY_SPLIT, Part
from dposer_cli.core.paths import demo_checkpoint
from dposer_cli.engine.checkpoint import Checkpoint, read_checkpoint
from dposer_cli.engine.normalize import mirror_mask
from dposer_cli.tasks import train as task


@pytest.fixture
def read_only_cwd(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.chdir(ro)
    yield ro
    assert list(ro.iterdir()) == []
    ro.chmod(0o755)


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    from tests.conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    return torch.from_numpy(np.load(SHARED / "poses/hand_reference_train.npz")["poses"][:600]).float()


def _config(steps, **kw):
    return TrainConfig(
        **{
            "steps": steps,
            "batch_size": 64,
            "lr": 1e-3,
            "warmup": 5,
            "seed": 0,
            "ckpt_every": 10,
            "val_every": 10,
            **kw,
        }
    )


def _setup(part, x, tc, priors=None, **net):
    avail = torch.ones(len(x), 4)
    val_idx, train_idx = task.split(len(x), tc)
    normalizer = task.make_normalizer(part, x[train_idx], priors)
    cfg, model = task.build_model(
        part, part_priors=priors, seed=tc.seed, **{"hidden_dim": 128, "embed_dim": 16, **net}
    )
    return cfg, model, task.TrainData(x, avail, train_idx, val_idx), normalizer


class Recorder:
    """The callbacks a service passes: keeps (kind, step) of every save, the log entries and a copy of the
    last resumable state, as a checkpoint would hold it."""

    def __init__(self, cfg):
        self.cfg, self.saves, self.records, self.last = cfg, [], [], None

    def save(self, state, kind):
        self.saves.append((kind, state.step))
        if kind == "last":
            self.last = Checkpoint(
                path=Path("<memory>"),
                format="dposer/1",
                part=Part(self.cfg.part),
                config=self.cfg,
                model=copy.deepcopy(state.net.state_dict()),
                ema=None,
                normalizer=None,
                extra=copy.deepcopy(dict(step=state.step, best_val=state.best, **state.resumable())),
            )

    def record(self, entry):
        self.records.append(entry)


def test_loss_falls_and_the_save_callback_follows_the_cadence(hands, read_only_cwd):
    tc = _config(60, ckpt_every=20, val_every=10)
    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    rec = Recorder(cfg)
    done = task.train(net, cfg, tc, data, normalizer, save=rec.save, record=rec.record)
    assert done.complete and done.state.step == 60 and done.effective_batch == 64 and done.reasons == []
    assert [r["step"] for r in rec.records] == [10, 20, 30, 40, 50, 60]
    assert set(rec.records[0]) == {"step", "train_loss", "val_loss", "lr"}
    assert rec.records[-1]["val_loss"] < rec.records[0]["val_loss"]
    assert rec.records[-1]["train_loss"] < rec.records[0]["train_loss"]
    assert [s for kind, s in rec.saves if kind == "last"] == [20, 40, 60]
    best = [s for kind, s in rec.saves if kind == "best"]
    assert best[0] == 10 and best == sorted(best)
    assert done.val_loss is not None and np.isfinite(done.val_loss)
    ema = done.state.ema.weights(done.state.net)
    assert ema.keys() == net.state_dict().keys()


def test_resume_from_the_saved_state_equals_an_uninterrupted_run(hands, read_only_cwd):
    tc = _config(30)
    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    full = task.train(net, cfg, tc, data, normalizer, save=Recorder(cfg).save)

    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    first = Recorder(cfg)
    part = task.train(net, cfg, tc, data, normalizer, save=first.save, stop_after=17)
    assert not part.complete and part.state.step == 17 and first.saves[-1] == ("last", 17)
    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    resumed = task.train(net, cfg, tc, data, normalizer, save=Recorder(cfg).save, resume=first.last)
    assert resumed.complete and resumed.state.step == 30
    a, b = full.state.net.state_dict(), resumed.state.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = full.state.ema.weights(full.state.net), resumed.state.ema.weights(resumed.state.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.val_loss == resumed.val_loss


def test_a_stop_flag_ends_the_loop_at_a_step_boundary_with_last_saved(hands, read_only_cwd):
    tc = _config(30)
    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    rec, stop = Recorder(cfg), task.StopFlag()

    def progress(done, total):
        if done == 13:
            stop.signum = 2  # what the SIGINT handler records

    done = task.train(net, cfg, tc, data, normalizer, save=rec.save, stop=stop, progress=progress)
    assert not done.complete and done.state.step == 13 and done.val_loss is None
    assert rec.saves[-1] == ("last", 13) and stop.saved == 13 and stop.phase == "finish"


def test_mixed_part_blocks_fill_their_whole_body_slots():
    hand = torch.arange(4 * 45, dtype=torch.float32).reshape(4, 45) / 100
    body = torch.ones(2, 63)
    x, avail = task.stack_parts(Part.wholebody, [(Part.body, body), (Part.hand, hand)])
    offs = np.cumsum((0,) + WHOLEBODY_SPLIT)
    assert x.shape == (6, PARTS[Part.wholebody].dim)
    assert torch.equal(x[:2, :63], body) and (x[:2, 63:] == 0).all()
    right, left = slice(offs[2], offs[3]), slice(offs[1], offs[2])
    assert torch.equal(x[[2, 4], right], hand[0::2]) and (x[[2, 4], left] == 0).all()  # right-hand slot
    assert torch.equal(
        x[[3, 5], left], hand[1::2] * mirror_mask(Part.wholebody)[63:108]
    )  # mirrored into the left
    assert avail.tolist() == [[1, 0, 0, 0]] * 2 + [[0, 0, 1, 0], [0, 1, 0, 0]] * 2
    with pytest.raises(InputError, match="NaN/inf values \\(first bad row 1\\)"):
        task.stack_parts(Part.hand, [(Part.hand, torch.cat([hand[:1], torch.full((1, 45), float("nan"))]))])


def test_too_few_poses_are_refused_with_the_minimum():
    with pytest.raises(InputError, match=r"hold 2 poses; training needs at least 10 \(one is held out"):
        task.split(2, TrainConfig())
    with pytest.raises(InputError, match="hold 0 poses"):
        task.split(len(task.stack_parts(Part.hand, [])[0]), TrainConfig())
    val_idx, train_idx = task.split(task.MIN_POSES, TrainConfig())
    assert len(val_idx) == 1 and len(train_idx) == task.MIN_POSES - 1


def test_absurd_values_are_refused_naming_the_key_row_and_column():
    x = torch.zeros(12, PARTS[Part.face].dim)
    x[4, 7] = -1e5  # face = jaw_pose (3) | expression (100): column 4 of the expression
    x[9, 0] = 2e30
    with pytest.raises(InputError) as exc:
        task.stack_parts(Part.face, [(Part.face, x)])
    assert str(exc.value) == (
        "training data: expression has values as large as 2e+30 (first in row 4, column 4); "
        "expected |value| ≤ 10000 (radians or coefficients)"
    )
    x[4, 7], x[9, 0] = -task.MAX_VALUE, task.MAX_VALUE  # the bound itself is accepted
    assert torch.equal(task.stack_parts(Part.face, [(Part.face, x)])[0], x)


@pytest.mark.parametrize(("hidden", "groups"), [(32, 8), (64, 16), (96, 24), (128, 32), (1024, 32)])
def test_narrow_networks_keep_four_channels_per_groupnorm_group(hidden, groups):
    """32 GroupNorm groups of one channel (--hidden-dim 32) output their biases alone, whatever the input: a
    network narrower than 128 gets hidden/4 groups; from 128 on the official 32."""
    _, net = task.build_model(Part.hand, hidden_dim=hidden, embed_dim=16)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == groups and m.num_channels == hidden for m in norms)
    with pytest.raises(InputError, match="--embed-dim must be at least 4"):
        task.build_model(Part.hand, hidden_dim=128, embed_dim=2)
    with pytest.raises(InputError, match="--hidden-dim must be at least 32"):
        task.build_model(Part.hand, hidden_dim=16, embed_dim=16)


def test_the_narrowest_network_trains_on_one_pose_batches_and_a_one_pose_validation_split(hands):
    x = hands[: task.MIN_POSES]  # < 20 poses: one held out
    tc = _config(6, batch_size=1, ckpt_every=3, val_every=3)
    cfg, net, data, normalizer = _setup(Part.hand, x, tc, hidden_dim=task.MIN_HIDDEN)
    assert len(data.val_idx) == 1
    rec = Recorder(cfg)
    done = task.train(net, cfg, tc, data, normalizer, save=rec.save, record=rec.record)
    assert done.complete and done.effective_batch == 1 and np.isfinite(done.val_loss)
    net.eval()  # GroupNorm with 4 channels per group: the output depends on the input (1 channel: it does not)
    label = torch.full((2,), 500.0)
    with torch.no_grad():
        out = net(torch.randn(2, 45, generator=torch.Generator().manual_seed(0)), label)
    assert not torch.allclose(out[0], out[1])


def test_a_non_finite_training_loss_stops_the_run_before_anything_is_saved(hands, read_only_cwd):
    tc = _config(30, ckpt_every=2, val_every=2)
    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    rec = Recorder(cfg)

    def poison(done, total):
        if done == 3:  # step 4 computes its loss with a NaN weight
            with torch.no_grad():
                net.post_dense.bias[0] = float("nan")

    with pytest.raises(InputError) as exc:
        task.train(net, cfg, tc, data, normalizer, save=rec.save, record=rec.record, progress=poison)
    assert str(exc.value) == "training diverged: the training loss or its gradient is not finite at step 4"
    assert "--lr (now 0.001)" in exc.value.hint and "the last checkpoint holds step 2" in exc.value.hint
    assert max(step for _, step in rec.saves) == 2 and [r["step"] for r in rec.records] == [2]


def test_a_non_finite_validation_loss_stops_the_run(hands, read_only_cwd, monkeypatch):
    tc = _config(30)
    cfg, net, data, normalizer = _setup(Part.hand, hands, tc)
    rec = Recorder(cfg)
    monkeypatch.setattr(task, "dsm_loss", lambda *a, **kw: torch.full((4,), float("inf")))
    with pytest.raises(
        InputError, match=r"^training diverged: the validation loss is not finite at step 10$"
    ):
        task.train(net, cfg, tc, data, normalizer, save=rec.save, record=rec.record)
    assert rec.saves == [] and rec.records == []


def test_whole_body_finetune_trains_and_validates_the_ema_weights(hands, read_only_cwd):
    priors = {n: read_checkpoint(demo_checkpoint(Part(n)), Part(n)) for n in ("body", "hand", "face")}
    x, avail = task.stack_parts(Part.wholebody, [(Part.hand, hands[:64])])
    tc = _config(4, batch_size=16, ckpt_every=2, val_every=2)
    val_idx, train_idx = task.split(len(x), tc)
    normalizer = task.make_normalizer(Part.wholebody, x[train_idx], priors)
    cfg, net = task.build_model(Part.wholebody, hidden_dim=128, embed_dim=16, part_priors=priors, seed=0)
    rec = Recorder(cfg)
    done = task.train(
        net,
        cfg,
        tc,
        task.TrainData(x, avail, train_idx, val_idx),
        normalizer,
        save=rec.save,
        record=rec.record,
    )
    assert done.complete and [r["step"] for r in rec.records] == [2, 4]
    assert all(np.isfinite(r["val_loss"]) for r in rec.records) and np.isfinite(done.val_loss)
