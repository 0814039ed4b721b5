"""audio.py and ClipReader's audio: the real CREMA-D clips (MP3 in FLV), and files written here
with PyAV (PCM, AAC; no audio, silence, corrupt packets, 8 and 48 kHz, stereo, truncated, an
audio stream that starts before or after the video, one that stops early, a long one)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from video_fixtures import CREMA_D_CLIPS, make_test_pattern, tone, write_av

from emotion_model.audio import (
    LOG_FLOOR,
    AudioSpec,
    AudioTrack,
    _hz_to_mel,
    _mel_to_hz,
    log_mel,
    mel_filterbank,
    silent_log_mel,
)
from emotion_model.clip_windows import Clip
from emotion_model.face_clips import CropSpec
from emotion_model.video import AUDIO_MAX_LAG_S, ClipReader, read_clips
from emotion_model.video_writer import encode_video

SPEC = AudioSpec()
SILENCE = math.log(LOG_FLOOR)
RATE = SPEC.sample_rate


def band_freq(band: int, spec: AudioSpec = SPEC) -> float:
    """The frequency (Hz) of the FFT bin at the top of mel band ``band``'s triangle."""
    return float(np.argmax(mel_filterbank(spec)[band]) * spec.sample_rate / spec.n_fft)


def loudest_band(log_mel: np.ndarray | None) -> int:
    assert log_mel is not None
    return int(np.argmax(log_mel.mean(axis=1)))


def pattern(seconds: float, fps: int = 10, size: int = 32) -> np.ndarray:
    return make_test_pattern(round(seconds * fps), size, size)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


# --- the log-mel ---------------------------------------------------------------------------------
def test_the_filterbank_is_slaney_style_and_a_tone_lands_in_its_band() -> None:
    bank = mel_filterbank(SPEC)
    assert bank.shape == (64, SPEC.n_fft // 2 + 1) and bank.dtype == np.float32
    assert (bank >= 0).all() and (bank.max(axis=1) > 0).all()  # no empty band
    peaks = bank.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # ascending in frequency
    freqs = np.linspace(0, RATE / 2, bank.shape[1])
    # unit area (Slaney's norm) for the bands wide enough to be sampled well by the FFT bins
    areas = bank.sum(axis=1) * (freqs[1] - freqs[0])
    assert np.allclose(areas[20:], 1.0, atol=0.05), areas
    # Slaney's mel scale: 3 mels per 200 Hz below 1 kHz, 27 mels per factor 6.4 above
    np.testing.assert_allclose(_hz_to_mel(np.array([200.0, 1000.0, 6400.0])), [3, 15, 42])
    np.testing.assert_allclose(_mel_to_hz(_hz_to_mel(np.array([50.0, 700.0, 7000.0]))),
                               [50, 700, 7000])
    support = np.nonzero(bank.any(axis=0))[0]
    assert freqs[support[0]] > SPEC.f_min and freqs[support[-1]] < SPEC.f_max
    for band in (8, 20, 40):
        out = log_mel(tone(4.0, band_freq(band))[0], SPEC)
        assert out.shape == SPEC.shape and out.dtype == np.float32
        assert loudest_band(out) == band


def test_log_mel_pads_the_end_with_silence_and_cuts_the_centre() -> None:
    short = log_mel(tone(1.0, band_freq(8))[0], SPEC)
    assert (short[:, 102:] == SILENCE).all() and (short[8, :100] > SILENCE + 10).all()
    np.testing.assert_array_equal(log_mel(np.zeros(0, np.float32), SPEC), silent_log_mel(SPEC))
    np.testing.assert_array_equal(log_mel(np.zeros(RATE * 4, np.float32), SPEC),
                                  silent_log_mel(SPEC))
    click = np.zeros(RATE * 6, np.float32)  # 6 s: columns 100..499 kept, the click at 3 s
    click[3 * RATE:3 * RATE + 80] = 1.0
    out = log_mel(click, SPEC)
    assert abs(int(np.argmax(out.max(axis=0))) - 200) <= 1


# --- real clips ----------------------------------------------------------------------------------
def _audio_span(path: Path) -> float:
    """Seconds the audio stream's packets cover (first pts to last pts + duration)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        times = [(p.pts * p.time_base, p.duration * p.time_base)
                 for p in container.demux(stream) if p.pts is not None]
    return float(times[-1][0] + times[-1][1] - times[0][0])


@pytest.mark.parametrize("name", sorted(CREMA_D_CLIPS))
def test_real_crema_d_audio_at_16_khz(crema_d_dir: Path, name: str) -> None:
    reader = ClipReader(crema_d_dir / name, audio=SPEC)
    clips = list(reader)
    info, track = reader.info, reader.audio_track
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("mp3float",
                                                                               44100, 1)
    assert info.audio_error is None and info.audio_clips_missing == 0
    assert track is not None and track.origin == pytest.approx(0.027)  # the video starts later
    assert abs(track.samples_out - track.samples_in * 16000 / 44100) <= 2
    # every decoded sample is there, resampled: the packets' span at 16 kHz, to one MP3 frame
    assert abs(track.samples_out / 16000 - _audio_span(crema_d_dir / name)) < 1152 / 44100
    (clip,) = clips
    assert clip.audio is not None and clip.audio.shape == (64, 400)
    assert clip.audio.dtype == np.float32 and clip.audio_present and clip.audio_reason is None
    speech = clip.audio[:, :round(info.duration_s * 100)]
    assert speech.max() > SILENCE + 15 and (speech.mean(axis=0) > SILENCE + 5).mean() > 0.9
    assert (clip.audio[:, round(info.duration_s * 100) + 2:] == SILENCE).all()
    plain, _ = read_clips(crema_d_dir / name)
    np.testing.assert_array_equal(plain[0].frames, clip.frames)


# --- files without usable audio ------------------------------------------------------------------
def test_a_video_without_audio_gives_silence_and_says_so(folder: Path) -> None:
    path = encode_video(folder / "mute.mp4", pattern(6.0), fps=10, codec="mpeg4")
    clips, info = read_clips(path, audio=SPEC)
    assert len(clips) == 2
    for clip in clips:
        assert not clip.audio_present and clip.audio_reason == "no audio stream"
        np.testing.assert_array_equal(clip.audio, silent_log_mel(SPEC))
    assert info.audio_codec is None and info.audio_clips_missing == 2
    assert info.audio_error is None


def test_silence_is_audio(folder: Path) -> None:
    path = write_av(folder / "silent.mkv", pattern(8.0), audio=np.zeros((1, 8 * RATE)))
    clips, info = read_clips(path, audio=SPEC)
    assert len(clips) == 2 and info.audio_codec == "pcm_s16le"
    for clip in clips:
        assert clip.audio_present and clip.audio_reason is None
        np.testing.assert_array_equal(clip.audio, silent_log_mel(SPEC))
    assert info.audio_clips_missing == 0


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_corrupt_audio_packets_cost_only_their_clip(folder: Path, suffix: str) -> None:
    path = write_av(folder / f"garbled{suffix}", pattern(12.0), audio=tone(12.0, band_freq(20)),
                    audio_codec="aac", garble=lambda t: 5.0 <= t < 5.5)
    clips, info = read_clips(path, audio=SPEC)
    assert [c.index for c in clips] == [0, 1, 2]
    assert info.frames_decoded == 120 and not info.partial  # the video is whole
    assert [c.audio_present for c in clips] == [True, False, True]
    assert clips[1].audio_reason is not None and clips[1].audio_reason.startswith(
        "corrupt audio at 5.")
    np.testing.assert_array_equal(clips[1].audio, silent_log_mel(SPEC))
    assert loudest_band(clips[0].audio) == loudest_band(clips[2].audio) == 20
    assert info.audio_clips_missing == 1
    assert info.audio_error is not None and "corrupt audio packets skipped between 5." in \
        info.audio_error


def read_timed(path: Path) -> tuple[ClipReader, list[Clip], list[float]]:
    """Every clip of ``path`` with audio (4 frames of 16 px), and how far past each clip's end
    the video had been decoded when it came out (seconds)."""
    seen: list[float] = []
    reader = ClipReader(path, audio=SPEC, num_frames=4, img_size=16,
                        frame_tap=lambda frame, t: seen.append(t))
    clips, late = [], []
    for clip in reader:
        clips.append(clip)
        late.append(seen[-1] - clip.end_s)
    return reader, clips, late


def test_audio_that_stops_early_does_not_hold_the_clips(folder: Path) -> None:
    """Audio for the first 3 s of a 40 s video: clips past it go without audio as soon as the
    video is AUDIO_MAX_LAG_S past them (the audio might still come), not at the end."""
    path = write_av(folder / "stops.mkv", pattern(40.0, fps=5, size=16), fps=5,
                    audio=tone(3.0, 440.0))
    reader, clips, late = read_timed(path)
    assert [c.audio_present for c in clips] == [True] + [False] * 9
    assert max(late) <= AUDIO_MAX_LAG_S + 0.5
    assert reader.info.audio_clips_missing == 9


def test_a_truncated_file_keeps_its_clips_and_their_audio(folder: Path) -> None:
    whole = write_av(folder / "whole.mkv", pattern(12.0), audio=tone(12.0, 440.0),
                     audio_codec="aac")
    data = whole.read_bytes()
    cut = folder / "cut.mkv"
    cut.write_bytes(data[:int(len(data) * 0.75)])
    clips, info = read_clips(cut, audio=SPEC)
    assert info.partial and len(clips) == 2  # the third window is not all there
    for clip in clips:
        assert clip.audio_present and clip.audio is not None and clip.audio.shape == SPEC.shape


# --- resampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codec", "suffix", "rate", "channels", "band"),
    [("pcm_s16le", ".mkv", 8000, 1, 34), ("aac", ".mp4", 48000, 2, 20)],
)
def test_other_rates_and_stereo_become_16_khz_mono(
    folder: Path, codec: str, suffix: str, rate: int, channels: int, band: int
) -> None:
    """A sine at mel band ``band`` (1937.5 Hz at 8 kHz, 1 kHz at 48 kHz stereo)."""
    path = write_av(folder / f"rate{rate}{suffix}", pattern(4.0),
                    audio=tone(4.0, band_freq(band), rate=rate, channels=channels), rate=rate,
                    audio_codec=codec)
    reader = ClipReader(path, audio=SPEC)
    (clip,) = list(reader)
    info, track = reader.info, reader.audio_track
    assert (info.audio_sample_rate, info.audio_channels) == (rate, channels)
    assert track is not None
    assert abs(track.samples_out - track.samples_in * RATE / rate) <= 2
    assert clip.audio_present and clip.audio is not None
    assert loudest_band(clip.audio[:, 10:390]) == band


# --- timing: windows on the video's clock -------------------------------------------------------
@pytest.mark.parametrize(
    ("suffix", "codec", "video_start_s", "audio_start_s", "tolerance"),
    [
        (".mkv", "pcm_s16le", 0.0, 0.0, 1),
        (".mkv", "pcm_s16le", 1.0, 0.0, 1),  # the video starts 1 s into the audio
        (".mkv", "pcm_s16le", 0.0, 0.5, 1),  # the audio starts 0.5 s into the video
        (".mp4", "aac", 0.0, 0.5, 3),  # AAC's priming frame, an MP4 edit list
    ],
)
def test_a_tone_burst_lands_in_its_window_on_the_video_clock(
    folder: Path, suffix: str, codec: str, video_start_s: float, audio_start_s: float,
    tolerance: int,
) -> None:
    """A 0.3 s burst of 1 kHz at 5.0 s of the video: in clip 1 ([4, 8)) at column 100."""
    sound = np.zeros((1, 13 * RATE), np.float32)
    at = round((5.0 + video_start_s - audio_start_s) * RATE)
    sound[:, at:at + round(0.3 * RATE)] = tone(0.3, band_freq(20), amplitude=0.5)
    path = write_av(folder / f"burst{video_start_s}{audio_start_s}{suffix}", pattern(12.0),
                    audio=sound, audio_codec=codec, video_start_s=video_start_s,
                    audio_start_s=audio_start_s)
    clips, _ = read_clips(path, audio=SPEC)
    assert [c.index for c in clips] == [0, 1, 2] and all(c.audio_present for c in clips)
    band = clips[1].audio[20]
    loud = np.nonzero(band > (band.max() + SILENCE) / 2)[0]
    assert abs(loud[0] - 100) <= tolerance and abs(loud[-1] - 130) <= tolerance, loud
    for quiet in (clips[0], clips[2]):
        assert quiet.audio is not None and quiet.audio.max() < band.max() - 20


# --- the reader without audio, with max_clips, in face mode -------------------------------------
def test_no_audio_spec_changes_nothing(folder: Path) -> None:
    path = write_av(folder / "plain.mkv", pattern(9.0), audio=tone(9.0, 440.0))
    before, info = read_clips(path)
    with_audio, _ = read_clips(path, audio=SPEC)
    assert len(before) == len(with_audio) == 2
    for a, b in zip(before, with_audio, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        assert (a.index, a.start_s, a.end_s) == (b.index, b.start_s, b.end_s)
        assert a.audio is None and not a.audio_present and a.audio_reason is None
        assert b.audio_present
    assert info.audio_codec is None and info.audio_clips_missing == 0


def test_max_clips_still_waits_for_the_audio(folder: Path) -> None:
    path = write_av(folder / "first.mkv", pattern(12.0), audio=tone(12.0, band_freq(8)))
    (clip,), _ = read_clips(path, audio=SPEC, max_clips=1)
    assert clip.audio_present and clip.audio is not None
    assert (clip.audio[8, 5:395] > SILENCE + 10).all()


def test_settled_until_counts_the_clips_waiting_for_audio(folder: Path) -> None:
    """Every clip of a window that starts before `settled_until` has been yielded (what
    annotate relies on), with clips held back for their audio."""
    path = write_av(folder / "settled.mkv", pattern(12.0), audio=tone(12.0, 440.0),
                    audio_start_s=0.8)  # the audio trails: clips wait for it
    yielded: list[Clip] = []
    marks: list[tuple[float, int]] = []
    reader = ClipReader(path, audio=SPEC, clip_seconds=2.0, stride_seconds=1.0,
                        frame_tap=lambda frame, t: marks.append((reader.settled_until,
                                                                 len(yielded))))
    for clip in reader:
        yielded.append(clip)
    assert reader.settled_until == math.inf
    assert any(math.isfinite(s) for s, _ in marks)
    for settled, count in marks:
        assert {c.index for c in yielded if c.start_s < settled} <= \
            {c.index for c in yielded[:count]}


def test_face_clips_of_one_window_share_its_audio(crema_d_dir: Path, folder: Path) -> None:
    """Two CREMA-D faces side by side, one window: two face clips, one log-mel."""
    halves = []
    for name in ("1001_DFA_ANG_XX.flv", "1001_DFA_HAP_XX.flv"):
        with av.open(str(crema_d_dir / name)) as container:
            halves.append([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    count = min(len(h) for h in halves)
    frames = np.stack([np.hstack([a, b]) for a, b in zip(halves[0][:count], halves[1][:count],
                                                          strict=True)])
    path = write_av(folder / "two.mkv", frames, fps=25, audio=tone(count / 25, 440.0))
    clips, info = read_clips(path, audio=SPEC, crop=CropSpec.face(), num_frames=8, img_size=32,
                             clip_seconds=2.0)
    assert len(info.faces) == 2 and len(clips) == 2
    assert {c.face_id for c in clips} == {0, 1} and clips[0].audio is clips[1].audio
    assert all(c.audio_present for c in clips) and info.audio_clips_missing == 0


# --- memory --------------------------------------------------------------------------------------
def test_a_long_file_holds_one_window_of_audio(folder: Path) -> None:
    """Two minutes: the samples kept never pass a window + the interleaving gap."""
    path = write_av(folder / "long.mkv", pattern(120.0, fps=5, size=16), fps=5,
                    audio=tone(120.0, 440.0))
    reader, clips, late = read_timed(path)
    track = reader.audio_track
    assert track is not None and len(clips) == 30 and all(c.audio_present for c in clips)
    assert track.samples_out >= 120 * RATE - 2 * 1024
    assert track.peak_samples <= (4.0 + 0.5) * RATE  # a window + about a video frame
    assert max(late) <= 0.5  # each clip leaves as soon as its audio is in
    assert track.held_samples == 0


def test_the_track_caps_audio_that_runs_far_ahead() -> None:
    """Audio decoded far ahead of any video: the oldest is dropped past the cap and the windows
    that wanted it say so."""
    track = AudioTrack(SPEC, max_buffer_s=2.0)
    for i in range(50):  # 3.2 s of 1024-sample frames
        frame = av.AudioFrame.from_ndarray(tone(1024 / RATE, 440.0)[:, :1024], format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, i * 1024, Fraction(1, RATE)
        track.push(frame)
    track.origin = 0.0
    assert track.peak_samples <= 2 * RATE
    early = track.window(0.0, 1.0)
    assert not early.present and early.reason is not None and "ahead" in early.reason
    late = track.window(2.0, 3.0)
    assert late.present and late.log_mel.shape == SPEC.shape
    track.end()
    assert track.error() is not None and "dropped" in str(track.error())
