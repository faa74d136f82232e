"""Shared options, declared once as `Annotated` aliases and reused by every command.

Numbers are checked by `core.validate` (the one place for ranges, finiteness and types): here as
option callbacks, so a bad value fails while the command line is parsed (exit 1, one line), and
again for every request field by the CLI runner (`_staging.run_staged` → `validate.request`).

Choices (sampler, mode, mask, prior, ...) are checked here against the pure-Python lists of
`core.parts` (tests/cli/test_consistency.py keeps them equal to the registries): an unknown one is a
usage error (exit 2) naming the valid values, raised before torch is imported.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from dposer_cli.core import validate
from dposer_cli.core.errors import suggest
from dposer_cli.core.parts import PARTS, RENDERERS, SAMPLER_NAMES, Part, mask_names


class ChoiceError(typer.BadParameter):
    """An unknown choice: a usage error (exit 2) raised before anything heavy is imported; `hint` lists the
    valid values (the --json error object carries it)."""

    def __init__(self, message: str, *, param_hint: str, hint: str) -> None:
        super().__init__(f"{message}; {hint}", param_hint=f"'{param_hint}'")
        self.hint = hint


def check_choice(value: str, valid: Sequence[str], *, what: str, param: str) -> str:
    """`value` when it is one of `valid`, else a `ChoiceError` naming the nearest valid value and all of them.

    `what` starts the message: "unknown {what} 'x'" (e.g. "sampler", "--mode", "mask ... for --part body").
    """
    if value in valid:
        return value
    raise ChoiceError(
        f"unknown {what} {value!r}{suggest(value, list(valid))}",
        param_hint=param,
        hint="choose from " + ", ".join(valid),
    )


def choice(valid: Sequence[str], *, what: str, param: str) -> Callable[[str], str]:
    """An option callback that accepts only `valid` (see `check_choice`)."""

    def check(value: str) -> str:
        return check_choice(value, valid, what=what, param=param)

    return check


def part_choice(valid: Sequence[Part], message: str) -> Callable[[str], Part]:
    """An option callback for a command that supports only some parts; returns the `Part`.

    `message` names what the command does with `{listed}` (the valid parts) and `{value}` (the given one).
    """
    names = [p.value for p in valid]
    listed = ", ".join(names[:-1]) + f" or {names[-1]}"

    def check(value: str) -> Part:
        if value in names:
            return Part(value)
        raise ChoiceError(
            message.format(listed=listed, value=value),
            param_hint="--part",
            hint="choose from " + ", ".join(names),
        )

    return check


def check_masks(part: Part, names: Sequence[str], *, param: str) -> None:
    """Every name is a mask group (or alias) of `part`, else a `ChoiceError` listing them."""
    valid = mask_names(part)
    for name in names:
        if not valid:
            raise ChoiceError(
                f"--part {part.value} has no named masks",
                param_hint=param,
                hint="mark the missing values NaN in the input instead",
            )
        if name not in valid:
            raise ChoiceError(
                f"unknown mask {name!r} for --part {part.value}{suggest(name, list(valid))}",
                param_hint=param,
                hint="choose from " + ", ".join(valid),
            )


sampler_choice = choice(SAMPLER_NAMES, what="sampler", param="--sampler")


def mask_help(parts: Sequence[Part] = tuple(Part)) -> str:
    """Every mask name of `parts`, for help texts: "body: legs, ... (torso = trunk); hand: ...".

    Whole-body masks named `body_<body mask>` are listed once as that pattern.
    """
    out = []
    for part in parts:
        spec = PARTS[part]
        if not spec.mask_groups:
            continue
        names = [n for n in spec.mask_groups if not (part is Part.wholebody and n.startswith("body_"))]
        if len(names) < len(spec.mask_groups):
            names.append("body_<any body mask>")
        aliases = ", ".join(f"{a} = {n}" for a, n in spec.mask_aliases.items())
        out.append(f"{part.value}: {', '.join(names)}" + (f" ({aliases})" if aliases else ""))
    return "; ".join(out)


def _seed(value: int) -> int:
    return validate.seed(value)


def _out_folder(value: Path) -> Path:
    return validate.output_folder("--out", value)


PartOpt = Annotated[
    Part,
    typer.Option(
        "--part", "-p", metavar="PART", help="Which prior: body, hand, face, face-shape or wholebody."
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", callback=_seed, help="Random seed (0 .. 2^64−1); same seed + device gives the same files."
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        callback=_out_folder,
        help="Output folder (created if missing; written all at once when the run succeeds).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print a machine-readable JSON summary on stdout (logs stay on stderr)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs on stderr.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Prior checkpoint (.pt of ours or an official last.ckpt). Default: downloaded official "
        "weights in models_cache/official, else the bundled demo prior.",
    ),
]
NormalizerOpt = Annotated[
    Path | None,
    typer.Option(
        "--normalizer",
        help="Official axis_normalize2.pt (or its folder, or the official data/ root) for official checkpoints.",
    ),
]
BodyModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--body-model",
        help="Folder (smplx layout: smplx/, mano/, flame/) or model file. Default: $DPOSER_BODY_MODELS, "
        "models_cache/body_models, else the built-in mannequin.",
    ),
]
RendererOpt = Annotated[
    str,
    typer.Option(
        "--renderer",
        metavar="NAME",
        callback=choice(RENDERERS, what="renderer", param="--renderer"),
        help="auto (= soft: numpy z-buffer, no start-up cost), soft, or pyrender (offscreen OpenGL/EGL).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        metavar="N",
        help="CPU threads for torch. Default: $DPOSER_THREADS, else $OMP_NUM_THREADS, else 1 (small batches "
        "run fastest on one thread) or every core for batches of 1000 and more.",
    ),
]


EXPORT_FORMAT_NAMES = ("glb", "obj", "ply", "bvh")  # io.export.EXPORT_FORMATS (io imports trimesh)


def _export(values: list[str] | None) -> list[str]:
    names = [v.strip().lower() for raw in values or [] for v in raw.split(",") if v.strip()]
    return [check_choice(v, EXPORT_FORMAT_NAMES, what="--export format", param="--export") for v in names]


ExportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--export",
        metavar="FMT[,FMT]",
        callback=_export,
        help="Also write the bodies for other tools (repeat or comma-separate): glb (one glTF scene, a mesh per "
        "pose or frame), obj or ply (a file per pose), bvh (the skeleton's motion, fingers too for whole-body "
        "poses; Blender imports it). Long motions: prefer bvh (a GLB holds every frame's mesh).",
    ),
]
