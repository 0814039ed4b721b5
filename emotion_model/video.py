"""Decode a video once, front to back, into fixed-size clips of uint8 RGB frames (PyAV).

::

    path | file object
        -> PyAV demux + threaded decode (every frame once, no seeking)
        -> clip windows (emotion_model.clip_windows): [k * stride, k * stride + clip_seconds),
           opened as time advances; a video shorter than one clip is one clip over its length
        -> per window, num_frames target times spread uniformly; each takes the frame on screen
           at that time (presentation time, so variable frame rates sample correctly)
        -> crop="frame": swscale resize + RGB conversion of the chosen frames only
           crop="face": faces detected and tracked in the same pass, one clip per face track
           cut around the face (emotion_model.face_clips)
        -> Clip(frames uint8 [T, H, W, 3] in 0..255, start_s, end_s[, face_id, face_box])
    with ``audio=AudioSpec(...)``, the first audio stream's packets come in the same demux
        -> decoded, resampled to 16 kHz mono, timed on the video's clock (emotion_model.audio)
        -> each clip leaves once the audio has reached its window's end, with the window's
           log-mel (Clip.audio; silence and audio_present=False where there is none)

Memory is bounded by the open windows (at most ceil(clip / stride) + 1 clips of small frames;
in face mode, references to the decoded frames the targets take, held until the faces' boxes
over them are final), whatever the video's length or resolution. Failures are typed
(``emotion_model.errors``): an empty file, data that is not a readable container, no video
stream, zero decodable frames. A video whose data breaks off part way keeps the clips decoded
before the break and reports ``partial=True`` with the reason; so does one with corrupt packets
in the middle, whose bad packets (and frames the decoder flags corrupt) are skipped: the frame
before them stays on screen. Bad or missing audio never fails a video nor makes it partial:
the clips it touches go without audio, each with its reason (``Clip.audio_reason``), and
``VideoInfo.audio_error`` sums it up.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

import av
import numpy as np

from emotion_model.audio import AudioClips, AudioSpec, AudioTrack
from emotion_model.clip_windows import (
    Clip,
    ClipAssembler,
    plan_targets,
    plan_window_starts,
)
from emotion_model.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NoDecodableFramesError,
    NoVideoStreamError,
    one_line,
)
from emotion_model.face_clips import FRAME_CROP, CropSpec, FaceClipAssembler, FaceTrackInfo

if TYPE_CHECKING:
    from emotion_model.faces import FaceDetector

log = logging.getLogger(__name__)

VideoSource = str | os.PathLike[str] | IO[bytes] | bytes
Interpolation = Literal["FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "POINT"]
ThreadType = Literal["AUTO", "FRAME", "SLICE", "NONE"]
FrameTap = Callable[[av.VideoFrame, float], None]
"""Called with each frame the reader shows (decoded, not converted) and its time in seconds
from the first frame, in order, before any clip takes it."""

# Demuxers that hold one picture, not a video: refused as "a still image".
_IMAGE_FORMATS = {"image2", "image2pipe", "mjpeg_2000", "apng"}
# Demuxers that draw any text file (.txt, .nfo, .asc...) as ANSI art: refused as "not a video".
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
# Corrupt packets skipped before a stream is given up as garbage (decoding stops, partial).
_MAX_BAD_PACKETS = 500
AUDIO_MAX_LAG_S = 10.0
"""With audio, a clip waits for the audio to reach its window's end until the video is this far
past it (a file whose audio stops early, or is interleaved far behind the video); then it goes
without audio. The audio kept is capped at a clip window + twice this."""


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
    crop: str = "frame"
    faces: list[FaceTrackInfo] = field(default_factory=list)
    """Face mode: the face tracks kept (at most ``max_faces``), by ``face_id``."""
    detect_frames: int = 0
    """Face mode: frames the face detector looked at."""
    detect_s: float = 0.0
    """Face mode: seconds spent in face detection (its conversions included)."""
    audio_codec: str | None = None
    """With ``audio``: the audio stream's decoder (None: no audio stream, or not asked)."""
    audio_sample_rate: int | None = None
    """With ``audio``: the audio stream's own sample rate (before resampling)."""
    audio_channels: int | None = None
    audio_clips_missing: int = 0
    """With ``audio``: clips given no audio (silence, ``audio_present=False``)."""
    audio_error: str | None = None
    """With ``audio``: one line on corrupt or failed audio (None when fine, or no audio)."""


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
        max_clips: stop after this many clip windows (None: all).
        crop: ``FRAME_CROP`` (the whole frame, resized) or a face ``CropSpec``: then each clip
            window gives one clip per face track (``Clip.face_id``), cut around the face.
        max_faces: face tracks kept per video, the largest and longest first (face mode).
        detector: a ``FaceDetector`` to reuse (face mode; default: one made for the reader).
        frame_tap: called with every frame shown (see `FrameTap`): the one decoding pass
            also feeds the caller (``emotion_model.annotate``); None costs nothing.
        audio: an `AudioSpec`: the first audio stream is decoded in the same pass and each
            clip gets its window's log-mel (``Clip.audio``, ``audio_present``,
            ``audio_reason``); None (the default) demuxes no audio: clips as without it.

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
        crop: CropSpec = FRAME_CROP,
        max_faces: int = 4,
        detector: FaceDetector | None = None,
        frame_tap: FrameTap | None = None,
        audio: AudioSpec | None = None,
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
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        self.crop = crop
        self.max_faces = max_faces
        self.detector = detector
        self.frame_tap = frame_tap
        self.audio = audio
        self.audio_track: AudioTrack | None = None
        """With ``audio``: the audio of the pass under way (or the last one)."""
        self._assembler: ClipAssembler | None = None
        self._audio_clips: AudioClips | None = None
        self._whole_pending = False  # a short video: its one clip comes at its end
        self._ended = False
        name = uri or (os.fspath(source) if isinstance(source, str | os.PathLike) else None)
        self.info = VideoInfo(uri=name or getattr(source, "name", None) or "<video>",
                              crop=crop.mode)

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

    # -- progress, for a caller that holds frames (frame_tap) -----------------------------
    @property
    def settled_until(self) -> float:
        """Every clip of every window that starts before this time (seconds from the first
        frame) has been yielded, and face boxes before it are final (`face_box`): -inf before
        the first frame, +inf once the video has ended."""
        assembler = self._assembler
        if self._ended:
            return math.inf
        if assembler is None or (self._whole_pending and assembler.emitted == 0):
            return -math.inf
        held = self._audio_clips  # clips waiting for their audio
        if held is not None:
            return min(assembler.settled_until, held.earliest_start)
        return assembler.settled_until

    def face_box(self, face_id: int, t: float) -> tuple[float, float, float, float] | None:
        """Face mode: face ``face_id``'s box at ``t`` (``(x, y, w, h)``, fractions of the
        upright frame): its track's smoothed path interpolated, the boxes its crops were cut
        around; None where the track has no box, or in frame mode. Final for ``t <
        settled_until``."""
        assembler = self._assembler
        if not isinstance(assembler, FaceClipAssembler):
            return None
        return assembler.face_box(face_id, t)

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

    def _audio_clips_for(
        self, container: av.container.InputContainer
    ) -> tuple[av.AudioStream | None, AudioClips | None]:
        """With ``audio``: the first audio stream to demux (None when there is none or it
        cannot be decoded) and the queue that gives the clips their audio."""
        spec = self.audio
        if spec is None:
            return None, None
        info = self.info
        if not container.streams.audio:
            return None, AudioClips(None, spec, no_track_reason="no audio stream")
        stream = container.streams.audio[0]
        try:
            ctx = stream.codec_context
            if ctx is None:
                raise ValueError("this FFmpeg has no decoder for it")
            info.audio_codec = ctx.name
            info.audio_sample_rate = ctx.sample_rate or None
            info.audio_channels = ctx.channels or None
        except Exception as exc:  # no decoder for it in this FFmpeg
            info.audio_error = f"cannot decode the audio stream: {one_line(exc, 200)}"
            return None, AudioClips(None, spec, no_track_reason=info.audio_error)
        track = AudioTrack(spec, max_buffer_s=self.clip_seconds + 2 * AUDIO_MAX_LAG_S)
        self.audio_track = track
        return stream, AudioClips(track, spec, max_lag_s=AUDIO_MAX_LAG_S)

    def _make_assembler(self, starts: list[float], open_ended: bool) -> ClipAssembler:
        """Whole frames, or (``crop`` in face mode) one clip per face track."""
        kwargs: dict[str, Any] = dict(
            open_ended=open_ended, clip_seconds=self.clip_seconds,
            stride_seconds=self.stride_seconds, num_frames=self.num_frames,
            img_size=self.img_size, interpolation=self.interpolation, max_clips=self.max_clips,
        )
        if self.crop.mode == "face":
            return FaceClipAssembler(starts, crop=self.crop, max_faces=self.max_faces,
                                     detector=self.detector, info=self.info, **kwargs)
        return ClipAssembler(starts, **kwargs)

    def _decode(self, container: av.container.InputContainer) -> Iterator[Clip]:
        """Decode front to back, timing each frame from the first; yield each clip once its
        window is full, then, at the end, the windows the last frame completes."""
        info = self.info
        stream = self._video_stream(container)
        audio_stream, audio = self._audio_clips_for(container)
        track = audio.track if audio is not None else None
        self._audio_clips = audio

        def out(clips: Iterator[Clip], now: float) -> Iterator[Clip]:
            """The clips made, through the audio queue when there is one."""
            return clips if audio is None else audio.hold(clips, now)

        meta_duration = _metadata_duration(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        nominal_dt = 1.0 / float(rate) if rate else None
        # A video shorter than one clip (by its metadata) is one clip over its real length,
        # known at its end: keep its frames (references, converted only when sampled), and
        # open no window unless the data turns out to last a whole clip after all. Unknown
        # length: windows open as frames come, and the first clip_seconds are kept too.
        short = meta_duration is not None and meta_duration < self.clip_seconds + 1e-3
        keep = meta_duration is None or short
        kept = _KeptFrames()
        starts = [] if short else plan_window_starts(
            meta_duration, self.clip_seconds, self.stride_seconds)
        assembler = self._make_assembler(starts, open_ended=meta_duration is None)
        self._assembler, self._whole_pending, self._ended = assembler, short, False
        bad = _BadData()
        t0: float | None = None
        prev_t: float | None = None  # time of the frame on screen, from the first frame
        diffs: list[float] = []
        error: str | None = None
        packets = (container.demux(stream) if audio_stream is None
                   else container.demux(stream, audio_stream))
        try:
            for frame_index, frame in enumerate(_good_frames(packets, bad, track)):
                t = frame.time
                if t is None:
                    t = frame_index * (nominal_dt or 1 / 30)
                if t0 is None:
                    t0 = t
                    if track is not None:
                        track.origin = t0
                rel = t - t0
                if prev_t is not None:
                    if rel <= prev_t:
                        continue  # a duplicate or out-of-order timestamp: keep the first frame
                    diffs.append(rel - prev_t)
                    yield from out(assembler.advance(rel), rel)
                    if short and assembler.emitted == 0 and rel >= self.clip_seconds:
                        # longer than its metadata said: the first clip_seconds are one clip
                        yield from out(assembler.whole_video(kept.frames, self.clip_seconds),
                                       rel)
                        keep = False
                        kept.clear()
                    if assembler.done:
                        break
                prev_t = rel
                if self.frame_tap is not None:
                    self.frame_tap(frame, rel)
                yield from out(assembler.show(frame, rel), rel)
                info.frames_decoded += 1
                if keep and rel < self.clip_seconds:
                    kept.add(rel, frame)
                if audio is not None:
                    yield from audio.ready(rel)
                    if track is not None:
                        track.discard_before(self.settled_until)
        except av.error.FFmpegError as exc:
            error = one_line(exc, 300)
        except (MemoryError, OSError) as exc:
            error = one_line(exc, 300)
        if track is not None:
            if error is None and assembler.done and audio is not None and audio.held:
                _drain_audio(packets, track, audio.due_until)  # stopped at max_clips
            track.end()

        if prev_t is None:
            if error is not None:
                raise CorruptVideoError(info.uri, f"no frame could be decoded ({error})")
            raise NoDecodableFramesError(info.uri, "the video stream holds no decodable frame")

        frame_dt = float(np.median(diffs)) if diffs else (nominal_dt or 0.0)
        end = prev_t + frame_dt
        info.duration_s = float(end)
        if not assembler.done:
            yield from out(assembler.finish(end, frame_dt, cut=error is not None), end)
            if assembler.emitted == 0:
                yield from out(assembler.whole_video(kept.frames, end), end)
        kept.clear()
        yield from out(assembler.flush(end), end)
        if audio is not None:
            yield from audio.ready(math.inf)
            info.audio_clips_missing = audio.missing
            if track is not None:
                info.audio_error = track.error()
                track.discard_before(math.inf)
            if info.audio_error:
                log.info("%s: audio: %s", info.uri, info.audio_error)
        self._ended = True
        info.clips = assembler.emitted
        self._note_partial(end, meta_duration, max(len(starts), int(short)), error, bad)

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



class _KeptFrames:
    """The frames of a short video, by time, kept as decoded (nothing converted) until the
    video's length is known. Past ``budget`` bytes every other one is dropped (and then every
    other one of those arriving), so a short 4K video cannot hold gigabytes."""

    def __init__(self, budget: int = 256 * 1024 * 1024) -> None:
        self.frames: list[tuple[float, Any]] = []
        self.budget = budget
        self.step = 1  # keep one frame in `step`
        self._seen = 0
        self._bytes = 0

    def add(self, t: float, frame: av.VideoFrame) -> None:
        """Keep ``frame`` shown at ``t`` (unless thinned out)."""
        self._seen += 1
        if (self._seen - 1) % self.step:
            return
        self.frames.append((t, frame))
        self._bytes += sum(p.buffer_size for p in frame.planes)
        if self._bytes > self.budget and len(self.frames) > 2:
            self.frames = self.frames[::2]
            self._bytes //= 2
            self.step *= 2

    def clear(self) -> None:
        """Drop every kept frame."""
        self.frames = []
        self._bytes = 0


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
    packets: Iterable[av.Packet], bad: _BadData, audio: AudioTrack | None = None
) -> Iterator[av.VideoFrame]:
    """Every good frame of the video stream's ``packets``; a packet the decoder refuses, or a
    frame it flags corrupt, is counted in ``bad`` and skipped, not the end (so the frame before
    stays on screen). More than ``_MAX_BAD_PACKETS`` refused packets re-raise the decoder's
    error. With ``audio``, the audio stream's packets among them go to its decoder."""
    for packet in packets:  # ends with an empty packet per stream: the flush
        if audio is not None and packet.stream.type == "audio":
            audio.decode(packet)  # never raises: bad audio is noted there
            continue
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


def _drain_audio(packets: Iterable[av.Packet], track: AudioTrack, until: float) -> None:
    """Read on, decoding only the audio, until ``track`` reaches video-clock ``until`` (the
    video stopped early, at ``max_clips``, with clips waiting for their audio)."""
    try:
        for packet in packets:
            if packet.stream.type == "audio":
                track.decode(packet)
                if track.reached >= until:
                    return
    except (av.error.FFmpegError, MemoryError, OSError):
        return


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


__all__ = [
    "FRAME_CROP",
    "AudioSpec",
    "Clip",
    "ClipReader",
    "CropSpec",
    "FrameTap",
    "VideoInfo",
    "VideoSource",
    "plan_targets",
    "plan_window_starts",
    "read_clips",
]
