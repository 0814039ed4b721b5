"""Conditional writes (tasks/common/storage.py): write only if the object is still the version
read, on a local folder (flock + read-compare-rename) and on S3 through the moto server
(``If-Match`` / ``If-None-Match: *``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tasks.common.storage import (
    join,
    read_bytes,
    read_versioned,
    remove_file,
    write_if_unchanged,
)
from tasks.errors import OutputNotWritableError


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """``(base URI, storage options)`` on a local folder or a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/store", dict(s3.storage_options)


def test_create_only_when_absent_then_swap_only_from_the_version_read(
    place: tuple[str, dict[str, Any] | None],
) -> None:
    base, so = place
    uri = join(base, "pointer.json")
    assert read_versioned(uri, so) is None

    first = write_if_unchanged(uri, b"one", None, so)
    assert first is not None
    assert write_if_unchanged(uri, b"rival", None, so) is None  # it exists by now
    assert read_bytes(uri, so) == b"one"

    seen = read_versioned(uri, so)
    assert seen is not None and seen.data == b"one" and seen.token == first
    second = write_if_unchanged(uri, b"two", seen.token, so)
    assert second is not None and second != first
    assert write_if_unchanged(uri, b"stale", seen.token, so) is None  # "one" is gone
    now = read_versioned(uri, so)
    assert now is not None and now.data == b"two" and now.token == second


def test_tokens_are_etags_on_s3_and_sha256_locally(
    place: tuple[str, dict[str, Any] | None],
) -> None:
    base, so = place
    uri = join(base, "x.json")
    token = write_if_unchanged(uri, b"{}", None, so)
    if base.startswith("s3://"):
        assert token == f'"{hashlib.md5(b"{}").hexdigest()}"'  # a single-part PUT's ETag
    else:
        assert token == hashlib.sha256(b"{}").hexdigest()
        assert (Path(base) / ".x.json.lock").exists()  # the lock file stays; the lock does not


def test_a_vanished_object_is_a_conflict_not_an_error(
    place: tuple[str, dict[str, Any] | None],
) -> None:
    base, so = place
    uri = join(base, "gone.json")
    token = write_if_unchanged(uri, b"a", None, so)
    assert remove_file(uri, so)
    assert write_if_unchanged(uri, b"b", token, so) is None
    assert read_versioned(uri, so) is None


def test_other_protocols_are_refused_in_one_line() -> None:
    with pytest.raises(OutputNotWritableError, match=r"^memory://x/p\.json: conditional writes"):
        write_if_unchanged("memory://x/p.json", b"{}", None)
