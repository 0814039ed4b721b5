"""Reading and writing files given as a path, a URI, bytes or a file object, and the one
atomic local writer of the project (model files here; Parquet and JSON go through it from
``tasks/common/storage.py``)."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import IO, Any

from emotion_model.errors import CheckpointError, CheckpointNotFoundError

Source = str | os.PathLike[str] | IO[bytes] | bytes


def source_name(source: Any) -> str:
    """A printable name for a path, URI, bytes or file object."""
    if isinstance(source, bytes | bytearray):
        return "<bytes>"
    if isinstance(source, str | os.PathLike):  # before .name: a Path's name is its basename
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else repr(source)


def _is_remote(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def read_source_bytes(source: Source) -> tuple[str, bytes]:
    """Return ``(name, data)`` for a local path, a ``file://`` or fsspec URI, bytes or a file.

    URIs such as ``s3://bucket/key`` go through fsspec (its s3fs plugin reads the standard AWS
    settings); emotion_model itself holds no storage client.
    """
    name = source_name(source)
    if isinstance(source, bytes | bytearray):
        return name, bytes(source)
    if hasattr(source, "read"):
        return name, source.read()  # type: ignore[union-attr]
    text = os.fspath(source)  # type: ignore[arg-type]
    try:
        if _is_remote(text):
            import fsspec

            with fsspec.open(text, "rb") as fh:
                return name, fh.read()
        path = Path(text.removeprefix("file://"))
        return name, path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(name, "no such model file") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(name, "is a directory, not a model file") from exc
    except PermissionError as exc:
        raise CheckpointError(name, "permission denied") from exc


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a local ``path`` whole or not at all; returns the path.

    The bytes go to a hidden temp file in the same folder (readers such as pyarrow datasets
    skip names starting with ``.``; parents are created), are flushed to disk, then
    ``os.replace`` puts the file in place, which is atomic within one folder. The file gets the
    usual permissions (0666 less the umask). A failure leaves no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_target(target: str | os.PathLike[str] | IO[bytes], data: bytes) -> None:
    """Write to a file object, a local path (atomically) or an fsspec URI (one PUT)."""
    if hasattr(target, "write"):
        target.write(data)  # type: ignore[union-attr]
        return
    text = os.fspath(target)  # type: ignore[arg-type]
    if _is_remote(text):
        import fsspec

        fs, path = fsspec.core.url_to_fs(text)
        fs.pipe_file(path, data)
        return
    atomic_write(text.removeprefix("file://"), data)


def bytes_io(data: bytes) -> io.BytesIO:
    """A seekable in-memory file over ``data``."""
    return io.BytesIO(data)
