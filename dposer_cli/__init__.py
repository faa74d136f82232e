"""dposer: the DPoser-X diffusion pose prior as a command-line tool and Python API.

Public API (imported lazily so `dposer --help` never imports torch):

    from dposer_cli import load_prior, load_body, sample, complete, denoise_motion, solve_ik, fit
    prior = load_prior("body")
    poses = sample(prior, 10).poses

The tasks (`sample`, `complete`, `denoise_motion`, `solve_ik`, `fit`) take tensors and return dataclasses; they
never touch the filesystem. `optimize` is the annealed-prior optimiser they share, for your own loops.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Part": ("dposer_cli.core.parts", "Part"),
    "PARTS": ("dposer_cli.core.parts", "PARTS"),
    "DposerError": ("dposer_cli.core.errors", "DposerError"),
    "DPoserPrior": ("dposer_cli.engine.prior", "DPoserPrior"),
    "load_prior": ("dposer_cli.engine.prior", "load_prior"),
    "build_prior": ("dposer_cli.engine.priors", "build_prior"),
    "load_body": ("dposer_cli.bodies.loader", "load_body"),
    # the one optimiser
    "optimize": ("dposer_cli.engine.optimize", "optimize"),
    "Stage": ("dposer_cli.engine.optimize", "Stage"),
    "PriorSchedule": ("dposer_cli.engine.optimize", "PriorSchedule"),
    "T_RANGES": ("dposer_cli.engine.optimize", "T_RANGES"),
    # tasks: tensors in, dataclasses out
    "sample": ("dposer_cli.tasks.sample", "sample"),
    "SampleResult": ("dposer_cli.tasks.sample", "SampleResult"),
    "complete": ("dposer_cli.tasks.complete", "complete"),
    "resolve_masking": ("dposer_cli.tasks.complete", "resolve_masking"),
    "CompleteResult": ("dposer_cli.tasks.complete", "CompleteResult"),
    "denoise_motion": ("dposer_cli.tasks.denoise_motion", "denoise_motion"),
    "MotionResult": ("dposer_cli.tasks.denoise_motion", "MotionResult"),
    "IKProblem": ("dposer_cli.tasks.ik", "IKProblem"),
    "solve_ik": ("dposer_cli.tasks.ik", "solve_ik"),
    "IKResult": ("dposer_cli.tasks.ik", "IKResult"),
    "fit": ("dposer_cli.tasks.fit", "fit"),
    "FitInput": ("dposer_cli.tasks.fit", "FitInput"),
    "FitResult": ("dposer_cli.tasks.fit", "FitResult"),
}

if TYPE_CHECKING:  # editors and type checkers see the real names; at run time they load on first use
    from dposer_cli.bodies import load_body
    from dposer_cli.core.errors import DposerError
    from dposer_cli.core.parts import PARTS, Part
    from dposer_cli.engine.optimize import T_RANGES, PriorSchedule, Stage, optimize
    from dposer_cli.engine.prior import DPoserPrior, load_prior
    from dposer_cli.engine.priors import build_prior
    from dposer_cli.tasks.complete import CompleteResult, complete, resolve_masking
    from dposer_cli.tasks.denoise_motion import MotionResult, denoise_motion
    from dposer_cli.tasks.fit import FitInput, FitResult, fit
    from dposer_cli.tasks.ik import IKProblem, IKResult, solve_ik
    from dposer_cli.tasks.sample import SampleResult, sample

__all__ = [
    "__version__",
    "Part",
    "PARTS",
    "DposerError",
    "DPoserPrior",
    "load_prior",
    "build_prior",
    "load_body",
    "optimize",
    "Stage",
    "PriorSchedule",
    "T_RANGES",
    "sample",
    "SampleResult",
    "complete",
    "resolve_masking",
    "CompleteResult",
    "denoise_motion",
    "MotionResult",
    "IKProblem",
    "solve_ik",
    "IKResult",
    "fit",
    "FitInput",
    "FitResult",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dposer_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
