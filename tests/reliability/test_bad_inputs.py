"""Bad and unusual inputs: each ends as predictions or as one ``errors`` row with a one-line
message, and the run goes on. Decoding is real PyAV on videos encoded here; the end-to-end run
is the real flow on the Prefect test server over the moto S3 server.

Inputs already proven elsewhere (reused, not repeated): tests/emotion_model/test_video.py
(zero bytes, random bytes, text, truncated at 50 %, still JPEG/PNG, audio only, variable frame
rate, cut mkv/avi/flv) and tests/flows/test_batch_inference.py (a key with spaces and accents).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reliability_helpers import (
    X264_FAST,
    Inputs,
    assert_counts_add_up,
    assert_each_video_once,
    corrupt_middle,
    rows,
    with_rotation,
    without_moov,
    write_ten_minutes,
    write_uhd,
)
from video_fixtures import make_test_pattern, pattern_frame_index

from emotion_model.errors import CorruptVideoError, VideoError
from emotion_model.video import read_clips
from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference


# --- decoding, one input at a time ---------------------------------------------------------------
def _one_line_error(path: Path, error: type[VideoError], match: str) -> None:
    with pytest.raises(error, match=match) as caught:
        read_clips(path, num_frames=16, img_size=64)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("pct", [10, 50, 90])
def test_mp4_truncated(tmp_path: Path, pct: int) -> None:
    data = encode_video(tmp_path / "full.mp4", make_test_pattern(50, 64, 96), fps=10,
                        options=X264_FAST).read_bytes()
    path = tmp_path / f"cut_{pct}.mp4"
    path.write_bytes(data[: len(data) * pct // 100])
    _one_line_error(path, CorruptVideoError, "not a readable video container")


@pytest.mark.parametrize("pct", [10, 50, 90])
def test_mkv_truncated_keeps_what_came_before(tmp_path: Path, pct: int) -> None:
    """Matroska has its header up front: the frames before the cut decode, flagged partial."""
    full = encode_video(tmp_path / "full.mkv", make_test_pattern(100, 64, 96), fps=10,
                        options=X264_FAST)
    path = tmp_path / f"cut_{pct}.mkv"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) * pct // 100])
    clips, info = read_clips(path, num_frames=16, img_size=64)
    assert clips and info.partial
    assert info.partial_reason and "of 10.00s" in info.partial_reason
    assert info.duration_s < 10.0 * pct / 100 + 0.5


def test_mp4_without_moov(tmp_path: Path) -> None:
    data = encode_video(tmp_path / "full.mp4", make_test_pattern(20, 64, 96), fps=10,
                        options=X264_FAST).read_bytes()
    path = tmp_path / "no_moov.mp4"
    path.write_bytes(without_moov(data))
    assert b"moov" not in path.read_bytes() and b"mdat" in path.read_bytes()
    _one_line_error(path, CorruptVideoError, "not a readable video container")


def test_one_frame_video(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "one.mp4", make_test_pattern(1, 64, 96), fps=10)
    (clip,), info = read_clips(path, num_frames=16, img_size=64)
    assert info.frames_decoded == 1 and not info.partial
    assert clip.frames.shape == (16, 64, 64, 3)
    assert (clip.frames == clip.frames[0]).all()  # the one frame, 16 times


def _marked_frame(height: int = 64, width: int = 96) -> np.ndarray:
    """White top half, a red stripe down the left edge: which way is up is visible."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: height // 2] = 255
    frame[:, : width // 4] = (255, 0, 0)
    return frame


def _where(image: np.ndarray) -> tuple[str, str]:
    """(the white side, the red side) of a decoded `_marked_frame`."""
    img = image.astype(int)
    q = img.shape[0] // 4
    sides = {"top": img[:q], "bottom": img[-q:], "left": img[:, :q], "right": img[:, -q:]}
    white = max(sides, key=lambda s: sides[s].min(axis=-1).mean())
    red = max(sides, key=lambda s: (sides[s][..., 0] - sides[s][..., 1]).mean())
    return white, red


@pytest.mark.parametrize(("degrees", "white", "red"),
                         [(0, "top", "left"), (90, "right", "top"), (180, "bottom", "right"),
                          (270, "left", "bottom")])
def test_rotation_metadata_gives_upright_frames(tmp_path: Path, degrees: int, white: str,
                                                red: str) -> None:
    """A phone's display matrix turns the picture `degrees` clockwise; the frames come out as
    a player (and ``ffmpeg`` with autorotate) shows them."""
    frames = np.stack([_marked_frame()] * 10)
    data = encode_video(tmp_path / "upright.mp4", frames, fps=10, options=X264_FAST).read_bytes()
    path = tmp_path / f"rotated_{degrees}.mp4"
    path.write_bytes(with_rotation(data, degrees))
    (clip,), _ = read_clips(path, num_frames=4, img_size=64)
    assert _where(clip.frames[0]) == (white, red)


@pytest.mark.parametrize("pix_fmt", ["gray", "yuv444p", "yuv420p10le", "yuv444p10le",
                                     "gray10le"])
def test_pixel_formats_decode_every_frame(tmp_path: Path, pix_fmt: str) -> None:
    """Gray, 4:4:4 and 10-bit H.264 decode to RGB uint8 at the model's size, with the right
    frame at each time (the frame counter drawn in the picture is read back)."""
    path = encode_video(tmp_path / f"{pix_fmt}.mp4", make_test_pattern(20, 128, 128, seed=3),
                        fps=10, pix_fmt=pix_fmt, options=X264_FAST)
    (clip,), info = read_clips(path, num_frames=8, img_size=128)
    assert (info.width, info.height, info.frames_decoded) == (128, 128, 20)
    assert clip.frames.shape == (8, 128, 128, 3) and clip.frames.dtype == np.uint8
    assert [pattern_frame_index(f) for f in clip.frames] == [1, 3, 6, 8, 11, 13, 16, 18]
    spread = np.ptp(clip.frames.astype(int), axis=-1).max()
    if pix_fmt.startswith("gray"):
        assert spread <= 2  # gray stays gray
    else:
        assert spread > 50  # colours survive


@pytest.mark.parametrize(("codec", "pix_fmt"), [("mpeg4", "yuv420p"), ("libx264", "yuv444p")])
def test_odd_size_1281x721(tmp_path: Path, codec: str, pix_fmt: str) -> None:
    """An odd-sized video gives the same picture as its even-sized twin (1280x720)."""
    options = X264_FAST if codec == "libx264" else None
    decoded = []
    for width, height in ((1281, 721), (1280, 720)):
        path = encode_video(tmp_path / f"{width}x{height}.mp4",
                            make_test_pattern(10, height, width, seed=3), fps=10, codec=codec,
                            pix_fmt=pix_fmt, options=options)
        (clip,), info = read_clips(path, num_frames=4, img_size=112)
        assert (info.width, info.height, info.frames_decoded) == (width, height, 10)
        decoded.append(clip.frames.astype(int))
    assert np.abs(decoded[0] - decoded[1]).mean() < 4


def test_corrupt_packets_mid_stream_keep_decodable_clips(tmp_path: Path) -> None:
    """2 kB of garbage in the middle of a 12 s H.264 stream (keyframe every 2 s): the bad
    packets are skipped, every 4 s window is still there, and the video says it is partial."""
    full = encode_video(tmp_path / "full.mp4", make_test_pattern(120, 64, 96), fps=10,
                        options={**X264_FAST, "g": "20"})
    whole, _ = read_clips(full, num_frames=16, img_size=64)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(corrupt_middle(full.read_bytes()))
    clips, info = read_clips(path, num_frames=16, img_size=64)
    assert [(c.start_s, c.end_s) for c in clips] == [(c.start_s, c.end_s) for c in whole]
    assert len(clips) == 3
    np.testing.assert_array_equal(clips[0].frames, whole[0].frames)  # before the damage
    assert info.partial and info.partial_reason
    assert "corrupt" in info.partial_reason and "skipped" in info.partial_reason
    assert "\n" not in info.partial_reason


# --- memory: long and 4K videos ---------------------------------------------------------------
_PEAK_SCRIPT = """
import sys
from emotion_model.video import ClipReader

def kib(key):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

reader = ClipReader(sys.argv[1], num_frames=48, img_size=112, clip_seconds=4.0)
before = kib('VmRSS:')
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # the peak (VmHWM) starts again from here
clips = sum(1 for _ in reader)
print(clips, reader.info.width, reader.info.height, reader.info.duration_s,
      (kib('VmHWM:') - before) // 1024)
"""


def _decode_peak(path: Path) -> tuple[int, int, int, float, int]:
    """Decode `path` in a fresh process: (clips, width, height, seconds, peak MiB above the
    RSS it had before decoding)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True,
                         text=True, check=True, timeout=120)
    clips, width, height, seconds, peak = out.stdout.split()
    return int(clips), int(width), int(height), float(seconds), int(peak)


def test_memory_stays_bounded_for_ten_minutes_and_4k(tmp_path: Path) -> None:
    """The decoder's peak memory above its starting RSS (default clips, 48 x 112 px):
    a 2 s video ~10 MiB; 10 minutes (150 clips) the same, whatever the length; 3840x2160
    ~95 MiB (FFmpeg's frame buffers: 12 MiB per 4K frame). Bounds: 64 and 256 MiB."""
    short = encode_video(tmp_path / "short.mp4", make_test_pattern(20, 120, 160), fps=10,
                         codec="mpeg4")
    *_, short_peak = _decode_peak(short)

    clips, width, _, seconds, long_peak = _decode_peak(write_ten_minutes(tmp_path / "ten.mp4"))
    assert (clips, width, seconds) == (150, 160, pytest.approx(600.0))
    assert long_peak <= 64
    assert long_peak <= short_peak + 32  # does not grow with the length

    clips, width, height, _, uhd_peak = _decode_peak(write_uhd(tmp_path / "uhd.mp4"))
    assert (clips, width, height) == (1, 3840, 2160)
    assert uhd_peak <= 256


# --- end to end: every input through the flow, over S3 ------------------------------------------
@pytest.fixture(scope="module")
def s3_inputs_run(prefect_server: None, s3_server: Any, inputs: Inputs, model_path: Path
                  ) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """Every input uploaded under ``s3://<bucket>/in/``, one run: (summary, source, output,
    storage options)."""
    bucket = f"rel-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    for key in [*inputs.good, *inputs.bad]:
        client.upload_file(str(inputs.root / key), bucket, f"in/{key}")
    source, output = f"s3://{bucket}/in/", f"s3://{bucket}/out"
    so = dict(s3_server.storage_options)
    summary = batch_inference(source=source, output=output, model=str(model_path),
                              storage_options=so, clip_seconds=30.0, batch_size=4, shard_size=8,
                              device="cpu")
    return summary, source, output, so


def test_every_input_ends_as_predictions_or_one_error_row(
    s3_inputs_run: tuple[dict[str, Any], str, str, dict[str, Any]], inputs: Inputs
) -> None:
    summary, source, output, so = s3_inputs_run
    assert summary["status"] == "completed"
    c = summary["counts"]
    assert (c["listed"], c["succeeded"], c["failed"]) == (
        len(inputs.good) + len(inputs.bad), len(inputs.good), len(inputs.bad))
    assert summary["failed_by_stage"] == {"decode": len(inputs.bad)}
    assert c["partial"] == sum(inputs.good.values())
    assert_counts_add_up(summary)

    videos, errors = assert_each_video_once(output, {source + k for k in [*inputs.good,
                                                                           *inputs.bad]}, so)
    for row in errors.itertuples():
        key = row.video_uri[len(source):]
        assert row.stage == "decode" and row.error_type in inputs.bad[key], row
    by_key = {uri[len(source):]: row for uri, row in zip(videos["video_uri"],
                                                         videos.itertuples(), strict=True)}
    for key, partial in inputs.good.items():
        assert by_key[key].partial == partial, (key, by_key[key].partial_reason)
    # the long video: 20 clips of 30 s; the 4K one: one clip over its 2 s
    assert by_key["odd/ten_minutes.mp4"].num_clips == 20
    assert by_key["odd/ten_minutes.mp4"].video_duration_s == pytest.approx(600.0)
    assert by_key["odd/uhd_3840x2160.mp4"].num_clips == 1
    assert "corrupt" in by_key["partial/corrupt_middle.mp4"].partial_reason


def test_unicode_spaces_and_deep_keys_round_trip(
    s3_inputs_run: tuple[dict[str, Any], str, str, dict[str, Any]], inputs: Inputs
) -> None:
    """The URIs in the rows are the keys as stored: they list, read and name the object."""
    summary, source, output, so = s3_inputs_run
    predictions = rows(output, "predictions", so, summary["run_id"])
    uris = set(predictions["video_uri"])
    deep = next(k for k in inputs.good if k.endswith("/deep.mp4"))
    assert deep.count("/") > 60 and len((source + deep).encode()) > 500
    for key in ("keys/with spaces and ünïcödé 表情.mp4", deep):
        assert source + key in uris
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
    assert fs.cat_file((source + deep)[5:]) == (inputs.root / deep).read_bytes()
