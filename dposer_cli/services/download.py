"""`dposer download`: official checkpoints from the Hugging Face Hub plus the normaliser statistics they need.

The shell around `dposer_cli.io.hub` (spec §12): plan the files of the asked parts, fetch the missing ones
(files already present are never re-fetched, no network at all, unless `force`), verify each before it is
installed (a checkpoint must load as its part's prior, a normaliser must hold statistics of its segment's
length) and report what is where; `inventory` (`--list` / `--check`) says which prior each command will use.
"""

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dposer_cli.core.errors import AssetMismatchError, DposerError, InputError, suggest
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import (
    HUB_REPO,
    demo_checkpoint,
    models_dir,
    official_checkpoint,
    official_dir,
    official_normalizer_file,
)
from dposer_cli.core.result import Result
from dposer_cli.io.hub import NORMALIZER_FILE, TIMEOUT_S, Asset, Fetcher, HubSource, body_models, plan

ALL = "all"
# parts another part pulls in (the official downloader fetched face_shape along with face)
_IMPLIED: dict[Part, tuple[Part, ...]] = {Part.face: (Part.face_shape,)}


@dataclass(frozen=True)
class DownloadRequest:
    """What to fetch and from where; None fields resolve from the environment when `run` is called."""

    parts: tuple[str, ...] = (ALL,)  # Part values and/or "all"
    models_dir: Path | None = (
        None  # default: $DPOSER_MODELS_DIR, the checkout's models_cache/, ~/.cache/dposer
    )
    revision: str | None = None  # Hub branch/tag/commit; default DEFAULT_REVISION
    force: bool = False  # fetch again even when present
    endpoint: str | None = None  # Hub endpoint; default $HF_ENDPOINT, else huggingface.co
    normalizer_url: str | None = None  # default $DPOSER_NORMALIZER_URL, else NORMALIZER_URL
    offline: bool | None = None  # default: $HF_HUB_OFFLINE
    cache_dir: Path | None = None  # Hugging Face cache to reuse; default huggingface_hub's ($HF_HOME/hub)
    timeout: float = TIMEOUT_S


def resolve_parts(names: Iterable[str]) -> tuple[Part, ...]:
    """Expand `all` and implied parts (face → face-shape), in PARTS order.

    Raises:
        InputError: an unknown part name.
    """
    wanted: set[Part] = set()
    for name in list(names) or [ALL]:
        name = getattr(name, "value", name)
        if name == ALL:
            wanted.update(PARTS)
            continue
        try:
            part = Part(name)
        except ValueError:
            valid = [p.value for p in Part] + [ALL]
            raise InputError(
                f"unknown part {name!r}{suggest(name, valid)}", hint="parts: " + ", ".join(valid)
            ) from None
        wanted.add(part)
        wanted.update(_IMPLIED.get(part, ()))
    return tuple(p for p in PARTS if p in wanted)


def run(req: DownloadRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Fetch, verify and install the official files for `req.parts`; a no-op when all are present.

    Raises:
        UnavailableError: offline or a host unreachable, for files not in any cache (the message says where to
            put them by hand); the files that could be fetched are installed.
        MissingAssetError: a file is not on the server (404).
        AssetMismatchError: a downloaded file fails its checksum or does not load for its part (it is moved
            aside to `<name>.invalid`, never left in place).
        InputError: unknown part, unknown revision, unwritable models folder.
    """
    t0 = time.perf_counter()
    parts = resolve_parts(req.parts)
    root = Path(req.models_dir).expanduser() if req.models_dir is not None else models_dir()
    source = HubSource.from_env(
        revision=req.revision,
        endpoint=req.endpoint,
        normalizer_url=req.normalizer_url,
        offline=req.offline,
        cache_dir=req.cache_dir,
        timeout=req.timeout,
    )
    assets = plan(parts, root)
    records = {
        a.name: {
            "kind": a.kind,
            "name": a.name,
            "path": a.path,
            "parts": [p.value for p in a.parts],
            "status": "present",
        }
        for a in assets
    }
    # check files first: when everything is here, no connection is made at all
    todo = [a for a in assets if req.force or not a.path.is_file()]
    written: list[Path] = []
    with Fetcher(source, root, _check_file, force=req.force, progress=progress) as fetcher:
        for asset in todo:
            info = fetcher.fetch(asset)
            records[asset.name].update(info)
            if info["status"] != "unavailable":
                written.append(asset.path)
    if fetcher.unfetched:
        raise fetcher.unavailable()

    if todo:
        counts: dict[str, int] = {}
        for r in records.values():
            status = str(r["status"])
            counts[status] = counts.get(status, 0) + 1
        lines = [f"{official_dir(root)}: " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    else:
        lines = [
            (
                f"all {len(assets)} files for {', '.join(p.value for p in parts)} already present in "
                f"{official_dir(root)} (use --force to fetch them again)"
            )
        ]
    if req.models_dir is not None and root.resolve() != models_dir().resolve():
        lines.append(
            f"note: other commands look in {models_dir()}; set DPOSER_MODELS_DIR={root} to use these files"
        )
    return Result(
        command="download",
        outputs={"files": written} if written else {},
        info={
            "models_dir": root,
            "official_dir": official_dir(root),
            "hub_repo": HUB_REPO,
            "revision": source.revision,
            "normalizer_url": source.normalizer_url,
            "parts": [p.value for p in parts],
            "files": list(records.values()),
        },
        lines=lines,
        seconds=time.perf_counter() - t0,
    )


def _check_file(asset: Asset, path: Path) -> str | None:
    """Why a fetched file is unusable, or None: a checkpoint must load as its part's prior (key names, shapes,
    EMA list length); a normaliser must hold mean_poses / std_poses of its segment's length (weights only)."""
    import torch  # here: `download --list` and plain downloads need no torch (~1 s of start-up)

    from dposer_cli.engine.checkpoint import read_checkpoint

    if asset.kind == "checkpoint":
        part = asset.parts[0]
        try:
            read_checkpoint(path, part)
        except (AssetMismatchError, InputError) as exc:
            return (
                f"it does not load as the {part.value} prior ({exc.message.replace(str(path), asset.name)})"
            )
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a mismatch
        return f"not a readable torch file ({type(exc).__name__})"
    if not isinstance(data, dict) or "mean_poses" not in data or "std_poses" not in data:
        return "it lacks mean_poses / std_poses"
    sizes = {k: int(torch.as_tensor(data[k]).numel()) for k in ("mean_poses", "std_poses")}
    if set(sizes.values()) != {asset.dim}:
        return f"its statistics have {sizes['mean_poses']} dims, expected {asset.dim}"
    return None


# ---- --list / --check -------------------------------------------------------------------------------------
def inventory(names: Iterable[str] = (), models_root: Path | None = None, *, check: bool = False) -> Result:
    """What is installed for each part and which prior each command will use; `check` also loads every file."""
    t0 = time.perf_counter()
    parts = resolve_parts(names) if list(names) else tuple(PARTS)
    root = Path(models_root).expanduser() if models_root is not None else models_dir()
    bodies = body_models()
    table: dict[str, dict[str, Any]] = {}
    for part in parts:
        spec = PARTS[part]
        ckpt = official_checkpoint(part, root)
        entry: dict[str, Any] = {
            "official_checkpoint": {"file": spec.official_ckpt, "path": ckpt, "present": ckpt.is_file()},
            "normalizers": [
                {
                    "file": f"{s.normalizer}/{NORMALIZER_FILE}",
                    "path": official_normalizer_file(s.normalizer, root),
                    "present": official_normalizer_file(s.normalizer, root).is_file(),
                }
                for s in _unique_segments(part)
            ],
            "demo_prior": {"path": demo_checkpoint(part), "present": demo_checkpoint(part).is_file()},
            "body_model": spec.body_kind,
            "body_model_present": bodies[spec.body_kind]["present"],
        }
        if check:
            _check_files(part, entry)
        entry.update(_prior_choice(part, entry))
        table[part.value] = entry
    lines = [b["instruction"] for b in bodies.values() if not b["present"]]
    lines += [f"{p}: {e['note']}" for p, e in table.items() if e.get("note")]
    if root.resolve() != models_dir().resolve():
        lines.append(
            f"note: other commands look in {models_dir()}; set DPOSER_MODELS_DIR={root} to use {root}"
        )
    return Result(
        command="download",
        info={
            "models_dir": root,
            "official_dir": official_dir(root),
            "checked": check,
            "parts": table,
            "body_models": bodies,
        },
        lines=lines,
        seconds=time.perf_counter() - t0,
    )


def _unique_segments(part: Part) -> list[Any]:
    seen, out = set(), []
    for seg in PARTS[part].segments:
        if seg.normalizer not in seen:
            seen.add(seg.normalizer)
            out.append(seg)
    return out


def _check_files(part: Part, entry: dict[str, Any]) -> None:
    """Load every present file; record `valid` and the one-line error."""
    import torch  # here: see `_check_file`

    from dposer_cli.engine.checkpoint import read_checkpoint

    for key in ("official_checkpoint", "demo_prior"):
        item = entry[key]
        if item["present"]:
            try:
                read_checkpoint(item["path"], part)
                item["valid"] = True
            except DposerError as exc:
                item["valid"], item["error"] = False, exc.message
    dims = {f"{s.normalizer}/{NORMALIZER_FILE}": s.dim for s in PARTS[part].segments}
    for item in entry["normalizers"]:
        if item["present"]:
            try:
                data = torch.load(item["path"], map_location="cpu", weights_only=True)
                ok = all(
                    int(torch.as_tensor(data[k]).numel()) == dims[item["file"]]
                    for k in ("mean_poses", "std_poses")
                )
                item["valid"] = ok
                if not ok:
                    item["error"] = f"statistics are not {dims[item['file']]}-dimensional"
            except Exception as exc:  # noqa: BLE001 - report, do not raise
                item["valid"], item["error"] = False, f"unreadable ({type(exc).__name__})"


def _prior_choice(part: Part, entry: dict[str, Any]) -> dict[str, Any]:
    """Mirror DPoserPrior.load: an official checkpoint wins when present, else the bundled demo prior."""
    ckpt, demo = entry["official_checkpoint"], entry["demo_prior"]
    norms_ok = all(n["present"] and n.get("valid", True) for n in entry["normalizers"])
    if ckpt["present"]:
        if not ckpt.get("valid", True):
            return {
                "prior": "official",
                "usable": False,
                "note": f"the official checkpoint is invalid ({ckpt['error']}); run `dposer download {part.value} --force`",
            }
        if not norms_ok:
            return {
                "prior": "official",
                "usable": False,
                "note": f"the official checkpoint needs its normaliser; run `dposer download {part.value}`",
            }
        return {"prior": "official", "usable": True, "note": None}
    if demo["present"] and demo.get("valid", True):
        return {"prior": "demo", "usable": True, "note": None}
    return {
        "prior": "none",
        "usable": False,
        "note": f"no prior installed; run `dposer download {part.value}` or pass --checkpoint",
    }
