"""Write uint8 RGB frames ``[T, H, W, 3]`` to a video file with PyAV: any codec and container
the bundled FFmpeg has, constant or variable frame rate. ``video.py`` reads what this writes;
the sample data (``sample_data.py``) and the tests encode their videos through it.

Encoder/container pairs that round-trip in the bundled PyAV build (PyAV 18, libavcodec 62;
frame count, size, order and timestamps checked; most pairs are in
`tests/emotion_model/test_video_writer.py`)::

    codec            containers                   odd sizes   VFR pts kept
    libx264 (h264)   .mp4 .mkv .mov .flv .avi     no (1)      yes, not in .avi (2)
    mpeg4            .mp4 .mkv .mov .avi          yes         yes
    libvpx (vp8)     .webm .mkv .avi              yes         yes
    libvpx-vp9 (vp9) .webm .mkv .mp4 .avi .flv    yes         yes
    flv (flv1)       .flv .avi                    yes         yes
    mjpeg            .avi .mkv .mov .mp4 (3)      yes         yes

All with `pix_fmt="yuv420p"` (the default). A codec/container pair outside this table
raises `ValueError` naming both when the muxer refuses it.
(1) libx264 and libx265 with chroma-subsampled formats need even width and height;
    `encode_video` raises `ValueError` before opening the file. Pass `pix_fmt="yuv444p"`
    (or use mpeg4/vp9) for odd sizes.
(2) AVI and FLV keep no separate presentation times, so B-frames would scramble or shift
    the decoded pts; `encode_video` turns B-frames off (`bf=0`) for libx264/libx265 in
    those containers unless `options` sets `bf`. Even so, FFmpeg's AVI demuxer reads
    H.264 with every pts one frame late (it assumes one frame of reorder delay) and loses
    VFR gaps; frames and their order are intact. A handy start-offset case for decoders.
(3) mjpeg encodes full range only; `yuv4xxp` is encoded as the matching `yuvj4xxp`.
The build also has libx265, libsvtav1, mpeg2video, ffv1 and png; `available_encoders()`
lists what this interpreter's PyAV can encode.

An audio track (`audio=AudioTrack(samples, rate)`) is written beside the video, encoded in
step with the frames (interleaved); unless its `codec` names one, the first encoder of the
container's list that the build has (`AUDIO_CODECS`: AAC for mp4, mov, mkv and flv, Opus
for webm, MP3 for avi). The audio encoder's delay (AAC primes 1024 samples: 64 ms at 16 kHz)
is trimmed on decoding in MP4, MOV and MKV (edit lists); FLV has none, so there the muxer
delays every timestamp, the video's too, by that much (sound and picture stay in sync); in
AVI the frames keep their times and the sound starts with the encoder's delay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["AUDIO_CODECS", "CONTAINER_FORMATS", "AudioTrack", "available_encoders", "encode_video"]

CONTAINER_FORMATS: dict[str, str] = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mkv": "matroska",
    ".avi": "avi",
    ".webm": "webm",
    ".flv": "flv",
    ".mov": "mov",
}
"""File suffix -> FFmpeg muxer name, used when `container_format` is not given."""

AUDIO_CODECS: dict[str, tuple[str, ...]] = {
    "mp4": ("aac", "libfdk_aac", "libmp3lame", "alac"),
    "mov": ("aac", "libfdk_aac", "alac", "pcm_s16le"),
    "matroska": ("aac", "libopus", "libvorbis", "flac", "pcm_s16le"),
    "webm": ("libopus", "libvorbis"),
    "avi": ("libmp3lame", "ac3", "pcm_s16le"),
    "flv": ("aac", "libmp3lame"),
}
"""FFmpeg muxer name -> the audio encoders tried in order when `AudioTrack.codec` is None."""

# Encoders that refuse odd dimensions with chroma-subsampled pixel formats.
_EVEN_SIZE_ENCODERS = frozenset({"libx264", "libx265"})
# Muxers without composition offsets: B-frames there break decoded timestamps.
_NO_REORDER_FORMATS = frozenset({"avi", "flv"})
_VFR_TIME_BASE = Fraction(1, 1000)  # ms, the precision of the mkv/webm/flv muxers
_MAX_TIME_BASE_DEN = 65535  # mpeg4 rejects larger time-base denominators


def available_encoders() -> frozenset[str]:
    """Names of the video encoders this PyAV build can open (`libx264`, `mpeg4`, ...)."""
    names = set()
    for name in av.codecs_available:
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:  # decoder-only names
            continue
        if codec.type == "video":
            names.add(codec.name)
    return frozenset(names)


def _chroma_subsampling(pix_fmt: str) -> tuple[int, int]:
    """Horizontal and vertical chroma subsampling factors of `pix_fmt` (1 for none)."""
    fmt = av.VideoFormat(pix_fmt, 4, 4)
    chroma = [c for c in fmt.components if c.is_chroma]
    if not chroma:
        return 1, 1
    return 4 // max(chroma[0].width, 1), 4 // max(chroma[0].height, 1)


def _as_rgb_frame(frame: object, path: Path, index: int) -> np.ndarray:
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{path}: frame {index} must be uint8 [H, W, 3] RGB; got dtype "
                         f"{array.dtype} shape {array.shape}")
    return np.ascontiguousarray(array)


def _video_frame(
    array: np.ndarray, index: int, time_base: Fraction, pts: list[int] | None, rate: Fraction
) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(array, format="rgb24")
    frame.pts = round(index / rate / time_base) if pts is None else pts[index]
    frame.time_base = time_base
    return frame


@dataclass(frozen=True)
class AudioTrack:
    """Sound to write beside the video: float `samples` in -1..1, `[n]` (mono) or
    `[channels, n]` (1 or 2 channels), at `rate` Hz, from time 0, written as given (make it as
    long as the video: `n = duration * rate`).

    `codec`: the audio encoder; default the first of `AUDIO_CODECS[container]` this build has
    (AAC in MP4). `bit_rate`: bits per second; default the encoder's own. `options`: encoder
    options, e.g. `{"aac_coder": "fast"}` (options an encoder lacks are ignored)."""

    samples: np.ndarray
    rate: int
    codec: str | None = None
    bit_rate: int | None = None
    options: Mapping[str, str] | None = None

    def checked(self, path: Path) -> np.ndarray:
        """The samples as float32 `[channels, n]`; `ValueError` naming `path` when unusable."""
        array = np.asarray(self.samples)
        if array.ndim == 1:
            array = array[None, :]
        if array.dtype.kind != "f" or array.ndim != 2 or array.shape[0] not in (1, 2) \
                or array.shape[1] == 0:
            raise ValueError(f"{path}: audio must be float samples [n] or [channels (1 or 2), "
                             f"n]; got dtype {array.dtype} shape {array.shape}")
        if self.rate <= 0:
            raise ValueError(f"{path}: audio rate must be positive, got {self.rate}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def encoder(self, path: Path, fmt: str) -> av.codec.Codec:
        """`codec`, or the first encoder of `AUDIO_CODECS[fmt]` that this build has."""
        names = (self.codec,) if self.codec else AUDIO_CODECS.get(fmt, ("aac",))
        for name in names:
            try:
                encoder = av.codec.Codec(name, "w")
            except Exception:  # not in this build
                continue
            if encoder.type == "audio":
                return encoder
        raise ValueError(f"{path}: no audio encoder among {list(names)} in this PyAV build")


class _AudioWriter:
    """The audio stream beside the video, encoded in step with the frames. A rate the encoder
    lacks is resampled (by PyAV's encoder) to the next one it has."""

    def __init__(self, container: av.container.OutputContainer, encoder: av.codec.Codec,
                 samples: np.ndarray, track: AudioTrack) -> None:
        self.samples, self.rate, self.cursor = samples, int(track.rate), 0
        rates = sorted(encoder.audio_rates or ())
        rate = self.rate
        if rates and rate not in rates:
            rate = next((r for r in rates if r >= rate), rates[-1])
        self.layout = "mono" if samples.shape[0] == 1 else "stereo"
        self.stream = container.add_stream(encoder.name, rate=rate,
                                           options=dict(track.options or {}))
        self.stream.layout = self.layout
        if track.bit_rate is not None:
            self.stream.bit_rate = int(track.bit_rate)

    def write_until(self, container: av.container.OutputContainer, seconds: float) -> None:
        """Encode the samples up to `seconds` (all of them for `math.inf`)."""
        total = self.samples.shape[1]
        end = total if math.isinf(seconds) else min(total, round(seconds * self.rate))
        if end <= self.cursor:
            return
        chunk = np.ascontiguousarray(self.samples[:, self.cursor:end])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
        frame.sample_rate, frame.pts = self.rate, self.cursor
        frame.time_base = Fraction(1, self.rate)
        container.mux(self.stream.encode(frame))
        self.cursor = end

    def finish(self, container: av.container.OutputContainer) -> None:
        """Encode the rest and flush the encoder."""
        self.write_until(container, math.inf)
        container.mux(self.stream.encode(None))


def encode_video(
    path: str | Path,
    frames: Iterable[np.ndarray] | np.ndarray,
    *,
    fps: float = 30,
    codec: str = "libx264",
    pix_fmt: str | None = "yuv420p",
    container_format: str | None = None,
    time_base: Fraction | float | None = None,
    pts_seconds: Sequence[float] | None = None,
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
    audio: AudioTrack | None = None,
) -> Path:
    """Encode uint8 RGB frames `[H, W, 3]` (or an array `[T, H, W, 3]`) to a video file.

    Args:
        path: output file; the container comes from its suffix (see `CONTAINER_FORMATS`)
            unless `container_format` names an FFmpeg muxer.
        frames: uint8 RGB frames in 0..255, all the same size; at least one.
        fps: nominal frame rate; frame i is shown at i / fps unless `pts_seconds` is given.
        codec: FFmpeg encoder name (`libx264`, `mpeg4`, `libvpx`, `libvpx-vp9`, `flv`,
            `mjpeg`, ...); aliases such as `h264`, `vp9` and `flv1` resolve to an encoder.
        pix_fmt: encoder pixel format; None picks `yuv420p` when the encoder has it, else its
            first format. A format the encoder lacks raises `ValueError`.
        time_base: encoder time base; default `1/fps` (constant rate) or 1/1000 s with
            `pts_seconds`.
        pts_seconds: explicit presentation time of each frame in seconds, strictly
            increasing; this writes variable-frame-rate video.
        bit_rate: target bits per second; default is the encoder's own (CRF for x264).
        options: encoder options, e.g. `{"preset": "veryfast", "crf": "20"}`.
        audio: a sound track written beside the video (interleaved with it); see
            `AudioTrack`.

    Returns:
        `Path(path)`, after the file is closed. Nothing is left behind on error.
    """
    path = Path(path)
    fmt = container_format or CONTAINER_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: cannot infer a container from suffix {path.suffix!r}; use one of "
            f"{sorted(CONTAINER_FORMATS)} or pass container_format"
        )
    if fps <= 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    try:
        encoder = av.codec.Codec(codec, "w")
    except Exception as exc:
        raise ValueError(
            f"{path}: encoder {codec!r} is not available in this PyAV build; "
            f"available: {sorted(available_encoders())}"
        ) from exc
    formats = [f.name for f in encoder.video_formats or ()]
    if pix_fmt is None:
        pix_fmt = "yuv420p" if "yuv420p" in formats or not formats else formats[0]
    elif formats and pix_fmt not in formats:
        raise ValueError(f"{path}: encoder {encoder.name!r} has no pix_fmt {pix_fmt!r}; "
                         f"allowed: {formats}")

    if encoder.name == "mjpeg" and pix_fmt.startswith("yuv") and f"yuvj{pix_fmt[3:]}" in formats:
        pix_fmt = f"yuvj{pix_fmt[3:]}"  # mjpeg encodes full range only

    it: Iterator[np.ndarray] = iter(frames)
    try:
        first = _as_rgb_frame(next(it), path, 0)
    except StopIteration:
        raise ValueError(f"{path}: no frames to encode") from None
    height, width = first.shape[:2]
    sub_w, sub_h = _chroma_subsampling(pix_fmt)
    if encoder.name in _EVEN_SIZE_ENCODERS and (width % sub_w or height % sub_h):
        raise ValueError(
            f"{path}: {encoder.name} with {pix_fmt} needs width divisible by {sub_w} and height "
            f"by {sub_h}; got {width}x{height} (use pix_fmt='yuv444p' or another codec)"
        )

    rate = Fraction(fps).limit_denominator(1001)
    if time_base is None:
        time_base = _VFR_TIME_BASE if pts_seconds is not None else 1 / rate
    time_base = Fraction(time_base).limit_denominator(1_000_000)
    if time_base.denominator > _MAX_TIME_BASE_DEN and encoder.name == "mpeg4":
        raise ValueError(f"{path}: mpeg4 needs a time base denominator <= 65535, "
                         f"got {time_base}")
    pts_list = None if pts_seconds is None else [round(t / time_base) for t in pts_seconds]
    if pts_list is not None and not pts_list:
        raise ValueError(f"{path}: pts_seconds is empty")
    if pts_list is not None and any(b <= a for a, b in zip(pts_list, pts_list[1:], strict=False)):
        raise ValueError(f"{path}: pts_seconds must be strictly increasing at time base "
                         f"{time_base}")

    sound = None if audio is None else audio.checked(path)
    audio_encoder = None if audio is None else audio.encoder(path, fmt)

    options = dict(options or {})
    if fmt in _NO_REORDER_FORMATS and encoder.name in _EVEN_SIZE_ENCODERS:
        options.setdefault("bf", "0")

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # AVI: shifting the streams past the audio encoder's negative start would drop the
        # video's second timestamp; AVI stores no timestamps to shift anyway
        shift = {"avoid_negative_ts": "disabled"} if fmt == "avi" and sound is not None else {}
        with av.open(str(path), mode="w", format=fmt, options=shift) as container:
            try:
                stream = container.add_stream(encoder.name, rate=rate, options=options)
                stream.width, stream.height = width, height
                stream.pix_fmt = pix_fmt
                stream.codec_context.time_base = time_base
                if bit_rate is not None:
                    stream.codec_context.bit_rate = int(bit_rate)
                track = None
                if audio is not None and sound is not None and audio_encoder is not None:
                    track = _AudioWriter(container, audio_encoder, sound, audio)
                # the first frame opens the encoder and writes the header
                container.mux(stream.encode(_video_frame(first, 0, time_base, pts_list, rate)))
            except (ValueError, av.error.FFmpegError) as exc:
                what = f"{encoder.name} {pix_fmt}" + (
                    "" if audio_encoder is None else f" and {audio_encoder.name} audio")
                raise ValueError(f"{path}: cannot write {what} into {fmt}: {exc}") from exc
            count = 1
            for array in it:
                array = _as_rgb_frame(array, path, count)
                if array.shape[:2] != (height, width):
                    raise ValueError(f"{path}: frame {count} is {array.shape[1]}x"
                                     f"{array.shape[0]}, expected {width}x{height}")
                if pts_list is not None and count >= len(pts_list):
                    raise ValueError(f"{path}: more frames than pts_seconds ({len(pts_list)})")
                if track is not None:  # the sound up to this frame, interleaved
                    shown = count / rate if pts_list is None else pts_list[count] * time_base
                    track.write_until(container, float(shown))
                container.mux(stream.encode(_video_frame(array, count, time_base, pts_list, rate)))
                count += 1
            if pts_list is not None and count != len(pts_list):
                raise ValueError(f"{path}: {count} frames but {len(pts_list)} pts_seconds")
            container.mux(stream.encode())
            if track is not None:
                track.finish(container)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
