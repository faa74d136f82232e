"""dposer: the DPoser-X diffusion pose prior as a command-line tool and Python API.

Public API (imported lazily so `dposer --help` never imports torch):

    from dposer_cli import DPoserPrior, Part, load_body
    prior = DPoserPrior.load("body")
    poses = prior.sample(10)
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Part": ("dposer_cli.core.parts", "Part"),
    "PARTS": ("dposer_cli.core.parts", "PARTS"),
    "DPoserPrior": ("dposer_cli.engine.prior", "DPoserPrior"),
    "load_prior": ("dposer_cli.engine.prior", "load_prior"),
    "load_body": ("dposer_cli.bodies.base", "load_body"),
    "DposerError": ("dposer_cli.core.errors", "DposerError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dposer_cli' has no attribute {name!r}")
