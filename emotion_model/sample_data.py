"""Drawn-face sample data: videos of cartoon faces whose expression follows each emotion, named
as RAVDESS or CREMA-D name their files (``emotion-pipeline make-sample-data``), and the demo's
videos.

This is synthetic data to exercise the pipeline end to end on a CPU (decode, clip planning,
training, evaluation, batch inference). It is not a stand-in for real data: a model that
learns these drawn faces says nothing about its accuracy on real faces or real datasets.
With ``audio=True`` each video also has a sound track whose prosody follows the emotion
(``sample_voice.py``): synthetic prosody, not speech.

Everything here is numpy and PyAV only (no torch, no Prefect). Frames are uint8 RGB
``[T, H, W, 3]`` in 0..255 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np

from emotion_model.labels import EMOTION_LABELS
from emotion_model.sample_voice import SAMPLE_RATE, render_voice
from emotion_model.video_writer import AudioTrack, encode_video

__all__ = [
    "CREMA_D_SENTENCES",
    "EMOTION_CODES",
    "make_sample_dataset",
    "render_face_clip",
    "render_face_clip_with_boxes",
]


@dataclass(frozen=True)
class _Expression:
    """Face parameters, in units of the head's half-width (x) and half-height (y)."""

    eye_open: float = 0.085  # eye half-height
    brow_raise: float = 0.0  # brows up (+) or down (-)
    brow_inner: float = 0.0  # inner brow ends down (+, angry V) or up (-, sad)
    mouth_curve: float = 0.0  # corners up (+, smile) or down (-, frown)
    mouth_open: float = 0.0  # half-height of the dark opening at the middle
    mouth_width: float = 0.27  # half-width
    mouth_asym: float = 0.0  # right corner raised (disgust)
    lip: float = 0.04  # half-thickness of the lips
    teeth: float = 0.0  # upper teeth shown in the opening
    wrinkle: float = 0.0  # nose wrinkle lines
    blush: float = 0.0  # raised cheeks

    def blend(self, other: _Expression, amount: float) -> _Expression:
        """`self` moved `amount` of the way to `other` (extrapolates past 1)."""
        values = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = a + amount * (b - a)
        return _Expression(**values)


_NEUTRAL = _Expression()
_EXPRESSIONS: dict[str, _Expression] = {
    "neutral": _NEUTRAL,
    "happy": replace(_NEUTRAL, eye_open=0.06, brow_raise=0.02, mouth_curve=0.2,
                     mouth_open=0.1, mouth_width=0.38, teeth=1.0, blush=1.0),
    # sad and fearful are drawn milder than they once were (brows, frown; eyes, mouth,
    # brows): at full strength BlazeFace stopped seeing a face in 3-18 % of their frames
    "sad": replace(_NEUTRAL, eye_open=0.055, brow_raise=0.02, brow_inner=-0.09,
                   mouth_curve=-0.13, mouth_width=0.25, lip=0.045),
    "angry": replace(_NEUTRAL, eye_open=0.05, brow_raise=-0.09, brow_inner=0.14,
                     mouth_curve=-0.02, mouth_width=0.16, lip=0.03),
    "fearful": replace(_NEUTRAL, eye_open=0.11, brow_raise=0.1, brow_inner=-0.03,
                       mouth_curve=-0.03, mouth_open=0.08, mouth_width=0.17, lip=0.03),
    "disgust": replace(_NEUTRAL, eye_open=0.035, brow_raise=-0.04, brow_inner=0.03,
                       mouth_curve=-0.04, mouth_open=0.03, mouth_width=0.26,
                       mouth_asym=0.17, lip=0.045, wrinkle=1.0),
}


@dataclass(frozen=True)
class _Actor:
    """What stays the same for one synthetic actor across takes."""

    face_rx: float  # head half-width, fraction of min(H, W)
    aspect: float  # head half-height / half-width
    cx: float  # head centre, fraction of width
    cy: float  # head centre, fraction of height
    skin: np.ndarray  # RGB float
    hair: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    background: np.ndarray
    hairline: float  # in head units, negative is up
    eye_x: float
    eye_y: float
    mouth_y: float
    baseline: _Expression  # the actor's resting face
    expressiveness: float


def _actor(actor_seed: int) -> _Actor:
    rng = np.random.default_rng(np.random.SeedSequence([actor_seed, 0xFACE]))
    tone = rng.uniform(0.0, 1.0)
    skin = (1 - tone) * np.array([240, 200, 170]) + tone * np.array([110, 70, 45])
    skin = skin + rng.uniform(-12, 12, 3)
    hair = rng.choice([[30, 25, 20], [70, 45, 25], [120, 80, 40], [200, 170, 110],
                       [60, 60, 65], [140, 60, 30]]) + rng.uniform(-10, 10, 3)
    iris = rng.choice([[60, 40, 25], [50, 90, 140], [70, 100, 60], [30, 30, 30]])
    background = rng.uniform(60, 200, 3)
    baseline = replace(
        _NEUTRAL,
        eye_open=_NEUTRAL.eye_open + rng.uniform(-0.012, 0.012),
        brow_raise=rng.uniform(-0.025, 0.025),
        mouth_curve=rng.uniform(-0.02, 0.02),
        mouth_width=_NEUTRAL.mouth_width + rng.uniform(-0.03, 0.03),
        lip=_NEUTRAL.lip + rng.uniform(-0.005, 0.008),
    )
    return _Actor(
        face_rx=rng.uniform(0.29, 0.32),
        aspect=rng.uniform(1.18, 1.28),
        cx=0.5 + rng.uniform(-0.03, 0.03),
        cy=0.5 + rng.uniform(-0.02, 0.02),
        skin=np.clip(skin, 0, 255).astype(np.float32),
        hair=np.clip(hair, 0, 255).astype(np.float32),
        iris=np.asarray(iris, np.float32),
        shirt=rng.uniform(30, 220, 3).astype(np.float32),
        background=background.astype(np.float32),
        hairline=rng.uniform(-0.75, -0.6),
        eye_x=rng.uniform(0.33, 0.39),
        eye_y=rng.uniform(-0.14, -0.08),
        mouth_y=rng.uniform(0.42, 0.5),
        baseline=baseline,
        expressiveness=rng.uniform(0.9, 1.1),
    )


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _alpha(sd: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) -> anti-aliased coverage in 0..1."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Blend `color` into float `img` `[h, w, 3]` with coverage `alpha` `[h, w]`, in place."""
    a = alpha[..., None]
    img += a * (color - img)


def _background(actor: _Actor, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Static backdrop: a lit wall, a torso and a neck, float32 `[H, W, 3]`."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    scale = min(height, width)
    wall = 1.0 + 0.18 * (ys / height - 0.5) * rng.uniform(-1, 1)
    img = np.broadcast_to(actor.background * wall[..., None], (height, width, 3)).copy()
    rx = actor.face_rx * scale
    ry = rx * actor.aspect
    cx, cy = actor.cx * width, actor.cy * height
    neck = (np.abs(xs - cx) - 0.45 * rx) * np.ones_like(ys)
    neck = np.maximum(neck, cy - ys)
    _paint(img, _alpha(neck), actor.skin * 0.85)
    torso_top = cy + ry * 1.25
    torso = np.sqrt(((xs - cx) / (2.2 * rx)) ** 2 + ((ys - torso_top - rx * 1.6) / (1.6 * rx)) ** 2)
    _paint(img, _alpha((torso - 1) * rx), actor.shirt)
    return img


def render_face_clip(
    emotion: str,
    *,
    actor_seed: int,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    take_seed: int = 0,
    intensity: float = 1.0,
) -> np.ndarray:
    """Draw a cartoon face acting `emotion`, uint8 RGB `[T, H, W, 3]` in 0..255 (see
    `render_face_clip_with_boxes`, which also gives where the face is)."""
    frames, _ = render_face_clip_with_boxes(
        emotion, actor_seed=actor_seed, num_frames=num_frames, height=height, width=width,
        fps=fps, take_seed=take_seed, intensity=intensity)
    return frames


def render_face_clip_with_boxes(
    emotion: str,
    *,
    actor_seed: int,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    take_seed: int = 0,
    intensity: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a cartoon face acting `emotion`: uint8 RGB `[T, H, W, 3]` in 0..255, and the face's
    box in each frame, float `[T, 4]` (x, y, w, h as fractions of the frame: the bounding box
    of the head's oval, the renderer's own geometry: ground truth for face detection).

    The face starts neutral and reaches the full expression by about 30% of the clip
    (onset timing varies per take). What identifies the emotion:

        happy    strong upward mouth curve, open, teeth, raised cheeks
        sad      downward mouth curve, inner brow ends raised, eyes lowered
        angry    brows lowered into a V, narrow pressed mouth, narrowed eyes
        fearful  eyes wide open, brows raised high, tall oval open mouth
        disgust  lopsided mouth with one corner raised, nose wrinkles, squinted eyes
        neutral  flat relaxed mouth, level brows

    `actor_seed` fixes face size and position, skin, hair, eye and background colours and
    the actor's resting face; `take_seed` varies head motion (drift, bob, tilt), blinks,
    lighting and sensor noise, and the onset. `intensity` scales the expression (1.0 =
    full; RAVDESS "normal" takes use 0.8). `fps` only sets how fast motion is in seconds.
    """
    if emotion not in _EXPRESSIONS:
        raise ValueError(f"unknown emotion {emotion!r}; allowed: {list(EMOTION_LABELS)}")
    if num_frames < 1 or height < 8 or width < 8 or fps <= 0:
        raise ValueError(f"need num_frames >= 1, height and width >= 8, fps > 0; got "
                         f"{num_frames}, {height}, {width}, {fps}")
    actor = _actor(actor_seed)
    rng = np.random.default_rng(
        np.random.SeedSequence([actor_seed, take_seed, EMOTION_LABELS.index(emotion), 0xC1A9])
    )
    scale = min(height, width)
    rx = actor.face_rx * scale
    ry = rx * actor.aspect
    amount = intensity * actor.expressiveness * rng.uniform(0.9, 1.1)
    target = actor.baseline.blend(
        replace(_EXPRESSIONS[emotion], brow_raise=_EXPRESSIONS[emotion].brow_raise
                + actor.baseline.brow_raise),
        amount,
    )

    # --- per-frame schedules ---------------------------------------------------------------
    t_s = np.arange(num_frames, dtype=np.float64) / fps
    frac = np.arange(num_frames) / max(num_frames - 1, 1)
    start, full = rng.uniform(0.03, 0.1), rng.uniform(0.24, 0.32)
    onset = _smoothstep((frac - start) / (full - start))
    drift = rng.uniform(-0.015, 0.015, 2) * scale
    bob_amp, bob_hz, bob_phase = rng.uniform(0.004, 0.012) * scale, rng.uniform(0.3, 1.0), \
        rng.uniform(0, 2 * np.pi)
    tilt_amp, tilt_hz = np.deg2rad(rng.uniform(0, 3)), rng.uniform(0.1, 0.4)
    cx = actor.cx * width + drift[0] * frac
    bob = bob_amp * np.sin(2 * np.pi * bob_hz * t_s + bob_phase)
    cy = actor.cy * height + drift[1] * frac + bob
    angle = tilt_amp * np.sin(2 * np.pi * tilt_hz * t_s + rng.uniform(0, 2 * np.pi))
    blink = np.ones(num_frames)
    next_blink = rng.uniform(0.5, 3.0)
    while next_blink < t_s[-1] + 0.2:
        blink *= 1 - 0.9 * np.exp(-(((t_s - next_blink) / 0.06) ** 2))
        next_blink += rng.uniform(2.0, 4.5)
    flicker = 1 + rng.uniform(0, 0.025) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t_s) \
        + rng.normal(0, 0.004, num_frames)

    # --- static layers ---------------------------------------------------------------------
    bg = _background(actor, height, width, rng)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    light_dir = rng.uniform(-1, 1, 2)
    gain = (1 + 0.15 * (light_dir[0] * (xs / width - 0.5) + light_dir[1] * (ys / height - 0.5)))
    gain = gain.astype(np.float32)[..., None]
    pad = 8
    sigma = rng.uniform(1.5, 4.0)
    noise = rng.normal(0, sigma, (height + pad, width + pad, 3)).astype(np.float32)
    offsets = rng.integers(0, pad + 1, (num_frames, 2))

    out = np.empty((num_frames, height, width, 3), np.uint8)
    canvas = np.empty((height, width, 3), np.float32)
    colors = _Colors(
        skin=actor.skin, hair=actor.hair, iris=actor.iris, eyelid=actor.skin * 0.8,
        lip=actor.skin * np.array([0.7, 0.4, 0.4], np.float32), brow=actor.hair * 0.45,
        cheek=actor.skin * np.array([1.05, 0.75, 0.75], np.float32),
        nose=actor.skin * 0.7, wrinkle=actor.skin * 0.55,
    )
    for t in range(num_frames):
        expr = actor.baseline.blend(target, float(onset[t]))
        np.copyto(canvas, bg)
        head = _Head(canvas, cx=float(cx[t]), cy=float(cy[t]), angle=float(angle[t]),
                     rx=rx, ry=ry)
        _draw_face(head, actor=actor, expr=expr, blink=float(blink[t]), colors=colors)
        canvas *= gain
        canvas *= np.float32(flicker[t])
        oy, ox = offsets[t]
        canvas += noise[oy:oy + height, ox:ox + width]
        np.clip(canvas, 0, 255, out=canvas)
        out[t] = canvas
    boxes = np.stack([(cx - rx) / width, (cy - ry) / height,
                      np.full(num_frames, 2 * rx / width), np.full(num_frames, 2 * ry / height)],
                     axis=1)
    return out, boxes


@dataclass(frozen=True)
class _Colors:
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    eyelid: np.ndarray
    lip: np.ndarray
    brow: np.ndarray
    cheek: np.ndarray
    nose: np.ndarray
    wrinkle: np.ndarray


_WHITE = np.array([236, 236, 230], np.float32)
_TEETH = np.array([240, 238, 225], np.float32)
_MOUTH = np.array([70, 20, 30], np.float32)


class _Head:
    """Head coordinates on a canvas: (u, v) with the head as the unit circle, v down.

    `region(u0, u1, v0, v1)` returns the canvas view covering that box of head units (after
    rotation) and the float32 `u` `[h, w]` and `v` `[h, w]` of its pixels, so each feature is
    computed only where it can be.
    """

    def __init__(self, canvas: np.ndarray, *, cx: float, cy: float, angle: float,
                 rx: float, ry: float) -> None:
        self.canvas, self.cx, self.cy, self.rx, self.ry = canvas, cx, cy, rx, ry
        self.c, self.s = math.cos(angle), math.sin(angle)
        self.px = min(rx, ry)  # pixels per head unit, for anti-aliasing distances

    def region(
        self, u0: float, u1: float, v0: float, v1: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        height, width = self.canvas.shape[:2]
        corners_u = np.array([u0, u1, u0, u1]) * self.rx
        corners_v = np.array([v0, v0, v1, v1]) * self.ry
        dx = self.c * corners_u - self.s * corners_v
        dy = self.s * corners_u + self.c * corners_v
        x0 = max(0, int(math.floor(self.cx + dx.min())) - 2)
        x1 = min(width, int(math.ceil(self.cx + dx.max())) + 3)
        y0 = max(0, int(math.floor(self.cy + dy.min())) - 2)
        y1 = min(height, int(math.ceil(self.cy + dy.max())) + 3)
        if x1 <= x0 or y1 <= y0:
            return None
        gx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(self.cx)
        gy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(self.cy)
        c, s = np.float32(self.c), np.float32(self.s)
        u = (c * gx + s * gy) / np.float32(self.rx)
        v = (c * gy - s * gx) / np.float32(self.ry)
        return self.canvas[y0:y1, x0:x1], u, v


def _draw_face(
    head: _Head, *, actor: _Actor, expr: _Expression, blink: float, colors: _Colors
) -> None:
    """Paint hair, head and features onto `head.canvas` (float32 `[H, W, 3]`), in place."""
    rx, ry, px = head.rx, head.ry, head.px

    # hair behind the head, then the head below the hairline
    reg = head.region(-1.1, 1.1, -1.1, 1.1)
    if reg is not None:
        img, u, v = reg
        r = np.sqrt(u * u + v * v)
        _paint(img, _alpha((r - 1.07) * px), colors.hair)
        _paint(img, _alpha(np.maximum((r - 1) * px, (actor.hairline - v) * ry)), colors.skin)

    # cheeks
    if expr.blush > 0.02 and (reg := head.region(-0.63, 0.63, 0.1, 0.34)) is not None:
        img, u, v = reg
        cheek = np.sqrt(((np.abs(u) - 0.45) / 0.16) ** 2 + ((v - 0.22) / 0.1) ** 2)
        _paint(img, _alpha((cheek - 1) * 0.1 * ry) * (0.35 * min(expr.blush, 1.5)),
               colors.cheek)

    # eyes: white, iris clipped to the eye, eyelid crease above
    eye_h = max(expr.eye_open * blink, 0.008)
    ex, ey = actor.eye_x, actor.eye_y
    reg = head.region(-ex - 0.22, ex + 0.22, ey - eye_h - 0.06, ey + eye_h + 0.03)
    if reg is not None:
        img, u, v = reg
        au = np.abs(u)
        eu, ev = (au - ex) / 0.18, (v - ey) / eye_h
        eye_a = _alpha((np.sqrt(eu * eu + ev * ev) - 1) * eye_h * ry)
        _paint(img, eye_a, _WHITE)
        iris = np.sqrt((au - ex) ** 2 * (rx / ry) ** 2 + (v - ey) ** 2)
        _paint(img, np.minimum(eye_a, _alpha((iris - 0.07) * ry)), colors.iris)
        lid_v = ey - eye_h - 0.025
        lid = np.maximum((np.abs(au - ex) - 0.19) * rx, (np.abs(v - lid_v) - 0.012) * ry)
        _paint(img, _alpha(lid) * 0.6, colors.eyelid)

    # brows: a thick bar above each eye, tilted by brow_inner
    by = ey - 0.22 - expr.brow_raise
    reach = abs(expr.brow_inner) + 0.07
    if (reg := head.region(-ex - 0.25, ex + 0.25, by - reach, by + reach)) is not None:
        img, u, v = reg
        au = np.abs(u)
        brow_v = by + expr.brow_inner * (ex - au) / 0.2
        brow = np.maximum((np.abs(au - ex) - 0.22) * rx, (np.abs(v - brow_v) - 0.05) * ry)
        _paint(img, _alpha(brow), colors.brow)

    # nose shading and disgust wrinkles
    if (reg := head.region(-0.12, 0.12, -0.02, 0.27)) is not None:
        img, u, v = reg
        nose = np.sqrt((u / 0.09) ** 2 + ((v - 0.2) / 0.05) ** 2)
        _paint(img, _alpha((nose - 1) * 0.05 * ry) * 0.5, colors.nose)
        if expr.wrinkle > 0.02:
            for wv in (0.02, 0.08):
                line = np.maximum((np.abs(u) - 0.09) * rx, (np.abs(v - wv) - 0.012) * ry)
                _paint(img, _alpha(line) * (min(expr.wrinkle, 1.0) * 0.8), colors.wrinkle)

    # mouth: lips around a curved centre line, dark opening, teeth
    mw = max(expr.mouth_width, 0.05)
    my = actor.mouth_y
    extent = abs(expr.mouth_curve) + abs(expr.mouth_asym) + max(expr.mouth_open, 0) + expr.lip
    reg = head.region(-mw - 0.02, mw + 0.02, my - extent - 0.03, my + extent + 0.03)
    if reg is None:
        return
    img, u, v = reg
    tt = u / mw
    t2 = np.minimum(tt * tt, 1.0)
    centre = my + expr.mouth_curve * (0.5 - t2) - expr.mouth_asym * np.clip((tt + 1) / 2, 0, 1) ** 2
    half_open = max(expr.mouth_open, 0.0) * np.sqrt(1 - t2)
    dv = np.abs(v - centre)
    side = (np.abs(tt) - 1) * (mw * rx)
    _paint(img, _alpha(np.maximum(side, (dv - half_open - expr.lip) * ry)), colors.lip)
    if expr.mouth_open > 0.01:
        inner = _alpha(np.maximum(side + expr.lip * rx, (dv - half_open + 0.3 * expr.lip) * ry))
        _paint(img, inner, _MOUTH)
        if expr.teeth > 0.02:
            upper = (centre - half_open * 0.15) - v  # above the middle of the opening
            _paint(img, np.minimum(inner, _alpha(-upper * ry)) * min(expr.teeth, 1.0), _TEETH)


# ---------------------------------------------------------------------------------------------
# Sample datasets in the RAVDESS and CREMA-D naming conventions
# ---------------------------------------------------------------------------------------------

EMOTION_CODES: dict[str, dict[str, str]] = {
    "ravdess": {"neutral": "01", "happy": "03", "sad": "04", "angry": "05",
                "fearful": "06", "disgust": "07"},
    "crema-d": {"angry": "ANG", "disgust": "DIS", "fearful": "FEA", "happy": "HAP",
                "neutral": "NEU", "sad": "SAD"},
}
"""Layout -> label -> the dataset's emotion code in file names."""

CREMA_D_SENTENCES: tuple[str, ...] = (
    "IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI",
)
"""The twelve CREMA-D sentence codes; only IEO was recorded at LO/MD/HI levels."""

_CREMA_D_INTENSITY = {"LO": 0.65, "MD": 0.85, "HI": 1.0, "XX": 0.85}
_RAVDESS_INTENSITY = {"01": 0.8, "02": 1.0}
_X264_FAST = {"preset": "veryfast", "crf": "20"}
_AAC_FAST = {"aac_coder": "fast"}  # a third of the default coder's time
_AUDIO_BIT_RATE = 32_000


def _ravdess_takes(emotion: str) -> list[tuple[str, str, str]]:
    """(intensity, statement, repetition) codes; RAVDESS has no strong-intensity neutral."""
    intensities = ("01",) if emotion == "neutral" else ("01", "02")
    return [(i, s, r) for i in intensities for s in ("01", "02") for r in ("01", "02")]


def _crema_d_takes(emotion: str) -> list[tuple[str, str]]:
    """(sentence, level) codes: IEO at MD (then HI, LO) first, the other sentences at XX."""
    takes = [(s, "XX") for s in CREMA_D_SENTENCES[1:]]
    if emotion == "neutral":
        return [("IEO", "XX"), *takes]
    return [("IEO", "MD"), takes[0], ("IEO", "HI"), takes[1], ("IEO", "LO"), *takes[2:]]


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_sample_dataset(
    root: str | Path,
    *,
    actors: int,
    layout: Literal["ravdess", "crema-d"],
    emotions: Sequence[str] = EMOTION_LABELS,
    takes_per_emotion: int = 1,
    seconds: float = 2.0,
    fps: float = 30,
    size: tuple[int, int] = (160, 160),
    seed: int = 0,
    crema_format: Literal["mp4", "flv"] = "mp4",
    first_actor: int = 1,
    audio: bool = False,
    ambiguous: Collection[str] = (),
) -> list[Path]:
    """Write synthetic face videos under `root` named as in RAVDESS or CREMA-D.

    RAVDESS: `Actor_NN/02-01-EE-II-SS-RR-NN.mp4` (video-only, speech; intensity, statement
    and repetition vary over takes, at most 8 takes per emotion, 4 for neutral), H.264; with
    `audio`, `01-01-...` (RAVDESS's audio-video modality).
    CREMA-D: `NNNN_SSS_EEE_LL.mp4` with actors from 1001 (sentence and level vary over
    takes, at most 14 per emotion, 12 for neutral); H.264 mp4, or with
    `crema_format="flv"` an FLV file with the `flv` (Sorenson H.263) encoder, as the
    original CREMA-D release ships.

    `audio`: each video also gets a 16 kHz mono AAC track as long as the video, a voice of the
    actor's own whose prosody follows the emotion (`sample_voice.render_voice`, at the take's
    intensity): synthetic prosody, not speech. The frames are the same with or without it.
    In FLV, AAC's priming delays every timestamp by 64 ms (FLV has no edit list).
    `ambiguous`: emotions whose faces are drawn neutral (the same frames as the actor's neutral
    take with the same take number and intensity), so only the voice tells them apart; needs
    `audio`.

    `size` is (height, width), even for H.264. `first_actor` numbers the actors from there
    (actor k looks and sounds the same whichever call renders it, so `first_actor=7` adds two
    new actors to a dataset of six). Returns the written paths, sorted.
    """
    if layout not in EMOTION_CODES:
        raise ValueError(f"layout must be one of {sorted(EMOTION_CODES)}, got {layout!r}")
    if crema_format not in ("mp4", "flv"):
        raise ValueError(f"crema_format must be 'mp4' or 'flv', got {crema_format!r}")
    bad = [e for e in (*emotions, *ambiguous) if e not in EMOTION_LABELS]
    if bad:
        raise ValueError(f"unknown emotions {bad}; allowed: {list(EMOTION_LABELS)}")
    if ambiguous and not audio:
        raise ValueError("ambiguous faces need the audio track: without a voice nothing "
                         f"would tell {sorted(ambiguous)} from neutral")
    max_actors = 99 if layout == "ravdess" else 8999
    if not actors >= 1 or not first_actor >= 1 or first_actor + actors - 1 > max_actors:
        raise ValueError(f"actors {first_actor}..{first_actor + actors - 1} must be within "
                         f"1..{max_actors} for {layout}")
    limit = min(len(_ravdess_takes(e) if layout == "ravdess" else _crema_d_takes(e))
                for e in emotions)
    if not 1 <= takes_per_emotion <= limit:
        raise ValueError(f"takes_per_emotion must be in 1..{limit} for {layout} with "
                         f"emotions {list(emotions)}, got {takes_per_emotion}")
    height, width = size
    num_frames = max(1, round(seconds * fps))
    modality = "01" if audio else "02"  # RAVDESS: audio-video, video-only
    root = Path(root)
    paths = []
    for a in range(first_actor - 1, first_actor - 1 + actors):
        actor_seed = _seed_int(seed, a)
        for emotion in emotions:
            code = EMOTION_CODES[layout][emotion]
            for k in range(takes_per_emotion):
                if layout == "ravdess":
                    level, statement, rep = _ravdess_takes(emotion)[k]
                    name = (f"Actor_{a + 1:02d}/{modality}-01-{code}-{level}-{statement}-{rep}-"
                            f"{a + 1:02d}")
                    path, amount = root / f"{name}.mp4", _RAVDESS_INTENSITY[level]
                    codec, options = "libx264", _X264_FAST
                else:
                    sentence, level = _crema_d_takes(emotion)[k]
                    path = root / f"{1001 + a}_{sentence}_{code}_{level}.{crema_format}"
                    amount = _CREMA_D_INTENSITY[level]
                    codec, options = ("flv", None) if crema_format == "flv" else \
                        ("libx264", _X264_FAST)
                frames = render_face_clip(
                    "neutral" if emotion in ambiguous else emotion, actor_seed=actor_seed,
                    num_frames=num_frames, height=height, width=width, fps=fps, take_seed=k,
                    intensity=amount,
                )
                sound = None
                if audio:
                    voice = render_voice(emotion, actor_seed=actor_seed, take_seed=k,
                                         seconds=num_frames / fps, intensity=amount)
                    sound = AudioTrack(voice, SAMPLE_RATE, bit_rate=_AUDIO_BIT_RATE,
                                       options=_AAC_FAST)
                paths.append(encode_video(path, frames, fps=fps, codec=codec, options=options,
                                          audio=sound))
    return sorted(paths)
