"""`dposer download`: official checkpoints from the Hugging Face Hub plus the normaliser statistics they need.

The shell around `dposer_cli.io.hub` (spec §12): plan the files of the asked parts, fetch the missing ones
(files already present are never re-fetched, no network at all, unless `force`), verify each before it is
installed (a checkpoint must load as its part's prior, a normaliser must hold statistics of its segment's
length) and report what is where; `inventory` (`--list` / `--check`) says which prior each command will use.
"""

import time
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
    root = _models_root(Path(req.models_dir).expanduser() if req.models_dir is not None else models_dir())
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


def _models_root(root: Path) -> Path:
    """`root` if it is a folder or can become one (it or a folder above it may not exist yet).

    Raises:
        InputError: `root`, or a path above it, exists and is not a folder.
    """
    hint = "give --models-dir (or DPOSER_MODELS_DIR) a folder; files go to DIR/official/"
    for path in (root, *root.parents):
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError:  # unreadable: the fetch or the listing says so
            return root
        if not exists:
            continue
        if not is_dir:
            where = "exists and is not a folder" if path == root else f"cannot be a folder: {path} is a file"
            raise InputError(f"models folder {root} {where}", hint=hint)
        return root
    return root


def _check_file(asset: Asset, path: Path) -> str | None:
    """Why a fetched file is unusable, or None: a checkpoint must load as its part's prior (key names, shapes,
    EMA list length); a normaliser must hold finite mean_poses / std_poses (std > 0) of its segment's length,
    read weights-only (`engine.normalize.load_statistics`, as every command reads it)."""
    # here: `download --list` and plain downloads need no torch (~1 s of start-up)
    from dposer_cli.engine.checkpoint import read_checkpoint
    from dposer_cli.engine.normalize import load_statistics

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
        load_statistics(path, asset.dim)
    except DposerError as exc:
        return exc.message.replace(str(path), asset.name)
    return None


# ---- --list / --check -------------------------------------------------------------------------------------
def inventory(names: Iterable[str] = (), models_root: Path | None = None, *, check: bool = False) -> Result:
    """What is installed for each part and which prior each command will use; `check` also loads every file."""
    t0 = time.perf_counter()
    parts = resolve_parts(names) if list(names) else tuple(PARTS)
    root = _models_root(Path(models_root).expanduser() if models_root is not None else models_dir())
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
    info: dict[str, Any] = {
        "models_dir": root,
        "official_dir": official_dir(root),
        "checked": check,
        "parts": table,
        "body_models": bodies,
    }
    status = "ok"
    if check:  # what failed the check (`dposer download --check` exits 1 when either list is not empty)
        invalid, unusable = _invalid_files(table), [p for p, e in table.items() if not e["usable"]]
        info.update(invalid=invalid, unusable=unusable)
        for rec in invalid:
            error = str(rec["error"])
            lines.append(
                f"invalid: {error}" if str(rec["path"]) in error else f"invalid: {rec['path']}: {error}"
            )
        if invalid or unusable:
            status = "invalid"
            lines.append(
                f"check failed: {len(invalid)} invalid file(s), {len(unusable)} part(s) without a usable prior"
                + (f" ({', '.join(unusable)})" if unusable else "")
            )
    return Result(
        command="download",
        info=info,
        lines=lines,
        seconds=time.perf_counter() - t0,
        status=status,
    )


def _invalid_files(table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every checked file that failed to load, once each (parts share normalisers), with the parts using it."""
    found: dict[Path, dict[str, Any]] = {}
    for part, entry in table.items():
        for item in (entry["official_checkpoint"], *entry["normalizers"], entry["demo_prior"]):
            if item.get("valid") is False:
                path = Path(item["path"])
                rec = found.setdefault(
                    path,
                    {"file": item.get("file", path.name), "path": path, "parts": [], "error": item["error"]},
                )
                rec["parts"].append(part)
    return list(found.values())


def _unique_segments(part: Part) -> list[Any]:
    seen, out = set(), []
    for seg in PARTS[part].segments:
        if seg.normalizer not in seen:
            seen.add(seg.normalizer)
            out.append(seg)
    return out


def _check_files(part: Part, entry: dict[str, Any]) -> None:
    """Load every present file as the commands do; record `valid` and the one-line error."""
    from dposer_cli.engine.checkpoint import read_checkpoint  # here: see `_check_file`
    from dposer_cli.engine.normalize import load_statistics

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
                load_statistics(item["path"], dims[item["file"]])
                item["valid"] = True
            except DposerError as exc:
                item["valid"], item["error"] = False, exc.message


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
