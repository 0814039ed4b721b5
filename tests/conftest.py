"""Shared pytest fixtures. Each section is self-contained; append new sections below."""

from __future__ import annotations

# --- Prefect: its ephemeral local server, in a private home ---------------------------------------
# Set before anything imports prefect: the tests never touch the user's ~/.prefect or a server.
import os as _os
import tempfile as _tempfile

_PREFECT_HOME = _tempfile.mkdtemp(prefix="emotion-pipeline-prefect-")
_os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
_os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
_os.environ.pop("PREFECT_API_URL", None)
# OpenMP threads that spin while waiting thrash when the two cores are shared (measured: a
# 3 s training epoch took 100 s beside another busy process); wait passively in tests.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --- S3 through a local moto server --------------------------------------------------------------
# The pipeline reaches this server exactly as it reaches AWS: s3fs/boto3 with an endpoint_url.
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would send test traffic elsewhere (or to real credentials); unset meanwhile.
_S3_ENV_UNSET = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server on 127.0.0.1 and how to reach it."""

    endpoint_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec/s3fs options: ``{"endpoint_url", "key", "secret"}``."""

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=_S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=_S3_ENV["AWS_DEFAULT_REGION"],
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start a moto S3 server for the session; AWS env set to fake credentials meanwhile.

    Yields an `S3Server` with ``endpoint_url`` (``http://127.0.0.1:<port>``),
    ``storage_options`` (for ``tasks.common.storage.resolve`` / s3fs) and ``client()`` (boto3).
    """
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in (*_S3_ENV, *_S3_ENV_UNSET)}
    os.environ.update(_S3_ENV)
    for k in _S3_ENV_UNSET:
        os.environ.pop(k, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield S3Server(
            endpoint_url=endpoint,
            storage_options={
                "endpoint_url": endpoint,
                "key": _S3_ENV["AWS_ACCESS_KEY_ID"],
                "secret": _S3_ENV["AWS_SECRET_ACCESS_KEY"],
            },
        )
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty, uniquely named bucket on the moto server; returns its name."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


# --- end of S3 section ---------------------------------------------------------------------------


# --- torch: one thread in tests, two for training -------------------------------------------------
def _torch_threads(threads: int) -> Iterator[None]:
    """torch on ``threads`` threads until resumed, then as it was."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny test models run fastest on one thread; two threads thrash on a 2-core machine."""
    yield from _torch_threads(1)


@pytest.fixture(scope="module")
def two_threads() -> Iterator[None]:
    """Training uses both cores (the session runs torch on one)."""
    yield from _torch_threads(2)


# --- an untrained small model file ----------------------------------------------------------------
@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An UNTRAINED small deployment file (16 frames of 64 px: cheap on a CPU), seeded."""
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model

    path = tmp_path_factory.mktemp("model") / "small-untrained.safetensors"
    torch.manual_seed(0)
    save_deployment(build_model("small").eval(), path, num_frames=16, img_size=64, untrained=True)
    return path


@pytest.fixture(scope="session")
def face_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An UNTRAINED small face model (16 frames of 64 px; its file says ``crop: face``)."""
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.face_clips import CropSpec
    from emotion_model.model import build_model

    path = tmp_path_factory.mktemp("face-model") / "small-face.safetensors"
    torch.manual_seed(0)
    save_deployment(build_model("small").eval(), path, num_frames=16, img_size=64,
                    crop=CropSpec.face().to_metadata(), untrained=True)
    return path


@pytest.fixture(scope="session")
def fused_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An UNTRAINED small audio-video model (16 frames of 64 px, whole frames, the default
    `AudioSpec`: 4 s of 16 kHz log-mel), seeded: what ``new-model --modality audio-video
    --crop frame`` writes, smaller."""
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model

    path = tmp_path_factory.mktemp("fused-model") / "small-fused.safetensors"
    torch.manual_seed(0)
    save_deployment(build_model("small", modality="audio-video").eval(), path, num_frames=16,
                    img_size=64, untrained=True)
    return path


# --- Prefect: one test server for the session ----------------------------------------------------
@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Every flow of the session runs against one temporary Prefect server and database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# --- a fault-injecting HTTP proxy in front of S3 -------------------------------------------------
# Shared by tests/flows and tests/reliability: `fault_proxy` sits between s3fs and the moto server.
import contextlib
import http.client
import re
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import unquote, urlsplit

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


# --- real clips: the repository's CREMA-D clips, a generated RAVDESS-shaped one, optional extras --
from pathlib import Path as _Path


@pytest.fixture(scope="session")
def crema_d_dir() -> _Path:
    """``tests/data/crema_d``: the four real CREMA-D clips kept in the repository (read only;
    ODbL, see ``tests/data/README.md``). Fails, naming the folder, if a clip is missing."""
    from video_fixtures import CREMA_D_CLIPS, CREMA_D_DIR

    missing = [name for name in CREMA_D_CLIPS if not (CREMA_D_DIR / name).is_file()]
    if missing:
        pytest.fail(f"{CREMA_D_DIR}: missing {', '.join(missing)} (they are in the repository)")
    return CREMA_D_DIR


@pytest.fixture(scope="session")
def ravdess_like_clip(tmp_path_factory: pytest.TempPathFactory) -> _Path:
    """A generated stand-in for the RAVDESS derivative (which may not be in the repository):
    ``<tmp>/ravdess/01-01-08-02-01-01-19.mp4``, MPEG-4 Part 2, 720x720, 29.97 fps, 122 frames,
    no audio, a drawn face. Encoded once per session; its folder holds nothing else."""
    from video_fixtures import write_ravdess_like_clip

    return write_ravdess_like_clip(tmp_path_factory.mktemp("real-shaped") / "ravdess")


@pytest.fixture(scope="session")
def extra_clips() -> list[_Path]:
    """Real clips beyond the repository's, from ``$EMOTION_PIPELINE_SHARED_DATA`` (every .mp4
    and .flv below it); ``[]`` when unset. Never required."""
    from video_fixtures import extra_clip_paths

    return extra_clip_paths()


# --- drawn-face sample data (synthetic, RAVDESS or CREMA-D names), rendered once per session -----
@pytest.fixture(scope="session")
def face_videos(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``face_videos(layout, takes, seconds, audio=False, ambiguous=())``: a folder of 6 actors
    x 6 emotions x ``takes`` of 96x96 15 fps drawn faces (seed 0), rendered on first use and
    shared by the session; with ``audio``, each with its synthetic voice (RAVDESS names:
    modality 01), and the faces of the ``ambiguous`` emotions drawn neutral."""
    from emotion_model.sample_data import make_sample_dataset

    made: dict[tuple[str, int, float, bool, tuple[str, ...]], _Path] = {}

    def make(layout: str = "ravdess", takes: int = 1, seconds: float = 2.0,
             audio: bool = False, ambiguous: tuple[str, ...] = ()) -> _Path:
        key = (layout, takes, seconds, audio, tuple(ambiguous))
        if key not in made:
            root = tmp_path_factory.mktemp(f"faces-{layout}-{takes}" + ("-audio" if audio else ""))
            make_sample_dataset(root, actors=6, layout=layout, takes_per_emotion=takes,
                                seconds=seconds, fps=15, size=(96, 96), seed=0, audio=audio,
                                ambiguous=ambiguous)
            made[key] = root
        return made[key]

    return make


# --- one small model trained by the retrain flow, shared by the retrain and distill tests ---------
from retrain_recipe import RETRAIN_RECIPE  # noqa: E402


@pytest.fixture(scope="session")
def retrained(face_videos: Any, tmp_path_factory: pytest.TempPathFactory,
              prefect_server: None) -> dict[str, Any]:
    """One full retrain (20 epochs) of the small model on 6 actors x 6 emotions x 4 takes of
    drawn faces (RAVDESS layout), into a fresh registry: ``summary``, ``registry``, ``data``
    and the promoted ``model_file`` (its version folder's file, which later tests leave as it
    is; they may move ``production.json``)."""
    from flows.retrain import retrain

    data = face_videos("ravdess", takes=4)
    registry = tmp_path_factory.mktemp("registry")
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.contextmanager(_torch_threads)(2))
        summary = retrain(sources=[str(data)], registry=str(registry), epochs=20,
                          patience=20, **RETRAIN_RECIPE)
    return {"summary": summary, "registry": registry, "data": data,
            "model_file": registry / summary["model_version"] / "model.safetensors"}
