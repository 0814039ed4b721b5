"""Tests for tasks/listing.py against a local folder and the moto S3 server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tasks.common.listing import (
    VIDEO_EXTENSIONS,
    Listing,
    SourceNotFoundError,
    VideoObject,
    is_video,
    list_videos,
)
from tasks.common.storage import resolve

# key -> bytes; nested prefixes, spaces, unicode, upper-case extensions, non-videos
_TREE = {
    "a.mp4": b"aa",
    "notes.txt": b"n",
    "nested/b.MOV": b"bbb",
    "nested/deeper/c d é.WebM": b"cccc",
    "nested/deeper/thumb.jpg": b"j",
    "nested/deeper/clip.3gp": b"3",
    "nested/x.mp4.part": b"p",
    "другое/видео.mkv": b"v",
}
_VIDEO_KEYS = sorted(
    [
        "a.mp4",
        "nested/b.MOV",
        "nested/deeper/c d é.WebM",
        "nested/deeper/clip.3gp",
        "другое/видео.mkv",
    ]
)


def _make_local_tree(root: Path) -> None:
    for key, data in _TREE.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _put_s3_tree(s3_server, bucket: str, prefix: str) -> None:
    client = s3_server.client()
    for key, data in _TREE.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{key}", Body=data)


def test_video_extensions_are_lower_case_and_match_any_case() -> None:
    assert all(ext == ext.lower() and ext.startswith(".") for ext in VIDEO_EXTENSIONS)
    assert is_video("X.MP4") and is_video("y.Mpeg") and is_video("dir.mp4/z.avi")
    assert not is_video("mp4") and not is_video("a.mp4.part") and not is_video("a.txt")


# --- local -------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["absolute", "file_uri", "relative"])
def test_list_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    root = tmp_path / "videos"
    _make_local_tree(root)
    monkeypatch.chdir(tmp_path)
    source = {"absolute": str(root), "file_uri": f"file://{root}", "relative": "videos/"}[form]

    listing = list_videos(source)

    assert isinstance(listing, Listing)
    assert [v.uri for v in listing.videos] == [f"{root}/{k}" for k in _VIDEO_KEYS]
    assert all(os.path.isabs(v.uri) and os.path.exists(v.uri) for v in listing.videos)
    assert [v.size for v in listing.videos] == [len(_TREE[k]) for k in _VIDEO_KEYS]
    assert listing.skipped_not_video == 3
    assert len(listing.skipped_not_video_examples) == 3
    assert all(len(v.etag) == 16 for v in listing.videos)


def test_local_etag_changes_when_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "v.mp4"
    f.write_bytes(b"one")
    os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    before = list_videos(str(tmp_path)).videos[0]
    assert before == list_videos(str(tmp_path)).videos[0]  # stable when nothing changed
    f.write_bytes(b"two")
    os.utime(f, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    after = list_videos(str(tmp_path)).videos[0]
    assert after.uri == before.uri
    assert after.etag != before.etag


def test_list_local_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SourceNotFoundError, match=f"^{missing}: source not found"):
        list_videos(str(missing))


def test_list_local_empty_folder_and_single_file(tmp_path: Path) -> None:
    assert list_videos(str(tmp_path)).videos == []
    f = tmp_path / "one.avi"
    f.write_bytes(b"x")
    assert [v.uri for v in list_videos(str(f)).videos] == [str(f)]


def test_max_videos_keeps_first_by_uri(tmp_path: Path) -> None:
    for name in ("c.mp4", "a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    listing = list_videos(str(tmp_path), max_videos=2)
    assert [os.path.basename(v.uri) for v in listing.videos] == ["a.mp4", "b.mp4"]
    assert listing.truncated == 1
    with pytest.raises(ValueError, match="max_videos"):
        list_videos(str(tmp_path), max_videos=-1)


# --- S3 ----------------------------------------------------------------------------------------
def test_list_s3_prefix(s3_server, s3_bucket: str) -> None:
    _put_s3_tree(s3_server, s3_bucket, "archive/videos/")
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="archive/videos/nested/", Body=b"")  # placeholder
    client.put_object(Bucket=s3_bucket, Key="archive/videos2/other.mp4", Body=b"o")  # sibling

    listing = list_videos(f"s3://{s3_bucket}/archive/videos", s3_server.storage_options)

    expected = [f"s3://{s3_bucket}/archive/videos/{k}" for k in _VIDEO_KEYS]
    assert [v.uri for v in listing.videos] == expected
    assert [v.size for v in listing.videos] == [len(_TREE[k]) for k in _VIDEO_KEYS]
    # single-part upload: the ETag is the MD5 of the bytes, without quotes
    assert [v.etag for v in listing.videos] == [
        hashlib.md5(_TREE[k]).hexdigest() for k in _VIDEO_KEYS
    ]
    assert listing.skipped_not_video == 3
    assert all(u.startswith(f"s3://{s3_bucket}/") for u in listing.skipped_not_video_examples)


def test_list_s3_uris_read_back(s3_server, s3_bucket: str) -> None:
    _put_s3_tree(s3_server, s3_bucket, "")
    listing = list_videos(f"s3://{s3_bucket}/", s3_server.storage_options)
    assert len(listing.videos) == len(_VIDEO_KEYS)
    fs, _ = resolve(f"s3://{s3_bucket}", s3_server.storage_options)
    for video in listing.videos:
        assert len(fs.cat_file(video.uri)) == video.size


def test_list_s3_etag_changes_on_reupload(s3_server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="v.mp4", Body=b"first")
    source = f"s3://{s3_bucket}"
    before = list_videos(source, s3_server.storage_options).videos
    client.put_object(Bucket=s3_bucket, Key="v.mp4", Body=b"second version")
    after = list_videos(source, s3_server.storage_options).videos
    assert [v.uri for v in before] == [v.uri for v in after]
    assert before[0].etag != after[0].etag
    assert after[0] == VideoObject(
        uri=f"s3://{s3_bucket}/v.mp4", size=14, etag=hashlib.md5(b"second version").hexdigest()
    )


def _bulk_put(s3_server, bucket: str, objects: dict[str, bytes]) -> None:
    """Create many objects fast: straight into the in-process moto backend, else over HTTP.

    Setup only: the listing under test still goes over HTTP, page by page.
    """
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for key, data in objects.items():
            backend.put_object(bucket, key, data)
    except (ImportError, KeyError, AttributeError, TypeError):  # moto internals moved
        fs, _ = resolve(f"s3://{bucket}", s3_server.storage_options)
        fs.pipe({f"{bucket}/{key}": data for key, data in objects.items()})


def test_list_s3_paginates_past_1000(s3_server, s3_bucket: str) -> None:
    n = 2345  # > 2 pages of 1000
    objects = {f"many/{i:05d}.mp4": b"v" for i in range(n)}
    objects.update({f"many/{i:05d}.json": b"{}" for i in range(3)})
    _bulk_put(s3_server, s3_bucket, objects)
    # the objects are visible through the S3 API, so the listing below is a real one
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="many/")["IsTruncated"]

    listing = list_videos(f"s3://{s3_bucket}/many/", s3_server.storage_options)

    assert len(listing.videos) == n
    assert listing.videos[-1].uri == f"s3://{s3_bucket}/many/{n - 1:05d}.mp4"
    assert len({v.uri for v in listing.videos}) == n
    assert listing.skipped_not_video == 3


def test_list_s3_empty_prefix_is_fine(s3_server, s3_bucket: str) -> None:
    listing = list_videos(f"s3://{s3_bucket}/nothing/here/", s3_server.storage_options)
    assert listing.videos == [] and listing.skipped_not_video == 0


def test_list_s3_missing_bucket(s3_server) -> None:
    with pytest.raises(SourceNotFoundError, match="^s3://no-such-bucket-xyz/v: source not found"):
        list_videos("s3://no-such-bucket-xyz/v", s3_server.storage_options)


def test_list_s3_sees_new_objects_between_calls(s3_server, s3_bucket: str) -> None:
    client = s3_server.client()
    source = f"s3://{s3_bucket}/p"
    client.put_object(Bucket=s3_bucket, Key="p/1.mp4", Body=b"1")
    assert len(list_videos(source, s3_server.storage_options).videos) == 1
    client.put_object(Bucket=s3_bucket, Key="p/2.mp4", Body=b"2")
    assert len(list_videos(source, s3_server.storage_options).videos) == 2
