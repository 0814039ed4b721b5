"""Fixtures of the flow tests: a Prefect test server, a small model, a video corpus, and a
fault-injecting HTTP proxy in front of the moto S3 server.

Prefect: `prefect_server` runs every flow of the session against one temporary server and
database (`prefect.testing.utilities.prefect_test_harness`), started once (~15 s), so keep the
flow tests in one pytest process.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import av
import numpy as np
import pytest

from emotion_model.synthetic import available_encoders, encode_video, make_test_pattern

# --- process-wide settings -----------------------------------------------------------------------



@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Every flow of the session runs against one temporary Prefect server and database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# --- the model -----------------------------------------------------------------------------------




# --- videos --------------------------------------------------------------------------------------

NESTED_KEY = unicodedata.normalize("NFC", "nested/dir with spaces/vidéo ünï.mp4")
"""A good video under a key with spaces and non-ASCII characters."""


@dataclass(frozen=True)
class VideoSpec:
    """A good test video: its relative key and how it is encoded."""

    key: str
    width: int
    height: int
    seconds: float
    fps: float
    codec: str = "libx264"
    seed: int = 0
    vfr: bool = False

    @property
    def num_frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def pts_seconds(self) -> list[float] | None:
        """VFR: frame gaps alternate 1x and 2x the nominal frame duration; else None."""
        if not self.vfr:
            return None
        steps = np.where(np.arange(self.num_frames - 1) % 2 == 0, 1.0, 2.0) / self.fps
        return [0.0, *np.cumsum(steps).round(3).tolist()]

    @property
    def duration(self) -> float:
        """Seconds the decoder should find: the last frame's time plus one (median) gap."""
        pts = self.pts_seconds()
        if pts is None:
            return self.num_frames / self.fps
        return pts[-1] + float(np.median(np.diff(pts)))

    def encode(self, root: Path, *, seed: int | None = None) -> Path:
        """Write the video under `root`; another `seed` gives other bytes (a new ETag)."""
        frames = make_test_pattern(self.num_frames, self.height, self.width,
                                   seed=self.seed if seed is None else seed)
        options = {"preset": "ultrafast"} if self.codec == "libx264" else None
        pts = self.pts_seconds()
        return encode_video(root / self.key, frames, fps=self.fps, codec=self.codec,
                            options=options, pts_seconds=pts,
                            time_base=Fraction(1, 1000) if pts else None)


def _good_specs() -> list[VideoSpec]:
    encoders = available_encoders()

    def pick(codec: str, fallback: str = "mpeg4") -> str:
        return codec if codec in encoders else fallback

    return [
        VideoSpec("h264_96x64.mp4", 96, 64, 1.0, 10, seed=1),
        VideoSpec("h264_320x240.mp4", 320, 240, 2.0, 12, seed=2),
        VideoSpec("h264_3s.mp4", 128, 96, 3.0, 10, seed=3),
        VideoSpec("mpeg4_160x120.avi", 160, 120, 1.2, 15, codec="mpeg4", seed=4),
        VideoSpec("mpeg4_odd_97x71.mp4", 97, 71, 1.0, 10, codec="mpeg4", seed=5),
        VideoSpec("h264_128x96.mkv", 128, 96, 2.2, 10, seed=6),
        VideoSpec("vp8_112x80.webm", 112, 80, 1.2, 12, codec=pick("libvpx"), seed=7),
        VideoSpec("vp9_144x108.webm", 144, 108, 0.8, 10, codec=pick("libvpx-vp9"), seed=8),
        VideoSpec("h264_160x90.mov", 160, 90, 2.0, 15, seed=9),
        VideoSpec("mjpeg_96x96.avi", 96, 96, 1.0, 10, codec=pick("mjpeg"), seed=10),
        VideoSpec("flv1_128x96.flv", 128, 96, 1.0, 10, codec=pick("flv"), seed=11),
        VideoSpec("vfr_mpeg4_128x96.mkv", 128, 96, 1.0, 12, codec="mpeg4", seed=12, vfr=True),
        VideoSpec("short_half_second.MP4", 64, 64, 0.5, 10, seed=13),
        VideoSpec(NESTED_KEY, 96, 64, 1.0, 10, seed=14),
    ]


GOOD_SPECS: list[VideoSpec] = _good_specs()

BAD_EXPECTED: dict[str, set[str]] = {
    "bad/zero_bytes.mp4": {"EmptyVideoError"},
    "bad/truncated_half.mp4": {"CorruptVideoError", "NoDecodableFramesError"},
    "bad/text_renamed.mp4": {"CorruptVideoError"},
    "bad/audio_only.mp4": {"NoVideoStreamError"},
}
"""Bad objects (keys) -> the error types their one ``errors`` row (stage decode) may carry."""

NOT_VIDEO_KEYS = ("stills/poster.jpg",)
"""Objects that are not videos by extension: counted in ``skipped_not_video``, no row."""


def write_audio_only_mp4(path: Path, seconds: float = 1.0) -> Path:
    """An .mp4 holding one AAC audio stream and no video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate, n = 16000, 1024
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(int(seconds * rate / n)):
            t = (np.arange(n) + i * n) / rate
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * n
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_bad_files(root: Path) -> dict[str, Path]:
    """The bad objects of `BAD_EXPECTED` plus the non-videos of `NOT_VIDEO_KEYS` under `root`."""
    out: dict[str, Path] = {}
    zero = root / "bad/zero_bytes.mp4"
    zero.parent.mkdir(parents=True, exist_ok=True)
    zero.write_bytes(b"")
    out["bad/zero_bytes.mp4"] = zero
    full = encode_video(root / "bad/.full.mp4", make_test_pattern(20, 64, 96, seed=99), fps=10,
                        options={"preset": "ultrafast"})
    data = full.read_bytes()
    full.unlink()
    truncated = root / "bad/truncated_half.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    out["bad/truncated_half.mp4"] = truncated
    text = root / "bad/text_renamed.mp4"
    text.write_text("this is a text file, renamed to .mp4\n" * 40)
    out["bad/text_renamed.mp4"] = text
    out["bad/audio_only.mp4"] = write_audio_only_mp4(root / "bad/audio_only.mp4")
    for key in NOT_VIDEO_KEYS:
        out[key] = encode_video(root / key, make_test_pattern(1, 48, 64, seed=5), fps=1,
                                codec="mjpeg", container_format="image2")
    return out


@dataclass(frozen=True)
class VideoCorpus:
    """A local folder with the good videos, the bad objects and the non-videos, by key."""

    root: Path
    good: dict[str, VideoSpec]
    bad: dict[str, set[str]]
    not_video: tuple[str, ...]
    nested_key: str = NESTED_KEY

    def files(self) -> dict[str, Path]:
        """Every object of the corpus: key -> local path."""
        keys = [*self.good, *self.bad, *self.not_video]
        return {k: self.root / k for k in keys}


@pytest.fixture(scope="session")
def video_corpus(tmp_path_factory: pytest.TempPathFactory) -> VideoCorpus:
    """14 good videos (5 containers, 6 codecs, 64x64 to 320x240, 0.5-3 s, one VFR, one under a
    nested key with spaces and non-ASCII) + 4 bad objects + 1 jpg, encoded once."""
    root = tmp_path_factory.mktemp("corpus")
    for spec in GOOD_SPECS:
        spec.encode(root)
    write_bad_files(root)
    return VideoCorpus(root=root, good={s.key: s for s in GOOD_SPECS}, bad=dict(BAD_EXPECTED),
                       not_video=NOT_VIDEO_KEYS)


# --- a fault-injecting HTTP proxy in front of S3 -------------------------------------------------

FaultKind = Literal["status", "reset", "stall"]
_S3_CODES = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
             504: "GatewayTimeout", 429: "TooManyRequests"}
_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                          "te", "trailer", "upgrade", "expect", "content-length"})


@dataclass
class FaultRule:
    """Which requests to break and how.

    A request matches when its method equals `method` (any when None), `path` (a regex) is
    found in its URL-decoded path and query, and `where(method, path)` (when given) is true.
    The first `skip` matching requests pass; the next `times` (every one when None) get the
    fault. Kinds: ``status`` answers `status` with an S3 XML error body (`code`, default from
    the status: 500 InternalError, 503 ServiceUnavailable, ...); ``reset`` closes the
    connection with a TCP RST; ``stall`` waits `stall_s` seconds, then passes the request on
    (`then="pass"`) or resets (`then="reset"`). With `after_upstream`, the request reaches S3
    first and only its response is broken (the write happened, the client does not know).
    """

    kind: FaultKind
    method: str | None = None
    path: str = ".*"
    where: Callable[[str, str], bool] | None = None
    status: int = 503
    code: str | None = None
    stall_s: float = 0.0
    then: Literal["pass", "reset"] = "pass"
    after_upstream: bool = False
    times: int | None = 1
    skip: int = 0
    matched: int = 0
    injected: int = 0

    def _matches(self, method: str, path: str) -> bool:
        if self.method is not None and method.upper() != self.method.upper():
            return False
        if not re.search(self.path, path):
            return False
        return self.where is None or bool(self.where(method, path))

    def take(self, method: str, path: str) -> bool:
        """Count a request; True when this one gets the fault."""
        if not self._matches(method, path):
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        if self.times is not None and self.injected >= self.times:
            return False
        self.injected += 1
        return True


@dataclass(frozen=True)
class ProxiedRequest:
    """One request seen by the proxy: method, decoded path, and what it got (status or fault)."""

    method: str
    path: str
    outcome: str  # "200", "503", "reset", "stall+200", "200+503" (after_upstream), ...
    injected: bool


@dataclass
class FaultProxy:
    """A threaded HTTP proxy forwarding to `upstream` (the moto server), breaking the requests
    that match its rules. Use `endpoint_url` / `storage_options` where S3's would go."""

    upstream: str
    rules: list[FaultRule] = field(default_factory=list)
    log: list[ProxiedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        target = urlsplit(self.upstream)
        self._target = (target.hostname or "127.0.0.1", target.port or 80)
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options through the proxy (fake credentials as for the moto server)."""
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing"}

    # rules
    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail(self, *, status: int = 503, **match: Any) -> FaultRule:
        """Answer matching requests with an HTTP error (S3 XML body)."""
        return self.add(FaultRule(kind="status", status=status, **match))

    def reset(self, **match: Any) -> FaultRule:
        """Reset the TCP connection of matching requests."""
        return self.add(FaultRule(kind="reset", **match))

    def stall(self, seconds: float, **match: Any) -> FaultRule:
        """Hold matching requests `seconds` before passing them on (or resetting)."""
        return self.add(FaultRule(kind="stall", stall_s=seconds, **match))

    def clear(self) -> None:
        """Drop every rule and the request log."""
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def requests(self, method: str | None = None, path: str = ".*") -> list[ProxiedRequest]:
        """Logged requests with this method whose path matches the regex `path`."""
        with self._lock:
            return [r for r in self.log
                    if (method is None or r.method == method) and re.search(path, r.path)]

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    # used by the handler
    def _pick(self, method: str, path: str) -> FaultRule | None:
        with self._lock:
            for rule in self.rules:
                if rule.take(method, path):
                    return rule
        return None

    def _record(self, method: str, path: str, outcome: str, injected: bool) -> None:
        with self._lock:
            self.log.append(ProxiedRequest(method, path, outcome, injected))


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the connection was reset on purpose
            super().finish()

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _send_error_status(self, rule: FaultRule) -> None:
        code = rule.code or _S3_CODES.get(rule.status, "InternalError")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>injected by the test FaultProxy</Message>"
                f"<RequestId>fault-proxy</RequestId></Error>").encode()
        self.send_response_only(rule.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.owner._target, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_HEADERS:
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _send_upstream(self, status: int, reason: str, headers: list[tuple[str, str]],
                       data: bytes) -> None:
        self.send_response_only(status, reason)
        length = str(len(data))
        for name, value in headers:
            if name.lower() == "content-length" and self.command == "HEAD":
                length = value
            elif name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _proxy(self) -> None:
        owner = self.owner
        method, path = self.command, unquote(self.path)
        body = self._read_body()
        rule = owner._pick(method, path)
        prefix = ""
        if rule is not None and rule.kind == "stall":
            owner._stop.wait(rule.stall_s)
            if rule.then == "reset":
                owner._record(method, path, "stall+reset", True)
                self._reset()
                return
            prefix, rule = "stall+", None
        if rule is not None and not rule.after_upstream:
            owner._record(method, path, "reset" if rule.kind == "reset" else str(rule.status), True)
            if rule.kind == "reset":
                self._reset()
            else:
                self._send_error_status(rule)
            return
        try:
            status, reason, headers, data = self._forward(body)
        except OSError as exc:  # the upstream is gone: tell the client as a gateway would
            owner._record(method, path, f"upstream {type(exc).__name__}", False)
            self._send_error_status(FaultRule(kind="status", status=502))
            return
        if rule is not None:  # after_upstream: S3 applied the request, the answer is lost
            lost = str(rule.status) if rule.kind == "status" else "reset"
            owner._record(method, path, f"{status}+{lost}", True)
            if rule.kind == "status":
                self._send_error_status(rule)
            else:
                self._reset()
            return
        owner._record(method, path, prefix + str(status), bool(prefix))
        self._send_upstream(status, reason, headers, data)


@pytest.fixture
def fault_proxy(s3_server: Any) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of the session's moto server, with no rules yet."""
    proxy = FaultProxy(s3_server.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.close()
