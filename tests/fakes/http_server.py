"""A stdlib HTTP file server on 127.0.0.1 for downloaders: HEAD, Range, ETag, Last-Modified.

Files are registered by name (bytes held in memory, or a path read on each request) and served
at `/<name>`; unknown names answer 404. Faults are switched on with methods: cut the connection
part way through a body, ignore Range headers, answer an error status. Every request is recorded.

    with FakeFileServer({"data.tsv": b"..."}) as server:
        server.cut_after(1000, times=1)   # the next GET stops after 1000 body bytes
        download(server.url_for("data.tsv"), dest, ...)
        assert server.requests[-1].range == "bytes=1000-"
"""
from __future__ import annotations

import hashlib
import mimetypes
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.fakes.loopback import LoopbackServer

CHUNK = 64 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it: method, path (no query), Range and If-Range headers."""

    method: str
    path: str
    range: str | None
    if_range: str | None = None


@dataclass
class ServedFile:
    """A registered file: its content (bytes or a path) and the validators sent with it."""

    content: bytes | Path
    etag: str
    last_modified: str
    content_type: str

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.stat().st_size

    def read(self, start: int, end: int) -> Iterable[bytes]:
        """Bytes start..end (inclusive) in chunks."""
        if isinstance(self.content, bytes):
            for pos in range(start, end + 1, CHUNK):
                yield self.content[pos:min(pos + CHUNK, end + 1)]
            return
        with open(self.content, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


@dataclass
class _Countdown:
    """A fault for the next `times` matching requests (None: every request)."""

    times: int | None

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


def _http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


class FakeFileServer(LoopbackServer):
    """Serves registered files at `url_for(name)`; knobs: cut_after, ignore_range, fail."""

    thread_name = "fake-file-server"

    def __init__(self, files: Mapping[str, bytes | str | Path] | None = None, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, ServedFile] = {}
        self.ignore_ranges = False  # True: answer 200 with the whole file whatever Range says
        self._cut: tuple[int, _Countdown] | None = None
        self._fail: tuple[int, _Countdown, frozenset[str]] | None = None
        self._lock = threading.Lock()
        super().__init__(host, port)
        for name, content in (files or {}).items():
            self.add(name, content)


    def url_for(self, name: str) -> str:
        return f"{self.url}/{name}"

    # ------------------------------------------------------------ files
    def add(self, name: str, content: bytes | str | Path, *, etag: str | None = None,
            last_modified: float | None = None, content_type: str | None = None) -> ServedFile:
        """Register (or replace) `name`. Defaults: ETag from the content (bytes) or from size and
        mtime (a path), Last-Modified now (bytes) or the file's mtime (a path)."""
        if isinstance(content, str):
            content = Path(content)
        if isinstance(content, Path):
            stat = content.stat()
            etag = etag or f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
            modified = stat.st_mtime if last_modified is None else last_modified
        else:
            content = bytes(content)
            etag = etag or f'"{hashlib.sha256(content).hexdigest()[:16]}"'
            modified = time.time() if last_modified is None else last_modified
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        served = ServedFile(content, etag, _http_date(modified), ctype)
        with self._lock:
            self.files[name.lstrip("/")] = served
        return served

    def remove(self, name: str) -> None:
        with self._lock:
            self.files.pop(name.lstrip("/"), None)

    # ------------------------------------------------------------ faults
    def cut_after(self, n_bytes: int, times: int | None = 1) -> None:
        """The next `times` GETs (None: all) send the full headers, then `n_bytes` of the body,
        then the connection is closed, as when a download is interrupted."""
        with self._lock:
            self._cut = (int(n_bytes), _Countdown(times))

    def ignore_range(self, on: bool = True) -> None:
        """Serve every GET as 200 with the whole file, as servers without Range support do."""
        with self._lock:
            self.ignore_ranges = on

    def fail(self, status: int = 500, times: int | None = 1,
             methods: Iterable[str] = ("GET", "HEAD")) -> None:
        """Answer the next `times` requests (None: all) of `methods` with `status`."""
        with self._lock:
            self._fail = (int(status), _Countdown(times), frozenset(m.upper() for m in methods))

    def clear_faults(self) -> None:
        with self._lock:
            self._cut = self._fail = None
            self.ignore_ranges = False

    # ------------------------------------------------------------ recorded requests
    def requests_for(self, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method.upper()]

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------ used by the handler
    def _take_fail(self, method: str) -> int | None:
        with self._lock:
            if self._fail is None:
                return None
            status, countdown, methods = self._fail
            if method not in methods or not countdown.take():
                return None
            return status

    def _take_cut(self) -> int | None:
        with self._lock:
            if self._cut is None:
                return None
            n_bytes, countdown = self._cut
            return n_bytes if countdown.take() else None


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one satisfiable range, "unsatisfiable", or None (serve all)."""
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None  # several ranges or a unit we do not know: RFC 9110 allows the full answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


def _if_range_matches(value: str | None, served: ServedFile) -> bool:
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', 'W/')):
        return value == served.etag
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(served.last_modified)
    except (TypeError, ValueError):
        return False




class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeFileServer/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        fake: FakeFileServer = self.server.fake  # type: ignore[attr-defined]
        path = unquote(urlsplit(self.path).path)
        with fake._lock:
            fake.requests.append(RecordedRequest(self.command, path, self.headers.get("Range"),
                                                 self.headers.get("If-Range")))
            served = fake.files.get(path.lstrip("/"))
            ignore_ranges = fake.ignore_ranges
        status = fake._take_fail(self.command)
        if status is not None:
            self._send_text(status, f"{status} injected fault\n", body)
            return
        if served is None:
            self._send_text(404, f"404 Not Found: {path}\n", body)
            return
        size = served.size
        wanted = None
        if body and not ignore_ranges and _if_range_matches(self.headers.get("If-Range"), served):
            wanted = _byte_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
        self.send_response(206 if isinstance(wanted, tuple) else 200)
        self.send_header("Content-Type", served.content_type)
        self.send_header("Content-Length", str(end - start + 1))
        if isinstance(wanted, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if not ignore_ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", served.etag)
        self.send_header("Last-Modified", served.last_modified)
        self.end_headers()
        if not body or end < start:
            return
        cut = fake._take_cut()
        sent = 0
        for chunk in served.read(start, end):
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[:max(cut - sent, 0)])
                self._drop_connection()
                return
            self.wfile.write(chunk)
            sent += len(chunk)

    def _drop_connection(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client went away first: the connection is gone either way

    def _send_text(self, status: int, text: str, body: bool) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep test output clean; requests are recorded in FakeFileServer.requests


FakeFileServer.handler = _Handler
