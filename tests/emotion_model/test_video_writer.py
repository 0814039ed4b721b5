"""emotion_model.video_writer: encode/decode round trips over codecs and containers, VFR, errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from video_fixtures import decode_frames, make_test_pattern, needs_encoder, pattern_frame_index

from emotion_model.video_writer import AudioTrack, encode_video

# (encoder, suffix, pix_fmt) combinations the module documents as working
CASES = [
    ("libx264", ".mp4", "yuv420p"),
    ("libx264", ".mkv", "yuv420p"),
    ("libx264", ".mov", "yuv420p"),
    ("libx264", ".avi", "yuv420p"),
    ("libx264", ".flv", "yuv420p"),
    ("mpeg4", ".mp4", "yuv420p"),
    ("mpeg4", ".avi", "yuv420p"),
    ("mpeg4", ".mkv", "yuv420p"),
    ("libvpx", ".webm", "yuv420p"),
    ("libvpx-vp9", ".webm", "yuv420p"),
    ("flv", ".flv", "yuv420p"),
    ("mpeg4", ".mov", "yuv420p"),
    ("libvpx", ".mkv", "yuv420p"),
    ("libvpx-vp9", ".mp4", "yuv420p"),
    ("flv", ".avi", "yuv420p"),
    ("mjpeg", ".avi", "yuvj420p"),
    ("mjpeg", ".mkv", "yuv420p"),
    ("mjpeg", ".mov", "yuv420p"),
]


@pytest.mark.parametrize(("codec", "suffix", "pix_fmt"), CASES)
def test_encode_round_trip(tmp_path: Path, codec: str, suffix: str, pix_fmt: str) -> None:
    needs_encoder(codec)
    frames = make_test_pattern(12, 48, 64, seed=1)
    path = encode_video(tmp_path / f"clip{suffix}", frames, fps=24, codec=codec,
                        pix_fmt=pix_fmt)
    decoded, times = decode_frames(path)
    assert len(decoded) == 12
    assert decoded[0].shape == (48, 64, 3)
    assert [pattern_frame_index(f) for f in decoded] == list(range(12))
    # FFmpeg reads H.264 in AVI with every pts one frame late (documented in the module)
    offset = 1 / 24 if (codec, suffix) == ("libx264", ".avi") else 0.0
    np.testing.assert_allclose(times, offset + np.arange(12) / 24, atol=1e-3)
    assert np.abs(decoded[5].astype(int) - frames[5]).mean() < 12


@pytest.mark.parametrize(
    ("codec", "suffix"),
    [("libx264", ".mp4"), ("libx264", ".mkv"), ("libx264", ".flv"), ("mpeg4", ".avi"),
     ("libvpx-vp9", ".webm"), ("flv", ".flv")],
)
def test_encode_variable_frame_rate_keeps_pts(tmp_path: Path, codec: str, suffix: str) -> None:
    needs_encoder(codec)
    pts = [0.0, 0.033, 0.1, 0.12, 0.2, 0.5, 0.52, 0.9, 1.0, 1.75]
    frames = make_test_pattern(len(pts), 32, 48)
    path = encode_video(tmp_path / f"vfr{suffix}", frames, codec=codec, pts_seconds=pts)
    decoded, times = decode_frames(path)
    assert len(decoded) == len(pts)
    np.testing.assert_allclose(times, pts, atol=1e-3)


def test_encode_accepts_an_iterator_and_odd_sizes_where_the_codec_allows(tmp_path: Path) -> None:
    frames = make_test_pattern(5, 33, 47)
    mpeg4 = encode_video(tmp_path / "odd.avi", iter(frames), codec="mpeg4")
    x264 = encode_video(tmp_path / "odd.mp4", iter(frames), pix_fmt="yuv444p")
    for path in (mpeg4, x264):
        decoded, _ = decode_frames(path)
        assert len(decoded) == 5
        assert decoded[0].shape == (33, 47, 3)


def test_encode_rejects_odd_size_for_x264_yuv420p(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        encode_video(tmp_path / "odd.mp4", make_test_pattern(2, 33, 48))
    assert not (tmp_path / "odd.mp4").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path_name": "clip.xyz"}, "cannot infer a container"),
        ({"codec": "no-such-encoder"}, "not available"),
        ({"codec": "mpeg4", "pix_fmt": "yuv444p"}, "has no pix_fmt"),
        ({"path_name": "clip.webm", "codec": "mpeg4"}, "cannot write mpeg4 yuv420p into webm"),
        ({"path_name": "clip.flv", "codec": "mpeg4"}, "cannot write mpeg4 yuv420p into flv"),
        ({"pts_seconds": [0.0, 0.1]}, "pts_seconds"),
        ({"pts_seconds": [0.0, 0.2, 0.1, 0.3]}, "strictly increasing"),
        ({"frames": np.zeros((2, 16, 16, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((0, 16, 16, 3), np.uint8)}, "no frames"),
    ],
)
def test_encode_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    path = tmp_path / kwargs.pop("path_name", "clip.mp4")
    frames = kwargs.pop("frames", make_test_pattern(4, 16, 16))
    with pytest.raises(ValueError, match=match):
        encode_video(path, frames, **kwargs)
    assert not path.exists()


def test_test_pattern_changes_every_frame() -> None:
    frames = make_test_pattern(20, 24, 32, seed=3)
    assert frames.shape == (20, 24, 32, 3)
    assert frames.dtype == np.uint8
    assert all((frames[i] != frames[i + 1]).any() for i in range(19))
    assert [pattern_frame_index(f) for f in frames] == list(range(16)) + [0, 1, 2, 3]


def _tone(seconds: float, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate)).astype(
        np.float32)


@pytest.mark.parametrize(
    ("codec", "suffix", "audio_codec", "start"),
    [("libx264", ".mp4", "aac", 0.0), ("libx264", ".mkv", "aac", 0.0),
     ("libx264", ".mov", "aac", 0.0), ("libvpx-vp9", ".webm", "opus", 0.0),
     ("mpeg4", ".avi", "mp3float", 0.0),
     ("flv", ".flv", "aac", 0.064)],  # FLV: AAC's 1024 priming samples delay everything
)
def test_encode_with_an_audio_track(tmp_path: Path, codec: str, suffix: str, audio_codec: str,
                                    start: float) -> None:
    needs_encoder(codec)
    frames = make_test_pattern(20, 32, 48)
    path = encode_video(tmp_path / f"av{suffix}", frames, fps=10, codec=codec,
                        audio=AudioTrack(_tone(2.0, 16_000), 16_000))
    decoded, times = decode_frames(path)
    assert [pattern_frame_index(f) for f in decoded] == list(range(20))
    np.testing.assert_allclose(times, start + np.arange(20) / 10, atol=1e-3)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == audio_codec
        seconds = sum(f.samples / f.sample_rate for f in container.decode(stream))
    assert abs(seconds - 2.0) <= 0.12


def test_encode_audio_in_step_with_variable_frame_rate_video(tmp_path: Path) -> None:
    pts = [0.0, 0.05, 0.3, 0.31, 0.9, 1.4]
    stereo = np.stack([_tone(1.5, 48_000), -_tone(1.5, 48_000)])
    path = encode_video(tmp_path / "vfr.mp4", make_test_pattern(6, 32, 32), pts_seconds=pts,
                        audio=AudioTrack(stereo, 48_000, codec="alac"))
    np.testing.assert_allclose(decode_frames(path)[1], pts, atol=1e-3)
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert samples.shape == (2, 72_000)  # ALAC is lossless: the samples come back
    assert np.abs(samples / 2.0 ** 31 - stereo).max() < 1e-4


def test_encode_rejects_bad_audio_and_leaves_nothing(tmp_path: Path) -> None:
    frames = make_test_pattern(2, 32, 32)
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="audio must be float samples"):
        encode_video(path, frames, audio=AudioTrack(np.zeros(100, np.int16), 16_000))
    with pytest.raises(ValueError, match="audio rate must be positive"):
        encode_video(path, frames, audio=AudioTrack(np.zeros(100, np.float32), 0))
    with pytest.raises(ValueError, match=r"no audio encoder among \['libx264'\]"):
        encode_video(path, frames, audio=AudioTrack(np.zeros(100, np.float32), 16_000,
                                                    codec="libx264"))
    with pytest.raises(ValueError, match="cannot write libx264 yuv420p and libopus audio "
                                         "into avi"):
        encode_video(tmp_path / "bad.avi", frames, audio=AudioTrack(
            np.zeros(100, np.float32), 16_000, codec="libopus"))
    assert not list(tmp_path.iterdir())
