"""Where things live: models cache, official files, demo priors, body models; atomic writes."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEMO_DIR = PACKAGE_DIR / "assets" / "demo"
HUB_REPO = "Moon-bow/DPoser-X"


def models_dir() -> Path:
    """Models cache: $DPOSER_MODELS_DIR, else the checkout's models_cache/, else ~/.cache/dposer."""
    env = os.environ.get("DPOSER_MODELS_DIR")
    if env:
        path = Path(env).expanduser()
        # a file here: every lookup would miss and the demo priors would stand in silently
        if path.exists() and not path.is_dir():
            raise InputError(
                f"DPOSER_MODELS_DIR={env} exists and is not a folder",
                hint="set DPOSER_MODELS_DIR to the models folder (downloads go to DIR/official/) or unset it",
            )
        return path
    checkout = PACKAGE_DIR.parent / "models_cache"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "dposer"


def official_dir(root: Path | None = None) -> Path:
    return (root or models_dir()) / "official"


def official_checkpoint(part: Part, root: Path | None = None) -> Path:
    """Where `dposer download` puts the released checkpoint of `part`."""
    return official_dir(root) / PARTS[part].official_ckpt


def official_normalizer_file(relpath: str, root: Path | None = None) -> Path:
    """Downloaded copy of an official normaliser (`data/.../axis_normalize2.pt`)."""
    return official_dir(root) / relpath / "axis_normalize2.pt"


def demo_checkpoint(part: Part) -> Path:
    """The bundled demo prior (package data, so it is found from a wheel as well)."""
    return DEMO_DIR / f"{part.value}.pt"


def body_model_dirs(explicit: Path | None = None) -> list[Path]:
    """Body-model search order: --body-model, $DPOSER_BODY_MODELS, models_cache/body_models."""
    out = []
    if explicit is not None:
        out.append(Path(explicit).expanduser())
    env = os.environ.get("DPOSER_BODY_MODELS")
    if env:
        out.append(Path(env).expanduser())
    out.append(models_dir() / "body_models")
    return out


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (tests, demo training, benchmarks)."""
    env = os.environ.get("DPOSER_SHARED_DATA")
    return Path(env) if env else PACKAGE_DIR.parent.parent / "shared" / "data"


def ensure_out_dir(path: Path) -> Path:
    """Create an output folder, turning OS errors into one-line InputErrors."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".dposer-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temp file in the same folder, then `os.replace` it into place.

    An interrupted write never leaves a partial file at `path`.

    Raises:
        InputError: `path` is an existing folder, or its folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {path}: a folder of that name is in the way")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
