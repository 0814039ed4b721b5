"""emotion_model.sample_voice and the sample data's sound: prosody measured from the samples
(and from the AAC decoded back) follows the emotion; voices differ per actor; takes differ;
ambiguous faces leave only the voice to tell emotions apart."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from video_fixtures import decode_frames

from emotion_model.labels import EMOTION_LABELS, parse_ravdess
from emotion_model.sample_data import make_sample_dataset
from emotion_model.sample_voice import SAMPLE_RATE, render_voice

TAKES = 4
SECONDS = 2.0


def median_f0(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Median F0 (Hz) of the voiced 40 ms frames: the autocorrelation's highest peak between
    60 and 500 Hz, divided by the window's own autocorrelation (Boersma 1993); a frame is
    voiced when it is within 20 dB of the loudest and its peak is at least 0.5."""
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    window = np.hanning(frame)
    size = 1 << (2 * frame - 1).bit_length()
    window_ac = np.fft.irfft(np.abs(np.fft.rfft(window, size)) ** 2)[:frame]
    starts = range(0, len(samples) - frame, hop)
    levels = np.array([np.sqrt(np.mean(samples[s:s + frame] ** 2)) for s in starts])
    lo, hi = rate // 500, rate // 60
    f0s = []
    for s, level in zip(starts, levels, strict=True):
        if level < levels.max() * 0.1:
            continue
        x = samples[s:s + frame] * window
        ac = np.fft.irfft(np.abs(np.fft.rfft(x - x.mean(), size)) ** 2)[:frame]
        ac = ac / ac[0] / (window_ac / window_ac[0])
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] >= 0.5:
            f0s.append(rate / lag)
    return float(np.median(f0s)) if f0s else float("nan")


def syllable_rate(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Onsets per second of sounding time: the 10 ms RMS envelope (dB) rising through 12 dB
    below its loudest after it was 20 dB below; sounding time from the first onset to the end
    of the last frame above the -20 dB mark."""
    hop = rate // 100
    frames = samples[:len(samples) // hop * hop].reshape(-1, hop)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    high, low = db.max() - 12, db.max() - 20
    onsets, armed = [], True
    for i, v in enumerate(db):
        if armed and v > high:
            onsets.append(i)
            armed = False
        elif v < low:
            armed = True
    sounding = np.flatnonzero(db > low)
    span = (sounding[-1] + 1 - onsets[0]) * hop / rate
    return len(onsets) / span


def rms_db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(samples.astype(np.float64) ** 2)))


def high_band_db(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Median over the loud 40 ms frames of the energy at 2-5 kHz over that at 80-1000 Hz
    (dB): how bright (tense) the voice is."""
    frame = int(0.04 * rate)
    freqs = np.fft.rfftfreq(frame, 1 / rate)
    low, high = (freqs >= 80) & (freqs < 1000), (freqs >= 2000) & (freqs < 5000)
    starts = range(0, len(samples) - frame, frame // 4)
    power = np.array([np.abs(np.fft.rfft(samples[s:s + frame] * np.hanning(frame))) ** 2
                      for s in starts])
    loud = power.sum(axis=1) > 0.05 * power.sum(axis=1).max()
    return float(np.median(10 * np.log10(power[loud][:, high].sum(1)
                                         / power[loud][:, low].sum(1))))


def prosody(emotion: str, actor_seed: int) -> dict[str, float]:
    """Median F0, RMS (dB), syllable rate and high band over `TAKES` takes."""
    takes = [render_voice(emotion, actor_seed=actor_seed, seconds=SECONDS, take_seed=k)
             for k in range(TAKES)]
    measures = {"f0": median_f0, "rms_db": rms_db, "rate": syllable_rate,
                "high_band_db": high_band_db}
    return {name: float(np.median([f(x) for x in takes])) for name, f in measures.items()}


@pytest.fixture(scope="module")
def measured() -> dict[int, dict[str, dict[str, float]]]:
    """Actor seed -> emotion -> measured prosody (a low and a high voice)."""
    return {actor: {e: prosody(e, actor) for e in EMOTION_LABELS} for actor in (1, 3)}


def test_render_voice_shape_range_and_determinism() -> None:
    x = render_voice("happy", actor_seed=1, seconds=1.5, take_seed=2)
    assert x.shape == (24_000,)
    assert x.dtype == np.float32
    assert np.abs(x).max() <= 0.97
    np.testing.assert_array_equal(x, render_voice("happy", actor_seed=1, seconds=1.5,
                                                  take_seed=2))
    with pytest.raises(ValueError, match="unknown emotion 'calm'"):
        render_voice("calm", actor_seed=0, seconds=1.0)


def test_prosody_follows_the_emotion(measured: dict[int, dict[str, dict[str, float]]]) -> None:
    for actor, m in measured.items():
        f0 = {e: m[e]["f0"] for e in EMOTION_LABELS}
        for high in ("angry", "happy", "fearful"):
            assert f0[high] > f0["neutral"] * 1.15, (actor, f0)
        assert f0["neutral"] > f0["sad"] * 1.07, (actor, f0)
        assert m["angry"]["rms_db"] > m["neutral"]["rms_db"] + 4 > m["sad"]["rms_db"] + 8, \
            (actor, m)
        assert m["angry"]["rate"] > 1.4 * m["sad"]["rate"], (actor, m)
        assert m["disgust"]["rate"] < m["neutral"]["rate"], (actor, m)
        # tense voices: sharper glottal pulses, more energy high up
        assert m["angry"]["high_band_db"] > m["neutral"]["high_band_db"] + 6, (actor, m)


def test_voices_differ_per_actor(measured: dict[int, dict[str, dict[str, float]]]) -> None:
    low, high = sorted(measured, key=lambda a: measured[a]["neutral"]["f0"])
    for emotion in EMOTION_LABELS:
        assert measured[high][emotion]["f0"] > 1.3 * measured[low][emotion]["f0"], emotion


def test_takes_emotions_and_actors_differ() -> None:
    base = render_voice("neutral", actor_seed=1, seconds=1.0)
    others = [render_voice("neutral", actor_seed=1, seconds=1.0, take_seed=1),
              render_voice("sad", actor_seed=1, seconds=1.0),
              render_voice("neutral", actor_seed=2, seconds=1.0)]
    for other in others:
        assert np.abs(other - base).mean() > 0.2 * np.abs(base).mean()


def _decode_audio(path: Path) -> tuple[np.ndarray, int, float]:
    """The first audio stream's samples (mono float), its rate, and the video's duration."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video_s = float(video.duration * video.time_base)
        chunks, rate = [], container.streams.audio[0].rate
        for frame in container.decode(audio=0):
            chunks.append(frame.to_ndarray().reshape(-1))
    return np.concatenate(chunks), rate, video_s


def test_sample_dataset_with_audio(tmp_path: Path) -> None:
    emotions = ("angry", "neutral", "sad")
    paths = make_sample_dataset(tmp_path, actors=1, layout="ravdess", emotions=emotions,
                                takes_per_emotion=2, seconds=1.2, fps=10, size=(48, 48),
                                audio=True)
    by_label: dict[str, list[np.ndarray]] = {}
    for path in paths:
        assert path.name.startswith("01-01-")  # RAVDESS modality 01: audio-video
        samples, rate, video_s = _decode_audio(path)
        assert rate == SAMPLE_RATE
        assert abs(len(samples) / rate - video_s) <= 0.1, path
        assert abs(video_s - 1.2) < 1e-6
        by_label.setdefault(parse_ravdess(path).label, []).append(samples)  # type: ignore[union-attr]
    # the prosody survives AAC
    loud = {e: np.mean([rms_db(x) for x in xs]) for e, xs in by_label.items()}
    assert loud["angry"] > loud["neutral"] > loud["sad"]
    assert median_f0(by_label["angry"][0]) > median_f0(by_label["sad"][0])


def test_no_audio_has_no_audio_stream(tmp_path: Path) -> None:
    paths = make_sample_dataset(tmp_path, actors=1, layout="crema-d", emotions=("happy",),
                                seconds=0.4, fps=10, size=(32, 32), audio=False)
    with av.open(str(paths[0])) as container:
        assert not container.streams.audio
        assert container.streams.video


def test_ambiguous_faces_leave_only_the_voice(tmp_path: Path) -> None:
    paths = make_sample_dataset(tmp_path, actors=1, layout="ravdess",
                                emotions=("angry", "happy", "neutral"), takes_per_emotion=2,
                                seconds=0.6, fps=10, size=(48, 48), audio=True,
                                ambiguous=("angry",))
    files = {(parse_ravdess(p).label, p.stem.split("-")[5]): p for p in paths}  # type: ignore[union-attr]
    for rep in ("01", "02"):
        angry, neutral = decode_frames(files["angry", rep])[0], \
            decode_frames(files["neutral", rep])[0]
        happy = decode_frames(files["happy", rep])[0]
        assert np.array_equal(np.stack(angry), np.stack(neutral))
        assert not np.array_equal(np.stack(happy), np.stack(neutral))
        a, n = _decode_audio(files["angry", rep])[0], _decode_audio(files["neutral", rep])[0]
        assert rms_db(a) > rms_db(n) + 4


def test_ambiguous_needs_audio_and_known_emotions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ambiguous faces need the audio track"):
        make_sample_dataset(tmp_path, actors=1, layout="ravdess", audio=False,
                            ambiguous=("angry",))
    with pytest.raises(ValueError, match="unknown emotions"):
        make_sample_dataset(tmp_path, actors=1, layout="ravdess", audio=True,
                            ambiguous=("calm",))
