"""video.py on videos encoded here with PyAV (several codecs, sizes, a variable frame rate,
short and long ones), on the repository's real CREMA-D clips (tests/data/crema_d), a generated
RAVDESS-shaped clip and any extra clips $EMOTION_PIPELINE_SHARED_DATA names, and on every kind of
bad input."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from video_fixtures import (
    CREMA_D_CLIPS,
    RAVDESS_LIKE_FRAMES,
    make_test_pattern,
    pattern_frame_index,
)

from emotion_model.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NoVideoStreamError,
    VideoError,
)
from emotion_model.video import (
    _MAX_BAD_PACKETS,
    ClipReader,
    plan_targets,
    plan_window_starts,
    read_clips,
)
from emotion_model.video_writer import encode_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video")


def _check_frames(frames: np.ndarray, num_frames: int = 48, size: int = 112) -> None:
    assert frames.shape == (num_frames, size, size, 3)
    assert frames.dtype == np.uint8
    assert frames.flags.c_contiguous
    assert frames.max() > frames.min()  # a picture, not a blank


# --- good videos -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codec", "suffix", "width", "height", "frames", "fps"),
    [
        ("libx264", ".mp4", 320, 240, 60, 30),
        ("libx264", ".mp4", 640, 360, 45, 30),
        ("libx264", ".mp4", 1280, 720, 12, 30),
        ("mpeg4", ".mp4", 320, 240, 60, 30),
        ("mpeg4", ".mp4", 640, 360, 50, 25),
        ("mpeg4", ".avi", 1280, 720, 12, 24),
        ("mpeg4", ".mkv", 318, 238, 30, 30),  # odd sizes are fine for mpeg4
    ],
    ids=lambda v: str(v),
)
def test_decode_encoded_videos(
    videos: Path, codec: str, suffix: str, width: int, height: int, frames: int, fps: int
) -> None:
    path = videos / f"{codec}_{width}x{height}{suffix}"
    encode_video(path, make_test_pattern(frames, height, width), fps=fps, codec=codec)
    clips, info = read_clips(path)
    assert (info.width, info.height) == (width, height)
    assert info.codec == ("h264" if codec == "libx264" else codec)
    assert info.frames_decoded == frames
    assert info.duration_s == pytest.approx(frames / fps, abs=1e-6)
    assert not info.partial and info.partial_reason is None
    # Shorter than a 4 s clip: one clip over the whole video.
    assert len(clips) == 1 and info.clips == 1
    clip = clips[0]
    assert (clip.index, clip.start_s) == (0, 0.0)
    assert clip.end_s == pytest.approx(info.duration_s)
    _check_frames(clip.frames)


def test_short_video_samples_its_whole_length(videos: Path) -> None:
    """A 2 s, 30 fps video sampled to 48 frames: every target takes the frame on screen."""
    path = encode_video(videos / "short.mp4", make_test_pattern(60, 112, 112, seed=1), fps=30)
    (clip,), info = read_clips(path, img_size=112)
    assert clip.end_s == info.duration_s == pytest.approx(2.0)
    seen = [pattern_frame_index(f) for f in clip.frames]
    expected = np.floor(plan_targets(0.0, 2.0, 48) * 30).astype(int)
    assert seen == expected.tolist()
    assert seen[0] == 0 and seen[-1] == 59


def test_num_frames_and_img_size(videos: Path) -> None:
    path = encode_video(videos / "sizes.mp4", make_test_pattern(30, 240, 320), fps=30)
    (clip,), _ = read_clips(path, num_frames=16, img_size=64)
    _check_frames(clip.frames, 16, 64)


def test_variable_frame_rate_follows_presentation_time(videos: Path) -> None:
    rng = np.random.default_rng(5)
    gaps = rng.choice([1 / 60, 1 / 30, 0.1, 0.25], size=79)  # irregular, some long stalls
    pts = np.concatenate([[0.0], np.cumsum(gaps)]).round(3)
    path = encode_video(videos / "vfr.mkv", make_test_pattern(80, 112, 112, seed=2),
                        pts_seconds=pts.tolist())
    clips, info = read_clips(path, img_size=112)
    assert info.duration_s > 4.0 and info.frames_decoded == 80
    for clip in clips:
        targets = plan_targets(clip.start_s, clip.end_s - clip.start_s, 48)
        # the frame on screen at each target time: the last one presented at or before it
        expected = np.searchsorted(pts, targets + 1e-9, side="right") - 1
        assert [pattern_frame_index(f) for f in clip.frames] == expected.tolist()
    # A constant-rate assumption (80 frames spread evenly) would pick other frames.
    naive = np.floor(plan_targets(0.0, 4.0, 48) / info.duration_s * 80).astype(int)
    assert [pattern_frame_index(f) for f in clips[0].frames] != naive.tolist()


def test_vfr_mp4_keeps_its_timestamps(videos: Path) -> None:
    pts = [0.0, 0.04, 0.3, 0.32, 0.9, 1.0, 1.5, 1.51, 1.52, 2.0]
    path = encode_video(videos / "vfr.mp4", make_test_pattern(10, 112, 112, seed=4),
                        pts_seconds=pts)
    (clip,), info = read_clips(path, num_frames=20, img_size=112)
    end = info.duration_s
    targets = plan_targets(0.0, end, 20)
    expected = np.searchsorted(np.array(pts), targets, side="right") - 1
    assert [pattern_frame_index(f) for f in clip.frames] == expected.tolist()


def test_long_video_gives_consecutive_clips(long_video: Path) -> None:
    clips, info = read_clips(long_video, clip_seconds=4)
    assert info.duration_s == pytest.approx(20.0)
    assert [(c.index, c.start_s, c.end_s) for c in clips] == [
        (i, 4.0 * i, 4.0 * i + 4.0) for i in range(5)
    ]
    assert info.clips == 5 and not info.partial
    for clip in clips:
        _check_frames(clip.frames)


def test_long_video_with_overlapping_windows(long_video: Path) -> None:
    clips, info = read_clips(long_video, clip_seconds=4, stride_seconds=2, num_frames=16)
    assert [(c.start_s, c.end_s) for c in clips] == [(2.0 * i, 2.0 * i + 4.0) for i in range(9)]
    assert info.clips == 9
    # Overlapping windows share frames: the second half of clip k is the first half of k + 1.
    for a, b in zip(clips, clips[1:], strict=False):
        np.testing.assert_array_equal(a.frames[8:], b.frames[:8])


def test_long_video_frames_follow_time(long_video: Path) -> None:
    """At 10 fps, the target at t shows source frame floor(10 t) (64 px: 8-bit counter)."""
    clips, _ = read_clips(long_video, num_frames=16, img_size=64)
    for clip in clips:
        targets = plan_targets(clip.start_s, 4.0, 16)
        expected = (np.floor(targets * 10).astype(int) % 256).tolist()
        assert [pattern_frame_index(f) for f in clip.frames] == expected


def test_max_clips(long_video: Path) -> None:
    clips, info = read_clips(long_video, num_frames=16, max_clips=2)
    assert [c.index for c in clips] == [0, 1]
    assert info.clips == 2


def test_max_clips_stops_decoding_once_the_last_clip_is_full(long_video: Path) -> None:
    """Window [4, 8)'s last target (7.875 s) takes frame 78; the frame at 7.9 s shows it full,
    and decoding stops there: 79 frames decoded of 200, the two clips as in a full decode."""
    every, _ = read_clips(long_video, num_frames=16)
    clips, info = read_clips(long_video, num_frames=16, max_clips=2)
    assert info.frames_decoded == 79
    assert [(c.index, c.start_s, c.end_s) for c in clips] == [(0, 0.0, 4.0), (1, 4.0, 8.0)]
    for got, want in zip(clips, every[:2], strict=True):
        np.testing.assert_array_equal(got.frames, want.frames)


def test_unknown_duration_opens_windows_as_frames_come(videos: Path) -> None:
    """A raw H.264 stream has no duration (nor timestamps: 25 fps is assumed). Windows open
    every stride as the frames arrive; the last, [2.0, 2.5), ends half a frame after the
    video (62 frames: 2.48 s), so it is emitted, its last target taking the last frame."""
    path = encode_video(videos / "raw.h264", make_test_pattern(62, 64, 64, seed=7), fps=25,
                        container_format="h264")
    clips, info = read_clips(path, clip_seconds=0.5, num_frames=16, img_size=64)
    assert (info.container, info.frames_decoded) == ("h264", 62)
    assert info.duration_s == pytest.approx(2.48)
    assert not info.partial and info.clips == 5
    assert [(c.index, c.start_s, c.end_s) for c in clips] == [
        (i, 0.5 * i, 0.5 * i + 0.5) for i in range(5)
    ]
    for clip in clips:
        targets = plan_targets(clip.start_s, 0.5, 16)
        expected = np.minimum(np.floor(targets * 25).astype(int), 61).tolist()
        assert [pattern_frame_index(f) for f in clip.frames] == expected
    assert pattern_frame_index(clips[-1].frames[-1]) == 61  # target 2.484 s > 2.48 s


def test_clip_reader_is_lazy(long_video: Path) -> None:
    reader = ClipReader(long_video, num_frames=16)
    first = next(iter(reader))
    assert first.index == 0
    assert reader.info.frames_decoded < 200  # stopped long before the end


def test_decode_from_bytes_and_file_object(long_video: Path) -> None:
    data = long_video.read_bytes()
    want, _ = read_clips(long_video, num_frames=16)
    from_bytes, info = read_clips(data, num_frames=16)
    with open(long_video, "rb") as fh:
        from_file, _ = read_clips(fh, num_frames=16)
    from_memory, _ = read_clips(io.BytesIO(data), num_frames=16, uri="s3://bucket/long.mp4")
    assert info.uri == "<video>"
    for got in (from_bytes, from_file, from_memory):
        assert len(got) == len(want) == 5
        for a, b in zip(got, want, strict=True):
            assert (a.start_s, a.end_s) == (b.start_s, b.end_s)
            np.testing.assert_array_equal(a.frames, b.frames)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_frames": 0}, "num_frames"), ({"img_size": 4}, "img_size"),
     ({"clip_seconds": 0}, "clip_seconds"), ({"stride_seconds": -1}, "stride_seconds")],
)
def test_bad_arguments(long_video: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClipReader(long_video, **kwargs)


# --- real clips ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "frames"), sorted(CREMA_D_CLIPS.items()))
def test_real_crema_d_flv_vp6(crema_d_dir: Path, name: str, frames: int) -> None:
    clips, info = read_clips(crema_d_dir / name)
    assert (info.codec, info.container) == ("vp6f", "flv")
    assert (info.width, info.height) == (480, 360)
    assert info.frames_decoded == frames
    assert info.duration_s == pytest.approx(frames / 29.97, abs=0.05)
    assert len(clips) == 1 and not info.partial
    assert clips[0].end_s == pytest.approx(info.duration_s)
    _check_frames(clips[0].frames)


def test_crema_d_frame_counts_are_the_documented_ones() -> None:
    assert CREMA_D_CLIPS == {"1001_DFA_ANG_XX.flv": 67, "1001_DFA_HAP_XX.flv": 56,
                             "1001_DFA_NEU_XX.flv": 61, "1001_DFA_SAD_XX.flv": 60}


def test_ravdess_shaped_mpeg4(ravdess_like_clip: Path) -> None:
    assert ravdess_like_clip.name == "01-01-08-02-01-01-19.mp4"
    with av.open(str(ravdess_like_clip)) as container:
        assert [s.type for s in container.streams] == ["video"]  # no audio, like the derivative
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    clips, info = read_clips(ravdess_like_clip)
    assert (info.codec, info.width, info.height) == ("mpeg4", 720, 720)
    assert info.frames_decoded == RAVDESS_LIKE_FRAMES == 122
    assert info.duration_s == pytest.approx(122 / 29.97, abs=0.01)
    assert len(clips) == 1 and not info.partial
    assert (clips[0].start_s, clips[0].end_s) == (0.0, 4.0)
    _check_frames(clips[0].frames)
    assert clips[0].frames.std() > 5  # a drawn face, not a flat picture


def test_real_and_extra_clips_decode(crema_d_dir: Path, ravdess_like_clip: Path,
                                     extra_clips: list[Path]) -> None:
    """Every clip decodes to at least one full clip: the repository's, the generated one, and
    the extra ones when $EMOTION_PIPELINE_SHARED_DATA names a folder of them."""
    videos = [crema_d_dir / name for name in CREMA_D_CLIPS] + [ravdess_like_clip, *extra_clips]
    for path in videos:
        clips, info = read_clips(path)
        assert clips and info.frames_decoded > 0, path
        _check_frames(clips[0].frames)
    assert len(videos) == 5 + len(extra_clips)


# --- bad inputs ------------------------------------------------------------------------------
def _expect(error: type[VideoError], source: object, uri: str, match: str) -> VideoError:
    with pytest.raises(error, match=match) as caught:
        read_clips(source)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"{uri}: ")
    assert "\n" not in message
    assert caught.value.uri == uri
    return caught.value


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    _expect(EmptyVideoError, path, str(path), "empty file")
    _expect(EmptyVideoError, b"", "<video>", "empty file")
    _expect(EmptyVideoError, io.BytesIO(), "<video>", "empty file")


def test_random_bytes_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    _expect(CorruptVideoError, path, str(path), "not a readable video container")


@pytest.mark.parametrize("name", ["notes.mp4", "notes.txt", "notes.nfo", "notes"])
def test_text_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("angry: 3\nhappy: 5\n" * 50)
    _expect(CorruptVideoError, path, str(path), "not a")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.mp4"
    _expect(CorruptVideoError, path, str(path), "no such file")


def test_mp4_truncated_at_half(videos: Path, tmp_path: Path) -> None:
    """The moov atom is written at the end: half a file has no index at all."""
    full = encode_video(videos / "to_cut.mp4", make_test_pattern(90, 120, 160), fps=30)
    data = full.read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    _expect(CorruptVideoError, path, str(path), "not a readable video container")


def test_still_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "still.jpg"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(make_test_pattern(1, 120, 160)[0], format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert path.read_bytes()[:2] == b"\xff\xd8"
    _expect(NoVideoStreamError, path, str(path), "still image")


def test_still_png(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "still.png"
    Image.fromarray(make_test_pattern(1, 120, 160)[0]).save(path)
    _expect(NoVideoStreamError, path, str(path), "still image")


def _encode_tone(path: Path, codec: str, container_format: str | None = None) -> Path:
    """One second of a 440 Hz tone, audio only."""
    rate = 16_000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 0.3
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        sample_fmt = stream.codec_context.format.name
        if sample_fmt.startswith("s16"):
            samples = (tone * 32767).astype(np.int16)
        elif sample_fmt.startswith("s32"):
            samples = (tone * 2**31 - 1).astype(np.int32)
        else:
            samples = tone.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples[None], format=sample_fmt, layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize(
    ("name", "codec", "fmt"),
    [("tone.m4a", "aac", "mp4"), ("tone.mp4", "aac", "mp4"), ("tone.wav", "pcm_s16le", None)],
)
def test_audio_only(tmp_path: Path, name: str, codec: str, fmt: str | None) -> None:
    path = _encode_tone(tmp_path / name, codec, fmt)
    error = _expect(NoVideoStreamError, path, str(path), "no video stream")
    assert "audio" in str(error)


def test_audio_only_from_bytes(tmp_path: Path) -> None:
    data = _encode_tone(tmp_path / "tone.m4a", "aac", "mp4").read_bytes()
    _expect(NoVideoStreamError, data, "<video>", "no video stream")


def test_errors_name_the_uri_given(tmp_path: Path) -> None:
    with pytest.raises(CorruptVideoError, match=r"^s3://bucket/x\.mp4: ") as caught:
        read_clips(b"\x00" * 1000, uri="s3://bucket/x.mp4")
    assert caught.value.uri == "s3://bucket/x.mp4"


# --- cut in the middle: keep the clips before the break, and say so ----------------------------
@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mkv", "libx264"), (".mkv", "mpeg4"), (".avi", "mpeg4"), (".flv", "flv")],
)
def test_cut_in_the_middle_keeps_earlier_clips(
    videos: Path, tmp_path: Path, suffix: str, codec: str
) -> None:
    """10 s at 30 fps cut after 60 % of its bytes: window [0, 4) is whole, [4, 8) is not."""
    full = encode_video(videos / f"ten_seconds_{codec}{suffix}",
                        make_test_pattern(300, 64, 64, seed=6), fps=30, codec=codec)
    complete, info = read_clips(full, num_frames=16)
    # two windows that fit, plus one aligned to the end for the 2 s tail
    assert [(c.start_s, c.end_s) for c in complete] == [(0.0, 4.0), (4.0, 8.0), (6.0, 10.0)]
    assert not info.partial

    data = full.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * 0.6)])
    clips, info = read_clips(path, num_frames=16)
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 4.0)]
    np.testing.assert_array_equal(clips[0].frames, complete[0].frames)
    assert info.partial
    assert info.partial_reason and "10.00s" in info.partial_reason
    assert 4.0 < info.duration_s < 8.0
    assert info.clips == 1


def _garble_packets(src: Path, dst: Path, first_bad: int) -> Path:
    """`src` remuxed with every packet from `first_bad` on replaced by random bytes."""
    rng = np.random.default_rng(0)
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = source.streams.video[0]
        out_stream = out.add_stream_from_template(stream)
        packets = (p for p in source.demux(stream) if p.dts is not None)
        for i, packet in enumerate(packets):
            if i >= first_bad:
                junk = av.Packet(rng.bytes(max(packet.size, 64)))
                junk.pts, junk.dts, junk.time_base = packet.pts, packet.dts, packet.time_base
                packet = junk
            packet.stream = out_stream
            out.mux(packet)
    return dst


def test_too_many_corrupt_packets_stop_decoding(videos: Path, tmp_path: Path) -> None:
    """VP8 whose packets after the first second are garbage: past _MAX_BAD_PACKETS refused
    packets decoding stops; the clips before the damage are kept, and the reason says so."""
    full = encode_video(videos / "garbage_after_1s.webm",
                        make_test_pattern(_MAX_BAD_PACKETS + 100, 16, 16, seed=8), fps=30,
                        codec="libvpx")
    whole, _ = read_clips(full, clip_seconds=0.5, num_frames=8, img_size=16)
    path = _garble_packets(full, tmp_path / "bad.webm", first_bad=30)
    clips, info = read_clips(path, clip_seconds=0.5, num_frames=8, img_size=16)
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 0.5), (0.5, 1.0)]
    for got, want in zip(clips, whole, strict=False):
        np.testing.assert_array_equal(got.frames, want.frames)
    assert (info.frames_decoded, info.clips, info.duration_s) == (30, 2, pytest.approx(1.0))
    assert info.partial and info.partial_reason
    assert info.partial_reason.startswith("decoding stopped at 1.00s: ")
    assert f"{_MAX_BAD_PACKETS + 1} corrupt packets skipped" in info.partial_reason

    all_bad = _garble_packets(full, tmp_path / "all_bad.webm", first_bad=0)
    _expect(CorruptVideoError, all_bad, str(all_bad), "no frame could be decoded")


@pytest.mark.parametrize(
    ("duration", "clip", "stride", "starts"),
    [
        (None, 4.0, 4.0, []),
        (2.0, 4.0, 4.0, [0.0]),
        (4.0, 4.0, 4.0, [0.0]),
        (20.0, 4.0, 4.0, [0.0, 4.0, 8.0, 12.0, 16.0]),
        (10.0, 4.0, 4.0, [0.0, 4.0, 6.0]),  # 2 s tail >= half a stride: one end-aligned window
        (9.0, 4.0, 4.0, [0.0, 4.0]),  # 1 s tail: dropped
        (9.0, 4.0, 2.0, [0.0, 2.0, 4.0, 5.0]),
        (10.0, 4.0, 2.0, [0.0, 2.0, 4.0, 6.0]),
    ],
)
def test_plan_window_starts(
    duration: float | None, clip: float, stride: float, starts: list[float]
) -> None:
    assert plan_window_starts(duration, clip, stride) == pytest.approx(starts)
