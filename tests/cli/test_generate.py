"""`dposer generate` end to end through `main()`: files, JSON summary, determinism, one-line errors."""

import json

import numpy as np
import pytest

from dposer_cli.cli.app import main
from dposer_cli.core.parts import PARTS, Part
from tests._fixtures.checkpoints import write_official_ckpt
from tests._fixtures.priors import write_tiny_prior


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize("part", list(Part))
def test_generate_writes_npz_with_smplx_keys_and_json_summary(tmp_path, capsys, part):
    ckpt = write_tiny_prior(tmp_path / "p.pt", part)
    code, out, err = run(capsys, "generate", "--part", part.value, "-n", "3", "--out", str(tmp_path / "o"),
                         "--checkpoint", str(ckpt), "--steps", "4", "--no-render", "--json", "--device", "cpu")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "generate" and summary["nfe"] == 4 and summary["sampler"] == "dpm2m"
    assert str(ckpt) in summary["checkpoint"] and summary["steps"] == 4 and summary["seconds"] > 0
    data = np.load(summary["outputs"]["poses"])
    for key, sl in PARTS[part].slices().items():
        assert data[key].shape == (3, sl.stop - sl.start)
        assert np.isfinite(data[key]).all()


def test_same_seed_same_file_different_seed_differs(tmp_path, capsys):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    files = []
    for i, seed in enumerate([1, 1, 2]):
        code, out, _ = run(capsys, "generate", "-n", "2", "--out", str(tmp_path / f"o{i}"), "--checkpoint", str(ckpt),
                           "--steps", "3", "--seed", str(seed), "--no-render", "--json", "--device", "cpu")
        files.append(np.load(json.loads(out)["outputs"]["poses"])["body_pose"])
    np.testing.assert_array_equal(files[0], files[1])
    assert not np.allclose(files[0], files[2])


def test_official_checkpoint_with_normalizer_and_em_sampler(tmp_path, capsys, shared_data):
    ckpt = write_official_ckpt(tmp_path / "last.ckpt", Part.hand)
    code, out, err = run(capsys, "generate", "--part", "hand", "-n", "2", "--out", str(tmp_path / "o"),
                         "--checkpoint", str(ckpt), "--normalizer", str(shared_data / "official"), "--sampler", "em",
                         "--steps", "5", "--no-render", "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["nfe"] == 5


@pytest.mark.parametrize("args,code,pattern", [
    (["--part", "elbow"], 2, "elbow"),
    (["-n", "0"], 1, "-n must be at least 1"),
    (["--sampler", "dpm"], 1, "unknown sampler 'dpm'"),
    (["--device", "cuda:7"], 5, "CUDA is not available"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, code, pattern):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    got, out, err = run(capsys, "generate", "--out", str(tmp_path / "o"), "--checkpoint", str(ckpt), "--no-render",
                        *args)
    assert got == code
    assert pattern in err and "Traceback" not in err


def test_checkpoint_errors(tmp_path, capsys):
    hand = write_tiny_prior(tmp_path / "hand.pt", Part.hand)
    code, _, err = run(capsys, "generate", "--part", "body", "--checkpoint", str(hand), "--out", str(tmp_path / "o"))
    assert code == 4 and err.count("error:") == 1 and "not body" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = run(capsys, "generate", "--checkpoint", str(bad), "--out", str(tmp_path / "o"), "--json")
    assert code == 4 and "not a readable" in err
    code, _, err = run(capsys, "generate", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"))
    assert code == 1 and "not found" in err


def test_unwritable_out_is_one_line(tmp_path, capsys):
    ckpt = write_tiny_prior(tmp_path / "p.pt", Part.body)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "generate", "--checkpoint", str(ckpt), "--out", str(blocker / "sub"), "--no-render")
    assert code == 1 and "cannot write to output folder" in err
