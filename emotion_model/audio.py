"""The audio branch's input: a clip window's sound as a log-mel spectrogram of fixed size.

``AudioSpec`` is the audio preprocessing a model was trained with (recorded in its deployment
file's metadata as ``audio``); the reader gives each clip the log-mel of its own time window::

    audio packets, demuxed with the video's in the one pass (emotion_model.video.ClipReader)
        -> AudioTrack: decoded, resampled to ``sample_rate`` (16 kHz) mono float32
           (av.AudioResampler), kept with their times (seconds on the VIDEO's clock: audio pts
           minus the first video frame's time); samples older than the earliest clip window
           still waiting are dropped
        -> AudioClips: each clip waits until the audio has reached its window's end, then
           gets `log_mel` of the window's samples (``[n_mels, frames]`` float32), or, without
           usable audio there, the log-mel of silence and ``audio_present=False`` with a reason

The log-mel: ``torch.stft`` (periodic Hann window of ``win_length``, zero-padded to ``n_fft``,
centred frames every ``hop_length``), the power spectrum through a Slaney-style mel filterbank
(librosa's default: Slaney's mel scale, linear below 1 kHz and logarithmic above, each
triangle scaled to unit area), natural log with a floor of `LOG_FLOOR`. A window longer than
``spec.seconds`` is cut to its centre; a shorter one is padded at its end with the log of
silence (``log(LOG_FLOOR)``), so frame ``k`` is at the window's start + ``k * hop``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import av
import numpy as np

from emotion_model.clip_windows import Clip
from emotion_model.errors import one_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUDIO_CODE_VERSION",
    "LOG_FLOOR",
    "MIN_COVERAGE",
    "AudioClips",
    "AudioSpec",
    "AudioTrack",
    "AudioWindow",
    "log_mel",
    "mel_filterbank",
    "silent_log_mel",
]

AUDIO_CODE_VERSION = 1
"""Bumped whenever the decoding, resampling, timing or log-mel here changes what a clip's
``audio`` holds for the same spec (part of a clip cache's key, with ``AudioSpec.to_metadata``)."""
LOG_FLOOR = 1e-10
"""Mel power below this is taken as this before the log: ``log(LOG_FLOOR)`` (-23.03) is
silence, below the quantisation noise of 16-bit audio."""
MIN_COVERAGE = 0.5
"""A window has audio when decoded sound covers at least this fraction of it (the rest is
silence) and no corrupt audio fell in it."""
RESYNC_S = 0.02
"""An audio frame whose time is further than this from where the samples before it end starts
a new run of samples at its own time (a gap is left unfilled, an overlap is cut)."""
MAX_BAD_PACKETS = 500
"""Corrupt audio packets skipped before the audio is given up (the video goes on)."""


@dataclass(frozen=True)
class AudioSpec:
    """16 kHz mono, 64 mel bands from 25 ms windows every 10 ms, the log taken; each clip's
    log-mel padded (with silence) or cut (centred) to ``seconds``: ``[n_mels, frames]``."""

    sample_rate: int = 16_000
    n_mels: int = 64
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    f_min: float = 50.0
    f_max: float = 8_000.0
    seconds: float = 4.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_mels < 1 or self.hop_length < 1 or self.seconds <= 0:
            raise ValueError(f"invalid audio spec {self}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {self}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")

    @property
    def frames(self) -> int:
        """Log-mel frames per clip: ``seconds`` at one frame per hop."""
        return int(round(self.seconds * self.sample_rate / self.hop_length))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_mels, frames)``: one clip's log-mel."""
        return self.n_mels, self.frames

    def to_metadata(self) -> dict[str, Any]:
        """Plain dict for a deployment file's metadata (``audio``)."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> AudioSpec | None:
        """The spec a deployment file records, or None (a video-only model). Unknown keys are
        refused, so a file from a newer version does not load silently wrong."""
        if not metadata:
            return None
        known = {f.name for f in fields(cls)}
        unknown = set(metadata) - known
        if unknown:
            raise ValueError(f"unknown audio settings {sorted(unknown)}")
        return cls(**dict(metadata))


# --- the log-mel ---------------------------------------------------------------------------------
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step,
                    hz * 3.0 / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filterbank(spec: AudioSpec) -> np.ndarray:
    """Slaney-style mel filterbank, float32 ``[n_mels, n_fft // 2 + 1]``: ``n_mels`` triangles
    evenly spaced on Slaney's mel scale from ``f_min`` to ``f_max``, each scaled to unit area
    (``2 / width in Hz``), as librosa's default and torchaudio's ``norm="slaney",
    mel_scale="slaney"``."""
    return _filterbank(spec).copy()


@functools.lru_cache(maxsize=8)
def _filterbank(spec: AudioSpec) -> np.ndarray:
    freqs = np.linspace(0.0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(spec.f_min), _hz_to_mel(spec.f_max),
                                   spec.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _stft_constants(spec: AudioSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hann window and the filterbank as tensors (made once per spec)."""
    import torch

    window = torch.hann_window(spec.win_length, periodic=True, dtype=torch.float32)
    return window, torch.from_numpy(_filterbank(spec).copy())


def silent_log_mel(spec: AudioSpec) -> np.ndarray:
    """The log-mel of silence: float32 ``spec.shape`` filled with ``log(LOG_FLOOR)``."""
    return np.full(spec.shape, math.log(LOG_FLOOR), np.float32)


def log_mel(waveform: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """``waveform`` (float32 ``[samples]`` at ``spec.sample_rate``, full scale +-1) as a log-mel
    spectrogram, float32 ``[n_mels, spec.frames]`` (see the module's docstring)."""
    import torch

    samples = np.ascontiguousarray(np.asarray(waveform, np.float32).reshape(-1))
    out = silent_log_mel(spec)
    if not samples.size:
        return out
    window, bank = _stft_constants(spec)
    with torch.no_grad():
        stft = torch.stft(torch.from_numpy(samples), n_fft=spec.n_fft,
                          hop_length=spec.hop_length, win_length=spec.win_length,
                          window=window, center=True, pad_mode="constant",
                          return_complex=True)
        mel = bank @ (stft.real.square() + stft.imag.square())
        logged = torch.log(torch.clamp(mel, min=LOG_FLOOR)).numpy()
    have = logged.shape[1]
    if have >= spec.frames:
        first = (have - spec.frames) // 2
        out[:] = logged[:, first:first + spec.frames]
    else:
        out[:, :have] = logged
    return out


# --- the audio of one video, as it is decoded --------------------------------------------------
class AudioWindow(NamedTuple):
    """One clip window's audio: its log-mel (silence when absent), whether it has audio, and
    why not."""

    log_mel: np.ndarray
    present: bool
    reason: str | None


class AudioTrack:
    """One audio stream's sound, resampled to ``spec.sample_rate`` mono float32 as its frames
    are decoded, kept in runs of samples on a grid of the audio's own clock.

    ``origin`` (set by the reader: the first video frame's time in the container) turns it to
    the video's clock: every time this class takes or gives is in seconds from the first video
    frame, so an audio stream that starts before or after the video is honoured. Memory: the
    samples after the time `discard_before` was last given (the earliest clip window still
    waiting); at most ``max_buffer_s`` seconds: past that the oldest are dropped, and the
    windows that wanted them are reported without audio.
    """

    def __init__(self, spec: AudioSpec, *, max_buffer_s: float = 60.0) -> None:
        self.spec = spec
        self.rate = spec.sample_rate
        self.max_buffer = max(1, int(max_buffer_s * self.rate))
        self.origin: float | None = None
        """The first video frame's time on the audio's clock (seconds)."""
        self.ended = False
        self.failure: str | None = None
        """Why the audio was given up part way (None: it was not)."""
        self.samples_in = 0
        """Samples decoded (per channel, at the stream's own rate)."""
        self.samples_out = 0
        """Samples resampled (at ``spec.sample_rate``)."""
        self.peak_samples = 0
        """The most resampled samples held at once."""
        self.bad_packets = 0
        self.bad_frames = 0
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (grid index, samples), sorted
        self._held = 0
        self._first: int | None = None  # grid index of the first sample stored
        self._end: int | None = None  # grid index just past the last sample stored
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None
        self._write_at = 0  # grid index of the resampler's next output sample
        self._run_t = 0.0  # time of the current run's first input sample
        self._run_in = 0  # input samples in the current run
        self._run_rate = 1
        self._bad: list[tuple[float, float]] = []  # audio clock, not yet discarded
        self._bad_span: tuple[float, float] | None = None
        self._error = ""
        self._lost_until: int | None = None  # grid index: dropped (buffer cap) before this
        self._lost = 0

    # -- taking the stream ---------------------------------------------------------------------
    def decode(self, packet: av.Packet) -> None:
        """Decode one of the stream's packets (the empty one at the end flushes) and take its
        frames. Never raises: a packet the decoder refuses is skipped (its time marked
        corrupt); any other failure gives the audio up (`failure`)."""
        if self.ended:
            return
        try:
            frames = packet.decode()
        except (av.error.EOFError, av.error.ExitError):
            return
        except av.error.FFmpegError as exc:
            self._bad_packet(packet, exc)
            return
        except Exception as exc:
            self.fail(f"cannot decode the audio: {one_line(exc, 200)}")
            return
        for frame in frames:
            self.push(frame)

    def push(self, frame: av.AudioFrame) -> None:
        """Take one decoded frame: resample it and keep its samples at its time (a frame that
        does not follow on from the one before starts a new run)."""
        if self.ended or not frame.samples or not frame.sample_rate:
            return
        rate = frame.sample_rate
        expected = self._run_t + self._run_in / self._run_rate if self._resampler else None
        t = frame.time if frame.time is not None else (expected or 0.0)
        if frame.is_corrupt:  # concealed damage: its time stays unfilled
            self.bad_frames += 1
            self._mark_bad(t, t + frame.samples / rate, "a frame the decoder flags corrupt")
            self._flush()
            return
        key = (frame.format.name, frame.layout.name, rate)
        if expected is None or key != self._key or abs(t - expected) > RESYNC_S:
            self._flush()
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            self._key, self._run_t, self._run_in, self._run_rate = key, t, 0, rate
            self._write_at = round(t * self.rate)
        self._run_in += frame.samples
        self.samples_in += frame.samples
        try:
            out = self._resampler.resample(frame)  # type: ignore[union-attr]
        except (ValueError, av.error.FFmpegError) as exc:
            self.bad_frames += 1
            self._mark_bad(t, t + frame.samples / rate, one_line(exc, 200))
            self._resampler = None
            return
        for piece in out:
            self._store(piece)

    def end(self) -> None:
        """The stream ended (or the reader stopped reading it): the resampler's tail is kept
        and every window is answered from what there is."""
        if not self.ended:
            self._flush()
            self.ended = True

    def fail(self, reason: str) -> None:
        """Give the audio up: nothing more is taken; later windows say ``reason``."""
        if not self.ended:
            self.failure = reason
            self.end()

    # -- where it stands ---------------------------------------------------------------------
    @property
    def reached(self) -> float:
        """Video-clock seconds up to which samples are in (+inf once ended, -inf before any
        sample or before ``origin`` is known)."""
        if self.ended:
            return math.inf
        if self._end is None or self.origin is None:
            return -math.inf
        return self._end / self.rate - self.origin

    @property
    def held_samples(self) -> int:
        """Resampled samples held now."""
        return self._held

    def discard_before(self, t: float) -> None:
        """No window will start before video-clock ``t``: drop the samples before it."""
        if self.origin is None or t == -math.inf:
            return
        if t == math.inf:
            self._chunks.clear()
            self._held, self._bad = 0, []
            return
        index = math.floor((t + self.origin) * self.rate)
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= index:
            self._held -= len(self._chunks.popleft()[1])
        audio_t = t + self.origin
        self._bad = [b for b in self._bad if b[1] > audio_t]

    def window(self, start_s: float, end_s: float) -> AudioWindow:
        """The log-mel of video-clock ``[start_s, end_s)``, or silence with the reason there is
        no usable audio there (corrupt, absent, or under `MIN_COVERAGE` of it)."""
        origin = self.origin or 0.0
        a = round((start_s + origin) * self.rate)
        b = max(a + 1, round((end_s + origin) * self.rate))
        waveform = np.zeros(b - a, np.float32)
        covered = 0
        for at, data in self._chunks:
            lo, hi = max(a, at), min(b, at + len(data))
            if lo < hi:
                waveform[lo - a:hi - a] = data[lo - at:hi - at]
                covered += hi - lo
        reason = self._missing(a, b, covered)
        if reason is not None:
            return AudioWindow(silent_log_mel(self.spec), False, reason)
        return AudioWindow(log_mel(waveform, self.spec), True, None)

    def error(self) -> str | None:
        """One line on what went wrong with the audio (None: nothing)."""
        parts = []
        if self.bad_packets or self.bad_frames:
            counts = " and ".join(f"{n} corrupt audio {what}" for n, what in
                                  ((self.bad_packets, "packets"), (self.bad_frames, "frames"))
                                  if n)
            where = ""
            if self._bad_span is not None:
                first, last = (s - (self.origin or 0.0) for s in self._bad_span)
                where = f" between {first:.2f}s and {last:.2f}s"
            parts.append(f"{counts} skipped{where} ({self._error})")
        if self.failure:
            parts.append(self.failure)
        if self._lost:
            parts.append(f"{self._lost / self.rate:.1f}s of audio dropped: the stream ran "
                         f"more than {self.max_buffer / self.rate:.0f}s ahead of the video")
        return "; ".join(parts) or None

    # -- inside ----------------------------------------------------------------------------------
    def _missing(self, a: int, b: int, covered: int) -> str | None:
        """Why grid ``[a, b)`` has no usable audio (None: it has)."""
        origin = self.origin or 0.0
        start, end = a / self.rate, b / self.rate
        bad = [s for s, e in self._bad if s < end and e > start]
        if bad:
            return f"corrupt audio at {min(bad) - origin:.2f}s ({self._error})"
        if self._lost_until is not None and a < self._lost_until:
            return (f"audio dropped: the stream ran more than "
                    f"{self.max_buffer / self.rate:.0f}s ahead of the video")
        if covered >= MIN_COVERAGE * (b - a):
            return None
        if self._first is None or self._end is None:
            return self.failure or "the audio stream holds no decodable sound"
        first, last = self._first / self.rate - origin, self._end / self.rate - origin
        if self.failure and b > self._end:
            return f"audio given up at {last:.2f}s: {self.failure}"
        if b <= self._first:
            return f"the audio starts at {first:.2f}s"
        if not self.ended and b > self._end:
            return (f"no audio past {last:.2f}s when the clip was due (the audio stream "
                    f"stops there or lags far behind the video)")
        if a >= self._end:
            return f"the audio ends at {last:.2f}s"
        return f"decoded audio covers {covered / (b - a):.0%} of the window"

    def _bad_packet(self, packet: av.Packet, exc: BaseException) -> None:
        self.bad_packets += 1
        tb = packet.time_base
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is not None and tb is not None:
            start = float(pts * tb)
            length = float(packet.duration * tb) if packet.duration else 0.0
        else:
            start = self._run_t + self._run_in / self._run_rate if self._resampler else 0.0
            length = 0.0
        self._mark_bad(start, start + max(length, 1.0 / self.rate), one_line(exc, 200))
        if self.bad_packets > MAX_BAD_PACKETS:
            self.fail(f"{self.bad_packets} corrupt audio packets ({self._error})")

    def _mark_bad(self, start: float, end: float, error: str) -> None:
        self._bad.append((start, end))
        self._error = self._error or error
        span = self._bad_span
        self._bad_span = (start, end) if span is None else (min(span[0], start),
                                                             max(span[1], end))

    def _flush(self) -> None:
        """End the current run: the resampler's last samples are kept."""
        if self._resampler is not None:
            try:
                out = self._resampler.resample(None)
            except (ValueError, av.error.FFmpegError):
                out = []
            for piece in out:
                self._store(piece)
        self._resampler = None

    def _store(self, frame: av.AudioFrame) -> None:
        data = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        at = self._write_at
        self._write_at += len(data)
        self.samples_out += len(data)
        if self._end is not None and at < self._end:  # overlaps what is kept: cut
            data, at = data[self._end - at:], self._end
        if not len(data):
            return
        if self._first is None:
            self._first = at
        self._chunks.append((at, data))
        self._held += len(data)
        self._end = at + len(data)
        while self._held > self.max_buffer and len(self._chunks) > 1:
            at, data = self._chunks.popleft()
            self._held -= len(data)
            self._lost += len(data)
            self._lost_until = at + len(data)
        self.peak_samples = max(self.peak_samples, self._held)


class AudioClips:
    """A video's clips on their way out of the reader: each waits until ``track`` has reached
    its window's end (or ended), or until the video is ``max_lag_s`` past it (then it goes
    without audio), and leaves with its window's audio. Clips leave in the order they came;
    several clips of one window (one per face) share one log-mel array. Without a track (no
    audio stream) nothing waits: every clip gets silence and ``no_track_reason``."""

    def __init__(self, track: AudioTrack | None, spec: AudioSpec, *, max_lag_s: float = 10.0,
                 no_track_reason: str = "no audio stream") -> None:
        self.track = track
        self.spec = spec
        self.max_lag_s = max_lag_s
        self.no_track_reason = no_track_reason
        self.held: deque[Clip] = deque()
        self.peak_held = 0
        self.missing = 0
        """Clips given no audio."""
        self._last: tuple[tuple[int, float, float], AudioWindow] | None = None

    @property
    def earliest_start(self) -> float:
        """The earliest window start among the clips held (+inf: none held)."""
        return min((c.start_s for c in self.held), default=math.inf)

    @property
    def due_until(self) -> float:
        """The latest window end among the clips held (-inf: none held)."""
        return max((c.end_s for c in self.held), default=-math.inf)

    def hold(self, clips: Iterable[Clip], now: float) -> Iterator[Clip]:
        """Take ``clips`` (made when the video reached ``now``) and give back those due."""
        for clip in clips:
            self.held.append(clip)
            self.peak_held = max(self.peak_held, len(self.held))
            yield from self.ready(now)

    def ready(self, now: float) -> Iterator[Clip]:
        """The clips due now (the video at ``now``), with their audio, in order."""
        while self.held and self._due(self.held[0], now):
            yield self._with_audio(self.held.popleft())

    def _due(self, clip: Clip, now: float) -> bool:
        track = self.track
        return (track is None or track.reached >= clip.end_s - 1e-9
                or now > clip.end_s + self.max_lag_s)

    def _with_audio(self, clip: Clip) -> Clip:
        key = (clip.index, clip.start_s, clip.end_s)
        if self._last is not None and self._last[0] == key:
            window = self._last[1]
        elif self.track is None:
            window = AudioWindow(silent_log_mel(self.spec), False, self.no_track_reason)
        else:
            window = self.track.window(clip.start_s, clip.end_s)
        self._last = (key, window)
        if not window.present:
            self.missing += 1
        return dataclasses.replace(clip, audio=window.log_mel, audio_present=window.present,
                                   audio_reason=window.reason)
