"""Long jobs show they are alive when stderr is not a terminal (issue #17, "Progress and logs").

Under pytest stderr is captured, not a terminal: no bar, but one-line progress reports
`LABEL done/total (pct)  rate UNIT/s  ETA t` at most every $DPOSER_PROGRESS_INTERVAL seconds (0 here: every
update) and a last `... in t` line — the format of `train`'s heartbeat, which `train` keeps printing itself
(once, not twice). Log lines are never wrapped, and a message the run already showed is not repeated.
"""

import json
import logging
import re
import types

import numpy as np
import pytest

from dposer_cli.cli import _console
from dposer_cli.core.parts import Part
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run

LINE = r"INFO +{label} \d+/\d+ \(\d+%\)  [\d.]+ {unit}/s  ETA \S+"


def lines(err: str, label: str, unit: str = "steps") -> list[str]:
    return [x for x in err.splitlines() if re.fullmatch(LINE.format(label=label, unit=unit), x)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    np.savez(root / "in.npz", pose_body=rng.normal(0, 0.2, (3, 63)).astype(np.float32))
    np.savez(root / "seq.npz", pose_body=rng.normal(0, 0.1, (12, 63)), root_orient=np.zeros((12, 3)))
    np.savez(root / "hand_gt.npz", hand_pose=(0.3 * rng.standard_normal((2, 45))).astype(np.float32))
    np.savez(root / "hands.npz", hand_pose=(0.3 * rng.standard_normal((200, 45))).astype(np.float32))
    np.savez(root / "reference.npz", poses=rng.normal(0, 0.2, (32, 63)).astype(np.float32))
    from PIL import Image

    Image.new("RGB", (64, 48), (128, 128, 128)).save(root / "photo.png")
    kp = np.concatenate([rng.uniform(10, 40, (25, 2)), np.ones((25, 1))], 1)
    (root / "photo.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": kp.reshape(-1).tolist()}]}))
    write_tiny_prior(root / "body.pt", Part.body)
    write_tiny_prior(root / "hand.pt", Part.hand)
    return root


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setenv("DPOSER_PROGRESS_INTERVAL", "0")


# command → (arguments, progress label, unit)
COMMANDS = {
    "generate": (
        lambda a: [
            "generate",
            "-n",
            "4",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--checkpoint",
            a / "body.pt",
            "--no-render",
        ],
        "sampling",
        "steps",
    ),
    "complete": (
        lambda a: ["complete", a / "in.npz", "--mask", "legs", "--steps", "3", "--checkpoint", a / "body.pt"],
        "completing",
        "steps",
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
        "denoising",
        "steps",
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
            "3",
        ],
        "solving",
        "steps",
    ),
    "fit-image": (
        lambda a: [
            "fit-image",
            a / "photo.png",
            "--keypoints",
            a / "photo.json",
            "--steps",
            "2",
            "--prior",
            "none",
            "--no-overlay",
        ],
        "fitting",
        "steps",
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
            "8",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--reference",
            a / "reference.npz",
        ],
        "benchmark generation",
        "batches",
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_long_command_reports_progress_without_a_terminal(
    tmp_path, capsys, assets, every_update, command
):
    make, label, unit = COMMANDS[command]
    out = tmp_path / ("report.json" if command == "benchmark" else "o")
    code, _, err = run(capsys, *make(assets), "--out", out, "--device", "cpu", "--json")  # --json: lines stay
    assert code == 0, err
    shown = lines(err, label, unit)
    assert shown, err
    done, total = map(int, re.search(r" (\d+)/(\d+) ", shown[-1]).groups())
    assert done == total  # the last update of the run is reported


@pytest.mark.parametrize("flag", ["--quiet", None])
def test_quiet_hides_the_lines_and_a_long_interval_bounds_them(tmp_path, capsys, assets, monkeypatch, flag):
    monkeypatch.setenv("DPOSER_PROGRESS_INTERVAL", "0" if flag else "3600")
    args = [*COMMANDS["generate"][0](assets), "--out", tmp_path / "o"] + ([flag] if flag else [])
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert not [x for x in err.splitlines() if "sampling" in x and "/s" in x], err


def test_train_prints_its_heartbeat_once(tmp_path, capsys, assets, every_update):
    code, _, err = run(
        capsys,
        "train",
        "--part",
        "hand",
        "--batch-size",
        "16",
        "--hidden-dim",
        "32",
        "--embed-dim",
        "16",
        "--warmup",
        "2",
        "--eval-samples",
        "0",
        "--device",
        "cpu",
        "--data",
        assets / "hands.npz",
        "--out",
        tmp_path / "run",
        "--steps",
        "4",
        "--json",
    )
    assert code == 0, err
    beats = [
        x
        for x in err.splitlines()
        if re.fullmatch(
            r"INFO +step \d+/4 \(\d+%\)  [\d.]+ steps/s  ETA \S+  "
            r"loss [\d.]+",
            x,
        )
    ]
    assert beats and "step 4/4 (100%)" in beats[-1], err
    assert not lines(err, "training"), err  # no second, generic line


@pytest.fixture
def records(monkeypatch):
    """The progress logger's records (its own handler: `main()` stops `dposer_cli` propagating to pytest's)."""
    monkeypatch.setattr(type(_console.console), "is_terminal", property(lambda self: False))
    got: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = got.append  # type: ignore[method-assign]
    _console.log.addHandler(handler)
    level = _console.log.level
    _console.log.setLevel(logging.INFO)
    yield got
    _console.log.removeHandler(handler)
    _console.log.setLevel(level)


def test_lines_are_bounded_by_the_interval_and_end_with_a_last_line(monkeypatch, records):
    clock = iter([0.0, 1.0, 4.0, 11.0, 12.0, 13.0, 30.0])
    monkeypatch.setattr(_console, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setenv("DPOSER_PROGRESS_INTERVAL", "10")
    with _console.progress("sampling") as cb:  # t=0
        for done in range(1, 6):  # t=1, 4, 11, 12, 13
            cb(done, 10)
    # t=30: the last line
    got = [r.getMessage() for r in records]
    assert got == ["sampling 3/10 (30%)  0.3 steps/s  ETA 26s", "sampling 5/10 (50%)  0.2 steps/s  in 30s"]


def test_no_line_for_short_runs_and_none_after_an_error(monkeypatch, records):
    monkeypatch.setenv("DPOSER_PROGRESS_INTERVAL", "3600")
    with _console.progress("sampling") as cb:
        cb(1, 2)
        cb(2, 2)
    assert not records
    clock = iter([0.0, 11.0, 12.0])
    monkeypatch.setattr(_console, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setenv("DPOSER_PROGRESS_INTERVAL", "10")
    with pytest.raises(RuntimeError), _console.progress("sampling") as cb:
        cb(1, 3)  # t=11: a line
        cb(2, 3)  # t=12: too soon
        raise RuntimeError("boom")
    assert [r.getMessage().split("  ")[0] for r in records] == ["sampling 1/3 (33%)"]  # no last line after it


@pytest.mark.parametrize(
    "raw,expected",
    [("", 10.0), ("0", 0.0), ("2.5", 2.5), ("-1", 10.0), ("soon", 10.0), ("nan", 10.0), ("inf", 10.0)],
)
def test_interval_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("DPOSER_PROGRESS_INTERVAL", raw)
    assert _console.progress_interval() == expected


def test_log_lines_do_not_wrap_and_repeated_info_shows_once(tmp_path, capsys, assets, monkeypatch):
    deep = tmp_path.joinpath(
        *["a_rather_long_folder_name"] * 6
    )  # the search path makes the line > 80 columns
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(deep))
    monkeypatch.delenv("DPOSER_BODY_MODELS", raising=False)
    code, _, err = run(
        capsys,
        "complete",
        assets / "in.npz",
        "--mask",
        "legs",
        "--steps",
        "2",
        "--checkpoint",
        assets / "body.pt",
        "--render",
        "--renderer",
        "soft",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    body = [x for x in err.splitlines() if "body model:" in x]
    assert len(body) == 1, err  # completion and the picture both load the body model: said once
    assert body[0].startswith("INFO ") and str(deep / "body_models") in body[0] and len(body[0]) > 80
