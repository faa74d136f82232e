"""`dposer download` through `main()`: exit codes, one-line errors, --json, --list, env-selected endpoints."""

import json
import time
from pathlib import Path

import pytest

from dposer_cli.cli.app import main
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import official_checkpoint
from dposer_cli.engine.checkpoint import read_checkpoint
from tests._fixtures.fake_hub import FakeHub, build_repo, dead_url


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("repo"), (Part.body, Part.hand))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated models / body-model folders; no offline flag from the caller's shell."""
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(tmp_path / "body_models"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return tmp_path / "models"


@pytest.fixture
def hub(repo, env, monkeypatch):
    with FakeHub(*repo) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("DPOSER_NORMALIZER_URL", server.raw_url)
        yield server


def dposer(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_json_summary_names_installed_files_that_load(hub, env, capsys):
    code, out, err = dposer(capsys, "download", "body", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "download" and summary["status"] == "ok"
    assert summary["revision"] == "main" and summary["parts"] == ["body"]
    files = [Path(p) for p in summary["outputs"]["files"]]
    assert len(files) == 2 and all(p.is_file() for p in files)
    assert read_checkpoint(official_checkpoint(Part.body, env), Part.body).part is Part.body
    # second run: nothing fetched, nothing written
    seen = len(hub.hits())
    code, out, _ = dposer(capsys, "download", "body", "--json")
    assert code == 0 and len(hub.hits()) == seen and json.loads(out)["outputs"] == {}


def test_human_summary_goes_to_stderr_only(hub, capsys):
    code, out, err = dposer(capsys, "download", "hand")
    assert code == 0 and out == ""
    assert "2 downloaded" in err and "hand/BaseMLP/last.ckpt" in err


def test_unknown_part_is_a_usage_error(env, capsys):
    code, out, err = dposer(capsys, "download", "bdoy")
    assert code == 2 and out == ""
    assert "Invalid value" in err and "'bdoy' is not one of" in err and "Traceback" not in err


def test_force_with_list_is_a_usage_error(env, capsys):
    code, _, err = dposer(capsys, "download", "--list", "--force")
    assert code == 2 and "--force" in err


def test_server_down_exits_5_quickly_with_one_error_line(env, monkeypatch, capsys):
    url = dead_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("DPOSER_NORMALIZER_URL", url)
    t0 = time.perf_counter()
    code, out, err = dposer(capsys, "download", "body", "--json")
    assert time.perf_counter() - t0 < 5
    assert code == 5
    lines = error_lines(err)
    assert len(lines) == 1 and str(official_checkpoint(Part.body, env)) in lines[0]
    assert json.loads(out)["exit_code"] == 5
    assert not [p for p in env.rglob("*") if p.is_file()]  # nothing partial left behind


def test_missing_file_exits_3_with_one_error_line(hub, capsys):
    del hub.hub_files[PARTS[Part.hand].official_ckpt]
    code, _, err = dposer(capsys, "download", "hand")
    assert code == 3
    lines = error_lines(err)
    assert len(lines) == 1 and "404" in lines[0]


def test_corrupt_download_exits_4(hub, env, capsys):
    hub.bad_etag.add(PARTS[Part.body].official_ckpt)
    code, _, err = dposer(capsys, "download", "body")
    assert code == 4 and len(error_lines(err)) == 1
    assert not official_checkpoint(Part.body, env).exists()


def test_offline_env_uses_no_network_and_says_where_to_put_files(hub, env, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = dposer(capsys, "download", "hand")
    assert code == 5 and hub.hits() == []
    (line,) = error_lines(err)
    assert "HF_HUB_OFFLINE" in line and str(official_checkpoint(Part.hand, env)) in line


def test_list_json_reports_every_part(hub, env, capsys):
    assert dposer(capsys, "download", "body")[0] == 0
    code, out, _ = dposer(capsys, "download", "--list", "--json")
    assert code == 0
    info = json.loads(out)
    assert set(info["parts"]) == {p.value for p in Part}
    assert info["parts"]["body"]["prior"] == "official" and info["parts"]["body"]["usable"] is True
    assert info["parts"]["body"]["official_checkpoint"]["path"] == str(official_checkpoint(Part.body, env))
    assert info["parts"]["hand"]["official_checkpoint"]["present"] is False
    assert set(info["body_models"]) == {"smplx", "mano", "flame"}
    assert "smpl-x.is.tue.mpg.de" in info["body_models"]["smplx"]["instruction"]


def test_check_table_on_stdout_and_notes_on_stderr(hub, env, capsys):
    assert dposer(capsys, "download", "body")[0] == 0
    code, out, err = dposer(capsys, "download", "--check", "body")
    assert code == 0 and "│" not in err
    assert "normaliser" in out and "register at" in err
    row = next(line for line in out.splitlines() if line.startswith("│ body"))
    assert row.split("│")[2].strip() == "ok" and row.split("│")[5].strip() == "official"


def test_list_table_on_stdout_one_row_per_part_unwrapped(env, capsys):
    code, out, err = dposer(capsys, "download", "--list")
    assert code == 0 and "│" not in err and "Traceback" not in err
    rows = [line for line in out.splitlines() if line.startswith("│ ") and "part" not in line]
    assert [r.split("│")[1].strip() for r in rows] == [p.value for p in Part]
    assert all(line == line.rstrip() for line in out.splitlines())
    assert str(env / "official") in out  # the title names the folder, whole
