"""Fetching the official DPoser-X files: checkpoints from the Hugging Face Hub, normaliser statistics from the
official repository's raw files (spec §1.3, §12), and where the licensed body-model files are found.

Layout: checkpoints keep their Hub path under `<models dir>/official/` (`body/BaseMLP/last.ckpt`, ...),
normalisers keep their path in the official GitHub repository (`data/body_data/body_normalizer/
axis_normalize2.pt`, ...). A file is installed only after it checks out (sha256 against the Hub's ETag, then
the caller's `check`), and always with `os.replace`, so the final path never holds a partial or unchecked
file. Normalisers are plain HTTP(S) GETs that resume with `Range` when the connection drops. Offline
(`HubSource.offline`, or the host cannot be reached): checkpoints already in the Hugging Face cache are copied
from there; anything else is collected in `Fetcher.unfetched` and reported in one line with the exact place to
put it by hand. huggingface_hub failures are mapped to `DposerError`s here; they never leak.
"""

import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import (
    get_hf_file_metadata,
    get_token,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from dposer_cli.core.errors import (
    AssetMismatchError,
    DposerError,
    InputError,
    MissingAssetError,
    UnavailableError,
)
from dposer_cli.core.parts import FLAME_FILES, PARTS, Part
from dposer_cli.core.paths import (
    HUB_REPO,
    body_model_dirs,
    official_checkpoint,
    official_dir,
    official_normalizer_file,
)

log = logging.getLogger(__name__)

# Hub revision used when --revision is not given: the one place to pin it. "main" follows the repository;
# replace it with a 40-hex commit for reproducible installs (users can pass --revision COMMIT already).
DEFAULT_REVISION = "main"
# Raw files of the official code repository (normalisers live only there, spec §1.3). Same rule as above:
# swap "main" for a full commit hash to pin them; $DPOSER_NORMALIZER_URL overrides the whole base.
NORMALIZER_URL = "https://raw.githubusercontent.com/moonbow721/DPoser-X/main"
NORMALIZER_URL_ENV = "DPOSER_NORMALIZER_URL"
NORMALIZER_FILE = "axis_normalize2.pt"  # Z-score statistics: what inference uses (spec §1.3)
TIMEOUT_S = 10.0  # per connection attempt; a dead host fails at once, a silent one after this

_RETRIES = 3  # attempts per normaliser file when the connection drops mid-file (each resumes with Range)
_CHUNK = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")

# body-model files per kind, relative to a body-model folder; a tuple lists alternatives (spec §12.2)
BODY_MODEL_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "smplx": (
        ("smplx/SMPLX_NEUTRAL.npz", "smplx/SMPLX_NEUTRAL.pkl"),
        ("smplx/SMPL-X__FLAME_vertex_ids.npy",),
        ("smplx/MANO_SMPLX_vertex_ids.pkl",),
    ),
    "mano": (("mano/MANO_RIGHT.pkl",), ("mano/MANO_LEFT.pkl",)),
    "flame": tuple((f"flame/{f}",) for f in FLAME_FILES),
}
BODY_MODEL_SITES = {
    "smplx": "https://smpl-x.is.tue.mpg.de",
    "mano": "https://mano.is.tue.mpg.de",
    "flame": "https://flame.is.tue.mpg.de",
}
_BODY_MODEL_WHAT = {
    "smplx": "SMPL-X (SMPLX_NEUTRAL.npz) and the 'MANO and FLAME vertex indices' correspondences",
    "mano": "MANO (MANO_RIGHT.pkl, MANO_LEFT.pkl)",
    "flame": f"FLAME 2020 ({', '.join(FLAME_FILES)})",
}


@dataclass(frozen=True)
class Asset:
    """One file `dposer download` installs."""

    kind: str  # "checkpoint" (Hub) | "normalizer" (official GitHub repository)
    name: str  # path in its source repository, e.g. body/BaseMLP/last.ckpt
    path: Path  # where it is installed
    parts: tuple[Part, ...]  # parts that need it
    dim: int = 0  # normaliser: length of mean_poses / std_poses


def plan(parts: Iterable[Part], root: Path | None = None) -> list[Asset]:
    """The files `parts` need: each checkpoint, then its normalisers (shared ones listed once)."""
    assets: dict[str, Asset] = {}
    for part in parts:
        spec = PARTS[part]
        assets[spec.official_ckpt] = Asset(
            "checkpoint", spec.official_ckpt, official_checkpoint(part, root), (part,)
        )
        for seg in spec.segments:
            name = f"{seg.normalizer}/{NORMALIZER_FILE}"
            prev = assets.get(name)
            users = prev.parts if prev else ()
            assets[name] = Asset(
                "normalizer",
                name,
                official_normalizer_file(seg.normalizer, root),
                users if part in users else (*users, part),
                seg.dim,
            )
    return list(assets.values())


# ---- fetching ---------------------------------------------------------------------------------------------
class _Unreachable(Exception):
    """The host could not be contacted (connection refused, DNS, timeout, offline)."""


class _Dropped(Exception):
    """The connection broke mid-file; what arrived is kept in the `.part` file."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    """Short cause of a connection failure: 'connection refused', 'timed out', ..."""
    inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__ or exc
    if isinstance(inner, ConnectionRefusedError) or "refused" in str(inner).lower():
        return "connection refused"
    if isinstance(inner, TimeoutError) or "timed out" in str(inner).lower():
        return "timed out"
    return _first_line(inner)


@dataclass(frozen=True)
class HubSource:
    """Where files come from and how to reach them; `from_env` fills what is not given from the environment."""

    revision: str = DEFAULT_REVISION  # Hub branch/tag/commit
    endpoint: str | None = None  # Hub endpoint; None: huggingface.co
    normalizer_url: str = NORMALIZER_URL  # base URL of the official repository's raw files (http(s) or file)
    offline: bool = False  # no connection at all: checkpoints from the Hugging Face cache only
    cache_dir: Path | None = None  # Hugging Face cache to reuse; None: huggingface_hub's ($HF_HOME/hub)
    timeout: float = TIMEOUT_S  # seconds per connection attempt

    @classmethod
    def from_env(
        cls,
        *,
        revision: str | None = None,
        endpoint: str | None = None,
        normalizer_url: str | None = None,
        offline: bool | None = None,
        cache_dir: Path | None = None,
        timeout: float = TIMEOUT_S,
    ) -> "HubSource":
        """None: `DEFAULT_REVISION`, $HF_ENDPOINT, $DPOSER_NORMALIZER_URL (else `NORMALIZER_URL`), $HF_HUB_OFFLINE
        or $TRANSFORMERS_OFFLINE; read now, not at import (huggingface_hub freezes HF_ENDPOINT when imported)."""
        return cls(
            revision=revision or DEFAULT_REVISION,
            endpoint=(endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None,
            normalizer_url=(normalizer_url or os.environ.get(NORMALIZER_URL_ENV) or NORMALIZER_URL).rstrip(
                "/"
            ),
            offline=offline
            if offline is not None
            else (_env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")),
            cache_dir=cache_dir,
            timeout=timeout,
        )


class Fetcher:
    """Downloads, verifies and installs single assets; remembers unreachable hosts so one dead host costs one
    attempt. Use as a context manager (the staging folder is removed on exit).

    `check(asset, staged_file)` says why a fetched file is unusable (None: fine); such a file is moved aside to
    `<name>.invalid` and reported as an `AssetMismatchError`.
    """

    def __init__(
        self,
        source: HubSource,
        root: Path,
        check: Callable[[Asset, Path], str | None],
        *,
        force: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.source, self.root, self.check, self.force, self.progress = source, root, check, force, progress
        self.revision, self.offline, self.endpoint = source.revision, source.offline, source.endpoint
        self.base = source.normalizer_url
        self.down: dict[str, str] = {}  # host -> why it could not be reached
        self.unfetched: list[tuple[Asset, str, str]] = []  # (asset, source url, host)
        self.staging: Path | None = None
        self.done_bytes = 0
        self.total_bytes = 0

    # -- bookkeeping --
    def _advance(self, n: int) -> None:
        self.done_bytes += n
        if self.progress is not None:
            total = max(self.total_bytes, self.done_bytes)
            self.progress(self.done_bytes, total)

    def _stage_dir(self) -> Path:
        if self.staging is None:
            official = official_dir(self.root)
            try:
                official.mkdir(parents=True, exist_ok=True)
                # per-process folder next to the targets: same volume for os.replace, no clash between runs
                self.staging = Path(tempfile.mkdtemp(prefix=".download-", dir=official))
            except OSError as exc:
                raise InputError(
                    f"cannot write to the models folder {official}: {exc.strerror or exc}"
                ) from None
        return self.staging

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def unavailable(self) -> UnavailableError:
        hosts = sorted({h for _, _, h in self.unfetched})
        why = (
            "offline: HF_HUB_OFFLINE is set"
            if self.offline
            else "cannot reach " + ", ".join(f"{h} ({self.down.get(h, 'unreachable')})" for h in hosts)
        )
        manual = "; ".join(f"{url} -> {a.path}" for a, url, _ in self.unfetched)
        return UnavailableError(
            f"could not fetch {len(self.unfetched)} file(s) ({why}); place them by hand: {manual}",
            hint="or re-run `dposer download` with network access (files already present are kept); "
            f"HF_ENDPOINT and {NORMALIZER_URL_ENV} select mirrors",
        )

    def _install(self, asset: Asset, staged: Path) -> None:
        asset.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, asset.path)
        asset.path.with_name(asset.path.name + ".invalid").unlink(
            missing_ok=True
        )  # stale reject, now superseded

    def _reject(self, asset: Asset, staged: Path, why: str, hint: str) -> AssetMismatchError:
        bad = asset.path.with_name(asset.path.name + ".invalid")
        bad.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, bad)
        return AssetMismatchError(
            f"downloaded {asset.name} is not usable: {why}; moved it aside to {bad}", hint=hint
        )

    def fetch(self, asset: Asset) -> dict[str, Any]:
        """Fetch, verify and install one asset; returns its record ("status": downloaded | resumed | copied |
        unavailable, "source", "bytes", "sha256"[, "commit"]). Unavailable assets are collected in `unfetched`
        (raise `unavailable()` after the others).

        Raises:
            MissingAssetError: not on the server (404).
            AssetMismatchError: the checksum or `check` fails (the file is moved aside).
            UnavailableError: other server errors; InputError: an unknown revision or unwritable models folder.
        """
        if asset.kind == "checkpoint":
            return self._checkpoint(asset)
        return self._normalizer(asset)

    # -- checkpoints: Hugging Face Hub --------------------------------------------------------------------
    def _checkpoint(self, asset: Asset) -> dict[str, Any]:
        url = hf_hub_url(HUB_REPO, asset.name, revision=self.revision, endpoint=self.endpoint)
        host = urllib.parse.urlsplit(url).netloc
        if self.offline or host in self.down:
            return self._from_hf_cache(asset, url, host)
        token = get_token()
        try:
            # one HEAD without retries: a dead host fails in milliseconds (huggingface_hub's own download
            # retries a missing network for ~20 s), and the ETag is the sha256 we verify against
            meta = get_hf_file_metadata(
                url, token=token, timeout=self.source.timeout, endpoint=self.endpoint, library_name="dposer"
            )
        except Exception as exc:  # noqa: BLE001 - every Hub failure is mapped in _hub_error
            if self._is_network(exc):
                self.down[host] = _reason(exc)
                return self._from_hf_cache(asset, url, host)
            raise self._hub_error(exc, asset, url) from None
        size = int(meta.size or 0)
        self.total_bytes += size
        log.info("downloading %s (%.1f MB) from %s", asset.name, size / 1e6, HUB_REPO)
        try:
            staged = Path(
                hf_hub_download(
                    repo_id=HUB_REPO,
                    filename=asset.name,
                    revision=meta.commit_hash or self.revision,  # the exact commit the HEAD saw
                    local_dir=self._stage_dir(),
                    cache_dir=self.source.cache_dir,
                    endpoint=self.endpoint,
                    token=token,
                    force_download=self.force,
                    etag_timeout=self.source.timeout,
                    library_name="dposer",
                    tqdm_class=self._bar_class(),
                )
            )
        except Exception as exc:  # noqa: BLE001
            if self._is_network(exc):
                self.down[host] = _reason(exc)
                self.unfetched.append((asset, url, host))
                return {"status": "unavailable", "source": url}
            raise self._hub_error(exc, asset, url) from None
        etag = (meta.etag or "").lower()
        digest = _sha256(staged)
        if _SHA256.fullmatch(etag) and digest != etag:
            raise self._reject(
                asset,
                staged,
                f"its sha256 {digest[:12]}… differs from the {etag[:12]}… the Hub lists",
                hint="run the command again (the transfer was corrupted); if it persists, the "
                "endpoint serves a different file than it advertises",
            )
        self._verify(asset, staged)
        self._install(asset, staged)
        return {
            "status": "downloaded",
            "source": url,
            "bytes": asset.path.stat().st_size,
            "sha256": digest,
            "commit": meta.commit_hash,
        }

    def _from_hf_cache(self, asset: Asset, url: str, host: str) -> dict[str, Any]:
        """Offline / no network: reuse a copy from the Hugging Face cache, else record it as unfetched."""
        cached = try_to_load_from_cache(
            HUB_REPO, asset.name, cache_dir=self.source.cache_dir, revision=self.revision
        )
        if not isinstance(cached, str):
            self.unfetched.append((asset, url, host))
            return {"status": "unavailable", "source": url}
        staged = self._stage_dir() / Path(asset.name).name
        shutil.copyfile(cached, staged)
        self._verify(asset, staged)
        self._install(asset, staged)
        log.info("copied %s from the Hugging Face cache (%s)", asset.name, cached)
        return {
            "status": "copied",
            "source": cached,
            "bytes": asset.path.stat().st_size,
            "sha256": _sha256(asset.path),
        }

    def _verify(self, asset: Asset, staged: Path) -> None:
        why = self.check(asset, staged)
        if why is None:
            return
        if asset.kind == "checkpoint":
            hint = f"try another --revision, or place a valid file at {asset.path}"
        else:
            hint = (
                f"check {NORMALIZER_URL_ENV} (now {self.base}); the official files are "
                "data/*_data/*_normalizer/axis_normalize2.pt"
            )
        raise self._reject(asset, staged, why, hint=hint)

    def _bar_class(self) -> type:
        """A huggingface_hub progress-bar class that feeds our byte counter instead of drawing tqdm."""
        fetcher = self

        class _Bar(hf_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True  # our own progress callback draws; tqdm stays silent
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                fetcher._advance(int(n or 0))
                return super().update(n)

        return _Bar

    @staticmethod
    def _is_network(exc: BaseException) -> bool:
        """True for 'could not talk to the host' failures (as opposed to an answer we did not like)."""
        if isinstance(exc, HfHubHTTPError):
            return False
        return isinstance(
            exc,
            httpx2.TransportError
            | OfflineModeIsEnabled
            | LocalEntryNotFoundError
            | ConnectionError
            | TimeoutError,
        )

    def _hub_error(self, exc: BaseException, asset: Asset, url: str) -> DposerError:
        """Map a huggingface_hub / HTTP failure to one-line DposerError (they must never leak)."""
        manual = f"or place the file by hand at {asset.path} (from {url})"
        if isinstance(exc, RevisionNotFoundError):
            return InputError(
                f"revision {self.revision!r} not found in the Hub repository {HUB_REPO}",
                hint=f"pass --revision main or a commit of https://huggingface.co/{HUB_REPO}/commits/main",
            )
        if isinstance(exc, EntryNotFoundError):
            return MissingAssetError(
                f"{asset.name} not found in {HUB_REPO} at revision {self.revision} (HTTP 404 from {url})",
                hint=f"check --revision and HF_ENDPOINT, {manual}",
            )
        if isinstance(exc, GatedRepoError | RepositoryNotFoundError):
            return UnavailableError(
                f"cannot access the Hub repository {HUB_REPO} at {url} ({_first_line(exc)})",
                hint="if it needs a login run `hf auth login` or set HF_TOKEN; check HF_ENDPOINT",
            )
        if isinstance(exc, HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", "?")
            return UnavailableError(
                f"could not download {asset.name} from {url}: HTTP {status}",
                hint=f"try again later, {manual}",
            )
        if isinstance(exc, ValueError):  # invalid repo id / revision strings, inconsistent flags
            return InputError(f"cannot download {asset.name}: {_first_line(exc)}")
        if isinstance(exc, OSError):  # size mismatch after retries, disk full, permissions
            return UnavailableError(
                f"could not download {asset.name} from {url}: {_first_line(exc)}",
                hint=f"run the command again, {manual}",
            )
        return UnavailableError(
            f"could not download {asset.name} from {url}: {type(exc).__name__}: {_first_line(exc)}",
            hint=f"run the command again, {manual}",
        )

    # -- normalisers: plain HTTP(S) GET, resumable with Range --------------------------------------------------
    def _normalizer(self, asset: Asset) -> dict[str, Any]:
        url = f"{self.base}/{asset.name}"
        split = urllib.parse.urlsplit(url)
        host = split.netloc or split.scheme
        local = split.scheme == "file"  # a file:// mirror works offline too
        if not local and (self.offline or host in self.down):
            self.unfetched.append((asset, url, host))
            return {"status": "unavailable", "source": url}
        part_file = asset.path.with_name(asset.path.name + ".part")
        if self.force:
            part_file.unlink(missing_ok=True)
        resumed = part_file.is_file()
        last = ""
        for attempt in range(_RETRIES):
            try:
                self._get(asset, url, part_file)
                break
            except _Unreachable as exc:
                self.down[host] = str(exc)
                self.unfetched.append((asset, url, host))
                return {"status": "unavailable", "source": url}
            except _Dropped as exc:
                last = str(exc)
                resumed = True
                log.warning("connection to %s dropped (%s); resuming", host, last)
                time.sleep(0.2 * (attempt + 1))
        else:
            raise UnavailableError(
                f"download of {url} kept breaking off ({last}); the partial file {part_file} is kept",
                hint="run the command again to resume it",
            )
        self._verify(asset, part_file)
        self._install(asset, part_file)
        return {
            "status": "resumed" if resumed else "downloaded",
            "source": url,
            "bytes": asset.path.stat().st_size,
            "sha256": _sha256(asset.path),
        }

    def _get(self, asset: Asset, url: str, part_file: Path) -> None:
        """GET `url` into `part_file`, continuing after the bytes it already holds."""
        offset = part_file.stat().st_size if part_file.is_file() else 0
        headers = {"User-Agent": "dposer", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=self.source.timeout
            )
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:  # the .part is longer than the file: start over
                part_file.unlink(missing_ok=True)
                raise _Dropped("stale partial file") from None
            if exc.code == 404:
                raise MissingAssetError(
                    f"{asset.name} not found at {url} (HTTP 404)",
                    hint=f"check {NORMALIZER_URL_ENV} (now {self.base}), or place the file by "
                    f"hand at {asset.path}",
                ) from None
            raise UnavailableError(
                f"could not download {url}: HTTP {exc.code} {exc.reason}",
                hint=f"try again later, or place the file by hand at {asset.path}",
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Unreachable(_reason(exc)) from None
        with resp:
            status = getattr(resp, "status", None)
            content_range = resp.headers.get("Content-Range", "")
            resuming = bool(offset) and status == 206 and content_range.startswith(f"bytes {offset}-")
            if status == 206 and not resuming:  # a range we did not ask for: start over rather than splice
                part_file.unlink(missing_ok=True)
                raise _Dropped(f"unexpected Content-Range {content_range!r}")
            start = offset if resuming else 0  # a server that ignores Range sends the whole file again
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            if total is not None:
                self.total_bytes += total - start
            if resuming:
                log.info("resuming %s at byte %d", asset.name, offset)
            part_file.parent.mkdir(parents=True, exist_ok=True)
            with open(part_file, "ab" if resuming else "wb") as fh:
                try:
                    while chunk := resp.read(_CHUNK):
                        fh.write(chunk)
                        self._advance(len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    raise _Dropped(_reason(exc)) from None
                finally:
                    fh.flush()
                    os.fsync(fh.fileno())
        size = part_file.stat().st_size
        if (
            total is not None and size < total
        ):  # http.client returns b"" on an early close rather than raising
            raise _Dropped(f"got {size} of {total} bytes")


# ---- body models (licensed: found, never fetched) ----------------------------------------------------------
def _find_body_files(kind: str, dirs: list[Path]) -> list[dict[str, Any]]:
    out = []
    for alternatives in BODY_MODEL_FILES[kind]:
        found = next((d / rel for rel in alternatives for d in dirs if (d / rel).is_file()), None)
        out.append({"file": " | ".join(alternatives), "path": found})
    return out


def body_models(dirs: list[Path] | None = None) -> dict[str, dict[str, Any]]:
    """Which licensed body-model files are installed (they cannot be downloaded for the user)."""
    dirs = body_model_dirs(None) if dirs is None else dirs
    out: dict[str, dict[str, Any]] = {}
    for kind in BODY_MODEL_FILES:
        files = _find_body_files(kind, dirs)
        missing = [f["file"] for f in files if f["path"] is None]
        entry: dict[str, Any] = {
            "present": not missing,
            "files": files,
            "searched": dirs,
            "register": BODY_MODEL_SITES[kind],
        }
        if missing:
            entry["instruction"] = (
                f"{kind}: missing {', '.join(missing)}; register at {BODY_MODEL_SITES[kind]}, "
                f"download {_BODY_MODEL_WHAT[kind]} and put the files in {dirs[0]} as "
                f"{', '.join(m.split(' | ')[0] for m in missing)}"
            )
        out[kind] = entry
    return out
