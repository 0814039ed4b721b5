"""Tests for tasks/storage.py: URI resolution, retries, atomic writes, the writability probe."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from fsspec.implementations.local import LocalFileSystem
from s3fs.errors import translate_boto_error

from tasks.common.storage import (
    OutputNotWritableError,
    atomic_write_bytes,
    check_writable,
    is_transient,
    join,
    read_bytes,
    resolve,
    with_retries,
)


def _client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


# --- resolve / join ----------------------------------------------------------------------------
def test_resolve_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for uri in ("sub/dir", "./sub/dir", f"file://{tmp_path}/sub/dir", f"{tmp_path}/sub/dir"):
        fs, path = resolve(uri, None)
        assert isinstance(fs, LocalFileSystem)
        assert path == f"{tmp_path}/sub/dir"


def test_resolve_s3_strips_protocol_and_takes_options(s3_server, s3_bucket: str) -> None:
    fs, path = resolve(f"s3://{s3_bucket}/some/prefix/", s3_server.storage_options)
    assert path == f"{s3_bucket}/some/prefix"
    assert fs.ls(s3_bucket) == []


def test_resolve_s3_endpoint_from_env(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k.mp4", Body=b"x")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    fs, path = resolve(f"s3://{s3_bucket}", None)  # no storage_options at all
    assert fs.ls(path) == [f"{s3_bucket}/k.mp4"]


def test_resolve_s3_instances_keyed_by_options(s3_server) -> None:
    fs1, _ = resolve("s3://b1/x", s3_server.storage_options)
    fs2, _ = resolve("s3://b2/y", dict(s3_server.storage_options))
    other = {**s3_server.storage_options, "endpoint_url": "http://127.0.0.1:9"}
    fs3, _ = resolve("s3://b1/x", other)
    assert fs1 is fs2
    assert fs3 is not fs1


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b/out", ("videos", "date=2024-05-01"), "s3://b/out/videos/date=2024-05-01"),
        ("s3://b/out/", ("/videos/", "x.parquet"), "s3://b/out/videos/x.parquet"),
        ("s3://b", ("k",), "s3://b/k"),
        ("/abs/out/", ("runs", "r.json"), "/abs/out/runs/r.json"),
        ("rel/out", ("a",), "rel/out/a"),
        ("file:///abs/out", ("a", "", "b"), "file:///abs/out/a/b"),
        ("/", ("a",), "/a"),
        ("s3://b/out", (), "s3://b/out"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


# --- transient errors and retries --------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
        TimeoutError("timed out"),
        OSError(errno.ECONNRESET, "reset"),
        EndpointConnectionError(endpoint_url="http://s3"),
        ConnectionClosedError(endpoint_url="http://s3"),
        ReadTimeoutError(endpoint_url="http://s3"),
        _client_error("SlowDown", 503, "PutObject"),
        _client_error("InternalError", 500),
        _client_error("RequestTimeout", 400),
        _client_error("Whatever", 502),
        translate_boto_error(_client_error("SlowDown", 503)),  # s3fs: OSError(EBUSY) from it
        translate_boto_error(_client_error("InternalError", 500)),
        translate_boto_error(_client_error("ServiceUnavailable", 503)),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("conn"),
    ],
    ids=repr,
)
def test_is_transient_true(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError("nope"),
        PermissionError("denied"),
        NotADirectoryError("file in the way"),
        _client_error("NoSuchKey", 404),
        _client_error("AccessDenied", 403),
        translate_boto_error(_client_error("NoSuchKey", 404)),
        translate_boto_error(_client_error("AccessDenied", 403)),
        translate_boto_error(_client_error("NoSuchBucket", 404)),
        ValueError("bad value"),
        KeyError("k"),
        OSError(errno.ENOSPC, "disk full"),
    ],
    ids=repr,
)
def test_is_transient_false(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_is_transient_follows_cause_chain() -> None:
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_with_retries_retries_transient_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        return "ok"

    assert with_retries(flaky, base_delay=0.001, what="flaky op") == "ok"
    assert len(calls) == 3
    assert "flaky op failed (attempt 1/5" in caplog.text


def test_with_retries_does_not_retry_file_not_found() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("s3://b/k")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, base_delay=0.001, what="read")
    assert len(calls) == 1


def test_with_retries_gives_up_after_attempts() -> None:
    calls = []

    def always() -> None:
        calls.append(1)
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        with_retries(always, attempts=3, base_delay=0.001, what="x")
    assert len(calls) == 3


def test_with_retries_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="attempts"):
        with_retries(lambda: None, attempts=0, what="x")


# --- reading and atomic writes -----------------------------------------------------------------
def test_atomic_write_local_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(str(target), b"one", None)
    atomic_write_bytes(f"file://{target}", b"two", None)
    assert target.read_bytes() == b"two"
    assert read_bytes(str(target), None) == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_atomic_write_local_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(str(target), "not bytes", None)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_and_read_s3(s3_server, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/deep/key with space é.bin"
    atomic_write_bytes(uri, b"payload", s3_server.storage_options)
    assert read_bytes(uri, s3_server.storage_options) == b"payload"
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="deep/key with space é.bin")
    assert body["Body"].read() == b"payload"


def test_read_bytes_missing_raises_file_not_found(s3_server, s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(f"s3://{s3_bucket}/nope.mp4", s3_server.storage_options)


# --- check_writable ----------------------------------------------------------------------------
def test_check_writable_local_ok_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    check_writable(str(out), None)
    assert out.is_dir()
    assert list(out.iterdir()) == []


def test_check_writable_under_a_regular_file_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    uri = f"{blocker}/sub"
    with pytest.raises(
        OutputNotWritableError, match=f"^{re.escape(uri)}: output location is not writable"
    ):
        check_writable(uri, None)


def test_check_writable_error_is_a_value_error_and_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError) as info:
        check_writable(str(blocker / "sub"), None)
    assert "\n" not in str(info.value)


def test_check_writable_s3_ok_and_removes_probe(s3_server, s3_bucket: str) -> None:
    check_writable(f"s3://{s3_bucket}/out", s3_server.storage_options)
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert listed.get("KeyCount", 0) == 0


def test_check_writable_missing_bucket(s3_server) -> None:
    uri = "s3://no-such-bucket-for-tests/out"
    with pytest.raises(OutputNotWritableError, match="^s3://no-such-bucket-for-tests/out: "):
        check_writable(uri, s3_server.storage_options)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
