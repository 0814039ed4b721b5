"""Decode a video once, front to back, into fixed-size clips of uint8 RGB frames (PyAV).

::

    path | file object
        -> PyAV demux + threaded decode (every frame once, no seeking)
        -> clip windows (_ClipAssembler): [k * stride, k * stride + clip_seconds), opened as
           time advances (or one window for a short video)
        -> per window, num_frames target times spread uniformly; each takes the frame on screen
           at that time (presentation time, so variable frame rates sample correctly)
        -> swscale resize + RGB conversion of the chosen frames only
        -> Clip(frames uint8 [T, H, W, 3] in 0..255, start_s, end_s)

Memory is bounded by the open windows (at most ceil(clip / stride) + 1 clips of small frames),
whatever the video's length or resolution. Failures are typed (``emotion_model.errors``): an
empty file, data that is not a readable container, no video stream, zero decodable frames. A
video whose data breaks off part way keeps the clips decoded before the break and reports
``partial=True`` with the reason; so does one with corrupt packets in the middle, whose bad
packets (and frames the decoder flags corrupt) are skipped: the frame before them stays on screen.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Literal

import av
import numpy as np

from emotion_model.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NoDecodableFramesError,
    NoVideoStreamError,
    one_line,
)

log = logging.getLogger(__name__)

VideoSource = str | os.PathLike[str] | IO[bytes] | bytes
Interpolation = Literal["FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "POINT"]
ThreadType = Literal["AUTO", "FRAME", "SLICE", "NONE"]

# Demuxers that hold one picture, not a video: refused as "a still image".
_IMAGE_FORMATS = {"image2", "image2pipe", "mjpeg_2000", "apng"}
# Demuxers that draw any text file (.txt, .nfo, .asc...) as ANSI art: refused as "not a video".
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
# Corrupt packets skipped before a stream is given up as garbage (decoding stops, partial).
_MAX_BAD_PACKETS = 500


@dataclass(frozen=True)
class Clip:
    """One clip: ``frames`` uint8 ``[T, H, W, 3]`` RGB in 0..255, seconds from the first frame."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray


@dataclass
class VideoInfo:
    """What decoding learnt about a video; complete once its clips have all been read."""

    uri: str
    width: int = 0
    height: int = 0
    codec: str = ""
    container: str = ""
    duration_s: float = 0.0
    frames_decoded: int = 0
    clips: int = 0
    partial: bool = False
    partial_reason: str | None = None


@dataclass
class _Window:
    index: int
    start: float  # seconds from the first frame
    end: float
    targets: np.ndarray  # [T] target times, ascending
    frames: list[np.ndarray | None] = field(default_factory=list)
    filled: int = 0


def plan_window_starts(
    duration: float | None, clip_seconds: float, stride_seconds: float
) -> list[float]:
    """Window starts for a video of ``duration`` seconds (from its metadata).

    Windows of ``clip_seconds`` every ``stride_seconds`` that fit in the video, plus one window
    aligned to the end when the uncovered tail is at least half a stride. A video shorter
    than one clip gets ``[0.0]`` (then sampled over its real length). Unknown duration: ``[]``
    (windows are then opened as the frames arrive).
    """
    if duration is None:
        return []
    if duration < clip_seconds:
        return [0.0]
    count = int(math.floor((duration - clip_seconds) / stride_seconds + 1e-6)) + 1
    starts = [float(k * stride_seconds) for k in range(count)]
    tail = duration - (starts[-1] + clip_seconds)
    if tail >= stride_seconds / 2 - 1e-6:
        starts.append(duration - clip_seconds)
    return starts


def plan_targets(start: float, length: float, num_frames: int) -> np.ndarray:
    """``num_frames`` times spread uniformly over ``[start, start + length)`` (bin centres)."""
    return start + (np.arange(num_frames) + 0.5) * (length / num_frames)


class _ClipAssembler:
    """Turns the frames of one video, in presentation order, into clips.

    Each window ``[start, start + clip_seconds)`` has ``num_frames`` target times; a target
    takes the frame on screen at that time. The assembler owns the planned window starts,
    the windows still open (at most ``ceil(clip / stride) + 1``), the frame on screen and its
    image (resized once, and only when a target or the caller wants it), and the count of
    clips emitted. With ``open_ended`` (unknown duration) a window opens every
    ``stride_seconds`` for as long as frames come; the planned starts are then empty.
    """

    def __init__(
        self,
        starts: list[float],
        *,
        open_ended: bool,
        clip_seconds: float,
        stride_seconds: float,
        num_frames: int,
        img_size: int,
        interpolation: str,
        max_clips: int | None,
    ) -> None:
        self.starts = starts
        self.open_ended = open_ended
        self.clip_seconds = clip_seconds
        self.stride_seconds = stride_seconds
        self.num_frames = num_frames
        self.img_size = img_size
        self.interpolation = interpolation
        self.max_clips = max_clips
        self.windows: list[_Window] = []  # open, by index
        self.next_window = 0  # index of the next window to open
        self.emitted = 0
        self._frame: av.VideoFrame | None = None
        self._image: np.ndarray | None = None

    @property
    def done(self) -> bool:
        """Whether ``max_clips`` clips have been emitted."""
        return self.max_clips is not None and self.emitted >= self.max_clips

    def show(self, frame: av.VideoFrame) -> None:
        """Put ``frame`` on screen: targets from now on take it (resized when first taken)."""
        self._frame, self._image = frame, None

    def image(self) -> np.ndarray:
        """The frame on screen as uint8 RGB ``[size, size, 3]``, converted on first use."""
        if self._image is None:
            assert self._frame is not None, "no frame on screen yet"
            self._image = _to_rgb(self._frame, self.img_size, self.interpolation)
        return self._image

    def advance(self, until: float) -> Iterator[Clip]:
        """The frame on screen stays there until ``until``: open the windows that start
        before it, give the frame to their targets before it, and yield the windows filled."""
        while self.next_window < len(self.starts) or self.open_ended:
            k = self.next_window
            start = self.starts[k] if k < len(self.starts) else k * self.stride_seconds
            if start >= until:
                break
            targets = plan_targets(start, self.clip_seconds, self.num_frames)
            self.windows.append(
                _Window(k, start, start + self.clip_seconds, targets, [None] * self.num_frames)
            )
            self.next_window += 1
        yield from self._fill(list(self.windows), until)

    def finish(self, end: float, frame_dt: float, *, cut: bool) -> Iterator[Clip]:
        """The video ends at ``end`` (the last frame stays on screen for ``frame_dt``).

        Fills the targets before ``end``; then a window that ends within half a frame of
        ``end`` is complete, its last targets taking the last frame, unless the data was
        ``cut`` by an error. Other windows stay open, unfilled.
        """
        yield from self.advance(end)
        if not cut:
            last = [w for w in self.windows if w.end <= end + frame_dt / 2 + 1e-6]
            yield from self._fill(last, math.inf)

    def _fill(self, windows: list[_Window], until: float) -> Iterator[Clip]:
        """Give the frame on screen to each window's targets before ``until``; a window
        whose targets are all filled is closed and yielded as a Clip."""
        for win in windows:
            while win.filled < self.num_frames and win.targets[win.filled] < until:
                win.frames[win.filled] = self.image()
                win.filled += 1
            if win.filled == self.num_frames:
                self.windows.remove(win)
                self.emitted += 1
                yield Clip(win.index, win.start, win.end, np.stack(win.frames))  # type: ignore[arg-type]


class ClipReader:
    """Iterate the clips of one video, decoding it once; ``info`` is filled as it goes.

    Args:
        source: a local path, bytes, or a binary file object (seekable is best).
        num_frames: frames per clip (T).
        img_size: output height and width (frames are resized, not cropped).
        clip_seconds: window length; a shorter video gives one clip over its whole length.
        stride_seconds: distance between window starts (default: ``clip_seconds``).
        uri: name used in error messages (defaults to the path).
        threads: decoder threads (0: FFmpeg chooses); ``thread_type`` picks frame/slice threads.
        interpolation: swscale filter for the resize.
        max_clips: stop after this many clips (None: all).

    Raises (when iterated): EmptyVideoError, CorruptVideoError, NoVideoStreamError,
    NoDecodableFramesError.
    """

    def __init__(
        self,
        source: VideoSource,
        *,
        num_frames: int = 48,
        img_size: int = 112,
        clip_seconds: float = 4.0,
        stride_seconds: float | None = None,
        uri: str | None = None,
        threads: int = 0,
        thread_type: ThreadType = "AUTO",
        interpolation: Interpolation = "BILINEAR",
        max_clips: int | None = None,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if img_size < 8:
            raise ValueError(f"img_size must be >= 8, got {img_size}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        stride = clip_seconds if stride_seconds is None else stride_seconds
        if not stride > 0:
            raise ValueError(f"stride_seconds must be > 0, got {stride_seconds}")
        self.source = source
        self.num_frames = num_frames
        self.img_size = img_size
        self.clip_seconds = float(clip_seconds)
        self.stride_seconds = float(stride)
        self.threads = threads
        self.thread_type = thread_type
        self.interpolation = interpolation
        self.max_clips = max_clips
        name = uri or (os.fspath(source) if isinstance(source, str | os.PathLike) else None)
        self.info = VideoInfo(uri=name or getattr(source, "name", None) or "<video>")

    # -- opening ----------------------------------------------------------------------------
    def _open(self) -> av.container.InputContainer:
        uri = self.info.uri
        src: object = self.source
        if isinstance(src, bytes | bytearray):
            if not src:
                raise EmptyVideoError(uri, "empty file (0 bytes)")
            src = io.BytesIO(src)
        elif isinstance(src, str | os.PathLike):
            try:
                size = os.path.getsize(src)
            except FileNotFoundError:
                raise CorruptVideoError(uri, "no such file") from None
            except OSError as exc:
                raise CorruptVideoError(uri, f"unreadable: {exc.strerror or exc}") from None
            if size == 0:
                raise EmptyVideoError(uri, "empty file (0 bytes)")
        else:
            try:
                pos = src.tell()  # type: ignore[attr-defined]
                end = src.seek(0, io.SEEK_END)  # type: ignore[attr-defined]
                src.seek(pos)  # type: ignore[attr-defined]
                if end == 0:
                    raise EmptyVideoError(uri, "empty file (0 bytes)")
            except (AttributeError, OSError, io.UnsupportedOperation):
                pass
        try:
            return av.open(src, mode="r", metadata_errors="ignore")  # type: ignore[arg-type]
        except PermissionError:
            raise CorruptVideoError(uri, "permission denied") from None
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptVideoError(
                uri, f"not a readable video container ({one_line(exc, 300)})"
            ) from None

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Clip]:
        container = self._open()
        try:
            yield from self._decode(container)
        finally:
            container.close()

    def _video_stream(self, container: av.container.InputContainer) -> av.VideoStream:
        """The first video stream, set up for decoding; refuses text, stills and no video."""
        info = self.info
        info.container = container.format.name
        fmt_names = set(container.format.name.split(","))
        if fmt_names & _TEXT_FORMATS:
            raise CorruptVideoError(
                info.uri, f"not a video: text or ANSI art ({container.format.name} demuxer)"
            )
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise NoVideoStreamError(info.uri, f"no video stream (the file holds {kinds})")
        if fmt_names & _IMAGE_FORMATS or any(n.endswith("_pipe") for n in fmt_names):
            raise NoVideoStreamError(
                info.uri, f"a still image ({container.format.name}), not a video"
            )
        stream = container.streams.video[0]
        stream.thread_type = self.thread_type
        if self.threads:
            stream.thread_count = self.threads
        ctx = stream.codec_context
        info.codec, info.width, info.height = ctx.name, ctx.width, ctx.height
        return stream

    def _decode(self, container: av.container.InputContainer) -> Iterator[Clip]:
        """Decode front to back, timing each frame from the first; yield each clip once its
        window is full, then, at the end, the windows the last frame completes."""
        info = self.info
        stream = self._video_stream(container)
        meta_duration = _metadata_duration(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        nominal_dt = 1.0 / float(rate) if rate else None
        # Short (or unknown-length) videos: keep every small frame of the first clip_seconds,
        # so a video shorter than one clip is sampled over its real length.
        keep_all = meta_duration is None or meta_duration < self.clip_seconds + 1e-3
        kept: list[tuple[float, np.ndarray]] = []
        starts = plan_window_starts(meta_duration, self.clip_seconds, self.stride_seconds)
        assembler = _ClipAssembler(
            starts,
            open_ended=meta_duration is None,
            clip_seconds=self.clip_seconds,
            stride_seconds=self.stride_seconds,
            num_frames=self.num_frames,
            img_size=self.img_size,
            interpolation=self.interpolation,
            max_clips=self.max_clips,
        )
        bad = _BadData()
        t0: float | None = None
        prev_t: float | None = None  # time of the frame on screen, from the first frame
        diffs: list[float] = []
        error: str | None = None
        try:
            for frame_index, frame in enumerate(_good_frames(container, stream, bad)):
                t = frame.time
                if t is None:
                    t = frame_index * (nominal_dt or 1 / 30)
                if t0 is None:
                    t0 = t
                rel = t - t0
                if prev_t is not None:
                    if rel <= prev_t:
                        continue  # a duplicate or out-of-order timestamp: keep the first frame
                    diffs.append(rel - prev_t)
                    yield from assembler.advance(rel)
                    if assembler.done:
                        break
                prev_t = rel
                assembler.show(frame)
                info.frames_decoded += 1
                if keep_all and rel < self.clip_seconds:
                    kept.append((rel, assembler.image()))
        except av.error.FFmpegError as exc:
            error = one_line(exc, 300)
        except (MemoryError, OSError) as exc:
            error = one_line(exc, 300)

        if prev_t is None:
            if error is not None:
                raise CorruptVideoError(info.uri, f"no frame could be decoded ({error})")
            raise NoDecodableFramesError(info.uri, "the video stream holds no decodable frame")

        frame_dt = float(np.median(diffs)) if diffs else (nominal_dt or 0.0)
        end = prev_t + frame_dt
        info.duration_s = float(end)
        emitted = assembler.emitted
        if not assembler.done:
            yield from assembler.finish(end, frame_dt, cut=error is not None)
            emitted = assembler.emitted
            if emitted == 0:
                yield self._whole_video_clip(kept, end, assembler)
                emitted = 1
        info.clips = emitted
        self._note_partial(end, meta_duration, len(starts), error, bad)

    def _note_partial(
        self,
        end: float,
        meta_duration: float | None,
        planned: int,
        error: str | None,
        bad: _BadData,
    ) -> None:
        """Mark ``info`` partial, saying why, when decoding stopped on an error, the data
        ended well before the length the header gives, or bad data was skipped."""
        info = self.info
        reasons = []
        if error is not None:
            reasons.append(f"decoding stopped at {end:.2f}s: {error}")
        elif meta_duration and (
            end < 0.9 * meta_duration - 0.5
            # a planned window lost: the data ends well before the length the header gives
            or (end < meta_duration - 0.5 and self.max_clips is None and info.clips < planned)
        ):
            reasons.append(f"stream ends at {end:.2f}s of {meta_duration:.2f}s")
        if bad.packets or bad.frames:
            reasons.append(bad.describe())
        if reasons:
            info.partial, info.partial_reason = True, "; ".join(reasons)
        if info.partial:
            log.info("%s: partly decoded: %s", info.uri, info.partial_reason)

    def _whole_video_clip(
        self, kept: list[tuple[float, np.ndarray]], end: float, assembler: _ClipAssembler
    ) -> Clip:
        """One clip spread over the whole (short) video, when no window was emitted."""
        if kept:
            times = np.array([t for t, _ in kept])
            targets = plan_targets(0.0, end, self.num_frames)
            idx = np.clip(np.searchsorted(times, targets, side="right") - 1, 0, len(kept) - 1)
            return Clip(0, 0.0, end, np.stack([kept[i][1] for i in idx]))
        # Metadata promised a longer video than the data holds: resample what window 0 got.
        windows = assembler.windows
        got = [f for f in (windows[0].frames if windows else []) if f is not None]
        if not got:
            got = [assembler.image()]
        idx = np.round(np.linspace(0, len(got) - 1, self.num_frames)).astype(int)
        return Clip(0, 0.0, end, np.stack([got[i] for i in idx]))


@dataclass
class _BadData:
    """Corrupt packets and frames skipped while decoding one video."""

    packets: int = 0
    frames: int = 0
    first_s: float | None = None
    last_s: float | None = None
    error: str = ""

    def _at(self, t: float | None) -> None:
        if t is not None:
            self.first_s = t if self.first_s is None else min(self.first_s, t)
            self.last_s = t if self.last_s is None else max(self.last_s, t)

    def packet(self, packet: av.Packet, exc: BaseException) -> None:
        self.packets += 1
        self.error = self.error or one_line(exc, 300)
        pts = packet.pts if packet.pts is not None else packet.dts
        tb = packet.time_base
        self._at(float(pts * tb) if pts is not None and tb is not None else None)

    def frame(self, frame: av.VideoFrame) -> None:
        self.frames += 1
        self._at(frame.time)

    def describe(self) -> str:
        parts = [f"{n} corrupt {what}" for n, what in
                 ((self.packets, "packets"), (self.frames, "frames")) if n]
        where = (f" between {self.first_s:.2f}s and {self.last_s:.2f}s of the stream"
                 if self.first_s is not None else "")
        why = f" ({self.error})" if self.error else ""
        return f"{' and '.join(parts)} skipped{where}{why}"


def _good_frames(
    container: av.container.InputContainer, stream: av.VideoStream, bad: _BadData
) -> Iterator[av.VideoFrame]:
    """Every good frame of ``stream``; a packet the decoder refuses, or a frame it flags
    corrupt, is counted in ``bad`` and skipped, not the end (so the frame before stays on
    screen). More than ``_MAX_BAD_PACKETS`` refused packets re-raise the decoder's error."""
    for packet in container.demux(stream):  # ends with an empty packet: the flush
        try:
            frames = packet.decode()
        except (av.error.EOFError, av.error.ExitError):
            raise
        except av.error.FFmpegError as exc:
            bad.packet(packet, exc)
            if bad.packets > _MAX_BAD_PACKETS:
                raise
            continue
        for frame in frames:
            if frame.is_corrupt:  # concealed damage: keep the previous frame instead
                bad.frame(frame)
                continue
            yield frame


def _to_rgb(frame: av.VideoFrame, size: int, interpolation: str) -> np.ndarray:
    """Resize in swscale and convert to RGB: uint8 ``[size, size, 3]``, upright."""
    image = frame.to_ndarray(width=size, height=size, format="rgb24", interpolation=interpolation)
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 360:
        # Display-matrix rotation is counter-clockwise; turn the picture upright.
        image = np.ascontiguousarray(np.rot90(image, k=int(round(rotation / 90)) % 4))
    return image


def _metadata_duration(
    container: av.container.InputContainer, stream: av.VideoStream
) -> float | None:
    by_count = (
        stream.frames / float(stream.average_rate)
        if stream.frames and (stream.average_rate or 0) > 0 else None
    )
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            # A cut AVI: FFmpeg rebuilds the index (duration) from the data that is left,
            # while the header still counts every frame written.
            return max(seconds, by_count or 0.0)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return by_count


def read_clips(
    source: VideoSource, **kwargs: object
) -> tuple[list[Clip], VideoInfo]:
    """Decode every clip of a video at once: ``(clips, info)``. See ``ClipReader``'s arguments."""
    reader = ClipReader(source, **kwargs)  # type: ignore[arg-type]
    clips = list(reader)
    return clips, reader.info
