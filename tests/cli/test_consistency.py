"""One behaviour for every choice (issue #17, "Consistency").

* The choice lists the command line checks (`core.parts`, pure Python) equal the registries they mirror.
* An unknown choice — part, sampler, mask, benchmark name, mode, IK type, prior, ... — is a usage error:
  exit 2 at once, before torch is imported, naming every valid value (and, with --json, an error object).
* `--help` shows flags without a `<bool>` type, full choice lists (masks included) and no split words.
* One list of the FLAME files.
"""

import collections
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from rich.cells import cell_len

from dposer_cli.cli.app import COMMANDS
from dposer_cli.core import parts
from dposer_cli.core.parts import PARTS, Part, mask_names
from tests.cli._run import run


# ------------------------------------------------------------------------------------- lists = registries
def test_choice_lists_equal_the_registries():
    from dposer_cli.engine.priors import PRIORS
    from dposer_cli.engine.samplers import SAMPLERS
    from dposer_cli.evaluation.runner import EVALUATIONS
    from dposer_cli.io.keypoints import KEYPOINT_FORMATS
    from dposer_cli.render.scene import RENDERERS
    from dposer_cli.services.fit_image import FIT_PRIORS
    from dposer_cli.tasks import complete, denoise_motion, ik, train

    assert parts.SAMPLER_NAMES == tuple(SAMPLERS)
    assert parts.COMPLETE_MODES == tuple(complete.MODES)
    assert parts.BENCHMARK_NAMES == tuple(EVALUATIONS)
    assert parts.PRIOR_KINDS == tuple(PRIORS)
    assert parts.FIT_PRIORS == tuple(FIT_PRIORS) == tuple(ik.PRIORS)
    assert dict(parts.IK_TYPES) == {Part.hand: tuple(ik.HAND_TYPES), Part.face: tuple(ik.FACE_TYPES)}
    assert parts.TEMPORAL_TERMS == tuple(denoise_motion.TEMPORAL_TERMS)
    assert parts.KEYPOINT_FORMATS == tuple(KEYPOINT_FORMATS)
    assert parts.RENDERERS == tuple(RENDERERS)
    assert parts.T_WEIGHTINGS == tuple(train.T_WEIGHTINGS)


@pytest.mark.parametrize("part", list(Part))
def test_mask_names_are_what_completion_accepts(part):
    for name in mask_names(part):
        assert parts.mask_dims(part, [name])
    assert set(mask_names(part)) == set(PARTS[part].mask_groups) | set(PARTS[part].mask_aliases)


def test_one_list_of_flame_files():
    from dposer_cli.bodies.smplx_family import FLAME_EXTRAS

    assert parts.FLAME_FILES[0] == "FLAME_NEUTRAL.pkl" and FLAME_EXTRAS == parts.FLAME_FILES[1:]


def test_flame_error_names_every_flame_file(tmp_path, monkeypatch):
    from dposer_cli.bodies import load_body
    from dposer_cli.core.errors import MissingAssetError

    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path))
    monkeypatch.delenv("DPOSER_BODY_MODELS", raising=False)
    with pytest.raises(MissingAssetError) as err:
        load_body("face")
    assert all(name in str(err.value) for name in parts.FLAME_FILES)


def test_largest_seed_with_a_batch_offset():
    from dposer_cli.core.device import make_generator

    top = 2**64 - 1
    for offset in (0, 1, 7):
        gen = make_generator(top + offset, torch.device("cpu"))
        assert gen.initial_seed() == (top + offset) % 2**64
    a = torch.randn(3, generator=make_generator(5, torch.device("cpu")))
    assert torch.equal(a, torch.randn(3, generator=make_generator(2**64 + 5, torch.device("cpu"))))


# ------------------------------------------------------------------------------------- unknown = exit 2
def _all(values) -> list[str]:
    return [getattr(v, "value", v) for v in values]


# arguments → the valid values the error must list
UNKNOWN = {
    "part": (["generate", "--part", "elbow"], _all(Part)),
    "sampler": (["generate", "--sampler", "dpm"], parts.SAMPLER_NAMES),
    "renderer": (["generate", "--renderer", "gl"], parts.RENDERERS),
    "mask": (["complete", "x.npz", "--mask", "leftleg"], mask_names(Part.body)),
    "wholebody-mask": (
        ["complete", "x.npz", "--part", "wholebody", "--mask", "body_legz"],
        mask_names(Part.wholebody),
    ),
    "mode": (["complete", "x.npz", "--mask", "legs", "--mode", "ddpm"], parts.COMPLETE_MODES),
    "occluded": (["denoise-motion", "x.npz", "--occluded-part", "leggs"], mask_names(Part.body)),
    "visible": (["denoise-motion", "x.npz", "--visible-part", "armz"], mask_names(Part.body)),
    "temporal": (["denoise-motion", "x.npz", "--temporal", "mesh"], parts.TEMPORAL_TERMS),
    "ik-part": (["ik", "--targets", "x.npz", "--part", "body"], ["hand", "face"]),
    "ik-type": (["ik", "--targets", "x.npz", "--type", "left_face"], parts.IK_TYPES[Part.hand]),
    "ik-face-type": (
        ["ik", "--targets", "x.npz", "--part", "face", "--type", "fingertip"],
        parts.IK_TYPES[Part.face],
    ),
    "ik-prior": (["ik", "--targets", "x.npz", "--prior", "gmm"], parts.FIT_PRIORS),
    "fit-part": (["fit-image", "x.png", "--part", "face"], ["body", "hand", "wholebody"]),
    "fit-prior": (["fit-image", "x.png", "--prior", "vposer"], parts.FIT_PRIORS),
    "keypoint-format": (["fit-image", "x.png", "--keypoint-format", "vit"], parts.KEYPOINT_FORMATS),
    "benchmark": (["benchmark", "generaton"], parts.BENCHMARK_NAMES),
    "benchmark-sampler": (["benchmark", "generation", "--sampler", "heun"], parts.SAMPLER_NAMES),
    "benchmark-prior": (["benchmark", "generation", "--prior", "vposr"], parts.PRIOR_KINDS),
    "t-weighting": (["train", "--data", "x.npz", "--t-weighting", "cubic"], parts.T_WEIGHTINGS),
    "download": (["download", "bdoy"], [*_all(Part), "all"]),
}

_PROBE = """
import contextlib, io, json, sys
from dposer_cli.cli.app import main
results = {}
for name, args in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results[name] = {"code": code, "err": err.getvalue(), "torch": "torch" in sys.modules}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def unknown_results(tmp_path_factory):
    """Every case in one fresh interpreter: `torch` must still be unimported after all of them."""
    cases = {name: args for name, (args, _) in UNKNOWN.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path_factory.mktemp("cwd"),
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", list(UNKNOWN))
def test_unknown_choice_is_exit_2_before_torch_with_the_valid_values(unknown_results, case):
    got = unknown_results[case]
    err = got["err"]
    assert got["code"] == 2, err
    assert not got["torch"], "torch was imported"
    assert "Traceback" not in err and "Invalid value" in err
    message = " ".join(err.split())  # the values are named whole
    for value in UNKNOWN[case][1]:
        assert re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", message), (value, err)


def test_json_usage_error_is_an_error_object_with_the_valid_values(capsys):
    code, out, err = run(capsys, "benchmark", "nope", "--json")
    assert code == 2 and "Invalid value" in err
    data = json.loads(out)
    assert (
        data["status"] == "error" and data["exit_code"] == 2 and "unknown benchmark 'nope'" in data["error"]
    )
    assert all(name in data["hint"] for name in parts.BENCHMARK_NAMES)


# ------------------------------------------------------------------------------------------------ --help
def _help(capsys, *command: str) -> str:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    return out


def _words(text: str) -> collections.Counter:
    return collections.Counter(re.findall(r"[^\s│╭╮╰╯─]+", text))


def split_words(narrow: str, wide: str) -> list[str]:
    """Words of the 80-column help that are pieces of a word of the same help without a width limit (Rich
    folds a word longer than its column; wrapping at spaces keeps every word whole)."""
    return sorted((_words(narrow) - _words(wide)).elements())


def test_split_words_are_detected():
    wide = "│ --part  -p  <body|hand|face|face-shape|wholebody>  Which prior: body, hand, face, face-shape │"
    narrow = (
        "│ --part  -p  <body|hand|face|face-shap  Which prior: body, hand,   │\n"
        "│              e|wholebody>               face, face-shape or        │"
    )
    assert split_words(narrow, wide.replace(" │", " or │")) == ["<body|hand|face|face-shap", "e|wholebody>"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_no_bool_noise_and_no_split_words(capsys, monkeypatch, command):
    args = [command] if command else []
    monkeypatch.setenv("COLUMNS", "80")
    narrow = _help(capsys, *args)
    monkeypatch.setenv("COLUMNS", "1000")
    wide = _help(capsys, *args)
    assert "<bool>" not in narrow and max(map(cell_len, narrow.splitlines())) <= 80
    assert max(map(cell_len, wide.splitlines())) > 80  # the limit really was lifted
    assert not split_words(narrow, wide)


@pytest.mark.parametrize(
    "command,values",
    [
        ("generate", parts.SAMPLER_NAMES),
        (
            "complete",
            [
                *parts.COMPLETE_MODES,
                *[m for p in Part for m in mask_names(p) if not m.startswith("body_")],
                "body_<any body mask>",
            ],
        ),
        ("denoise-motion", [*mask_names(Part.body), *parts.TEMPORAL_TERMS]),
        ("ik", [*parts.IK_TYPES[Part.hand], *parts.IK_TYPES[Part.face], *parts.FIT_PRIORS]),
        ("fit-image", [*parts.KEYPOINT_FORMATS, *parts.FIT_PRIORS, "body", "hand", "wholebody"]),
        ("benchmark", [*parts.BENCHMARK_NAMES, *parts.PRIOR_KINDS, *parts.SAMPLER_NAMES]),
        ("train", parts.T_WEIGHTINGS),
    ],
)
def test_help_lists_every_choice_whole(capsys, command, values):
    text = " ".join(line.strip("│ ") for line in _help(capsys, command).splitlines())
    for value in values:
        assert re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text), value


def _option_row(text: str, flag: str) -> str:
    """The help row of `flag` (its lines up to the next option), as one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"│\s+(\*\s+)?{flag}\b", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"│\s+(\*\s+)?-", lines[i])), len(lines))
    return " ".join(" ".join(line.strip("│╰─╯ ").split()) for line in lines[start:end])


@pytest.mark.parametrize(
    "command,offered,not_offered",
    [
        ("ik", "Which prior: hand or face.", ("body", "face-shape", "wholebody")),
        ("fit-image", "Which prior: body, hand or wholebody.", ("face,", "face-shape")),
    ],
)
def test_part_option_offers_only_supported_parts(capsys, command, offered, not_offered):
    row = _option_row(_help(capsys, command), "--part")
    assert offered in row and "[default: " in row, row
    assert not any(word in row.replace(offered, "") for word in not_offered), row


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (["generate", "--bogus"], "error: No such option: --bogus", "hint: see 'dposer generate -h'"),
        (
            ["complete", "x.npz", "--part", "legs"],
            "error: Invalid value for '--part' / '-p': 'legs' is not one of 'body'",
            "hint: see 'dposer complete -h'",
        ),
        (["nosuch"], "error: No such command 'nosuch'.", "hint: see 'dposer -h'"),
    ],
)
def test_usage_errors_are_one_error_line_and_a_hint(capsys, args, error, hint):
    """Not Click's "Usage: … / Try … / (blank) / Error: …" block, nor its "Value error, " prefix."""
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith(error) and lines[1] == hint and "Value error" not in err
