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
    ``storage_options`` (for ``tasks.storage.resolve`` / s3fs) and ``client()`` (boto3).
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


# --- torch: one thread in tests -------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny test models run fastest on one thread; two threads thrash on a 2-core machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


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
