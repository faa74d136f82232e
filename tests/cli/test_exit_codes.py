"""Exit codes tell the truth and a failed run leaves nothing (issue #14, classes 2 and 3).

* Real subprocesses, one per command: SIGINT / SIGTERM at a random point (fixed seed) after the run
  has started → exit 130 / 143, one `error:` line, and the output folder byte-for-byte as before
  (the complete previous state, no staging folder) — or, if the run won the race, exit 0 and the
  complete new state.
* Bad values, impossible sizes and hostile configs → exit 1 (4 for model files), never 70.
* A closed stdout with --json ends like a broken pipe (exit 1, one line, no traceback).
* The staging mechanism: re-runs replace the previous run's files (never others'), outputs are
  remapped to the final folder, orphans of killed runs are removed.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dposer_cli.cli import _staging
from dposer_cli.core.parts import Part
from dposer_cli.engine.checkpoint import save_checkpoint
from tests._fixtures.checkpoints import tiny_net
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run

SEED = 14  # the issue number: fixes the random signal times


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    np.savez(root / "in.npz", pose_body=rng.normal(0, 0.2, (4, 63)).astype(np.float32))
    np.savez(root / "seq.npz", pose_body=rng.normal(0, 0.1, (400, 63)), root_orient=np.zeros((400, 3)))
    np.savez(root / "hand_gt.npz", hand_pose=(0.3 * rng.standard_normal((4, 45))).astype(np.float32))
    np.savez(root / "reference.npz", poses=rng.normal(0, 0.2, (64, 63)).astype(np.float32))
    from PIL import Image

    Image.new("RGB", (64, 48), (128, 128, 128)).save(root / "photo.png")
    kp = np.concatenate([rng.uniform(10, 40, (25, 2)), np.ones((25, 1))], 1)
    (root / "photo.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": kp.reshape(-1).tolist()}]}))
    write_tiny_prior(root / "body.pt", Part.body)
    write_tiny_prior(root / "hand.pt", Part.hand)
    return root


# command → (arguments, files of a successful run, output is one file instead of a folder)
COMMANDS = {
    "generate": (
        lambda a: [
            "generate",
            "-n",
            "8",
            "--sampler",
            "ddim",
            "--steps",
            "1000000",
            "--checkpoint",
            a / "body.pt",
            "--no-render",
        ],
        ["poses.npz"],
        False,
    ),
    "complete": (
        lambda a: [
            "complete",
            a / "in.npz",
            "--mask",
            "legs",
            "--steps",
            "1000000",
            "--checkpoint",
            a / "body.pt",
        ],
        ["completed.npz"],
        False,
    ),
    "denoise-motion": (
        lambda a: [
            "denoise-motion",
            a / "seq.npz",
            "--checkpoint",
            a / "body.pt",
            "--no-render",
            "--temporal",
            "joints",
        ],
        ["denoised.npz"],
        False,
    ),
    "ik": (
        lambda a: [
            "ik",
            "--part",
            "hand",
            "--targets",
            a / "hand_gt.npz",
            "--checkpoint",
            a / "hand.pt",
            "--steps",
            "1000000",
        ],
        ["ik.npz"],
        False,
    ),
    "fit-image": (
        lambda a: [
            "fit-image",
            a / "photo.png",
            "--keypoints",
            a / "photo.json",
            "--steps",
            "1000000",
            "--prior",
            "none",
            "--no-overlay",
        ],
        ["photo.npz"],
        False,
    ),
    "benchmark": (
        lambda a: [
            "benchmark",
            "generation",
            "--part",
            "body",
            "--checkpoint",
            a / "body.pt",
            "-n",
            "100000",
            "--steps",
            "1000",
            "--reference",
            a / "reference.npz",
        ],
        ["report.json", "report.samples.npz"],
        True,
    ),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def previous_state(folder: Path, command: str, is_file: bool) -> None:
    """What an earlier successful run (and the user) left in the output folder."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("the user's own file")
    if is_file:
        (folder / "report.json").write_text('{"previous": true}')
        return
    (folder / "stale.npz").write_bytes(b"written by the previous run only")
    (folder / _staging.MANIFEST).write_text(
        json.dumps({"format": _staging.MANIFEST_FORMAT, "version": "0", "runs": {command: ["stale.npz"]}})
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_signal_at_a_random_point_leaves_the_previous_state(tmp_path, assets, command, sig):
    args, produced, is_file = COMMANDS[command]
    folder = tmp_path / "o"
    previous_state(folder, command, is_file)
    before = snapshot(folder)
    out = folder / "report.json" if is_file else folder
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DPOSER_MODELS_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    env.pop("DPOSER_BODY_MODELS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dposer_cli",
            *map(str, args(assets)),
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    staging = tmp_path / f".{folder.name}.partial-{proc.pid}"
    deadline = time.monotonic() + 120
    while proc.poll() is None and not staging.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the run has begun once its staging folder exists
    rng = random.Random(f"{SEED}-{command}-{int(sig)}")
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    expected = 130 if sig == signal.SIGINT else 143
    assert proc.returncode in (expected, 0), err
    assert "Traceback" not in err
    assert not list(tmp_path.glob(".*.partial-*")), "a staging folder was left behind"
    after = snapshot(folder)
    if proc.returncode == expected:
        assert len(errors(err)) == 1 and ("interrupted" in err or "terminated" in err), err
        assert after == before, "an interrupted run changed the output folder"
    else:  # the run finished before the signal: the complete new state
        assert after["notes.txt"] == before["notes.txt"] and "stale.npz" not in after
        assert set(produced) <= set(after)


# ---------------------------------------------------------------------------------- bad values, exit 1
@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["generate", "-n", "1000000000"], 1, "poses would need about"),
        (["generate", "-n", str(10**15)], 1, "-n must be at most"),
        (["generate", "--steps", str(10**12)], 1, "--steps must be at most 1000000"),
        (["generate", "--seed", str(2**64)], 1, "--seed must be an integer between 0 and 2^64 − 1"),
        (["generate", "--seed", "-1"], 1, "--seed must be an integer between 0 and 2^64 − 1"),
        (["complete", "IN", "--mask", "legs", "--hypo", str(10**13)], 1, "--hypo must be at most"),
        (["denoise-motion", "SEQ", "--noise-std", "nan"], 1, "--noise-std must be a finite number"),
        (["denoise-motion", "SEQ", "--fps", "inf"], 1, "--fps must be a finite frame rate"),
        (["fit-image", "PHOTO", "--focal", "nan"], 1, "--focal must be a finite number of pixels"),
        (["fit-image", "PHOTO", "--focal", "-3"], 1, "--focal must be a positive number of pixels"),
    ],
)
def test_bad_values_are_one_line_exit_1(tmp_path, capsys, assets, monkeypatch, args, code, pattern):
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))
    subst = {"IN": assets / "in.npz", "SEQ": assets / "seq.npz", "PHOTO": assets / "photo.png"}
    args = [subst.get(a, a) for a in args]
    got, _, err = run(
        capsys, *args, "--checkpoint", assets / ("body.pt"), "--out", tmp_path / "o", "--device", "cpu"
    )
    assert got == code, err
    assert pattern in err and len(errors(err)) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_output_paths_of_the_wrong_kind(tmp_path, capsys, assets):
    (tmp_path / "file").write_text("x")
    got, _, err = run(capsys, "generate", "--checkpoint", assets / "body.pt", "--out", tmp_path / "file")
    assert got == 1 and "is an existing file; give a folder" in err
    (tmp_path / "folder").mkdir()
    got, _, err = run(
        capsys,
        "benchmark",
        "generation",
        "--checkpoint",
        assets / "body.pt",
        "--reference",
        assets / "reference.npz",
        "--out",
        tmp_path / "folder",
        "--device",
        "cpu",
    )
    assert got == 1 and "is an existing folder; give a file path" in err


def _checkpoint_with_config(path: Path, **net) -> Path:
    from dposer_cli.core.config import NetConfig, PriorConfig

    cfg = PriorConfig(part="body", net=NetConfig(dim=63, hidden_dim=32, embed_dim=16, **net))
    stats = {"mean": torch.zeros(63), "std": torch.full((63,), 0.2)}
    return save_checkpoint(
        path,
        part=Part.body,
        config=cfg,
        model=tiny_net(Part.body, 32, 16).state_dict(),
        ema=None,
        normalizer=stats,
    )


@pytest.mark.parametrize(
    "kind,pattern",
    [
        ("huge width", "config.net.hidden_dim is 10000000000 but the saved weights have 32"),
        ("huge table", "config.net.num_scales is 1000000000000"),
        ("nan beta", "config.sde.beta_max is nan"),
        ("zero std", "std must be > 0 in every dim"),
        ("nan std", "std is not finite at dim 0"),
    ],
)
def test_absurd_checkpoint_configs_and_statistics_are_exit_4(tmp_path, capsys, kind, pattern):
    from dataclasses import replace

    from dposer_cli.core.config import PriorConfig

    path = _checkpoint_with_config(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    cfg = PriorConfig.from_dict(raw["config"])
    if kind == "huge width":
        cfg = replace(cfg, net=replace(cfg.net, hidden_dim=10**10))
    elif kind == "huge table":
        cfg = replace(cfg, net=replace(cfg.net, num_scales=10**12))
    elif kind == "nan beta":
        cfg = replace(cfg, sde=replace(cfg.sde, beta_max=float("nan")))
    elif kind == "zero std":
        raw["normalizer"]["std"][5] = 0.0
    else:
        raw["normalizer"]["std"][0] = float("nan")
    raw["config"] = cfg.to_dict()
    torch.save(raw, path)
    got, _, err = run(capsys, "generate", "--checkpoint", path, "--out", tmp_path / "o", "--device", "cpu")
    assert got == 4 and pattern in err and len(errors(err)) == 1, err
    assert not (tmp_path / "o").exists()


def test_python_api_checks_t_and_n(assets):
    from dposer_cli.core.errors import InputError
    from dposer_cli.engine.prior import DPoserPrior

    prior = DPoserPrior.from_checkpoint(assets / "body.pt", Part.body)
    pose = torch.zeros(2, 63)
    for t in (0.0, -1.0, 1.5, float("nan")):
        with pytest.raises(InputError, match=r"t must be"):
            prior.loss(pose, t)
    with pytest.raises(InputError, match=r"t must be a diffusion time in \(0, 1\]"):
        prior.loss(pose, torch.tensor([0.5, 0.0]))
    assert prior.loss(pose, 1.0).shape == (2,) and prior.loss(pose, torch.tensor([0.5, 0.2])).shape == (2,)
    for n in (0, -4):
        with pytest.raises(InputError, match="n must be at least 1"):
            prior.sample(n)
    with pytest.raises(InputError, match="sampling 1000000000000 body poses would need about"):
        prior.sample(10**12)


def test_normalizer_given_with_a_checkpoint_that_has_one_is_named_not_silently_ignored(
    tmp_path, caplog, assets
):
    import logging

    from dposer_cli.engine.prior import DPoserPrior

    torch.save({"mean_poses": torch.zeros(63), "std_poses": torch.ones(63)}, tmp_path / "n.pt")
    with caplog.at_level(logging.WARNING, logger="dposer_cli"):
        prior = DPoserPrior.from_checkpoint(assets / "body.pt", Part.body, normalizer=tmp_path / "n.pt")
    assert "--normalizer" in caplog.text and "is ignored" in caplog.text and "(used)" in caplog.text
    torch.testing.assert_close(
        prior.normalizer.std, torch.full((63,), 0.2)
    )  # the checkpoint's own statistics


# -------------------------------------------------------------------------------------------- stdout
def test_json_with_stdout_closed_exits_like_a_broken_pipe(tmp_path, assets):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dposer_cli",
            "generate",
            "-n",
            "2",
            "--steps",
            "2",
            "--checkpoint",
            str(assets / "body.pt"),
            "--no-render",
            "--out",
            str(tmp_path / "o"),
            "--json",
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=lambda: os.close(1),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and errors(proc.stderr) == [
        "error: stdout is closed; the --json summary was not written"
    ]
    assert (tmp_path / "o" / "poses.npz").is_file()  # the run itself succeeded


# ------------------------------------------------------------------------------------------- staging
def test_rerun_replaces_the_previous_runs_files_and_keeps_everything_else(tmp_path, capsys, assets):
    out = tmp_path / "o"
    base = [
        "generate",
        "-n",
        "2",
        "--steps",
        "2",
        "--checkpoint",
        assets / "body.pt",
        "--no-render",
        "--out",
        out,
        "--device",
        "cpu",
        "--json",
    ]
    code, stdout, err = run(capsys, *base, "--poses-json")
    assert code == 0, err
    assert json.loads(stdout)["outputs"] == {
        "poses": str(out / "poses.npz"),
        "poses_json": str(out / "poses.json"),
    }
    (out / "mine.txt").write_text("not dposer's")
    code, stdout, err = run(capsys, *base)  # no --poses-json this time: poses.json is stale
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [_staging.MANIFEST, "mine.txt", "poses.npz"]
    manifest = json.loads((out / _staging.MANIFEST).read_text())
    assert manifest["runs"] == {"generate": ["poses.npz"]}
    assert not list(tmp_path.glob(".*.partial-*"))


def test_another_commands_files_and_this_runs_inputs_are_never_removed(tmp_path, capsys, assets):
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "generate",
        "-n",
        "3",
        "--steps",
        "2",
        "--checkpoint",
        assets / "body.pt",
        "--no-render",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    code, _, err = run(
        capsys,
        "complete",
        out / "poses.npz",
        "--mask",
        "legs",
        "--steps",
        "2",
        "--checkpoint",
        assets / "body.pt",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert {"poses.npz", "completed.npz"} <= {p.name for p in out.iterdir()}
    runs = json.loads((out / _staging.MANIFEST).read_text())["runs"]
    assert runs == {"generate": ["poses.npz"], "complete": ["completed.npz"]}


def test_failed_run_leaves_no_folder_and_no_parents(tmp_path, capsys, assets):
    out = tmp_path / "a" / "b" / "o"
    code, _, err = run(capsys, "generate", "--checkpoint", tmp_path / "missing.pt", "--out", out)
    assert code == 1 and "not found" in err
    assert not (tmp_path / "a").exists()


def test_orphans_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".o.partial-{dead.pid}" / "sub").mkdir(parents=True)
    (tmp_path / f".o.partial-{os.getppid()}").mkdir()  # a live process
    (tmp_path / ".other.partial-1x").mkdir()  # not ours
    removed = _staging.remove_orphans(tmp_path, "o")
    assert [p.name for p in removed] == [f".o.partial-{dead.pid}"]
    assert (tmp_path / f".o.partial-{os.getppid()}").exists() and (tmp_path / ".other.partial-1x").exists()


def test_json_reports_name_the_final_path_not_the_staging_folder(tmp_path, capsys, assets):
    report = tmp_path / "r" / "gen.json"
    code, stdout, err = run(
        capsys,
        "benchmark",
        "generation",
        "--checkpoint",
        assets / "body.pt",
        "-n",
        "8",
        "--steps",
        "2",
        "--reference",
        assets / "reference.npz",
        "--out",
        report,
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["outputs"]["report"] == str(report) and json.loads(stdout)["outputs"]["report"] == str(report)
    assert ".partial-" not in report.read_text() and Path(data["outputs"]["samples"]).is_file()
