"""The annotated preview (``emotion_model.annotate``) on a real CREMA-D clip with the small
untrained face model: the MP4 it writes (frames, size, timestamps, audio), what is drawn and
where, the same faces and labels as ``predict_video``, one decoding pass, the memory cap and its
streaming fallback, a whole-frame model, audio transcoding, and failures that leave nothing."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from face_fixtures import Track, compose_video
from video_fixtures import CREMA_D_CLIPS, CREMA_D_DIR, decode_frames

from emotion_model.annotate import (
    AnnotateResult,
    OutputNotWritableError,
    _Timeline,
    annotate_video,
    frame_bytes,
)
from emotion_model.errors import VideoError
from emotion_model.predict import (
    ClipPrediction,
    Predictor,
    VideoPrediction,
    predict_video,
    prediction_reader,
)
from emotion_model.video_writer import encode_video

NAME = "1001_DFA_ANG_XX.flv"
CLIP = CREMA_D_DIR / NAME
KW: dict[str, Any] = {"clip_seconds": 1.0}  # two windows in the 2.2 s clip: [0, 1), [1, 2)


@contextmanager
def video_decodes() -> Iterator[list[int]]:
    """Count ``Packet.decode`` calls on video packets in this thread (every decode of the
    project goes through it: ``emotion_model.video._good_frames``)."""
    count = [0]

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") == "decode":
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, av.Packet) and owner.stream.type == "video":
                count[0] += 1

    sys.setprofile(hook)
    try:
        yield count
    finally:
        sys.setprofile(None)


def assert_same_prediction(got: VideoPrediction, want: VideoPrediction) -> None:
    """The same clips, faces and labels; probabilities within 1e-5 (a streamed annotation
    predicts in smaller batches: the last bits of a probability may differ)."""
    def shape(p: VideoPrediction) -> list[Any]:
        return [p.uri, p.label, p.crop, p.partial, [(c.index, c.start_s, c.end_s, c.face_id,
                c.face_box, c.label) for c in p.clips], [(f.face_id, f.first_s, f.last_s, f.box,
                f.clips, f.label) for f in p.faces]]

    def probs(p: VideoPrediction) -> list[float]:
        return [v for item in (*p.clips, *p.faces) for v in item.probabilities.values()]

    assert shape(got) == shape(want)
    np.testing.assert_allclose(probs(got), probs(want), atol=1e-5)


def frames_of(path: Path) -> np.ndarray:
    return np.stack(decode_frames(path)[0]).astype(np.int16)


@pytest.fixture(scope="module")
def predictor(face_model: Path) -> Predictor:
    return Predictor.from_file(face_model, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("annotate")


@pytest.fixture(scope="module")
def annotated(predictor: Predictor, folder: Path) -> tuple[AnnotateResult, int]:
    """The clip annotated with the defaults (frames held to the end), and the video packets
    decoded meanwhile."""
    with video_decodes() as count:
        result = annotate_video(predictor, CLIP, folder / "angry.mp4", **KW)
    return result, count[0]


def test_writes_the_source_frames_times_and_audio(annotated: tuple[AnnotateResult, int],
                                                  folder: Path) -> None:
    result, _ = annotated
    assert result.path == folder / "angry.mp4" and result.encoder == "libx264"
    assert result.frames == CREMA_D_CLIPS[NAME] == 67
    src_frames, src_times = decode_frames(CLIP)
    out_frames, out_times = decode_frames(result.path)
    assert len(out_frames) == len(src_frames) == 67
    assert out_frames[0].shape == src_frames[0].shape == (360, 480, 3)
    assert np.allclose(out_times, src_times, atol=1e-3)  # same timestamps (from 0.027 s)
    with av.open(str(result.path)) as out, av.open(str(CLIP)) as src:
        video = out.streams.video[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert abs(float(video.average_rate) - float(src.streams.video[0].average_rate)) < 0.05
        (audio,) = out.streams.audio  # the clip's mp3, its packets copied as they were
        assert audio.codec_context.codec.canonical_name == "mp3"
        assert result.audio == "mp3 copied"
        copied = [(p.pts, bytes(p)) for p in out.demux(audio) if p.size]
        source = [(p.pts, bytes(p)) for p in src.demux(src.streams.audio[0]) if p.size]
        assert [b for _, b in copied] == [b for _, b in source]
    assert [p.name for p in folder.iterdir()] == ["angry.mp4"]  # no temporary file left


def test_draws_at_the_face_and_barely_elsewhere(annotated: tuple[AnnotateResult, int]) -> None:
    result, _ = annotated
    diff = np.abs(frames_of(result.path) - frames_of(CLIP)).sum(axis=-1)  # [T, H, W]
    (face,) = result.prediction.faces
    x, y, w, h = (round(v * s) for v, s in zip(face.box, (480, 360, 480, 360), strict=True))
    # the box's outline (2 px) and the panel above it: strongly changed in every frame
    assert (diff[:, y - 2:y + 2, x + 4:x + w - 4] > 90).mean() > 0.8
    assert (diff[:, max(0, y - 30):y - 4, x + 4:x + w - 4] > 60).mean() > 0.5
    # far from it (the shirt, the green screen's right side): re-encoding only
    assert diff[:, 280:, :].mean() < 6 and diff[:, :, 360:].mean() < 6
    strong = diff > 90
    strong[:, max(0, y - 40):y + h + 6, max(0, x - 6):x + w + 60] = False
    assert strong.mean() < 1e-3


def test_same_faces_and_labels_as_predict_video(annotated: tuple[AnnotateResult, int],
                                                predictor: Predictor) -> None:
    result, _ = annotated
    expected = predict_video(predictor, CLIP, **KW)
    assert result.prediction == expected  # every clip, face id, box, label, probability
    assert [f.face_id for f in expected.faces] == [0] and len(expected.clips) == 2
    assert result.extra_faces == ()


def test_decodes_the_video_once(annotated: tuple[AnnotateResult, int],
                                predictor: Predictor) -> None:
    _, annotate_decodes = annotated
    with video_decodes() as count:
        predict_video(predictor, CLIP, **KW)
    with av.open(str(CLIP)) as src:
        packets = sum(1 for _ in src.demux(src.streams.video[0]))  # + the flush packet
    assert annotate_decodes == count[0] == packets


def test_memory_cap_streams_and_spills_the_same_video(annotated: tuple[AnnotateResult, int],
                                                      predictor: Predictor,
                                                      tmp_path: Path) -> None:
    exact, _ = annotated
    assert not exact.streamed and exact.spilled_frames == 0
    assert exact.peak_buffered_frames == 67  # everything fits: held to the end
    with av.open(str(CLIP)) as src:
        one = frame_bytes(next(src.decode(video=0)))
    expected = frames_of(exact.path)
    for cap in (0, 3 * one):
        spill = tmp_path / f"spill-{cap}"
        spill.mkdir()
        result = annotate_video(predictor, CLIP, tmp_path / f"cap{cap}.mp4", **KW,
                                max_buffer_bytes=cap, spill_dir=spill)
        assert result.streamed and result.peak_buffer_bytes <= cap
        assert result.peak_buffered_frames == cap // one and result.spilled_frames > 0
        assert result.frames == 67
        assert_same_prediction(result.prediction, exact.prediction)
        assert np.array_equal(frames_of(result.path), expected)  # pixel for pixel
        assert list(spill.iterdir()) == []  # the spill file is gone


def test_a_long_video_holds_a_bounded_number_of_frames(model_path: Path, long_video: Path,
                                                       tmp_path: Path) -> None:
    """20 s (200 frames) with a whole-frame model, a cap of 60 frames: the frames are drawn as
    their 4 s windows are predicted; never more than 60 in memory, none spilled."""
    predictor = Predictor.from_file(model_path, device="cpu")
    with av.open(str(long_video)) as src:
        one = frame_bytes(next(src.decode(video=0)))
    result = annotate_video(predictor, long_video, tmp_path / "long.mp4", batch_size=1,
                            max_buffer_bytes=60 * one)
    assert result.frames == 200 and result.streamed and result.spilled_frames == 0
    assert 40 <= result.peak_buffered_frames <= 60  # one window (40 frames) and a bit
    assert result.prediction == predict_video(predictor, long_video, batch_size=1)


def test_whole_frame_model_labels_the_corner(model_path: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_file(model_path, device="cpu")
    progress: list[tuple[float, float | None]] = []
    result = annotate_video(predictor, CLIP, tmp_path / "frame.mp4",
                            on_progress=lambda done, length: progress.append((done, length)))
    assert result.prediction == predict_video(predictor, CLIP)
    assert len(progress) == 68 and progress[-1] == (2.235, 2.235)  # each frame, then the end
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert result.prediction.crop == "frame" and result.prediction.faces == []
    diff = np.abs(frames_of(result.path) - frames_of(CLIP)).sum(axis=-1)
    assert (diff[:, 4:20, 4:60] > 60).mean() > 0.3  # the label's panel, top left
    assert diff[:, 60:, :].mean() < 6 and diff[:, :, 200:].mean() < 6


@pytest.fixture(scope="module")
def two_faces(folder: Path) -> Path:
    """Two faces side by side for 2 s (640x360, 15 fps)."""
    a = Track(sorted(CREMA_D_CLIPS)[0], "a", lambda t: (60.0, 90.0, 110.0))
    b = Track(sorted(CREMA_D_CLIPS)[1], "b", lambda t: (380.0 + 20 * t, 80.0, 120.0))
    return compose_video(folder / "two.mp4", [a, b], width=640, height=360, seconds=2.0,
                         fps=15.0)[0]


def test_the_readers_tap_and_progress(predictor: Predictor, two_faces: Path) -> None:
    """What annotate relies on: the tap sees every frame shown once, in order; after each clip,
    ``settled_until`` has not passed a window whose clips are not all out (two faces: two
    clips a window); -inf before the first frame, +inf at the end; a tap changes nothing."""
    tapped: list[float] = []
    kw: dict[str, Any] = {"clip_seconds": 0.5, "stride_seconds": 0.25}
    reader = prediction_reader(predictor, two_faces, **kw,
                               frame_tap=lambda frame, t: tapped.append(t))
    assert reader.settled_until == -math.inf
    seen: list[tuple[float, set[tuple[int, int]]]] = []
    out: set[tuple[int, int]] = set()
    clips = []
    for clip in reader:
        clips.append(clip)
        out.add((clip.index, clip.face_id))
        seen.append((reader.settled_until, set(out)))
    assert reader.settled_until == math.inf
    assert len(tapped) == reader.info.frames_decoded == 30 and tapped == sorted(set(tapped))
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert len(clips) >= 12 and {c.face_id for c in clips} == {0, 1}
    for settled, then in seen:
        assert {(c.index, c.face_id) for c in clips if c.start_s < settled} <= then
    plain = list(prediction_reader(predictor, two_faces, **kw))
    assert all(np.array_equal(a.frames, b.frames) and a.face_box == b.face_box
               for a, b in zip(plain, clips, strict=True))


def _leave_and_arrive(path: Path) -> Path:
    """Face A alone for 1.2 s, then face B, larger, for 1.8 s (640x360, 15 fps)."""
    a = Track(sorted(CREMA_D_CLIPS)[0], "a",
              lambda t: (80.0, 90.0, 110.0) if t < 1.2 else (2000.0, 90.0, 110.0))
    b = Track(sorted(CREMA_D_CLIPS)[1], "b",
              lambda t: (2000.0, 80.0, 150.0) if t < 1.2 else (380.0, 80.0, 150.0))
    return compose_video(path, [a, b], width=640, height=360, seconds=3.0, fps=15.0)[0]


def test_only_the_faces_kept_are_drawn_unless_streamed(predictor: Predictor,
                                                       tmp_path: Path) -> None:
    """max_faces=1: A's first window gives it a clip, but B is the face kept. Held to the end,
    only B is drawn, as predict_video says; streamed (cap 0), A was drawn before B was known,
    and the result names it."""
    video = _leave_and_arrive(tmp_path / "two.mp4")
    kw = {"clip_seconds": 1.0, "max_faces": 1}
    expected = predict_video(predictor, video, **kw)
    assert [f.face_id for f in expected.faces] == [1]
    exact = annotate_video(predictor, video, tmp_path / "exact.mp4", **kw)
    streamed = annotate_video(predictor, video, tmp_path / "streamed.mp4", **kw,
                              max_buffer_bytes=0)
    assert exact.prediction == expected
    assert_same_prediction(streamed.prediction, expected)
    assert exact.extra_faces == () and streamed.extra_faces == (0,)
    source = frames_of(video)
    first_second = slice(0, 15)  # A on screen, B not yet
    assert np.abs(frames_of(exact.path)[first_second] - source[first_second]).max() < 60
    assert np.abs(frames_of(streamed.path)[first_second] - source[first_second]).max() > 150


def test_transcodes_audio_mp4_cannot_hold_and_keeps_none(model_path: Path,
                                                         tmp_path: Path) -> None:
    """PCM in Matroska becomes AAC of the same length; a video without audio stays silent."""
    src = tmp_path / "pcm.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=16000)
        audio.layout = "mono"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i, np.uint8), "rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        tone = (np.sin(np.arange(32000) / 5) * 8000).astype(np.int16)[None]
        samples = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        samples.sample_rate, samples.pts = 16000, 0
        out.mux(audio.encode(samples))
        out.mux(video.encode())
        out.mux(audio.encode())
    predictor = Predictor.from_file(model_path, device="cpu")
    result = annotate_video(predictor, src, tmp_path / "pcm.mp4")
    assert result.audio == "pcm_s16le transcoded to aac" and result.frames == 50
    with av.open(str(result.path)) as out:
        (stream,) = out.streams.audio
        assert stream.codec_context.codec.canonical_name == "aac"
        samples_out = sum(f.samples for f in out.decode(audio=0))
    assert abs(samples_out - 32000) <= 2048  # 2 s, give or take the encoder's priming
    silent = encode_video(tmp_path / "silent.mp4", np.zeros((20, 48, 64, 3), np.uint8), fps=10)
    result = annotate_video(predictor, silent, tmp_path / "silent-annotated.mp4")
    assert result.audio is None and result.frames == 20
    with av.open(str(result.path)) as out:
        assert not out.streams.audio


def test_bad_input_or_output_leaves_nothing(predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = tmp_path / "broken.flv"
    broken.write_bytes(CLIP.read_bytes()[:300])
    for source in (tmp_path / "missing.flv", broken):
        with pytest.raises(VideoError):
            annotate_video(predictor, source, out / "x.mp4")
    assert list(out.iterdir()) == []
    # a failure in the middle (the spill folder is gone): raised as itself, not taken for a
    # decoding error, and nothing left behind
    with pytest.raises(FileNotFoundError):
        annotate_video(predictor, CLIP, out / "x.mp4", max_buffer_bytes=0,
                       spill_dir=tmp_path / "gone")
    assert list(out.iterdir()) == []
    (tmp_path / "a-file").write_text("")
    cases: list[tuple[Path, type[Exception], str]] = [
        (tmp_path / "a-file" / "x.mp4", OutputNotWritableError, "is not a folder"),
        (out / "x.avi", ValueError, "name it .mp4"),
        (CLIP, ValueError, "name it .mp4"),
    ]
    for output, error, words in cases:
        with pytest.raises(error, match=words):
            annotate_video(predictor, CLIP, output)
    same = tmp_path / "same.mp4"
    same.write_bytes(CLIP.read_bytes())
    with pytest.raises(ValueError, match="is the source video itself"):
        annotate_video(predictor, same, same)


def _clip(start: float, end: float, label: str) -> ClipPrediction:
    return ClipPrediction(0, start, end, label, 0.5, {})


@pytest.mark.parametrize(("t", "label"), [
    (0.0, "a"), (1.9, "a"),  # only [0, 4) holds t
    (2.0, "b"), (3.9, "b"),  # [0, 4) and [2, 6): the later start
    (6.5, "b"),  # a gap: the last clip started before t
    (8.0, "c"), (9.9, "c"),
])
def test_the_clip_shown_at_t(t: float, label: str) -> None:
    timeline = _Timeline()
    for clip in (_clip(8.0, 10.0, "c"), _clip(0.0, 4.0, "a"), _clip(2.0, 6.0, "b")):
        timeline.add(clip)
    shown: Callable[[float], ClipPrediction | None] = timeline.at
    assert shown(t) is not None and shown(t).label == label  # type: ignore[union-attr]
    assert _Timeline().at(1.0) is None
