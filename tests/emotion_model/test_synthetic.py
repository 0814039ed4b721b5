"""Tests for emotion_model.synthetic: encode/decode round trips, faces, dataset naming."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from emotion_model.labels import EMOTION_LABELS, parse_crema_d, parse_ravdess
from emotion_model.synthetic import (
    EMOTION_CODES,
    available_encoders,
    encode_video,
    make_demo_videos,
    make_sample_dataset,
    make_test_pattern,
    pattern_frame_index,
    render_face_clip,
)

ENCODERS = available_encoders()

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


def _needs(codec: str) -> None:
    # PyAV's wheels bundle FFmpeg with these encoders: a missing one is a broken install.
    assert codec in ENCODERS, f"encoder {codec} not in this PyAV build"


def _decode(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """All frames as uint8 RGB `[H, W, 3]` and their presentation times in seconds."""
    with av.open(str(path)) as container:
        frames, times = [], []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
    return frames, times


@pytest.mark.parametrize(("codec", "suffix", "pix_fmt"), CASES)
def test_encode_round_trip(tmp_path: Path, codec: str, suffix: str, pix_fmt: str) -> None:
    _needs(codec)
    frames = make_test_pattern(12, 48, 64, seed=1)
    path = encode_video(tmp_path / f"clip{suffix}", frames, fps=24, codec=codec,
                        pix_fmt=pix_fmt)
    decoded, times = _decode(path)
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
    _needs(codec)
    pts = [0.0, 0.033, 0.1, 0.12, 0.2, 0.5, 0.52, 0.9, 1.0, 1.75]
    frames = make_test_pattern(len(pts), 32, 48)
    path = encode_video(tmp_path / f"vfr{suffix}", frames, codec=codec, pts_seconds=pts)
    decoded, times = _decode(path)
    assert len(decoded) == len(pts)
    np.testing.assert_allclose(times, pts, atol=1e-3)


def test_encode_accepts_an_iterator_and_odd_sizes_where_the_codec_allows(tmp_path: Path) -> None:
    frames = make_test_pattern(5, 33, 47)
    mpeg4 = encode_video(tmp_path / "odd.avi", iter(frames), codec="mpeg4")
    x264 = encode_video(tmp_path / "odd.mp4", iter(frames), pix_fmt="yuv444p")
    for path in (mpeg4, x264):
        decoded, _ = _decode(path)
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


def test_render_face_clip_shape_determinism_and_onset() -> None:
    kwargs = {"actor_seed": 7, "num_frames": 30, "height": 96, "width": 128, "fps": 30}
    happy = render_face_clip("happy", **kwargs)
    assert happy.shape == (30, 96, 128, 3)
    assert happy.dtype == np.uint8
    np.testing.assert_array_equal(happy, render_face_clip("happy", **kwargs))
    assert not np.array_equal(happy, render_face_clip("happy", take_seed=1, **kwargs))
    # the expression grows over the clip: late frames differ from the start more than
    # two early frames differ from each other
    start = happy[0].astype(float)
    assert np.abs(happy[-1] - start).mean() > 2 * np.abs(happy[1] - start).mean()


def test_render_face_clip_emotions_differ() -> None:
    last = {
        e: render_face_clip(e, actor_seed=3, num_frames=12, height=64, width=64,
                            fps=10)[-1].astype(float)
        for e in EMOTION_LABELS
    }
    for a in EMOTION_LABELS:
        for b in EMOTION_LABELS:
            if a < b:
                assert np.abs(last[a] - last[b]).mean() > 0.5, (a, b)


def test_render_face_clip_rejects_unknown_emotion() -> None:
    with pytest.raises(ValueError, match="unknown emotion 'calm'"):
        render_face_clip("calm", actor_seed=0, num_frames=2, height=32, width=32, fps=30)


def test_ravdess_layout_names_parse_back(tmp_path: Path) -> None:
    paths = make_sample_dataset(tmp_path, actors=2, layout="ravdess", takes_per_emotion=2,
                                seconds=0.4, fps=10, size=(48, 48))
    assert len(paths) == 2 * 6 * 2
    seen = set()
    for path in paths:
        parsed = parse_ravdess(path)
        assert parsed is not None, path
        actor = int(parsed.actor)
        assert path.parent.name == f"Actor_{actor:02d}"
        assert path.name.startswith("02-01-")
        assert path.stem.split("-")[2] == EMOTION_CODES["ravdess"][parsed.label]
        seen.add((parsed.label, parsed.actor))
    assert seen == {(e, a) for e in EMOTION_LABELS for a in ("01", "02")}
    assert len({p.name for p in paths}) == len(paths)
    decoded, _ = _decode(paths[0])
    assert len(decoded) == 4
    assert decoded[0].shape == (48, 48, 3)


@pytest.mark.parametrize("crema_format", ["mp4", "flv"])
def test_crema_d_layout_names_parse_back(tmp_path: Path, crema_format: str) -> None:
    if crema_format == "flv":
        _needs("flv")
    emotions = ("angry", "neutral", "sad")
    paths = make_sample_dataset(tmp_path, actors=2, layout="crema-d", emotions=emotions,
                                takes_per_emotion=3, seconds=0.3, fps=10, size=(32, 48),
                                crema_format=crema_format)
    assert len(paths) == 2 * 3 * 3
    labels = set()
    for path in paths:
        assert path.suffix == f".{crema_format}"
        parsed = parse_crema_d(path)
        assert parsed is not None, path
        assert parsed.actor in {"1001", "1002"}
        labels.add(parsed.label)
    assert labels == set(emotions)
    decoded, _ = _decode(paths[0])
    assert len(decoded) == 3
    assert decoded[0].shape == (32, 48, 3)


def test_sample_dataset_rejects_too_many_takes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes_per_emotion must be in 1..4"):
        make_sample_dataset(tmp_path, actors=1, layout="ravdess", takes_per_emotion=5)
    with pytest.raises(ValueError, match="layout must be one of"):
        make_sample_dataset(tmp_path, actors=1, layout="affectnet")  # type: ignore[arg-type]


def test_make_demo_videos(tmp_path: Path) -> None:
    paths = make_demo_videos(tmp_path, n=2)
    assert [p.name for p in paths] == ["demo_01.mp4", "demo_02.mp4"]
    decoded, times = _decode(paths[1])
    assert len(decoded) == 150
    assert decoded[0].shape == (240, 320, 3)
    assert times[-1] == pytest.approx(149 / 25, abs=1e-3)
