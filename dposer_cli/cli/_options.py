"""Shared options, declared once as `Annotated` aliases and reused by every command.

Numbers are checked by `core.validate` (the one place for ranges, finiteness and types): here as
option callbacks, so a bad value fails while the command line is parsed (exit 1, one line), and
again for every request field by the CLI runner (`_staging.run_staged` → `validate.request`).
"""

from pathlib import Path
from typing import Annotated

import typer

from dposer_cli.core import validate
from dposer_cli.core.parts import Part


def _seed(value: int) -> int:
    return validate.seed(value)


def _out_folder(value: Path) -> Path:
    return validate.output_folder("--out", value)


PartOpt = Annotated[Part, typer.Option("--part", "-p", help="Which prior: body, hand, face, face-shape or wholebody.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
]
SeedOpt = Annotated[int, typer.Option("--seed", callback=_seed,
                                      help="Random seed (0 .. 2^64−1); same seed + device gives the same files.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", callback=_out_folder,
                                      help="Output folder (created if missing; written all at once when the "
                                           "run succeeds).")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout (logs stay on stderr).")
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
    str, typer.Option("--renderer", help="auto (pyrender if an OpenGL backend works, else soft), pyrender or soft.")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch. Default: $DPOSER_THREADS, else $OMP_NUM_THREADS, else 1 (small batches "
        "run fastest on one thread) or every core for batches of 1000 and more.",
    ),
]


def _export(values: list[str] | None) -> list[str]:
    return [v.strip().lower() for raw in values or [] for v in raw.split(",") if v.strip()]


ExportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--export",
        metavar="FMT[,FMT]",
        callback=_export,
        help="Also write the bodies for other tools (repeat or comma-separate): glb (one glTF scene, a mesh per "
        "pose or frame), obj or ply (a file per pose), bvh (the body skeleton's motion; Blender imports it). "
        "Long motions: prefer bvh (a GLB holds every frame's mesh).",
    ),
]
