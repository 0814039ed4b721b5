"""Annotated preview: one video re-encoded (H.264, yuv420p, MP4) with each face's box, its label
and a confidence bar drawn on the frames (a whole-frame model: the label and the bar in the
top-left corner), from the same single decoding pass that predicts it.

::

    ClipReader (emotion_model.video) --frame_tap--> FrameBuffer: every frame shown, in order
      \\-> clips -> predict_batches (emotion_model.predict, as predict_video) -> timelines
    a frame at t is decided once every clip window that starts at or before t is predicted
    and the face boxes at t are final (ClipReader.settled_until)
      -> upright RGB (swscale) -> box, label, bar (numpy; text by FreeType through
         matplotlib's ft2font) -> libx264 yuv420p -> MP4, the source's audio packets
         interleaved (copied when MP4 can hold the codec, else transcoded to AAC)
    end of the video -> video_prediction: the VideoPrediction predict_video returns

What is shown at t, per face: the clip whose window holds t (the latest start where windows
overlap; in a gap, the last clip that started before t; none before the face's first clip),
in the box of the face's track at t (its smoothed path interpolated: the boxes its crops were
cut around; no box where the track has none).

Which faces: those predict_video returns (the tracks the video kept, known at its end). So
frames wait for the end of the video while their decoded bytes fit in ``max_buffer_bytes``
(default 512 MiB: ~1,900 frames of 480x360, ~160 of 1080p). Past that the buffer streams: each
frame is drawn and encoded as soon as it is decided, with every face that has a clip (the same
faces unless the video has more face tracks than ``max_faces``: `AnnotateResult.extra_faces`
names a drawn face the result leaves out), and a frame not decided yet that would pass the cap
is spilled to a temporary file (raw upright RGB) and read back in its turn; while frames wait
there, each clip is predicted as soon as it is read rather than when its batch fills (its
probabilities may then differ from predict_video's in the last bits). Memory: at most
``max_buffer_bytes`` of decoded frames, whatever the video's length; disk: the undecided
frames beyond it (about one clip window and a second of frames).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import time
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from emotion_model.clip_windows import Clip, to_rgb, upright_size
from emotion_model.errors import EmotionModelError, one_line
from emotion_model.predict import (
    BasePredictor,
    ClipPrediction,
    VideoPrediction,
    clip_prediction,
    predict_batches,
    prediction_reader,
    video_prediction,
)
from emotion_model.video import ClipReader

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "AnnotateResult",
    "FrameBuffer",
    "OutputNotWritableError",
    "annotate_video",
    "draw_label",
]

DEFAULT_MAX_BUFFER_BYTES = 512 * 1024 * 1024
"""Decoded frames held in memory at most (see the module's docstring)."""
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})
"""Audio codecs whose packets go into the MP4 as they are; any other is transcoded to AAC."""
X264_OPTIONS = {"preset": "veryfast", "crf": "20"}
PALETTE = ((255, 200, 0), (0, 190, 255), (255, 80, 170), (120, 230, 60), (255, 130, 40),
           (170, 120, 255))
"""RGB colour of face ``i % 6`` (a whole-frame model's label uses the first)."""
ProgressCallback = Callable[[float, float | None], None]
"""Called with the seconds of video decoded so far and the video's length (None: unknown)."""


class OutputNotWritableError(EmotionModelError):
    """The annotated video cannot be written where it was asked for."""


@dataclass(frozen=True)
class AnnotateResult:
    """What `annotate_video` wrote and predicted."""

    path: Path
    prediction: VideoPrediction
    """The same as ``predict_video``'s for this video, model and settings."""
    frames: int
    """Frames written: every frame the reader decoded and showed, once each."""
    width: int
    height: int
    encoder: str
    audio: str | None
    """``"mp3 copied"``, ``"pcm_s16le transcoded to aac"``, or None (no audio stream)."""
    streamed: bool
    """The frames passed ``max_buffer_bytes``: drawn as decided, not at the end."""
    peak_buffer_bytes: int
    peak_buffered_frames: int
    spilled_frames: int
    extra_faces: tuple[int, ...]
    """Faces drawn (streamed) that ``prediction`` leaves out; empty unless ``streamed``."""
    seconds: float


def annotate_video(
    predictor: BasePredictor,
    source: str | os.PathLike[str] | bytes,
    output: str | os.PathLike[str],
    *,
    clip_seconds: float = 4.0,
    stride_seconds: float | None = None,
    batch_size: int | None = None,
    detect_fps: float | None = None,
    max_faces: int = 4,
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    spill_dir: str | os.PathLike[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> AnnotateResult:
    """Write ``output`` (an ``.mp4``): ``source`` with ``predictor``'s predictions drawn on,
    decoding it once (see the module's docstring); returns what was written and
    ``predict_video``'s result (``open_predictor(path, device=...)`` loads a model file,
    ``.onnx`` too).

    ``clip_seconds`` to ``max_faces`` are ``predict_video``'s; then the buffer's cap in bytes,
    the folder of its spill file (default: the system's temporary folder), and a callback
    told the seconds decoded and the video's length as frames are decoded. The file is
    written whole or not at all (a temporary file beside it, renamed at the end). Raises the
    typed errors of ``emotion_model.video`` for a bad video, `OutputNotWritableError` when
    ``output`` cannot be created, ValueError for a bad argument.
    """
    start = time.perf_counter()
    out = _check_output(source, output)
    if max_buffer_bytes < 0:
        raise ValueError(f"max_buffer_bytes must be >= 0, got {max_buffer_bytes}")
    with _Mp4Writer(out, _SourceAudio.open(source)) as writer:
        annotator = _Annotator(predictor, writer, max_buffer_bytes, spill_dir, on_progress)
        reader = prediction_reader(predictor, source, clip_seconds=clip_seconds,
                                   stride_seconds=stride_seconds, detect_fps=detect_fps,
                                   max_faces=max_faces, frame_tap=annotator.on_frame)
        annotator.reader = reader
        clips: list[Clip] = []
        probs: list[np.ndarray] = []
        try:
            for batch, p in predict_batches(predictor, annotator.observe(reader), batch_size,
                                            flush=annotator.spilling):
                clips += batch
                probs.append(p)
                annotator.on_batch(batch, p)
            prediction = video_prediction(predictor, reader, clips, probs)
            annotator.finish(prediction)
        except _TapError as exc:  # the reader must not take it for a decoding error
            raise exc.__cause__ from None  # type: ignore[misc]
        finally:
            annotator.close()
        writer.finish()
    buffer = annotator.stats
    return AnnotateResult(
        path=out, prediction=prediction, frames=annotator.frames_written,
        width=writer.width, height=writer.height, encoder=writer.encoder,
        audio=writer.audio_note, streamed=not annotator.exact,
        peak_buffer_bytes=buffer["peak_bytes"], peak_buffered_frames=buffer["peak_frames"],
        spilled_frames=buffer["spilled"], extra_faces=annotator.extra_faces(prediction),
        seconds=time.perf_counter() - start,
    )


def _check_output(source: object, output: str | os.PathLike[str]) -> Path:
    """``output`` as a Path: an ``.mp4`` (or ``.m4v``) that is not the source itself."""
    out = Path(output)
    if out.suffix.lower() not in (".mp4", ".m4v"):
        raise ValueError(f"{out}: the annotated video is an MP4: name it .mp4")
    if isinstance(source, str | os.PathLike) and os.path.exists(source) and out.exists() \
            and os.path.samefile(source, out):
        raise ValueError(f"{out}: is the source video itself; write the preview elsewhere")
    return out


# --- which prediction is shown when -----------------------------------------------------------
class _Timeline:
    """One face's (or the whole frame's) clip predictions, by start time."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.clips: list[ClipPrediction] = []
        self.longest = 0.0

    def add(self, clip: ClipPrediction) -> None:
        i = bisect_right(self.starts, clip.start_s)
        self.starts.insert(i, clip.start_s)
        self.clips.insert(i, clip)
        self.longest = max(self.longest, clip.end_s - clip.start_s)

    def at(self, t: float) -> ClipPrediction | None:
        """The clip shown at ``t``: of those started by ``t``, the latest whose window holds
        ``t``, else the latest (a gap); None before the first."""
        i = bisect_right(self.starts, t)
        j = i - 1
        while j >= 0 and self.starts[j] > t - self.longest - 1e-9:
            if self.clips[j].end_s > t:
                return self.clips[j]
            j -= 1
        return self.clips[i - 1] if i else None


class _TapError(Exception):
    """Carries a failure of the frame tap through `ClipReader`, which would otherwise take
    an OSError or FFmpeg error raised inside it for a decoding error (a partial video)."""


class _Annotator:
    """The frame tap and the clip observer of one `annotate_video` call: buffers the frames,
    keeps the timelines, and draws and writes each frame once it is decided."""

    def __init__(self, predictor: BasePredictor, writer: _Mp4Writer, max_buffer_bytes: int,
                 spill_dir: str | os.PathLike[str] | None,
                 on_progress: ProgressCallback | None) -> None:
        self.predictor = predictor
        self.writer = writer
        self.max_buffer_bytes = max_buffer_bytes
        self.spill_dir = spill_dir
        self.on_progress = on_progress
        self.reader: ClipReader | None = None
        self.buffer: FrameBuffer | None = None
        self.timelines: dict[int, _Timeline] = {}
        self.unpredicted: deque[float] = deque()  # starts of the clips read, not predicted
        self.exact = True  # frames wait for the end (the faces kept are known there)
        self.kept: set[int] | None = None  # the faces to draw; None: every face with a clip
        self.drawn: set[int] = set()
        self.t0 = 0.0
        self.frames_written = 0
        self.stats = {"peak_bytes": 0, "peak_frames": 0, "spilled": 0}

    def observe(self, clips: Iterable[Clip]) -> Iterator[Clip]:
        """``clips``, noting each as read and not yet predicted."""
        for clip in clips:
            self.unpredicted.append(clip.start_s)
            yield clip

    def on_frame(self, frame: av.VideoFrame, t: float) -> None:
        """The reader's frame tap (see `_TapError`)."""
        try:
            self._on_frame(frame, t)
        except Exception as exc:
            raise _TapError(one_line(exc)) from exc

    def _on_frame(self, frame: av.VideoFrame, t: float) -> None:
        if self.buffer is None:  # the first frame: its size and time base set the output's
            width, height = upright_size(frame)
            self.t0 = float(frame.time or 0.0)
            self.writer.start(width, height, frame.time_base)
            self.buffer = FrameBuffer(self.max_buffer_bytes, width, height, self.spill_dir)
        nbytes = frame_bytes(frame)
        if self.exact and not self.buffer.fits(nbytes):
            self.exact = False  # from here on: stream
        if not self.exact:
            self._drain(self._decided_until())
        self.buffer.push(t, frame, nbytes)
        if self.on_progress is not None:
            self.on_progress(t, self.writer.duration_s)

    def spilling(self) -> bool:
        """Whether frames wait on disk: then a batch of clips is not left to fill (on a GPU,
        32 clips: minutes of video) before the frames it holds back are drawn."""
        return self.buffer is not None and self.buffer.on_disk > 0

    def on_batch(self, batch: list[Clip], probs: np.ndarray) -> None:
        """A batch of clips was predicted: add them to the timelines."""
        for clip, p in zip(batch, probs, strict=True):
            timeline = self.timelines.setdefault(clip.face_id, _Timeline())
            timeline.add(clip_prediction(clip, p, self.predictor.labels, self.predictor.modality))
            self.unpredicted.popleft()
        if not self.exact:
            self._drain(self._decided_until())

    def finish(self, prediction: VideoPrediction) -> None:
        """The video ended: draw and write every frame left (exact: the faces kept)."""
        if self.exact and prediction.crop == "face":
            self.kept = {f.face_id for f in prediction.faces}
        self._drain(math.inf)
        if self.on_progress is not None:
            self.on_progress(prediction.duration_s, prediction.duration_s)

    def close(self) -> None:
        if self.buffer is not None:
            self.stats = self.buffer.stats()
            self.buffer.close()

    def extra_faces(self, prediction: VideoPrediction) -> tuple[int, ...]:
        kept = {f.face_id for f in prediction.faces} if prediction.crop == "face" else {-1}
        return tuple(sorted(self.drawn - kept))

    def _decided_until(self) -> float:
        assert self.reader is not None
        return min(self.reader.settled_until, min(self.unpredicted, default=math.inf))

    def _drain(self, until: float) -> None:
        buffer = self.buffer
        while buffer is not None and len(buffer) and buffer.first_time() < until:
            t, image = buffer.pop()
            self._draw(image, t)
            self.writer.write(image, self.t0 + t)
            self.frames_written += 1

    def _draw(self, image: np.ndarray, t: float) -> None:
        assert self.reader is not None
        if self.reader.crop.mode == "frame":
            timeline = self.timelines.get(-1)
            clip = timeline.at(t) if timeline is not None else None
            if clip is not None:
                draw_label(image, f"{clip.label} {clip.confidence:.0%}", clip.confidence,
                           PALETTE[0])
            return
        for face_id, timeline in sorted(self.timelines.items()):
            if self.kept is not None and face_id not in self.kept:
                continue
            clip = timeline.at(t)
            box = self.reader.face_box(face_id, t) if clip is not None else None
            if clip is None or box is None:
                continue
            draw_label(image, f"face {face_id}: {clip.label} {clip.confidence:.0%}",
                       clip.confidence, PALETTE[face_id % len(PALETTE)], box=box)
            self.drawn.add(face_id)


# --- the frames waiting to be drawn --------------------------------------------------------------
def frame_bytes(frame: av.VideoFrame) -> int:
    """Bytes a decoded frame holds (its planes)."""
    return sum(p.buffer_size for p in frame.planes)


class FrameBuffer:
    """The frames waiting to be drawn, oldest first: decoded frames (references, nothing
    converted) while their bytes fit in ``max_bytes``; the others spilled to a temporary file
    as upright RGB ``height x width x 3`` (one slot each, slots reused once read back)."""

    def __init__(self, max_bytes: int, width: int, height: int,
                 spill_dir: str | os.PathLike[str] | None = None) -> None:
        self.max_bytes = max_bytes
        self.width, self.height = width, height
        self.spill_dir = spill_dir
        self._items: deque[tuple[float, av.VideoFrame | None, int]] = deque()
        self._bytes = 0
        self._in_memory = 0
        self._file: IO[bytes] | None = None
        self.on_disk = 0
        self._free: list[int] = []
        self._slots = 0
        self._peak_bytes = 0
        self._peak_frames = 0
        self._spilled = 0

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, nbytes: int) -> bool:
        """Whether a frame of ``nbytes`` would stay in memory."""
        return self._bytes + nbytes <= self.max_bytes

    def push(self, t: float, frame: av.VideoFrame, nbytes: int) -> None:
        """Add the frame shown at ``t`` (``nbytes``: `frame_bytes`)."""
        if self.fits(nbytes):
            self._items.append((t, frame, nbytes))
            self._bytes += nbytes
            self._in_memory += 1
            self._peak_bytes = max(self._peak_bytes, self._bytes)
            self._peak_frames = max(self._peak_frames, self._in_memory)
            return
        if self._file is None:
            # lives as long as the buffer; `close` closes it (and the system deletes it)
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="emotion-annotate-", dir=self.spill_dir)
        slot = self._free.pop() if self._free else self._slots
        self._slots = max(self._slots, slot + 1)
        self._file.seek(slot * self._record)
        self._file.write(to_rgb(frame, self.width, self.height).data)
        self._items.append((t, None, slot))
        self._spilled += 1
        self.on_disk += 1

    def first_time(self) -> float:
        """Time of the oldest frame."""
        return self._items[0][0]

    def pop(self) -> tuple[float, np.ndarray]:
        """The oldest frame: its time and its upright RGB picture (writable)."""
        t, frame, size_or_slot = self._items.popleft()
        if frame is not None:
            self._bytes -= size_or_slot
            self._in_memory -= 1
            return t, to_rgb(frame, self.width, self.height)
        assert self._file is not None
        image = np.empty((self.height, self.width, 3), np.uint8)
        self._file.seek(size_or_slot * self._record)
        if self._file.readinto(memoryview(image).cast("B")) != self._record:
            raise OSError("the annotate spill file was cut short")
        self._free.append(size_or_slot)
        self.on_disk -= 1
        return t, image

    @property
    def _record(self) -> int:
        return self.width * self.height * 3

    def stats(self) -> dict[str, int]:
        """Peak bytes and frames held in memory, frames spilled."""
        return {"peak_bytes": self._peak_bytes, "peak_frames": self._peak_frames,
                "spilled": self._spilled}

    def close(self) -> None:
        """Drop every frame and the spill file."""
        self._items.clear()
        self._bytes = self._in_memory = 0
        if self._file is not None:
            self._file.close()
            self._file = None


# --- drawing --------------------------------------------------------------------------------------
class _Text:
    """Text as alpha masks, rendered by FreeType through matplotlib's ``ft2font`` (what its Agg
    backend draws text with) in DejaVu Sans Bold, which matplotlib ships; cached."""

    def __init__(self) -> None:
        self._font: Any = None
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def mask(self, text: str, px: int) -> np.ndarray:
        """uint8 ``[line height, width]``: ``text`` at ``px`` pixels, on a fixed baseline."""
        key = (text, px)
        found = self._cache.get(key)
        if found is not None:
            return found
        if self._font is None:
            import matplotlib
            from matplotlib.ft2font import FT2Font

            self._font = FT2Font(str(Path(matplotlib.get_data_path())
                                     / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"))
        font = self._font
        font.set_size(px, 72)
        font.set_text(text)
        font.draw_glyphs_to_bitmap(antialiased=True)
        glyphs = np.asarray(font.get_image())
        ascent = math.ceil(font.ascender * px / font.units_per_EM)
        descent = math.ceil(-font.descender * px / font.units_per_EM)
        line = np.zeros((ascent + descent, glyphs.shape[1]), np.uint8)
        top = ascent - (glyphs.shape[0] - round(font.get_descent() / 64))
        rows = slice(max(0, top), min(line.shape[0], top + glyphs.shape[0]))
        line[rows] = glyphs[rows.start - top:rows.stop - top]
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = line
        return line


_TEXT = _Text()


def _paint(image: np.ndarray, x: int, y: int, alpha: np.ndarray | float, colour: Any,
           size: tuple[int, int] | None = None) -> None:
    """Blend ``colour`` into ``image`` at ``(x, y)`` with ``alpha`` (an array in 0..1, or one
    value over ``size`` = (w, h)), clipped to the image."""
    h, w = alpha.shape if isinstance(alpha, np.ndarray) else (size[1], size[0])  # type: ignore[index]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(image.shape[1], x + w), min(image.shape[0], y + h)
    if x1 <= x0 or y1 <= y0:
        return
    region = image[y0:y1, x0:x1]
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None] if isinstance(alpha, np.ndarray) else alpha
    colour = np.asarray(colour, np.float32)
    region[...] = (region * (1 - a) + colour * a + 0.5).astype(np.uint8)


def draw_label(image: np.ndarray, text: str, confidence: float, colour: tuple[int, int, int],
               *, box: tuple[float, float, float, float] | None = None) -> None:
    """Draw on ``image`` (uint8 RGB, in place) a panel with ``text`` and a bar as long as
    ``confidence`` (0..1) of its width, in ``colour``: above the face ``box`` (x, y, w, h,
    fractions; outlined too), or below or inside it when there is no room above; without a
    box, in the top-left corner. Sizes follow the frame's height."""
    height, width = image.shape[:2]
    px = int(min(64, max(10, round(height / 28))))
    pad = max(2, px // 5)
    bar = max(3, px // 3)
    thick = max(2, round(height / 240))
    mask = _TEXT.mask(text, px)
    panel_w = max(mask.shape[1] + 2 * pad, 5 * px)
    panel_h = mask.shape[0] + bar + 3 * pad
    if box is None:
        x, y = pad, pad
    else:
        bx0, by0 = round(box[0] * width), round(box[1] * height)
        bw, bh = round(box[2] * width), round(box[3] * height)
        for rx, ry, rw, rh in ((bx0, by0, bw, thick), (bx0, by0 + bh - thick, bw, thick),
                               (bx0, by0, thick, bh), (bx0 + bw - thick, by0, thick, bh)):
            _paint(image, rx, ry, 1.0, colour, (rw, rh))
        x = min(max(0, bx0), max(0, width - panel_w))
        if by0 - panel_h >= 0:
            y = by0 - panel_h
        elif by0 + bh + panel_h <= height:
            y = by0 + bh
        else:
            y = max(0, by0)
    _paint(image, x, y, 0.6, (0, 0, 0), (panel_w, panel_h))
    _paint(image, x + pad, y + pad, mask.astype(np.float32) / 255.0, (255, 255, 255))
    bar_y, bar_w = y + mask.shape[0] + 2 * pad, panel_w - 2 * pad
    _paint(image, x + pad, bar_y, 1.0, (70, 70, 70), (bar_w, bar))
    filled = round(bar_w * min(max(float(confidence), 0.0), 1.0))
    if filled:
        _paint(image, x + pad, bar_y, 1.0, colour, (filled, bar))


# --- writing: H.264 + the source's audio in MP4 -------------------------------------------------
def _h264_encoder() -> str:
    """libx264 when PyAV's FFmpeg has it, else the H.264 encoder it has."""
    if "libx264" in av.codecs_available:
        return "libx264"
    try:
        return av.codec.Codec("h264", "w").name
    except Exception:
        raise ValueError("this PyAV build has no H.264 encoder") from None


class _SourceAudio:
    """The source's first audio stream, from a second, demux-only opening of the source (its
    video packets are read past, never decoded): packets copied into the MP4 when it can hold
    their codec, else decoded and encoded to AAC. Also the video's rate and length."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self.container = container
        video = container.streams.video[0] if container.streams.video else None
        self.rate = (video.average_rate or video.guessed_rate) if video is not None else None
        self.duration_s = (container.duration / av.time_base
                           if container.duration and container.duration > 0 else None)
        self.stream = container.streams.audio[0] if container.streams.audio else None
        self.codec = self.stream.codec_context.codec.canonical_name if self.stream else ""
        self.copy = self.codec in MP4_AUDIO_CODECS
        self.out: Any = None
        self.note: str | None = None
        self._packets: Iterator[av.Packet] | None = None
        self._next: av.Packet | None = None

    @classmethod
    def open(cls, source: object) -> _SourceAudio | None:
        """None when ``source`` is not a path or bytes, or does not open (the reader will
        say why)."""
        if isinstance(source, bytes | bytearray):
            src: Any = io.BytesIO(source)
        elif isinstance(source, str | os.PathLike):
            src = os.fspath(source)
        else:
            return None
        try:
            return cls(av.open(src, mode="r", metadata_errors="ignore"))
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError):
            return None

    def attach(self, output: av.container.OutputContainer) -> None:
        """Add the audio stream to ``output`` (before anything is written to it)."""
        if self.stream is None:
            return
        if self.copy:
            self.out = output.add_stream_from_template(self.stream)
            self.note = f"{self.codec} copied"
        else:
            rate = self.stream.sample_rate or 48000
            self.out = output.add_stream("aac", rate=rate)
            self.out.layout = "mono" if len(self.stream.layout.channels) == 1 else "stereo"
            self.note = f"{self.codec} transcoded to aac"
        self._packets = self.container.demux(self.stream)

    def write_until(self, output: av.container.OutputContainer, seconds: float) -> None:
        """Write the audio up to ``seconds`` of the source's timeline (interleaving)."""
        while self._packets is not None:
            if self._next is None:
                try:
                    self._next = next(self._packets)
                except StopIteration:
                    self._packets = None
                    break
                except av.error.FFmpegError as exc:
                    self.note = f"{self.note}; audio cut short: {one_line(exc, 200)}"
                    self._packets = None
                    break
            packet = self._next
            if packet.dts is not None and packet.time_base is not None and \
                    float(packet.dts * packet.time_base) > seconds:
                return
            self._next = None
            self._write(output, packet)

    def _write(self, output: av.container.OutputContainer, packet: av.Packet) -> None:
        if self.copy:
            if packet.dts is not None:
                packet.stream = self.out
                output.mux(packet)
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            return  # a corrupt audio packet: skipped
        for frame in frames:
            output.mux(self.out.encode(frame))

    def finish(self, output: av.container.OutputContainer) -> None:
        """Write the rest of the audio and flush its encoder."""
        self.write_until(output, math.inf)
        if self.out is not None and not self.copy:
            output.mux(self.out.encode(None))

    def close(self) -> None:
        self.container.close()


def _why(path: Path, exc: BaseException) -> str:
    """Why ``path`` could not be created, in a few words."""
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        return f"{folder} is not a folder"
    return (getattr(exc, "strerror", None) or one_line(exc, 200)).lower()


class _Mp4Writer:
    """The MP4 being written: a hidden temporary file beside ``path`` (created at once, so an
    unwritable place fails before any decoding), renamed to ``path`` by `finish`; removed on
    any failure."""

    def __init__(self, path: Path, audio: _SourceAudio | None) -> None:
        self.path = path
        self.audio = audio
        self.tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        self.encoder = _h264_encoder()
        self.width = self.height = 0
        self.audio_note: str | None = None
        self.duration_s = audio.duration_s if audio is not None else None
        self.stream: Any = None
        self._pad = (0, 0)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.tmp), mode="w", format="mp4",
                                     options={"movflags": "+faststart"})
        except (OSError, av.error.FFmpegError) as exc:
            if audio is not None:
                audio.close()
            raise OutputNotWritableError(str(path), f"cannot write it: {_why(path, exc)}") \
                from None

    def __enter__(self) -> _Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.container is not None:  # finish() was not reached: leave nothing behind
            with contextlib.suppress(Exception):
                self.container.close()
            self.container = None
            self.tmp.unlink(missing_ok=True)
        if self.audio is not None:
            self.audio.close()
            self.audio = None

    def start(self, width: int, height: int, time_base: Fraction | None) -> None:
        """Add the video stream (the source's upright size, padded to even for 4:2:0; its
        time base) and the audio stream."""
        self._pad = (width % 2, height % 2)
        self.width, self.height = width + self._pad[0], height + self._pad[1]
        rate = self.audio.rate if self.audio is not None and self.audio.rate else Fraction(30)
        options = dict(X264_OPTIONS) if self.encoder == "libx264" else {}
        stream = self.container.add_stream(self.encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.codec_context.time_base = time_base or Fraction(1, 1000)
        self.stream = stream
        if self.audio is not None:
            self.audio.attach(self.container)
            self.audio_note = self.audio.note

    def write(self, image: np.ndarray, seconds: float) -> None:
        """Encode the upright RGB ``image`` shown at ``seconds`` (the source's timeline)."""
        if any(self._pad):
            image = np.pad(image, ((0, self._pad[1]), (0, self._pad[0]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        time_base = self.stream.codec_context.time_base
        frame.pts, frame.time_base = round(seconds / time_base), time_base
        self.container.mux(self.stream.encode(frame))
        if self.audio is not None:
            self.audio.write_until(self.container, seconds)

    def finish(self) -> None:
        """Flush the encoders, close the file, put it in place."""
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))
        if self.audio is not None and self.stream is not None:
            self.audio.finish(self.container)
            self.audio_note = self.audio.note
        self.container.close()
        self.container = None
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
