"""`core.validate`: one-line InputErrors naming the flag, the allowed range and the value given."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "value,pattern",
    [
        (0, "-n must be at least 1 (got 0)"),
        (11, "-n must be at most 10 (got 11)"),
        (2.0, "-n must be an integer (got 2.0)"),
        (True, "-n must be an integer (got True)"),
        ("3", "-n must be an integer (got '3')"),
    ],
)
def test_integer_range_and_type(value, pattern):
    with pytest.raises(InputError) as err:
        validate.integer("-n", value, lo=1, hi=10)
    assert one_line(err) == pattern


def test_integer_accepts_numpy_ints_and_returns_int():
    import numpy as np

    assert validate.integer("-n", np.int64(3), lo=1) == 3 and type(validate.integer("-n", np.int64(3))) is int


@pytest.mark.parametrize(
    "value,kwargs,pattern",
    [
        (math.nan, {}, "--focal must be a finite number of pixels (got nan)"),
        (math.inf, {}, "--focal must be a finite number of pixels (got inf)"),
        (0.0, {"lo": 0.0, "lo_open": True}, "--focal must be a positive number of pixels (got 0.0)"),
        (-1.0, {"lo": 0.0}, "--focal must be a non-negative number of pixels (got -1.0)"),
        (5.0, {"hi": 4.0}, "--focal must be at most 4.0 (got 5.0)"),
        (4.0, {"hi": 4.0, "hi_open": True}, "--focal must be less than 4.0 (got 4.0)"),
        ("x", {}, "--focal must be a number of pixels (got 'x')"),
    ],
)
def test_number_finite_and_bounds(value, kwargs, pattern):
    with pytest.raises(InputError) as err:
        validate.number("--focal", value, what="number of pixels", **kwargs)
    assert one_line(err) == pattern


def test_number_in_range_passes_through():
    assert validate.number("x", 3, lo=0.0, hi=4.0) == 3.0


@pytest.mark.parametrize("value", [-1, 2**64, 1.5, True, "7"])
def test_seed_outside_0_to_2_64_minus_1_is_refused(value):
    with pytest.raises(InputError, match=r"--seed must be an integer between 0 and 2\^64 − 1"):
        validate.seed(value)


@pytest.mark.parametrize("value", [0, 1, 2**63, 2**64 - 1])
def test_seed_bounds_are_accepted_by_torch(value):
    import torch

    torch.Generator().manual_seed(validate.seed(value))


@pytest.mark.parametrize("t", [0.0, -0.1, 1.0001, math.nan, math.inf])
def test_diffusion_time_is_in_0_1(t):
    with pytest.raises(InputError, match=r"t must be a .*diffusion time in \(0, 1\]|t must be at most 1"):
        validate.diffusion_time(t)
    assert validate.diffusion_time(1.0) == 1.0 and validate.diffusion_time(1e-5) == 1e-5


def test_memory_names_what_it_would_take_and_what_is_free():
    with pytest.raises(InputError) as err:
        validate.memory("sampling 5 poses", 3 * 2**40, available=2**30)
    assert one_line(err) == "sampling 5 poses would need about 3.0 TiB of memory; about 1.0 GiB is available"
    validate.memory("small", 10, available=2**30)


def test_available_memory_is_positive_here():
    free = validate.available_memory()
    assert free is None or free > 0


def test_human_bytes():
    assert validate.human_bytes(512) == "512 B" and validate.human_bytes(1536) == "1.5 KiB"
    assert validate.human_bytes(5 * 2**50) == "5.0 PiB"


def test_sample_bytes_grows_with_n_inner_and_width():
    base = validate.sample_bytes(10, dim=63)
    assert validate.sample_bytes(20, dim=63) == 2 * base
    assert validate.sample_bytes(10, dim=63, inner=3) == 3 * base
    assert validate.sample_bytes(10, dim=63, width=1024) > base
    assert validate.sample_bytes(10, dim=63, copies=1) == 10 * 63 * 4


def test_image_size_refuses_huge_and_empty_pictures():
    validate.image_size("a.png", 4000, 3000)
    with pytest.raises(InputError) as err:
        validate.image_size("a.png", 100_000, 100_000)
    assert "a.png: image is 100000×100000" in one_line(err) and err.value.hint
    with pytest.raises(InputError, match="size 0×5"):
        validate.image_size("a.png", 0, 5)


def test_frames_bound_and_memory():
    validate.frames("walk.npz", 1000)
    with pytest.raises(InputError, match="walk.npz has 2000000 frames: 2000000 items; at most 1000000"):
        validate.frames("walk.npz", 2_000_000)
    with pytest.raises(InputError, match="walk.npz: 1000 frames would need about"):
        validate.frames("walk.npz", 1000, bytes_per_frame=2**20, available=2**20)


def test_load_json_limits_depth_size_and_syntax():
    assert validate.load_json('{"a": [1, 2]}', "k.json") == {"a": [1, 2]}
    with pytest.raises(InputError) as err:
        validate.load_json("[" * 100_000 + "]" * 100_000, "deep.json")
    assert one_line(err).startswith("deep.json: JSON is nested too deeply")
    with pytest.raises(InputError) as err:
        validate.load_json('{"a": }', "bad.json")
    assert one_line(err).startswith("bad.json: not valid JSON (line 1, column 7")
    with pytest.raises(InputError, match="larger than"):
        validate.json_size("big.json", validate.MAX_JSON_BYTES + 1)


def test_output_paths_of_the_wrong_kind(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert validate.output_folder("--out", tmp_path / "new") == tmp_path / "new"
    with pytest.raises(InputError, match="is an existing file; give a folder"):
        validate.output_folder("--out", tmp_path / "f.txt")
    assert validate.output_file("--out", tmp_path / "f.txt") == tmp_path / "f.txt"
    with pytest.raises(InputError, match="is an existing folder; give a file path"):
        validate.output_file("--out", tmp_path)


@dataclass(frozen=True)
class _Req:
    part: Part = Part.body
    n: int = 10
    steps: int | None = None
    seed: int = 0
    noise_std: float | None = None
    out: Path = Path("o")


@pytest.mark.parametrize(
    "fields,pattern",
    [
        ({"n": 0}, "-n must be at least 1 (got 0)"),
        ({"steps": 0}, "--steps must be at least 1 (got 0)"),
        ({"steps": validate.MAX_STEPS + 1}, f"--steps must be at most {validate.MAX_STEPS}"),
        ({"seed": -3}, "--seed must be an integer between 0 and 2^64 − 1 (got -3)"),
        ({"noise_std": -1.0}, "--noise-std must be a non-negative number of metres (got -1.0)"),
        ({"noise_std": math.nan}, "--noise-std must be a finite number of metres (got nan)"),
        ({"n": validate.MAX_COUNT}, "poses would need about"),
    ],
)
def test_request_checks_every_known_field(fields, pattern, monkeypatch):
    monkeypatch.setattr(validate, "available_memory", lambda: 2**30)
    with pytest.raises(InputError) as err:
        validate.request(_Req(**fields))
    assert pattern in one_line(err)


def test_request_leaves_valid_and_unknown_fields_alone():
    validate.request(_Req(steps=None, noise_std=0.0))
    validate.request(object())  # not a dataclass: nothing to check


def test_rules_cover_the_flags_the_commands_document():
    flags = {r.flag for r in validate.FIELDS.values()}
    assert {
        "-n",
        "--hypo",
        "--steps",
        "--seed",
        "--noise-std",
        "--focal",
        "--fps",
        "--limit",
        "--batch-size",
    } <= flags
    json.dumps({k: v.flag for k, v in validate.FIELDS.items()})
