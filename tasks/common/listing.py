"""List the video objects under a source (``s3://``, ``file://`` or a local folder).

Each video comes back with its size and an etag, which together with the model version decide
whether a nightly run has already processed it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from tasks.common.storage import resolve, with_retries
from tasks.errors import SourceNotFoundError

logger = logging.getLogger(__name__)

__all__ = ["VIDEO_EXTENSIONS", "Listing", "SourceNotFoundError", "VideoObject", "list_videos"]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp"}
)
"""Lower-case extensions of the objects treated as videos; matching ignores case."""

_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class VideoObject:
    """One listed video.

    Attributes:
        uri: full URI, ``s3://bucket/key`` or an absolute local path.
        size: bytes.
        etag: S3 ETag without quotes; locally the first 16 hex of sha1 of ``"size:mtime_ns"``.
    """

    uri: str
    size: int
    etag: str


@dataclass
class Listing:
    """What `list_videos` found: the videos, sorted by URI, and what it skipped."""

    source: str
    videos: list[VideoObject]
    skipped_not_video: int = 0
    skipped_not_video_examples: list[str] = field(default_factory=list)
    truncated: int = 0
    """Videos left out by ``max_videos``."""


def is_video(name: str) -> bool:
    """True when `name` ends in one of `VIDEO_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def local_etag(size: int, mtime_ns: int) -> str:
    """The etag of a local file: first 16 hex of sha1 of ``"size:mtime_ns"``."""
    return hashlib.sha1(f"{size}:{mtime_ns}".encode()).hexdigest()[:16]


def _find(fs: Any, path: str, source: str) -> dict[str, dict[str, Any]]:
    try:
        return with_retries(
            lambda: fs.find(path, withdirs=False, detail=True), what=f"list {source}"
        )
    except FileNotFoundError as exc:  # s3fs: NoSuchBucket
        raise SourceNotFoundError(source, f"source not found ({exc})") from exc


def list_videos(
    source: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    max_videos: int | None = None,
) -> Listing:
    """List every video under `source`, recursively, sorted by URI.

    Args:
        source: ``s3://bucket/prefix``, ``file:///abs/folder`` or a local folder; a single
            object or file also works. An existing but empty prefix gives zero videos.
        storage_options: filesystem options (see `tasks.common.storage.resolve`).
        max_videos: keep only the first N videos (by URI) when given.

    Returns:
        A `Listing`. Objects with other extensions are counted in ``skipped_not_video``;
        S3 directory placeholder keys (ending in ``/``) are ignored.

    Raises:
        SourceNotFoundError: no such local folder or no such bucket.
    """
    if max_videos is not None and max_videos < 0:
        raise ValueError(f"max_videos must be >= 0 or None, got {max_videos}")
    fs, path = resolve(source, storage_options)
    local = isinstance(fs, LocalFileSystem)
    if local and not os.path.exists(path):
        raise SourceNotFoundError(source, "source not found (no such file or folder)")
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()

    found = _find(fs, path, source)
    videos: list[VideoObject] = []
    skipped = 0
    examples: list[str] = []
    for name, info in sorted(found.items()):
        if name.endswith("/") or info.get("type") == "directory":
            continue  # S3 "folder" placeholder objects
        uri = name if local else _full_uri(fs, name)
        if not is_video(name):
            skipped += 1
            if len(examples) < _MAX_EXAMPLES:
                examples.append(uri)
            continue
        size = int(info.get("size") or 0)
        if local:
            try:
                st = os.stat(name)
            except FileNotFoundError:  # removed since the listing, or a dangling symlink
                logger.warning("%s vanished while listing; skipped", uri)
                continue
            etag = local_etag(st.st_size, st.st_mtime_ns)
            size = st.st_size
        else:
            etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        videos.append(VideoObject(uri=uri, size=size, etag=etag))

    videos.sort(key=lambda v: v.uri)
    truncated = 0
    if max_videos is not None and len(videos) > max_videos:
        truncated = len(videos) - max_videos
        videos = videos[:max_videos]
    logger.info(
        "listed %s: %d videos, %d other objects skipped%s",
        source,
        len(videos),
        skipped,
        f", {truncated} beyond max_videos left out" if truncated else "",
    )
    return Listing(
        source=source,
        videos=videos,
        skipped_not_video=skipped,
        skipped_not_video_examples=sorted(examples),
        truncated=truncated,
    )


def _full_uri(fs: Any, name: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return name if "://" in name else f"{protocol}://{name}"
