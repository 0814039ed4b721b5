"""Synthetic voices for the sample data: a take's sound track, whose prosody follows the
emotion (pitch level and contour, loudness, speaking rate, voice quality), in a voice of the
actor's own (``make-sample-data``'s audio).

**It is not speech**: it has no words, phonemes or language. It is syllable-like voiced
segments (a glottal pulse train through vowel-like resonances, with a noise burst as a
consonant-like onset) separated by short gaps and pauses. It exists so an audio-visual model
can be trained and tested end to end on a CPU; what a model learns from it says nothing about
real voices.

What follows the emotion, in line with the studies of vocal emotion (Banse & Scherer 1996;
Juslin & Laukka 2003), relative to the actor's neutral voice::

    angry    high F0, wide range, falling accents, loud, fast, tense (sharper glottal pulses:
             more high-frequency energy), jitter
    happy    high F0, widest range, rising contours, moderately loud, fast, lips spread
             (formants raised)
    fearful  highest F0, narrow range with a fast irregular tremor, jitter, fast, breathy
    sad      low F0, narrow falling contour, quiet, slow with long pauses, lax and breathy
    disgust  low-mid F0, slow, falling, creaky (period doubling, lower F0 at syllable ends),
             low energy
    neutral  mid F0, flat gently declining contour, normal loudness and rate

Per actor (``actor_seed``): the base F0 (a low voice around 95-135 Hz or a high one around
175-235 Hz), the formant scale (vocal-tract length), breathiness, pulse tension, speaking rate
and level. Per take (``take_seed``, the emotion): the syllable timing, vowels, accents, pauses
and noise, and the strength of the emotion, so no two takes are the same.

numpy only. Samples are float32 mono in -1..1. Cost: about 2-3 ms per second of sound at
16 kHz (2-core CPU).
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

import numpy as np

from emotion_model.labels import EMOTION_LABELS

__all__ = ["SAMPLE_RATE", "render_voice"]

SAMPLE_RATE = 16_000
"""The sample data's audio rate (the audio branch's ``AudioSpec.sample_rate``)."""


@dataclass(frozen=True)
class _Prosody:
    """How an emotion is voiced, relative to the actor's own voice."""

    pitch: float = 0.0  # semitones above the actor's base F0
    pitch_range: float = 1.0  # semitones: s.d. of the syllables' accents
    glide: float = -0.4  # semitones over one syllable: rising (+) or falling (-)
    declination: float = -2.0  # semitones from a phrase's first syllable to its last
    tremor: float = 0.05  # semitones of a slow irregular wobble (4-9 Hz)
    jitter: float = 0.006  # cycle-to-cycle F0 perturbation, fraction (shimmer is 3x this)
    loudness: float = 0.0  # dB
    rate: float = 4.2  # syllables per second
    pause: float = 0.12  # chance of a pause after a syllable
    tension: float = 0.0  # octaves narrower (+: more high-frequency energy) glottal pulses
    breath: float = 0.0  # aspiration noise, added to the voice's own
    creak: float = 0.0  # 0..1: vocal fry towards syllable ends
    smile: float = 0.0  # formants raised by this fraction

    def blend(self, other: _Prosody, amount: float) -> _Prosody:
        """`self` moved `amount` of the way to `other`."""
        return _Prosody(*(a + amount * (b - a) for a, b in zip(astuple(self), astuple(other),
                                                                 strict=True)))


_PROSODY: dict[str, _Prosody] = {
    "neutral": _Prosody(),
    "angry": _Prosody(pitch=5.0, pitch_range=3.5, glide=-1.2, declination=-3.0, tremor=0.1,
                      jitter=0.02, loudness=9.0, rate=5.6, pause=0.06, tension=1.2),
    "happy": _Prosody(pitch=4.5, pitch_range=4.0, glide=2.5, declination=1.5, tremor=0.1,
                      jitter=0.008, loudness=4.5, rate=5.2, pause=0.08, tension=0.5,
                      breath=0.03, smile=0.05),
    "fearful": _Prosody(pitch=6.0, pitch_range=1.0, glide=0.5, declination=0.0, tremor=0.9,
                        jitter=0.025, loudness=1.0, rate=6.0, pause=0.15, tension=0.2,
                        breath=0.3),
    "sad": _Prosody(pitch=-2.5, pitch_range=0.6, glide=-1.5, declination=-3.0, tremor=0.15,
                    jitter=0.012, loudness=-8.0, rate=3.0, pause=0.3, tension=-0.8,
                    breath=0.3, creak=0.15),
    "disgust": _Prosody(pitch=-1.5, pitch_range=1.5, glide=-2.5, declination=-3.0, tremor=0.1,
                        jitter=0.03, loudness=-3.0, rate=3.3, pause=0.25, tension=-0.3,
                        breath=0.08, creak=0.6),
}

# (F1, F2, F3) in Hz of five vowels (adult male, Peterson & Barney); F4 is 3500 Hz
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                    [530, 1840, 2480], [570, 840, 2410]], np.float64)
_BANDWIDTHS = np.array([70.0, 100.0, 150.0, 220.0])
_LEVEL = 0.04  # RMS of a neutral syllable at 0 dB (-28 dBFS)
_PULSE_WIDTH_S = 0.22e-3  # s.d. of a neutral glottal pulse
_CONSONANT = 0.15  # onset noise burst, relative to the vowel's RMS
_NOISE_FLOOR = 2e-4
_TAIL = 400  # samples of resonance ringing kept after a syllable (25 ms at 16 kHz)


@dataclass(frozen=True)
class _Voice:
    """What stays the same in one synthetic actor's voice across takes."""

    f0: float  # Hz, the neutral base pitch
    formants: float  # formant frequencies x this (shorter vocal tract: higher)
    breath: float  # aspiration noise
    tension: float  # octaves, added to the emotion's
    rate: float  # speaking rate x this
    level: float  # dB


def _voice(actor_seed: int) -> _Voice:
    rng = np.random.default_rng(np.random.SeedSequence([actor_seed, 0x7015E]))
    high = rng.random() < 0.5
    return _Voice(
        f0=rng.uniform(175, 235) if high else rng.uniform(95, 135),
        formants=rng.uniform(1.1, 1.2) if high else rng.uniform(0.95, 1.05),
        breath=rng.uniform(0.02, 0.1),
        tension=rng.uniform(-0.25, 0.25),
        rate=rng.uniform(0.9, 1.1),
        level=rng.uniform(-2.0, 2.0),
    )


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@dataclass(frozen=True)
class _Syllable:
    start: int  # sample
    length: int  # samples, onset included
    pitch: float  # semitones above the actor's base F0, at the syllable's middle
    level: float  # dB


def _schedule(p: _Prosody, voice: _Voice, n: int, sample_rate: int,
              rng: np.random.Generator) -> list[_Syllable]:
    """When each syllable starts and how long it lasts, its pitch and level: syllables at the
    speaking rate, pauses between phrases, each phrase declining (or rising) over its length."""
    rate = p.rate * voice.rate * rng.uniform(0.93, 1.07)
    seconds = n / sample_rate
    slots: list[tuple[float, float, int]] = []
    t, phrase = rng.uniform(0.03, 0.2) * min(1.0, seconds), 0  # short clips start sooner
    while t < seconds - min(0.06, seconds / 4):
        period = rng.lognormal(0.0, 0.18) / rate
        slots.append((t, min(period * rng.uniform(0.6, 0.8), seconds - t), phrase))
        t += period
        if rng.random() < p.pause:
            t += rng.uniform(0.15, 0.4)
            phrase += 1
    sizes = np.bincount([s[2] for s in slots], minlength=phrase + 1)
    out, index = [], 0
    for i, (start, length, ph) in enumerate(slots):
        index = 0 if i == 0 or slots[i - 1][2] != ph else index + 1
        position = index / (sizes[ph] - 1) - 0.5 if sizes[ph] > 1 else 0.0
        out.append(_Syllable(
            start=round(start * sample_rate), length=max(1, round(length * sample_rate)),
            pitch=p.pitch + p.declination * position + rng.normal(0.0, p.pitch_range),
            level=p.loudness + voice.level + rng.normal(0.0, 1.5)))
    return out


def _formant_gain(freqs: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Magnitude response of resonators in cascade (1 at DC), at `freqs` Hz."""
    gain = np.ones_like(freqs)
    for f, b in zip(formants, _BANDWIDTHS, strict=True):
        gain *= f * f / np.sqrt((f * f - freqs * freqs) ** 2 + (b * freqs) ** 2)
    return gain


def _vowel(s: _Syllable, p: _Prosody, voice: _Voice, length: int, sample_rate: int,
           tremor: tuple[float, float, float, float], rng: np.random.Generator) -> np.ndarray:
    """One voiced segment of `length` samples (+ `_TAIL` of ringing), unit RMS before its
    level: a glottal pulse train at the syllable's F0 contour, aspiration noise, through the
    resonances of a random vowel."""
    u = np.arange(length) / length
    t = (s.start + np.arange(length)) / sample_rate
    f1, f2, ph1, ph2 = tremor
    wobble = p.tremor * (np.sin(2 * np.pi * f1 * t + ph1) + 0.6 * np.sin(2 * np.pi * f2 * t + ph2))
    creaky = p.creak * np.clip((u - 0.6) / 0.4, 0.0, 1.0)  # the syllable's last 40 %
    semitones = s.pitch + p.glide * (u - 0.5) + wobble / 1.6
    f0 = voice.f0 * 2.0 ** (semitones / 12) * (1 - 0.35 * creaky)
    mean_f0 = float(f0.mean())
    cycles = int(length / sample_rate * mean_f0) + 3
    jitter = rng.normal(0.0, 1.0, cycles)[(np.arange(length) * (mean_f0 / sample_rate))
                                          .astype(int)]  # one value per (mean) cycle
    f0 = f0 * (1 + (p.jitter + 0.05 * creaky) * jitter)
    phase = np.cumsum(f0 / sample_rate) + rng.random()
    cycle = phase.astype(int)
    width = _PULSE_WIDTH_S * 2.0 ** -(p.tension + voice.tension)
    k = (1 / (2 * np.pi * mean_f0 * width)) ** 2
    pulse = np.exp(k * (np.cos(2 * np.pi * (phase - cycle)) - 1))
    source = np.diff(pulse, prepend=pulse[0])  # glottal flow derivative: the pulse's slope
    shimmer = 1 + 3 * p.jitter * rng.normal(0.0, 1.0, cycle[-1] - cycle[0] + 1)
    source *= shimmer[cycle - cycle[0]] * (1 - 0.7 * creaky * (cycle % 2))
    source /= np.sqrt(np.mean(source * source)) + 1e-12
    breath = max(voice.breath + p.breath, 0.0)
    source += 2.0 * breath * rng.standard_normal(length) * (0.4 + 0.6 * pulse)

    attack = min(0.3 * length, rng.uniform(0.015, 0.035) * sample_rate)
    release = min(0.4 * length, rng.uniform(0.03, 0.07) * sample_rate)
    idx = np.arange(length)
    envelope = _smoothstep(idx / attack) * _smoothstep((length - idx) / release)
    segment = source * envelope

    size = 1 << (length + _TAIL - 1).bit_length()
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    formants = np.append(_VOWELS[rng.integers(len(_VOWELS))], 3500.0)
    formants = formants * voice.formants * (1 + p.smile) * rng.uniform(0.97, 1.03, 4)
    out = np.fft.irfft(np.fft.rfft(segment, size) * _formant_gain(freqs, formants), size)
    out = out[:length + _TAIL]
    return out / (np.sqrt(np.mean(out[:length] ** 2)) + 1e-12)


def render_voice(
    emotion: str,
    *,
    actor_seed: int,
    seconds: float,
    take_seed: int = 0,
    intensity: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Synthesise `seconds` of a voice acting `emotion` (not speech: see the module's
    docstring), float32 mono `[round(seconds * sample_rate)]` in -1..1.

    `actor_seed` fixes the voice (base F0, formants, breathiness, tension, rate, level); the
    take (`take_seed` and the emotion) varies syllable timing, vowels, accents and pauses.
    `intensity` scales how far the prosody moves from the actor's neutral (1.0 = full, as
    `render_face_clip` scales the face). Silence, a low noise floor, surrounds the syllables.
    """
    if emotion not in _PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; allowed: {list(EMOTION_LABELS)}")
    if seconds <= 0 or sample_rate < 8000:
        raise ValueError(f"need seconds > 0 and sample_rate >= 8000; got {seconds}, "
                         f"{sample_rate}")
    voice = _voice(actor_seed)
    rng = np.random.default_rng(
        np.random.SeedSequence([actor_seed, take_seed, EMOTION_LABELS.index(emotion), 0x5EC4])
    )
    p = _PROSODY["neutral"].blend(_PROSODY[emotion], intensity * rng.uniform(0.9, 1.1))
    n = max(1, round(seconds * sample_rate))
    out = rng.standard_normal(n) * _NOISE_FLOOR
    tremor = (rng.uniform(4, 6), rng.uniform(6, 9), rng.uniform(0, 2 * math.pi),
              rng.uniform(0, 2 * math.pi))
    for s in _schedule(p, voice, n, sample_rate, rng):
        onset = 0
        if rng.random() < 0.7 and s.length > 0.1 * sample_rate:
            onset = int(rng.uniform(0.025, 0.06) * sample_rate)
        length = s.length - onset
        gain = _LEVEL * 10 ** (s.level / 20)
        voiced = _vowel(s, p, voice, length, sample_rate, tremor, rng) * gain
        if onset:  # a consonant-like burst of high-passed noise
            burst = np.diff(rng.standard_normal(onset + 1)) * np.sin(
                np.pi * np.arange(onset) / onset) ** 2
            voiced = np.concatenate([burst * (_CONSONANT * gain / math.sqrt(2)), voiced])
        end = min(n, s.start + len(voiced))
        out[s.start:end] += voiced[:end - s.start]
    peak = float(np.abs(out).max())
    if peak > 0.97:
        out *= 0.97 / peak
    return out.astype(np.float32)
