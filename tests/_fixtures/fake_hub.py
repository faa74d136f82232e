"""A local stand-in for the Hugging Face Hub and GitHub raw files (stdlib only), for `dposer download` tests.

Hub side (what `hf_hub_download` needs, see shared/spec/platform.md): `HEAD`/`GET
/{org}/{name}/resolve/{revision}/{path}` with `ETag: "<sha256>"`, `X-Repo-Commit`, `Content-Length` and
`Content-Type: application/octet-stream`; a missing file is a 404 with `X-Error-Code: EntryNotFound`, an
unknown revision one with `RevisionNotFound`. Raw side: `GET /raw/{path}`. Both honour `Range: bytes=N-`.

Faults are switched on per path: `drop_once` (send half the body, then cut the connection, once),
`bad_etag` (advertise a wrong sha256), and plain removal from the file maps (404).
"""

import hashlib
import io
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import HUB_REPO, shared_data_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None


class FakeHub:
    """Threaded HTTP server on 127.0.0.1 (port 0); use as a context manager."""

    def __init__(
        self,
        hub_files: dict[str, bytes],
        raw_files: dict[str, bytes],
        *,
        repo: str = HUB_REPO,
        commit: str = COMMIT,
    ) -> None:
        self.hub_files = dict(hub_files)
        self.raw_files = dict(raw_files)
        self.repo, self.commit = repo, commit
        self.requests: list[Seen] = []
        self.drop_once: set[str] = set()  # "/raw/..." or hub file paths: cut the first full GET mid-body
        self.bad_etag: set[str] = set()  # hub file paths advertised with a wrong sha256
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def raw_url(self) -> str:
        return f"{self.url}/raw"

    def hits(self, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def start(self) -> "FakeHub":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    prefix = f"/{hub.repo}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _not_found(self, code: str | None) -> None:
            payload = b"not found"
            self.send_response(404)
            if code:
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", f"{code}: {self.path}")
                self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(payload)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            hub._record(Seen(self.command, path, self.headers.get("Range")))
            if path.startswith(prefix):
                revision, _, name = path[len(prefix) :].partition("/")
                if revision not in ("main", hub.commit):
                    return self._not_found("RevisionNotFound")
                data = hub.hub_files.get(name)
                if data is None:
                    return self._not_found("EntryNotFound")
                key = name
                digest = hashlib.sha256(data).hexdigest()
                if name in hub.bad_etag:
                    digest = hashlib.sha256(b"something else").hexdigest()
                extra = {"ETag": f'"{digest}"', "X-Repo-Commit": hub.commit}
            elif path.startswith("/raw/"):
                key = path
                data = hub.raw_files.get(path[len("/raw/") :])
                if data is None:
                    return self._not_found(None)
                extra = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            else:
                return self._not_found(None)
            self._send(data, extra, body, key)

        def _send(self, data: bytes, extra: dict[str, str], body: bool, key: str) -> None:
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[len("bytes=") :].partition("-")
                start = int(first or 0)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = int(last) if last else len(data) - 1
                chunk = data[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(chunk) - 1}/{len(data)}")
            else:
                chunk = data
                self.send_response(200)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if not body:
                return
            with hub._lock:
                drop = start == 0 and key in hub.drop_once
                hub.drop_once.discard(key)
            if drop:  # half the promised bytes, then a dead connection
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)

    return Handler


def normalizer_names() -> dict[str, int]:
    """Official normaliser files (repo-relative) -> statistics length, over all parts."""
    return {f"{s.normalizer}/axis_normalize2.pt": s.dim for spec in PARTS.values() for s in spec.segments}


def build_repo(
    workdir: Path, parts: "tuple[Part, ...] | None" = None
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Tiny official-format checkpoints (Hub files) and the normaliser files (raw files).

    Normalisers come from ../shared/data/official when present, else synthetic ones of the right size.
    """
    import torch

    from tests._fixtures.checkpoints import write_official_ckpt

    hub: dict[str, bytes] = {}
    for part in parts or tuple(PARTS):
        name = PARTS[part].official_ckpt
        hub[name] = write_official_ckpt(workdir / name, part, hidden=32, embed=16).read_bytes()
    raw: dict[str, bytes] = {}
    for name, dim in normalizer_names().items():
        real = shared_data_dir() / "official" / name
        if real.is_file():
            raw[name] = real.read_bytes()
        else:
            buf = io.BytesIO()
            torch.save({"mean_poses": torch.zeros(dim), "std_poses": torch.ones(dim)}, buf)
            raw[name] = buf.getvalue()
    return hub, raw


def dead_url() -> str:
    """A 127.0.0.1 URL nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
