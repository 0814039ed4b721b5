"""Helpers of the reliability tests: bad and unusual inputs, generated with PyAV, and checks
of a run's outputs (imported by the tests as ``reliability_helpers``)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
from video_fixtures import encode_audio_only, make_test_pattern

from emotion_model.video_writer import encode_video
from tasks.batch.sink import read_table

X264_FAST = {"preset": "ultrafast"}


# --- building blocks -----------------------------------------------------------------------------
def mp4_boxes(data: bytes | bytearray, start: int = 0, end: int | None = None
              ) -> Iterator[tuple[int, int, bytes]]:
    """The ISO-BMFF boxes between `start` and `end`: (offset, size, type)."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", bytes(data[i:i + 8]))
        if size < 8:
            return
        yield i, size, kind
        i += size


def without_moov(data: bytes) -> bytes:
    """The mp4 `data` with its ``moov`` box (the index of every sample) cut out."""
    for offset, size, kind in mp4_boxes(data):
        if kind == b"moov":
            return data[:offset] + data[offset + size:]
    raise ValueError("no moov box")


def with_rotation(data: bytes, degrees: int) -> bytes:
    """The mp4 `data` with a display matrix that turns the picture `degrees` clockwise (as a
    phone held upright writes it: the ``rotate`` tag / display-matrix side data)."""
    out = bytearray(data)
    r = math.radians(degrees)
    a, b = round(math.cos(r)), round(math.sin(r))
    matrix = [a << 16, b << 16, 0, (-b) << 16, a << 16, 0, 0, 0, 1 << 30]
    for moov, moov_size, kind in mp4_boxes(out):
        if kind != b"moov":
            continue
        for trak, trak_size, kind2 in mp4_boxes(out, moov + 8, moov + moov_size):
            if kind2 != b"trak":
                continue
            for tkhd, _, kind3 in mp4_boxes(out, trak + 8, trak + trak_size):
                if kind3 == b"tkhd":
                    version = out[tkhd + 8]
                    # version/flags, times + track id + reserved + duration, reserved(8),
                    # layer, alternate group, volume, reserved: then the 3x3 matrix
                    offset = tkhd + 12 + (32 if version == 1 else 20) + 16
                    struct.pack_into(">9i", out, offset, *matrix)
                    return bytes(out)
    raise ValueError("no tkhd box")


def write_still_jpeg(path: Path) -> Path:
    """One JPEG picture (under whatever name `path` has, e.g. ``.mp4``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(make_test_pattern(1, 64, 96)[0], format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def corrupt_middle(data: bytes, *, at: float = 0.5, length: int = 2000, seed: int = 0) -> bytes:
    """`data` with `length` random bytes written over it at fraction `at` (the header and
    index stay intact: the damage is inside the stream)."""
    out = bytearray(data)
    start = int(len(out) * at)
    out[start:start + length] = np.random.default_rng(seed).bytes(length)
    return bytes(out)


def _frames_in_chunks(n: int, height: int, width: int, chunk: int = 100) -> Iterator[np.ndarray]:
    """`n` test-pattern frames made `chunk` at a time (memory stays small)."""
    for start in range(0, n, chunk):
        yield from make_test_pattern(min(chunk, n - start), height, width, seed=start)


def write_ten_minutes(path: Path) -> Path:
    """600 s of 160x120 mpeg4 at 5 fps, 50 kbit/s: 3,000 frames in ~2.7 MB, ~1 s to encode."""
    return encode_video(path, _frames_in_chunks(3000, 120, 160), fps=5, codec="mpeg4",
                        bit_rate=50_000)


def write_uhd(path: Path, frames: int = 10) -> Path:
    """3840x2160 H.264, `frames` frames at 5 fps (blocky upscaled pattern, ~1 MB)."""
    small = make_test_pattern(frames, 2160 // 8, 3840 // 8, seed=7)
    big = (np.ascontiguousarray(np.repeat(np.repeat(f, 8, 0), 8, 1)) for f in small)
    return encode_video(path, big, fps=5, options=X264_FAST)


# --- the input set for the end-to-end runs --------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """Generated inputs under `root`, by key: what each must end as.

    `good`: key -> partial expected (predictions and one ``videos`` row);
    `bad`: key -> the error types its one ``errors`` row (stage decode) may carry.
    """

    root: Path
    good: dict[str, bool]
    bad: dict[str, set[str]]


DEEP_PREFIX = "/".join(f"level-{i:02d}" for i in range(60))
"""60 nested folders (540 characters): deep, and still within S3's 1,024-byte key limit."""

CORRUPT = {"CorruptVideoError"}


def build_inputs(root: Path) -> Inputs:
    """Every bad or unusual input of docs/reliability.md, written under `root`."""
    good: dict[str, bool] = {}
    bad: dict[str, set[str]] = {}

    def put(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    full = encode_video(root / "src/.full.mp4", make_test_pattern(100, 64, 96, seed=1), fps=10,
                        options=X264_FAST).read_bytes()
    mkv = encode_video(root / "src/.full.mkv", make_test_pattern(100, 64, 96, seed=2), fps=10,
                       options=X264_FAST).read_bytes()
    gop = encode_video(root / "src/.gop.mp4", make_test_pattern(120, 64, 96, seed=3), fps=10,
                       options={**X264_FAST, "g": "20"}).read_bytes()
    for path in (root / "src").iterdir():
        path.unlink()
    (root / "src").rmdir()

    put("bad/zero_bytes.mp4", b"")
    bad["bad/zero_bytes.mp4"] = {"EmptyVideoError"}
    for pct in (10, 50, 90):  # mp4 keeps its index (moov) at the end: any cut loses it
        put(f"bad/truncated_{pct}.mp4", full[: len(full) * pct // 100])
        bad[f"bad/truncated_{pct}.mp4"] = CORRUPT
    put("bad/random_bytes.mp4", np.random.default_rng(0).bytes(50_000))
    bad["bad/random_bytes.mp4"] = CORRUPT
    put("bad/no_moov.mp4", without_moov(full))
    bad["bad/no_moov.mp4"] = CORRUPT
    encode_audio_only(root / "bad/audio_only.mp4")
    bad["bad/audio_only.mp4"] = {"NoVideoStreamError"}
    write_still_jpeg(root / "bad/still_image.mp4")
    bad["bad/still_image.mp4"] = {"NoVideoStreamError"}

    # a cut mkv (index up front) keeps what came before the cut
    put("partial/truncated_50.mkv", mkv[: len(mkv) // 2])
    good["partial/truncated_50.mkv"] = True
    put("partial/corrupt_middle.mp4", corrupt_middle(gop))
    good["partial/corrupt_middle.mp4"] = True

    encode_video(root / "odd/one_frame.mp4", make_test_pattern(1, 64, 96), fps=10)
    put("odd/rotated_90.mp4", with_rotation(full, 90))
    encode_video(root / "odd/size_1281x721.mp4", make_test_pattern(5, 721, 1281), fps=5,
                 codec="mpeg4")
    for pix_fmt in ("gray", "yuv444p", "yuv420p10le"):
        encode_video(root / f"odd/{pix_fmt}.mp4", make_test_pattern(10, 64, 96, seed=4), fps=10,
                     pix_fmt=pix_fmt, options=X264_FAST)
    pts = [0.0, 0.05, 0.3, 0.32, 0.9, 1.0, 1.5, 1.51, 1.52, 2.0]
    encode_video(root / "odd/variable_rate.mkv", make_test_pattern(10, 64, 96, seed=5),
                 pts_seconds=pts, codec="mpeg4")
    write_ten_minutes(root / "odd/ten_minutes.mp4")
    write_uhd(root / "odd/uhd_3840x2160.mp4")
    encode_video(root / "keys/with spaces and ünïcödé 表情.mp4", make_test_pattern(10, 64, 96),
                 fps=10, options=X264_FAST)
    encode_video(root / f"keys/{DEEP_PREFIX}/deep.mp4", make_test_pattern(10, 64, 96), fps=10,
                 options=X264_FAST)
    for path in root.rglob("*"):
        key = str(path.relative_to(root))
        if path.is_file() and key not in bad and key not in good:
            good[key] = False
    return Inputs(root=root, good=good, bad=bad)


# --- reading a run back ------------------------------------------------------------------------
def rows(output: str, table: str, storage_options: dict[str, Any] | None = None,
         run_id: str | None = None) -> pd.DataFrame:
    """One table of `output` (every run, or `run_id`'s rows) as pandas."""
    frame = read_table(output, table, storage_options).to_pandas()  # type: ignore[arg-type]
    if run_id is not None:
        frame = frame[frame["run_id"] == run_id]
    return frame.reset_index(drop=True)


def assert_counts_add_up(summary: dict[str, Any]) -> None:
    """DESIGN.md "Errors": the run summary's counts add up."""
    c = summary["counts"]
    assert c["listed"] == (c["skipped_done"] + c["deferred_max_videos"] + c["succeeded"]
                           + c["failed"]), c
    assert sum(summary["failed_by_stage"].values()) == c["failed"], summary


def assert_each_video_once(output: str, uris: set[str], storage_options: dict[str, Any] | None
                           = None, run_id: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every URI in exactly one ``videos`` or ``errors`` row, no other rows, no clip twice;
    returns (videos, errors)."""
    videos = rows(output, "videos", storage_options, run_id)
    errors = rows(output, "errors", storage_options, run_id)
    seen = [*videos["video_uri"], *errors["video_uri"]]
    assert sorted(seen) == sorted(uris), sorted(set(seen) ^ uris)
    predictions = rows(output, "predictions", storage_options, run_id)
    assert not predictions.duplicated(["video_uri", "clip_index"]).any()
    assert set(predictions["video_uri"]) == set(videos["video_uri"])
    for message, uri in zip(errors["message"], errors["video_uri"], strict=True):
        assert "\n" not in message and message.startswith(uri), message
    return videos, errors
