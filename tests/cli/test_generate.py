"""`dposer generate` end to end through `main()`: files, JSON summary, determinism, one-line errors."""

import json

import numpy as np
import pytest

from dposer_cli.core.parts import PARTS, Part
from tests._fixtures.checkpoints import write_official_ckpt
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run


@pytest.mark.parametrize("part", list(Part))
def test_generate_writes_npz_with_smplx_keys_and_json_summary(tmp_path, capsys, part):
    ckpt = write_tiny_prior(tmp_path / "p.pt", part)
    code, out, err = run(
        capsys,
        "generate",
        "--part",
        part.value,
        "-n",
        "3",
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(ckpt),
        "--steps",
        "4",
        "--no-render",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "generate" and summary["nfe"] == 4 and summary["sampler"] == "dpm2m-sde"
    assert str(ckpt) in summary["checkpoint"] and summary["steps"] == 4 and summary["seconds"] > 0
    data = np.load(summary["outputs"]["poses"])
    for key, sl in PARTS[part].slices().items():
        assert data[key].shape == (3, sl.stop - sl.start)
        assert np.isfinite(data[key]).all()


def test_same_seed_same_file_different_seed_differs(tmp_path, capsys):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    files = []
    for i, seed in enumerate([1, 1, 2]):
        code, out, _ = run(
            capsys,
            "generate",
            "-n",
            "2",
            "--out",
            str(tmp_path / f"o{i}"),
            "--checkpoint",
            str(ckpt),
            "--steps",
            "3",
            "--seed",
            str(seed),
            "--no-render",
            "--json",
            "--device",
            "cpu",
        )
        files.append(np.load(json.loads(out)["outputs"]["poses"])["body_pose"])
    np.testing.assert_array_equal(files[0], files[1])
    assert not np.allclose(files[0], files[2])


def test_default_sampler_is_dpm2m_sde_with_50_evaluations(tmp_path, capsys):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    code, out, err = run(
        capsys,
        "generate",
        "-n",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(ckpt),
        "--no-render",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sampler"] == "dpm2m-sde" and summary["nfe"] == 50


def test_official_checkpoint_with_normalizer_and_em_sampler(tmp_path, capsys, shared_data):
    ckpt = write_official_ckpt(tmp_path / "last.ckpt", Part.hand)
    code, out, err = run(
        capsys,
        "generate",
        "--part",
        "hand",
        "-n",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(ckpt),
        "--normalizer",
        str(shared_data / "official"),
        "--sampler",
        "em",
        "--steps",
        "5",
        "--no-render",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert json.loads(out)["nfe"] == 5


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["--part", "elbow"], 2, "elbow"),
        (["-n", "0"], 1, "-n must be at least 1"),
        (["--sampler", "dpm"], 2, "unknown sampler 'dpm'"),
        (["--device", "cuda:7"], 5, "CUDA is not available"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, code, pattern):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    got, out, err = run(
        capsys, "generate", "--out", str(tmp_path / "o"), "--checkpoint", str(ckpt), "--no-render", *args
    )
    assert got == code
    assert pattern in err and "Traceback" not in err


def test_checkpoint_errors(tmp_path, capsys):
    hand = write_tiny_prior(tmp_path / "hand.pt", Part.hand)
    code, _, err = run(
        capsys, "generate", "--part", "body", "--checkpoint", str(hand), "--out", str(tmp_path / "o")
    )
    assert code == 4 and err.count("error:") == 1 and "not body" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = run(capsys, "generate", "--checkpoint", str(bad), "--out", str(tmp_path / "o"), "--json")
    assert code == 4 and "not a readable" in err
    code, _, err = run(
        capsys, "generate", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")
    )
    assert code == 1 and "not found" in err


def test_unwritable_out_is_one_line(tmp_path, capsys):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "generate", "--checkpoint", str(ckpt), "--out", str(blocker / "sub"), "--no-render"
    )
    assert code == 1 and "cannot write to output folder" in err


def read_video(path):
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return np.stack([frame for frame in reader])  # list(reader) trips over its nframes = inf


def test_process_video_decodes_with_the_expected_frames(tmp_path, capsys):
    from dposer_cli.render.process import video_timing

    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    code, out, err = run(
        capsys,
        "generate",
        "-n",
        "3",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(ckpt),
        "--no-render",
        "--renderer",
        "soft",
        "--process-video",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["nfe"] == 4 and "grid" not in summary["outputs"]
    frames = read_video(summary["outputs"]["process_video"])
    fps, hold = video_timing(5)  # 4 steps + the result, then the hold
    cell = min(256, max(128, 1280 // 3))
    height = max(18, cell // 7) + 2 * cell
    assert frames.shape == (5 + hold, -(-height // 16) * 16, 3 * cell, 3)
    assert np.abs(frames[0].astype(int) - frames[4].astype(int)).mean() > 0.5  # noise → pose
    assert np.array_equal(frames[-1], frames[-2])  # the final hold


def test_help_documents_process_video(capsys):
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and "--process-video" in out and "process.mp4" in out


@pytest.mark.slow
def test_official_em_1000_process_video_keeps_the_frame_budget(tmp_path, capsys, shared_data):
    ckpt = write_official_ckpt(tmp_path / "last.ckpt", Part.hand)
    code, out, err = run(
        capsys,
        "generate",
        "--part",
        "hand",
        "-n",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(ckpt),
        "--normalizer",
        str(shared_data / "official"),
        "--sampler",
        "em",
        "--no-render",
        "--renderer",
        "soft",
        "--process-video",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["nfe"] == 1000 and summary["steps"] == 1000
    frames = read_video(summary["outputs"]["process_video"])
    assert (
        len(frames) == 120
    )  # 90 recorded frames (89 of the 1000 steps + the result) and a 1 s hold at 30 fps


def test_grid_count_in_the_json_and_grid_n_chooses_it(tmp_path, capsys):
    ckpt = write_tiny_prior(tmp_path / "body.pt", Part.body)
    base = [
        "generate",
        "--part",
        "body",
        "--checkpoint",
        str(ckpt),
        "--steps",
        "2",
        "--device",
        "cpu",
        "--renderer",
        "soft",
        "--json",
    ]
    code, out, err = run(capsys, *base, "-n", "70", "--out", str(tmp_path / "a"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["grid_count"] == 64 and summary["n"] == 70 and "grid" in summary["outputs"]
    code, out, err = run(capsys, *base, "-n", "5", "--grid", "2", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert json.loads(out)["grid_count"] == 2
    code, out, err = run(capsys, *base[:-1], "-n", "5", "--grid", "2", "--out", str(tmp_path / "c"))
    assert code == 0 and "first 2 of 5 poses" in " ".join(err.split())  # said in the log as well
    code, out, err = run(capsys, *base, "-n", "3", "--grid", "0", "--out", str(tmp_path / "d"))
    assert code == 0 and json.loads(out)["grid_count"] == 0 and "grid" not in json.loads(out)["outputs"]
    code, _, err = run(capsys, *base, "--grid", "-1", "--out", str(tmp_path / "e"))
    assert code == 2 and "--grid" in err


@pytest.fixture
def keep_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_threads_option_and_environment(tmp_path, capsys, monkeypatch, keep_threads):
    torch = keep_threads
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    base = [
        "generate",
        "-n",
        "2",
        "--steps",
        "2",
        "--checkpoint",
        str(ckpt),
        "--no-render",
        "--json",
        "--device",
        "cpu",
    ]
    code, out, err = run(capsys, *base, "--out", str(tmp_path / "a"), "--threads", "1")
    assert code == 0, err
    one = np.load(json.loads(out)["outputs"]["poses"])["body_pose"]
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("DPOSER_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # $DPOSER_THREADS beats it
    code, out, err = run(capsys, *base, "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert torch.get_num_threads() == 2
    np.testing.assert_allclose(np.load(json.loads(out)["outputs"]["poses"])["body_pose"], one, atol=1e-5)
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "c"), "--threads", "1")
    assert code == 0 and torch.get_num_threads() == 1, err  # --threads beats $DPOSER_THREADS
    monkeypatch.setenv("DPOSER_THREADS", "many")
    code, out, err = run(capsys, *base, "--out", str(tmp_path / "d"))
    assert code == 1 and "DPOSER_THREADS" in err and err.count("error:") == 1
    assert json.loads(out)["status"] == "error"


@pytest.mark.parametrize("value", ["0", "-3"])
@pytest.mark.parametrize(
    "command", ["generate", "complete", "denoise-motion", "fit-image", "ik", "benchmark", "train"]
)
def test_threads_below_one_is_a_usage_error(capsys, command, value):
    code, _, err = run(capsys, command, "--threads", value)
    assert code == 2 and "Invalid value for '--threads'" in err and "Traceback" not in err


def test_generate_from_a_prior_train_marked_unhealthy_warns(tmp_path, capsys):
    """`dposer train` stores healthy/health_reasons in prior.pt; generating from such a prior says so (issue #17)."""
    import torch

    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    raw = torch.load(ckpt, weights_only=True)
    raw.update(healthy=False, health_reasons=["warm-up (500 steps) longer than the run (20 steps)"])
    torch.save(raw, ckpt)
    args = ["generate", "-n", "2", "--out", str(tmp_path / "o"), "--checkpoint", str(ckpt), "--steps", "4"]
    code, out, err = run(capsys, *args, "--no-render", "--json", "--device", "cpu")
    assert code == 0
    assert json.loads(out)["prior_healthy"] is False
    assert "marked unhealthy by `dposer train`: warm-up (500 steps)" in " ".join(err.split())
    healthy = write_tiny_prior(tmp_path / "h.pt", Part.body)
    args = [
        "generate",
        "-n",
        "2",
        "--out",
        str(tmp_path / "o2"),
        "--checkpoint",
        str(healthy),
        "--steps",
        "4",
    ]
    code, out, err = run(capsys, *args, "--no-render", "--json", "--device", "cpu")
    assert code == 0 and json.loads(out)["prior_healthy"] is None and "unhealthy" not in err
