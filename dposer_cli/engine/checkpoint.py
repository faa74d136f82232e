"""Reading and writing prior checkpoints: ours (`dposer/1`) and the official Lightning `last.ckpt`.

Official files pickle an `ml_collections.ConfigDict`, so `weights_only=True` cannot read them. We
use a restricted unpickler instead: tensors, storages and plain containers are rebuilt, classes from
unknown modules become inert placeholders (never imported), and anything that could run code
(os, subprocess, builtins.eval, ...) is refused.
"""

import io
import math
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dposer_cli.core.config import PriorConfig
from dposer_cli.core.errors import AssetMismatchError, InputError, UnsafeFileError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.nets import build_net, infer_net_config

FORMAT = "dposer/1"

# (module, name) pairs the unpickler may import: what torch.save needs for tensors + plain containers
_ALLOWED: set[tuple[str, str]] = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "int"), ("builtins", "float"),
    ("builtins", "bool"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"), ("torch", "device"), ("torch", "dtype"), ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"), ("torch._utils", "_rebuild_qtensor"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}  # fmt: skip
_STORAGE_NAMES = {
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "UntypedStorage",
}
# modules whose members can execute code or touch the system: refused outright, never stubbed
_DANGEROUS = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "builtins",
    "importlib",
    "shutil",
    "socket",
    "runpy",
    "pickle",
    "marshal",
    "types",
    "functools",
    "operator",
    "code",
    "pty",
    "ctypes",
    "webbrowser",
    "torch",
    "numpy",
    "io",
    "pathlib",
    "tempfile",
    "multiprocessing",
    "threading",
    "signal",
    "codecs",
    "_codecs",
    "__builtin__",
    "commands",
    "platform",
    "inspect",
    "asyncio",
    "http",
    "urllib",
)


class InertObject:
    """Stand-in for a pickled object of a class we do not import (e.g. ml_collections.ConfigDict)."""

    _pickle_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "InertObject":
        return type(self)(*args)

    def __repr__(self) -> str:
        return f"<inert {self._pickle_name}>"


class RefusedPickle(Exception):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if (
            module == "torch"
            and name in _STORAGE_NAMES
            or module == "torch.storage"
            and name == "TypedStorage"
        ):
            return super().find_class(module, name)
        root = module.split(".")[0]
        if root in _DANGEROUS:
            raise RefusedPickle(f"{module}.{name}")
        return type(name, (InertObject,), {"_pickle_name": f"{module}.{name}"})


_restricted = types.ModuleType("dposer_restricted_pickle")
_restricted.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
_restricted.__name__ = "dposer_restricted_pickle"


@dataclass
class Checkpoint:
    """A checkpoint read from disk, reduced to what a prior needs."""

    path: Path
    format: str  # "dposer/1" | "official-lightning" | "dposer-v1"
    part: Part
    config: PriorConfig
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None  # named EMA weights of the trainable parameters
    normalizer: dict[str, Tensor] | None  # {"mean": (D,), "std": (D,)} in raw (mirrored) space
    extra: dict[str, Any] = field(default_factory=dict)  # step, optimizer, rng, train config (ours only)


def _torch_load(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"checkpoint {path} is a folder; give the .pt/.ckpt file") from None
    except OSError as exc:
        raise InputError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:  # our own format: plain containers + tensors
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - fall through to the restricted unpickler
        pass
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_restricted)
    except RefusedPickle as exc:
        raise UnsafeFileError(
            f"refusing to load {path}: it contains a pickled reference to {exc} that could run code",
            hint="only load checkpoints from sources you trust; official and dposer checkpoints never contain this",
        ) from None
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        UnicodeDecodeError,
    ) as exc:
        raise AssetMismatchError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})"
        ) from None


def load_pickled(path: Path) -> Any:
    """Any PyTorch file (tensors, containers) read as `read_checkpoint` reads one: `weights_only` first, then
    the restricted unpickler (foreign classes become inert stand-ins, code-running references are refused).

    Raises:
        InputError: the file is missing or unreadable.
        AssetMismatchError: not a PyTorch file, or it references code.
    """
    return _torch_load(Path(path))


def _part_from_dim(dim: int) -> Part | None:
    return (
        next((p for p, s in PARTS.items() if s.dim == dim and p is not Part.face_shape), None)
        if dim != 100
        else Part.face_shape
    )


def _check_part(path: Path, found: Part, wanted: Part | None) -> Part:
    if wanted is not None and Part(wanted) is not found:
        raise AssetMismatchError(
            f"{path} is a {found.value} prior (dim {PARTS[found].dim}), not {Part(wanted).value} "
            f"(dim {PARTS[Part(wanted)].dim})",
            hint=f"use --part {found.value} or a {Part(wanted).value} checkpoint",
        )
    return found


def _named_ema(
    config: PriorConfig, model: dict[str, Tensor], shadow: list[Tensor], path: Path
) -> dict[str, Tensor]:
    """Map the positional official EMA list onto parameter names (registration order, trainable only)."""
    net = build_net(config.net)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if len(shadow) != len(names):
        raise AssetMismatchError(
            f"{path}: EMA list has {len(shadow)} tensors; the network has {len(names)} trainable parameters"
        )
    out = {}
    for name, tensor in zip(names, shadow, strict=True):
        if tuple(tensor.shape) != tuple(model[name].shape):
            raise AssetMismatchError(
                f"{path}: EMA tensor for {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(model[name].shape)}"
            )
        out[name] = tensor.float()
    return out


MAX_NUM_SCALES = 100_000  # sigma-table length / discretisation steps a config may ask for


def _check_config(path: Path, config: PriorConfig, model: dict[str, Tensor], part: Part) -> None:
    """A saved config must describe the saved weights: sizes are read back from the tensors, so an absurd
    width (which would allocate terabytes when the network is built) is refused before anything is built.

    Raises:
        AssetMismatchError: a size that differs from the weights, a non-finite or out-of-range number.
    """
    net, sde = config.net, config.sde
    if net.kind not in ("timefc", "wholebody"):
        raise AssetMismatchError(
            f"{path}: config.net.kind {net.kind!r} is not a known network (timefc, wholebody)"
        )
    if net.dim != PARTS[part].dim:
        raise AssetMismatchError(
            f"{path}: config.net.dim is {net.dim}; a {part.value} prior has {PARTS[part].dim}"
        )
    try:
        inferred = infer_net_config(model)
    except (KeyError, IndexError) as exc:
        raise AssetMismatchError(
            f"{path}: network weights lack {exc.args[0]!r} (not a TimeFC/whole-body prior)"
        ) from None
    fields = ("kind", "hidden_dim", "embed_dim", "n_blocks") + (
        ("part_hidden", "part_embed") if net.kind == "wholebody" else ()
    )
    for name in fields:
        want, got = getattr(net, name), getattr(inferred, name)
        if (tuple(want) if isinstance(want, tuple | list) else want) != got:
            raise AssetMismatchError(
                f"{path}: config.net.{name} is {want!r} but the saved weights have {got!r}"
            )
    for owner, name in (("sde", "num_scales"), ("net", "num_scales")):
        value = getattr(getattr(config, owner), name)
        if not isinstance(value, int) or not 2 <= value <= MAX_NUM_SCALES:
            raise AssetMismatchError(
                f"{path}: config.{owner}.{name} is {value!r}; expected 2..{MAX_NUM_SCALES}"
            )
    for key, tensor in model.items():
        if key.split(".")[-1] == "sigmas" and tuple(tensor.shape) != (net.num_scales,):
            raise AssetMismatchError(
                f"{path}: config.net.num_scales is {net.num_scales} but {key} has shape {tuple(tensor.shape)}"
            )
    for owner, obj, names in (
        ("sde", sde, ("beta_min", "beta_max", "sigma_min", "sigma_max")),
        ("net", net, ("sigma_min", "sigma_max", "dropout")),
    ):
        for name in names:
            value = getattr(obj, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise AssetMismatchError(
                    f"{path}: config.{owner}.{name} is {value!r}; expected a finite number ≥ 0"
                )
    if not net.dropout < 1:
        raise AssetMismatchError(f"{path}: config.net.dropout is {net.dropout!r}; expected 0 ≤ dropout < 1")


def read_checkpoint(path: Path, part: Part | str | None = None) -> Checkpoint:
    """Read a prior checkpoint; `part` (if given) must match what the file holds.

    Raises:
        InputError: the file is missing.
        AssetMismatchError: corrupt, unsafe, wrong part, or unexpected keys/shapes.
    """
    path = Path(path)
    wanted = Part(part) if part is not None else None
    raw = _torch_load(path)
    if not isinstance(raw, dict):
        raise AssetMismatchError(f"{path} does not hold a checkpoint dictionary")
    if raw.get("format") == FORMAT:
        try:
            config = PriorConfig.from_dict(raw["config"])
            found = Part(raw["part"])
        except (KeyError, ValueError, TypeError) as exc:
            raise AssetMismatchError(f"{path}: malformed dposer checkpoint ({exc})") from None
        _check_part(path, found, wanted)
        if not isinstance(raw.get("model"), dict) or not all(
            isinstance(v, Tensor) for v in raw["model"].values()
        ):
            raise AssetMismatchError(
                f"{path}: malformed dposer checkpoint (`model` is not a dict of tensors)"
            )
        _check_config(path, config, raw["model"], found)
        model = {k: v.float() for k, v in raw["model"].items()}
        ema = {k: v.float() for k, v in raw["ema"].items()} if raw.get("ema") else None
        extra = {
            k: v
            for k, v in raw.items()
            if k not in {"format", "part", "config", "model", "ema", "normalizer"}
        }
        return Checkpoint(path, FORMAT, found, config, model, ema, raw.get("normalizer"), extra)

    if "state_dict" in raw:  # official Lightning checkpoint (spec §2.7)
        model = {
            k[len("model.") :]: v
            for k, v in raw["state_dict"].items()
            if isinstance(k, str) and k.startswith("model.") and isinstance(v, Tensor)
        }
        fmt = "official-lightning"
        shadow = (
            (raw.get("model_ema") or {}).get("shadow_params")
            if isinstance(raw.get("model_ema"), dict)
            else None
        )
    elif "model_state_dict" in raw:  # DPoser v1 .pth
        model = {k: v for k, v in raw["model_state_dict"].items() if isinstance(v, Tensor)}
        fmt = "dposer-v1"
        ema_obj = raw.get("ema")
        shadow = ema_obj.get("shadow_params") if isinstance(ema_obj, dict) else None
    else:
        keys = ", ".join(sorted(str(k) for k in raw)[:8])
        raise AssetMismatchError(f"{path}: not a DPoser checkpoint (top-level keys: {keys})")
    try:
        net_cfg = infer_net_config(model)
    except KeyError as exc:
        raise AssetMismatchError(
            f"{path}: network weights lack {exc.args[0]!r} (not a TimeFC/whole-body prior)"
        ) from None
    by_dim = _part_from_dim(net_cfg.dim)
    if by_dim is None:
        raise AssetMismatchError(f"{path}: network dimension {net_cfg.dim} matches no part")
    found = by_dim
    _check_part(path, found, wanted)
    config = PriorConfig(part=found.value, net=net_cfg)
    net = build_net(config.net)
    expected = set(net.state_dict())
    model = {k: v for k, v in model.items() if k in expected or not k.startswith("pre_dense_cond")}
    missing, unexpected = expected - set(model), set(model) - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise AssetMismatchError(f"{path}: weights do not match the {found.value} network ({detail})")
    for k, v in net.state_dict().items():
        if tuple(v.shape) != tuple(model[k].shape):
            raise AssetMismatchError(
                f"{path}: {k} has shape {tuple(model[k].shape)}, expected {tuple(v.shape)}"
            )
    ema = _named_ema(config, model, list(shadow), path) if shadow else None
    return Checkpoint(path, fmt, found, config, {k: v.float() for k, v in model.items()}, ema, None, {})


def save_checkpoint(
    path: Path,
    *,
    part: Part,
    config: PriorConfig,
    model: dict[str, Tensor],
    ema: dict[str, Tensor] | None,
    normalizer: dict[str, Tensor] | None,
    half: bool = False,
    **extra: Any,
) -> Path:
    """Write our checkpoint format atomically (readable with `torch.load(weights_only=True)`)."""
    from dposer_cli.core.paths import atomic_write

    def cast(sd: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        if sd is None:
            return None
        return {
            k: (
                v.detach().cpu().half()
                if half and v.is_floating_point() and k != "sigmas" and not k.endswith(".sigmas")
                else v.detach().cpu()
            )
            for k, v in sd.items()
        }

    payload = {
        "format": FORMAT,
        "part": Part(part).value,
        "config": config.to_dict(),
        "model": cast(model),
        "ema": cast(ema),
        "normalizer": {k: v.detach().cpu() for k, v in normalizer.items()} if normalizer else None,
        **extra,
    }
    with atomic_write(Path(path)) as fh:
        torch.save(payload, fh)
    return Path(path)
