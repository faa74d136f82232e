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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.errors import AssetMismatchError, InputError, UnsafeFileError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.nets import NETS, build_net, infer_net_config
from dposer_cli.engine.normalize import check_statistics
from dposer_cli.engine.sde import SDES

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
        # torch's notes (old pickle protocols, ...) would print before our one line: silence them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(
                io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_restricted
            )
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


def _show(value: Any, limit: int = 60) -> str:
    """`repr(value)`, shortened: a crafted file may hold a huge object where a setting belongs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """'a list', 'an int', 'an inert stand-in for mod.Thing' (what a value is, for an error line)."""
    if isinstance(value, InertObject):
        return f"an inert stand-in for {value._pickle_name}"
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _tensor_dict(path: Path, value: Any, name: str, *, only: str | None = None) -> dict[str, Tensor]:
    """`value` as a state dict: a mapping from parameter names to tensors (`only`: the prefix of the entries
    that must be tensors; the rest are not loaded and may hold anything, as Lightning's do).

    Raises:
        AssetMismatchError: not a mapping, a key that is not a name, or a value that is not a tensor.
    """
    what = f"{path}: `{name}` is not a mapping of parameter names to tensors"
    if not isinstance(value, dict):
        raise AssetMismatchError(f"{what} (it is {_kind(value)})")
    for key, item in value.items():
        if not isinstance(key, str):
            raise AssetMismatchError(f"{what} (key {_show(key)} is {_kind(key)}, not a name)")
        if (only is None or key.startswith(only)) and not isinstance(item, Tensor):
            raise AssetMismatchError(f"{what} ({key!r} holds {_kind(item)}, not a tensor)")
    return value


def _choice(path: Path, name: str, value: Any, accepted: list[str] | tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in accepted:
        raise AssetMismatchError(f"{path}: {name} is {_show(value)}; expected one of {', '.join(accepted)}")
    return value


def _whole(path: Path, name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise AssetMismatchError(f"{path}: {name} is {_show(value)}; expected a whole number ≥ {lo}")
    return value


def _finite(path: Path, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise AssetMismatchError(f"{path}: {name} is {_show(value)}; expected a finite number ≥ 0")
    return float(value)


def _flag(path: Path, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AssetMismatchError(f"{path}: {name} is {_show(value)}; expected true or false")
    return value


MAX_NUM_SCALES = 100_000  # sigma-table length / discretisation steps a config may ask for
ROT_REPS = ("axis",)  # rotation representations a prior may be trained on


def _scales(path: Path, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_NUM_SCALES:
        raise AssetMismatchError(f"{path}: {name} is {_show(value)}; expected 2..{MAX_NUM_SCALES}")
    return value


def _three(path: Path, name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise AssetMismatchError(
            f"{path}: {name} is {_show(value)}; expected 3 whole numbers (body, hand, face)"
        )
    return tuple(_whole(path, f"{name}[{i}]", v, 1) for i, v in enumerate(value))


def _one_of(accepted: list[str] | tuple[str, ...]) -> Callable[[Path, str, Any], Any]:
    return lambda path, name, value: _choice(path, name, value, accepted)


def _at_least(lo: int) -> Callable[[Path, str, Any], Any]:
    return lambda path, name, value: _whole(path, name, value, lo)


# every setting a dposer/1 config may hold, with its check (the values select code or size tensors)
_SETTINGS: dict[str, dict[str, Callable[[Path, str, Any], Any] | None]] = {
    "config": {
        "part": _one_of([p.value for p in Part]),
        "rot_rep": _one_of(ROT_REPS),
        "sde": None,  # sections: checked below
        "net": None,
    },
    "config.sde": {
        "kind": _one_of(list(SDES)),
        "beta_min": _finite,
        "beta_max": _finite,
        "sigma_min": _finite,
        "sigma_max": _finite,
        "num_scales": _scales,
    },
    "config.net": {
        "kind": _one_of(list(NETS)),
        "dim": _at_least(1),
        "hidden_dim": _at_least(1),
        "embed_dim": _at_least(1),
        "n_blocks": _at_least(0),
        "dropout": _finite,
        "sigma_min": _finite,
        "sigma_max": _finite,
        "num_scales": _scales,
        "scale_by_sigma": _flag,
        "gaussian_skip": _flag,
        "part_hidden": _three,
        "part_embed": _three,
    },
}


def _config_from_dict(path: Path, data: Any) -> PriorConfig:
    """A dposer checkpoint's `config` as a `PriorConfig`, every value checked for its type and range before
    anything is built from it (sizes against the weights: `_check_config`).

    Raises:
        AssetMismatchError: not a mapping, a key that is not text or not known, a value of the wrong type, an
            unknown kind, a non-finite or out-of-range number.
    """
    sections: list[tuple[str, Any]] = [("config", data)]
    if isinstance(data, dict):
        sections += [(f"config.{k}", data[k]) for k in ("sde", "net") if k in data]
    for name, section in sections:
        if not isinstance(section, dict):
            raise AssetMismatchError(f"{path}: {name} is {_kind(section)}; expected a mapping of settings")
        bad = next((k for k in section if not isinstance(k, str)), None)
        if bad is not None:
            raise AssetMismatchError(f"{path}: {name} has a key {_show(bad)} that is not a setting name")
        for key, value in section.items():
            check = _SETTINGS[name].get(key)
            if check is not None:  # unknown keys: refused by `from_dict`, with a suggestion
                check(path, f"{name}.{key}", value)
    try:
        return PriorConfig.from_dict(data)
    except AssetMismatchError as exc:  # an unknown key: name the file
        raise AssetMismatchError(f"{path}: {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise AssetMismatchError(f"{path}: malformed dposer checkpoint config ({exc})") from None


def _infer(path: Path, model: dict[str, Tensor]) -> NetConfig:
    try:
        return infer_net_config(model)
    except KeyError as exc:
        raise AssetMismatchError(
            f"{path}: network weights lack {exc.args[0]!r} (not a TimeFC/whole-body prior)"
        ) from None
    except IndexError:  # a weight with too few dims
        raise AssetMismatchError(
            f"{path}: network weights have the wrong number of dimensions (not a TimeFC/whole-body prior)"
        ) from None


def _check_widths(path: Path, net: NetConfig, where: str) -> None:
    """Sizes a network can be built with: widths are GroupNorm(32)'d, the time embedding needs ≥ 4 dims."""
    widths = [("hidden_dim", net.hidden_dim)]
    embeds = [("embed_dim", net.embed_dim)]
    if net.kind == "wholebody":
        widths += [(f"part_hidden[{i}]", v) for i, v in enumerate(net.part_hidden)]
        embeds += [(f"part_embed[{i}]", v) for i, v in enumerate(net.part_embed)]
    for name, value in widths:
        if value < 32 or value % 32:
            raise AssetMismatchError(
                f"{path}: {where}.{name} is {value}; expected a multiple of 32 (the GroupNorm groups)"
            )
    for name, value in embeds:
        if value < 4:
            raise AssetMismatchError(f"{path}: {where}.{name} is {value}; expected at least 4")


def _expected(net_cfg: NetConfig) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Shapes of the network's state dict and its trainable parameter names (registration order)."""
    net = build_net(net_cfg)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return shapes, [n for n, p in net.named_parameters() if p.requires_grad]


def _check_weights(
    path: Path, part: Part, model: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]
) -> None:
    """The weights are exactly the network's (names and shapes), and its σ table is usable.

    Raises:
        AssetMismatchError: a missing or unexpected tensor, a wrong shape, a σ table that is not finite > 0.
    """
    missing, unexpected = set(shapes) - set(model), set(model) - set(shapes)
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise AssetMismatchError(f"{path}: weights do not match the {part.value} network ({detail})")
    for key, shape in shapes.items():
        if tuple(model[key].shape) != shape:
            raise AssetMismatchError(f"{path}: {key} has shape {tuple(model[key].shape)}, expected {shape}")
        if key.split(".")[-1] == "sigmas" and not bool(
            (torch.isfinite(model[key].float()) & (model[key] > 0)).all()
        ):
            raise AssetMismatchError(f"{path}: {key} (the σ table) must be finite and > 0 everywhere")


def _named_ema(
    path: Path, model: dict[str, Tensor], shadow: Any, names: list[str], where: str
) -> dict[str, Tensor]:
    """Map the positional official EMA list onto parameter names (registration order, trainable only)."""
    if not isinstance(shadow, list | tuple) or not all(isinstance(t, Tensor) for t in shadow):
        raise AssetMismatchError(f"{path}: {where}.shadow_params is not a list of tensors")
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


def _check_config(path: Path, config: PriorConfig, model: dict[str, Tensor], part: Part) -> None:
    """A saved config (its values checked by `_config_from_dict`) must describe the saved weights: sizes are read
    back from the tensors, so an absurd width (which would allocate terabytes when the network is built) is
    refused before anything is built; ranges that depend on each other are checked here.

    Raises:
        AssetMismatchError: another part, a size that differs from the weights, an out-of-range number.
    """
    net, sde = config.net, config.sde
    if config.part != part.value:
        raise AssetMismatchError(
            f"{path}: config.part is {config.part!r} but the checkpoint holds a {part.value} prior"
        )
    if net.dim != PARTS[part].dim:
        raise AssetMismatchError(
            f"{path}: config.net.dim is {net.dim}; a {part.value} prior has {PARTS[part].dim}"
        )
    inferred = _infer(path, model)
    fields = ("kind", "hidden_dim", "embed_dim", "n_blocks") + (
        ("part_hidden", "part_embed") if net.kind == "wholebody" else ()
    )
    for name in fields:
        want, got = getattr(net, name), getattr(inferred, name)
        if want != got:
            raise AssetMismatchError(
                f"{path}: config.net.{name} is {want!r} but the saved weights have {got!r}"
            )
    _check_widths(path, net, "config.net")
    for key, tensor in model.items():
        if key.split(".")[-1] == "sigmas" and tuple(tensor.shape) != (net.num_scales,):
            raise AssetMismatchError(
                f"{path}: config.net.num_scales is {net.num_scales} but {key} has shape {tuple(tensor.shape)}"
            )
    if not net.dropout < 1:
        raise AssetMismatchError(f"{path}: config.net.dropout is {net.dropout!r}; expected 0 ≤ dropout < 1")
    if not sde.beta_min <= sde.beta_max or sde.beta_max <= 0:
        raise AssetMismatchError(
            f"{path}: config.sde.beta_min/beta_max are {sde.beta_min!r}/{sde.beta_max!r}; "
            "expected 0 ≤ beta_min ≤ beta_max and beta_max > 0"
        )
    for owner, obj in (("sde", sde), ("net", net)):
        if not 0 < obj.sigma_min < obj.sigma_max:
            raise AssetMismatchError(
                f"{path}: config.{owner}.sigma_min/sigma_max are {obj.sigma_min!r}/{obj.sigma_max!r}; "
                "expected 0 < sigma_min < sigma_max"
            )


def _check_extra(path: Path, raw: dict[str, Any]) -> None:
    """The bookkeeping `dposer train` stores and other commands read: step, healthy, health_reasons."""
    if "step" in raw:
        _whole(path, "step", raw["step"], 0)
    if raw.get("healthy") is not None:
        _flag(path, "healthy", raw["healthy"])
    reasons = raw.get("health_reasons")
    if reasons is not None and (
        not isinstance(reasons, list | tuple) or not all(isinstance(r, str) for r in reasons)
    ):
        raise AssetMismatchError(f"{path}: health_reasons is {_show(reasons)}; expected a list of texts")


def _read_ours(path: Path, raw: dict[str, Any], wanted: Part | None) -> Checkpoint:
    """Our format: every field is checked here, so nothing that uses the checkpoint can fail on it later."""
    found = Part(_choice(path, "part", raw.get("part"), [p.value for p in Part]))
    if "config" not in raw:
        raise AssetMismatchError(f"{path}: malformed dposer checkpoint (no `config`)")
    config = _config_from_dict(path, raw["config"])
    _check_part(path, found, wanted)
    model = _tensor_dict(path, raw.get("model"), "model")
    _check_config(path, config, model, found)
    shapes, _ = _expected(config.net)
    _check_weights(path, found, model, shapes)
    ema = None
    if raw.get("ema") is not None:
        ema = _tensor_dict(path, raw["ema"], "ema")
        for key, tensor in ema.items():
            if key not in model:
                raise AssetMismatchError(f"{path}: EMA tensor {key!r} is not a weight of the network")
            if tuple(tensor.shape) != tuple(model[key].shape):
                raise AssetMismatchError(
                    f"{path}: EMA tensor for {key} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(model[key].shape)}"
                )
    stats = raw.get("normalizer")
    if stats is not None:
        if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
            raise AssetMismatchError(f"{path}: malformed normaliser (expected mean and std tensors)")
        try:
            mean, std = (torch.as_tensor(stats[k], dtype=torch.float32) for k in ("mean", "std"))
        except (TypeError, ValueError, RuntimeError):
            raise AssetMismatchError(f"{path}: malformed normaliser (mean and std are not numbers)") from None
        check_statistics(mean, std, PARTS[found].dim, f"{path}: normaliser")
        stats = {"mean": mean, "std": std}
    _check_extra(path, raw)
    extra = {
        k: v for k, v in raw.items() if k not in {"format", "part", "config", "model", "ema", "normalizer"}
    }
    return Checkpoint(
        path,
        FORMAT,
        found,
        config,
        {k: v.float() for k, v in model.items()},
        {k: v.float() for k, v in ema.items()} if ema else None,
        stats,
        extra,
    )


def read_checkpoint(path: Path, part: Part | str | None = None) -> Checkpoint:
    """Read a prior checkpoint; `part` (if given) must match what the file holds.

    Everything a prior is built from is checked here (config values, state-dict types, names and shapes, EMA,
    normaliser statistics), so a crafted or damaged file fails with one line naming the file and the field.

    Raises:
        InputError: the file is missing.
        AssetMismatchError: corrupt, unsafe, wrong part, or unexpected keys/shapes/settings.
    """
    path = Path(path)
    wanted = Part(part) if part is not None else None
    raw = _torch_load(path)
    if not isinstance(raw, dict):
        raise AssetMismatchError(f"{path} does not hold a checkpoint dictionary")
    if raw.get("format") == FORMAT:
        return _read_ours(path, raw, wanted)

    if "state_dict" in raw:  # official Lightning checkpoint (spec §2.7)
        state = _tensor_dict(path, raw["state_dict"], "state_dict", only="model.")
        model = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        fmt, ema_key = "official-lightning", "model_ema"
    elif "model_state_dict" in raw:  # DPoser v1 .pth
        model = dict(_tensor_dict(path, raw["model_state_dict"], "model_state_dict"))
        fmt, ema_key = "dposer-v1", "ema"
    else:
        keys = ", ".join(sorted(str(k) for k in raw)[:8])
        raise AssetMismatchError(f"{path}: not a DPoser checkpoint (top-level keys: {keys})")
    ema_state = raw.get(ema_key)  # the EMA's state_dict(): {"decay", "num_updates", "shadow_params"}
    if ema_state is not None and not isinstance(ema_state, dict):
        raise AssetMismatchError(
            f"{path}: `{ema_key}` is {_kind(ema_state)}; expected the EMA's state (a mapping)"
        )
    shadow = ema_state.get("shadow_params") if ema_state is not None else None
    net_cfg = _infer(path, model)
    by_dim = _part_from_dim(net_cfg.dim)
    if by_dim is None:
        raise AssetMismatchError(f"{path}: network dimension {net_cfg.dim} matches no part")
    found = by_dim
    _check_part(path, found, wanted)
    _check_widths(path, net_cfg, "network (read from the weights)")
    config = PriorConfig(part=found.value, net=net_cfg)
    shapes, trainable = _expected(config.net)
    model = {k: v for k, v in model.items() if k in shapes or not k.startswith("pre_dense_cond")}
    _check_weights(path, found, model, shapes)
    empty = shadow is None or (isinstance(shadow, list | tuple) and not shadow)
    ema = None if empty else _named_ema(path, model, shadow, trainable, ema_key)
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
