"""fsspec helpers for listing and sink: resolve URIs, retry transient errors, write atomically,
and write conditionally (compare-and-swap: ``read_versioned`` / ``write_if_unchanged``).

Three kinds of location are accepted everywhere:

- ``s3://bucket/prefix``: S3 through s3fs. Credentials, region, profile and endpoint come from
  the standard AWS settings (env vars, ``~/.aws`` profiles) that botocore reads, plus the
  optional ``storage_options`` dict (``endpoint_url``, ``key``/``secret``, ``profile``,
  ``anon``, ``client_kwargs``, ...), which wins over them.
- ``file:///abs/path``: the local file system.
- a plain local path, relative or absolute (made absolute).

Any other ``protocol://`` is handed to ``fsspec.core.url_to_fs`` unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from emotion_model.errors import one_line
from emotion_model.files import atomic_write
from tasks.errors import OutputNotWritableError, SourceNotFoundError

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "OutputNotWritableError",
    "SourceNotFoundError",
    "Versioned",
    "atomic_write_bytes",
    "check_writable",
    "is_local",
    "is_transient",
    "join",
    "local_path",
    "read_bytes",
    "read_versioned",
    "remove_file",
    "resolve",
    "retry_transient",
    "with_retries",
    "write_if_unchanged",
]


# --- resolving URIs ----------------------------------------------------------------------------
_ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Settings that change which S3 client an fs instance holds; they key the instance cache.
_AWS_ENV_VARS = (
    *_ENDPOINT_ENV_VARS,
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_FS_CACHE: OrderedDict[str, fsspec.AbstractFileSystem] = OrderedDict()
_FS_CACHE_SIZE = 32
_FS_CACHE_LOCK = threading.Lock()


def is_local(uri: str) -> bool:
    """True for ``file://`` URIs and plain paths, False for ``s3://`` and other protocols."""
    return uri.startswith("file://") or "://" not in uri


def local_path(uri: str) -> str | None:
    """The absolute local path of a plain path or ``file://`` URI; None for remote URIs."""
    return _local_path(uri) if is_local(uri) else None


def _local_path(uri: str) -> str:
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def _s3_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(storage_options or {})
    client_kwargs = opts.get("client_kwargs") or {}
    if not opts.get("endpoint_url") and not client_kwargs.get("endpoint_url"):
        for var in _ENDPOINT_ENV_VARS:
            if os.environ.get(var):
                opts["endpoint_url"] = os.environ[var]
                break
    # Listings must never come from a cache: a nightly run has to see new objects.
    opts.setdefault("use_listings_cache", False)
    opts.pop("skip_instance_cache", None)
    return opts


def _cache_key(protocol: str, opts: Mapping[str, Any]) -> str:
    # Keyed by process, thread, the options and the AWS env (hashed: secrets never sit in a key).
    env = {var: os.environ.get(var) for var in _AWS_ENV_VARS}
    raw = json.dumps([protocol, opts, env], sort_keys=True, default=repr)
    digest = hashlib.sha256(raw.encode()).hexdigest()
    return f"{os.getpid()}:{threading.get_ident()}:{digest}"


def resolve(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for `uri`; `path` is what the filesystem's methods take.

    Args:
        uri: ``s3://bucket/prefix``, ``file:///abs/path`` or a local path (relative paths are
            made absolute).
        storage_options: extra filesystem options (for S3: ``endpoint_url``, ``key``,
            ``secret``, ``profile``, ``anon``, ``client_kwargs``...). For S3 the endpoint also
            comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when not given here.

    Returns:
        The filesystem and the protocol-less path (``bucket/key`` for S3, an absolute POSIX
        path locally). Instances are cached per process, thread, options and AWS env, so tests
        pointing at different endpoints never share a client.
    """
    if is_local(uri):
        return LocalFileSystem(), _local_path(uri)
    protocol = uri.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a"):
        import s3fs

        opts = _s3_options(storage_options)
        key = _cache_key("s3", opts)
        with _FS_CACHE_LOCK:
            fs = _FS_CACHE.get(key)
            if fs is None:
                fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
                _FS_CACHE[key] = fs
                while len(_FS_CACHE) > _FS_CACHE_SIZE:
                    _FS_CACHE.popitem(last=False)
            else:
                _FS_CACHE.move_to_end(key)
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return fs, path


def join(base_uri: str, *parts: str) -> str:
    """Join `parts` onto `base_uri` with ``/``; works for ``s3://``, ``file://`` and local paths.

    Example: ``join("s3://b/out/", "videos", "date=2024-05-01")`` ->
    ``"s3://b/out/videos/date=2024-05-01"``.
    """
    if "://" in base_uri:
        scheme, rest = base_uri.split("://", 1)
        head = f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else f"{scheme}://{rest}"
    else:
        head = base_uri.rstrip("/") or "/"
    pieces = [p.strip("/") for p in parts if p and p.strip("/")]
    if not pieces:
        return head
    sep = "" if head.endswith("/") else "/"
    return head + sep + "/".join(pieces)


# --- retries -----------------------------------------------------------------------------------
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EPIPE",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "EAGAIN",
        "EBUSY",
        "EREMOTEIO",
    )
    if hasattr(errno, name)
)
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "OperationAborted",
        "500",
        "502",
        "503",
        "504",
    }
)
_TRANSIENT_HTTP_STATUS = frozenset({429, 500, 502, 503, 504})
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def _is_transient_one(exc: BaseException) -> bool | None:
    """True/False when `exc` alone decides; None to look at its cause."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    try:
        from botocore import exceptions as bce
    except ImportError:  # pragma: no cover - botocore is a dependency
        bce = None
    if bce is not None:
        if isinstance(exc, bce.ClientError):
            response = getattr(exc, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in _TRANSIENT_S3_CODES or status in _TRANSIENT_HTTP_STATUS
        if isinstance(
            exc,
            bce.ConnectionError  # EndpointConnectionError, ConnectTimeoutError
            | bce.HTTPClientError  # ConnectionClosedError, ReadTimeoutError
            | bce.IncompleteReadError
            | bce.ResponseStreamingError,
        ):
            return True
        if isinstance(exc, bce.NoCredentialsError | bce.ParamValidationError):
            return False
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - s3fs brings aiohttp
        aiohttp = None
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        if isinstance(exc, aiohttp.ClientResponseError):
            return exc.status in _TRANSIENT_HTTP_STATUS
        return True
    try:
        from fsspec.exceptions import FSTimeoutError
    except ImportError:  # pragma: no cover
        FSTimeoutError = None  # noqa: N806
    if FSTimeoutError is not None and isinstance(exc, FSTimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is a storage error worth retrying (network, timeout, throttling, 5xx).

    Connection errors and resets, timeouts, botocore connection/read errors, S3 error codes
    ``SlowDown``, ``RequestTimeout``, ``InternalError``, ``ServiceUnavailable``, HTTP 429/5xx,
    aiohttp client errors and ``OSError`` with a network errno are transient. Missing objects,
    permission errors (403/404, ``NoSuchKey``, ``NoSuchBucket``) and everything else are not.
    The exception's ``__cause__``/``__context__`` chain is searched too, since s3fs wraps
    botocore errors in ``OSError``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        verdict = _is_transient_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when it failed on a transient storage
    error (a bad video is recorded as an ``errors`` row and never raises)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as raised:  # Prefect may re-raise instead of returning the exception
        exc = raised
    return isinstance(exc, BaseException) and is_transient(exc)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    what: str,
) -> T:
    """Call ``fn()``; on a transient storage error retry with exponential backoff and jitter.

    Args:
        fn: the operation, without arguments (use a lambda or ``functools.partial``).
        attempts: total tries, at least 1.
        base_delay: seconds before the 2nd try; doubles every try, times a jitter in [0.5, 1.5).
        max_delay: cap on one sleep.
        what: what the operation does, for log lines (e.g. ``"list s3://b/videos"``).

    Returns:
        What `fn` returns. Non-transient errors (see `is_transient`) are raised at once; the
        last transient one is raised when the tries are used up.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            logger.warning(
                "%s failed (attempt %d/%d, %s: %s); retrying in %.2fs",
                what,
                attempt,
                attempts,
                type(exc).__name__,
                one_line(exc, 200),
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# --- reading and writing -----------------------------------------------------------------------
def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Return the whole object at `uri`, retrying transient storage errors."""
    fs, path = resolve(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path), what=f"read {uri}")


def atomic_write_bytes(
    uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write `data` to `uri` so that readers see the whole object or none of it.

    Locally: a temp file in the same folder (parents created) then ``os.replace``. On S3: one
    PUT (``pipe_file``), which S3 applies atomically. Transient errors are retried; a retry
    overwrites, so the call is idempotent.
    """
    fs, path = resolve(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        with_retries(lambda: atomic_write(path, data), what=f"write {uri}")
    else:
        with_retries(lambda: fs.pipe_file(path, data), what=f"write {uri}")


def remove_file(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Delete the object at `uri` if it exists; return whether something was there."""
    fs, path = resolve(uri, storage_options)

    def _rm() -> bool:
        try:
            if not fs.exists(path):
                return False
            fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    return with_retries(_rm, what=f"delete {uri}")


def check_writable(output_uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Prove `output_uri` is writable by writing and deleting ``<output>/_probe/<random>``.

    Raises:
        OutputNotWritableError: one line naming `output_uri` and the cause (missing bucket,
            permission denied, a path under a regular file, ...).
    """
    probe = join(output_uri, "_probe", f"{uuid.uuid4().hex}.probe")
    try:
        atomic_write_bytes(probe, b"emotion-pipeline write probe\n", storage_options)
        remove_file(probe, storage_options)
    except Exception as exc:
        raise OutputNotWritableError(
            output_uri, f"output location is not writable ({type(exc).__name__}: {exc})"
        ) from exc
    if is_local(output_uri):
        # Leave no empty `_probe/` folder behind (another shard may be probing: ignore).
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(_local_path(probe)))
    logger.debug("output %s is writable", output_uri)


# --- conditional writes (compare-and-swap) -------------------------------------------------------
# Two writers that read the same object and both write it back lose one update. These two
# functions let a writer say "only if it is still what I read": on S3 a PUT with ``If-Match:
# <ETag read>`` (``If-None-Match: *`` when there was nothing), which S3 applies atomically;
# locally a read-compare-rename under an exclusive ``flock`` on a hidden lock file beside the
# object (the kernel drops the lock when its process dies, so a crash leaves no stale lock).
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                             "NoSuchKey"})


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and a token of that exact version (S3: its ETag; locally: sha256)."""

    data: bytes
    token: str


def _content_token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_local(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _unsupported(uri: str) -> OutputNotWritableError:
    return OutputNotWritableError(uri, "conditional writes (compare-and-swap) are implemented "
                                       "for local paths and s3:// only")


def read_versioned(uri: str, storage_options: Mapping[str, Any] | None = None
                   ) -> Versioned | None:
    """The object at `uri` with its version token (one GET on S3), or None when absent."""
    fs, path = resolve(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        try:
            data = with_retries(lambda: _read_local(path), what=f"read {uri}")
        except FileNotFoundError:
            return None
        return Versioned(data, _content_token(data))
    if not _is_s3(fs):
        raise _unsupported(uri)
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)

    async def _get() -> Versioned:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            data = await resp["Body"].read()
        finally:
            resp["Body"].close()
        return Versioned(data, str(resp["ETag"]))

    try:
        return with_retries(lambda: sync(fs.loop, _get), what=f"read {uri}")
    except FileNotFoundError:
        return None


def _is_conflict(exc: BaseException) -> bool:
    """A conditional write refused because the object changed (412, 409, gone since read)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _CONFLICT_CODES or status in (409, 412):
                return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<folder>/.<name>.lock`` (created once, never deleted)."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_if_unchanged(uri: str, data: bytes, token: str | None,
                       storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Write `data` to `uri` only if the object is still the version `token` names (from
    `read_versioned`), or still absent when `token` is None.

    Returns:
        The new version's token, or None when another writer got there first (re-read, decide
        again, retry). Transient errors are retried; a retried write whose first try landed
        comes back as None too, so callers re-read and recognise their own write.
    """
    fs, path = resolve(uri, storage_options)
    if isinstance(fs, LocalFileSystem):

        def _local() -> str | None:
            with _local_lock(path):
                try:
                    current: str | None = _content_token(_read_local(path))
                except FileNotFoundError:
                    current = None
                if current != token:
                    return None
                atomic_write(path, data)
                return _content_token(data)

        return with_retries(_local, what=f"conditional write {uri}")
    if not _is_s3(fs):
        raise _unsupported(uri)
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}

    def _s3() -> str | None:
        try:
            resp = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except FileExistsError:  # s3fs's translation of a failed If-None-Match
            return None
        except Exception as exc:
            if _is_conflict(exc):
                return None
            raise
        return str(resp["ETag"])

    return with_retries(_s3, what=f"conditional write {uri}")
