"""Face videos composed from real faces, with known face boxes, for testing face detection.

The repository's CREMA-D clips (one actor, frontal, in front of a green screen, 480x360) are the
source: each clip's face box was labelled by hand (`CREMA_D_FACE_BOXES`); the actor is keyed
out of the green screen (head, neck and shoulders) and pasted, scaled to a chosen face width, onto
synthetic backgrounds, moving along chosen paths. The ground truth follows from the paste
geometry; nothing here runs a face detector. Importable from every test module (``tests/`` is
on ``sys.path`` through its conftest) and from ``bench/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from video_fixtures import CREMA_D_DIR, decode_frames, encode_video

from emotion_model.faces import FaceBox

__all__ = [
    "CREMA_D_FACE_BOXES",
    "CREMA_D_SIZE",
    "GroundTruth",
    "TrueFace",
    "background",
    "compose_video",
    "crema_d_face_box",
    "decode_scaled",
    "face_at_width",
    "faceless",
    "leaving_face",
    "match_faces",
    "one_face_quarter",
    "small_face",
    "tiny_face",
    "two_faces",
]

CREMA_D_SIZE = (480, 360)
"""Width, height of the CREMA-D clips."""

CREMA_D_FACE_BOXES: dict[str, tuple[int, int, int, int]] = {
    "1001_DFA_ANG_XX.flv": (168, 88, 96, 122),
    "1001_DFA_HAP_XX.flv": (167, 88, 98, 120),
    "1001_DFA_NEU_XX.flv": (168, 88, 96, 116),
    "1001_DFA_SAD_XX.flv": (168, 88, 96, 118),
}
"""Hand-labelled face box (x, y, w, h in pixels of 480x360) of each clip in `CREMA_D_DIR`, fixed
for the whole clip (the actor barely moves). Found by eye on the first, middle and last frame of
each clip, drawn 4x enlarged with a 10-pixel grid: left/right = the cheeks' outline at eye level
(x 168..264, ears excluded), top = mid-forehead (y 88, about 25 px above the brows, as BlazeFace
boxes are), bottom = the chin with the mouth at its widest in the clip (y 204..210)."""

KEY_LOW, KEY_HIGH = 25.0, 55.0  # green excess (G - max(R, B)) ramp from actor to green screen


def crema_d_face_box(name: str) -> FaceBox:
    """The hand-labelled face box of CREMA-D clip `name`, in fractions of 480x360."""
    x, y, w, h = CREMA_D_FACE_BOXES[name]
    width, height = CREMA_D_SIZE
    return FaceBox(x / width, y / height, w / width, h / height)


@dataclass(frozen=True)
class TrueFace:
    """A pasted face in one frame: identity, box clipped to the frame (fractions), and the
    fraction of the whole face box that is inside the frame."""

    identity: str
    box: FaceBox
    visible: float


@dataclass
class GroundTruth:
    """Per frame, the faces a composed video shows."""

    width: int
    height: int
    fps: float
    frames: list[list[TrueFace]] = field(default_factory=list)

    def times(self) -> list[float]:
        """Presentation time (s) of each frame."""
        return [i / self.fps for i in range(len(self.frames))]


@lru_cache(maxsize=8)
def _source(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a CREMA-D clip cropped around its face, uint8 `[T, h, w, 3]`, and the actor's
    alpha from the green screen, float32 `[T, h, w]`. The crop is 2.4 face widths wide, from
    0.9 face heights above the face box to 1.0 below it (head, neck, shoulders)."""
    frames, _ = decode_frames(CREMA_D_DIR / name)
    x, y, w, h = CREMA_D_FACE_BOXES[name]
    x0, x1 = x + w // 2 - int(1.2 * w), x + w // 2 + int(1.2 * w)
    y0, y1 = max(0, y - int(0.9 * h)), y + h + int(1.0 * h)
    rgb = np.stack(frames)[:, y0:y1, x0:x1]
    f = rgb.astype(np.float32)
    excess = f[..., 1] - np.maximum(f[..., 0], f[..., 2])
    alpha = np.clip((KEY_HIGH - excess) / (KEY_HIGH - KEY_LOW), 0.0, 1.0)
    fade = np.clip((y1 - y0 - np.arange(y1 - y0)) / (0.25 * h), 0.0, 1.0)  # soft bottom edge
    return rgb, (alpha * fade[None, :, None]).astype(np.float32)


def _sprite_geometry(name: str) -> tuple[float, float, float, float]:
    """Face box (x, y, w, h) in pixels of the `_source` crop."""
    x, y, w, h = CREMA_D_FACE_BOXES[name]
    return float(int(1.2 * w) - w // 2), float(y - max(0, y - int(0.9 * h))), float(w), float(h)


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` `[h, w, C]` float32 resized by `scale` (area-like when shrinking)."""
    h, w = image.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return t[0].permute(1, 2, 0).numpy()


def background(width: int, height: int, kind: str = "textured", *, seed: int = 0) -> np.ndarray:
    """A uint8 RGB background: ``"plain"`` (one grey-blue colour), ``"textured"`` (smooth
    coloured noise over a gradient, like an out-of-focus room) or ``"shapes"`` (textured plus
    discs, rings, rectangles and stripes: round and skin-coloured things that are not faces)."""
    rng = np.random.default_rng(seed)
    if kind == "plain":
        return np.broadcast_to(np.array([96, 110, 128], np.uint8), (height, width, 3)).copy()
    coarse = rng.uniform(40, 200, size=(height // 80 + 2, width // 80 + 2, 3)).astype(np.float32)
    smooth = _scaled(coarse, 80.0)[:height, :width]
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = 0.7 * smooth + 60 * ys + rng.normal(0, 4, size=(height, width, 3)).astype(np.float32)
    if kind == "shapes":
        yy, xx = np.mgrid[0:height, 0:width]
        for _ in range(14):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(0.02, 0.12) * height
            colour = rng.uniform(60, 230, size=3)
            if rng.random() < 0.3:
                colour = np.array([224, 172, 140]) * rng.uniform(0.7, 1.05)  # skin-like
            shape = rng.integers(0, 4)
            if shape == 0:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            elif shape == 1:
                d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
                mask = (d < r) & (d > 0.7 * r)
            elif shape == 2:
                mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < 0.6 * r)
            else:
                mask = ((xx // max(2, int(r / 4))) % 2 == 0) & (np.abs(yy - cy) < r) \
                    & (np.abs(xx - cx) < 2 * r)
            img[mask] = colour
    elif kind != "textured":
        raise ValueError(f"unknown background kind {kind!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Track:
    """One pasted face: source clip, identity, and its face box over time.

    `path(t)` gives (x, y, w) in pixels of the frame: the face box's top-left corner and width
    at time t (s); the height follows from the source's face box aspect.
    """

    source: str
    identity: str
    path: Callable[[float], tuple[float, float, float]]


def compose_video(path: str | Path, tracks: Sequence[Track], *, width: int = 1280,
                  height: int = 720, seconds: float = 2.0, fps: float = 25.0,
                  backdrop: str = "textured", seed: int = 0,
                  codec: str = "libx264") -> tuple[Path, GroundTruth]:
    """Paste each track's face onto the background for `seconds` at `fps`, encode with `codec`
    (crf 18, preset veryfast) and return the path and the ground truth.

    A face whose box is partly outside the frame is kept in the ground truth with its clipped
    box and `visible` < 1; one entirely outside is left out.
    """
    base = background(width, height, backdrop, seed=seed).astype(np.float32)
    truth = GroundTruth(width, height, fps)
    frames = []
    for i in range(max(1, round(seconds * fps))):
        t = i / fps
        frame = base.copy()
        faces = []
        for track in tracks:
            rgb, alpha = _source(track.source)
            k = i % (2 * len(rgb) - 2) if len(rgb) > 1 else 0  # play forwards then backwards
            k = k if k < len(rgb) else 2 * len(rgb) - 2 - k
            fx, fy, fw = track.path(t)
            face = _paste(frame, rgb[k], alpha[k], track.source, fx, fy, fw)
            if face is not None:
                faces.append(TrueFace(track.identity, *face))
        truth.frames.append(faces)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    out = encode_video(path, np.stack(frames), fps=fps, codec=codec,
                       options={"crf": "18", "preset": "veryfast"})
    return out, truth


def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, source: str, fx: float,
           fy: float, fw: float) -> tuple[FaceBox, float] | None:
    """Alpha-blend the sprite into `frame` (float32, in place) so its face box has its top-left
    corner at (fx, fy) and width fw (pixels); return the clipped face box and visible part."""
    height, width = frame.shape[:2]
    sx, sy, sw, sh = _sprite_geometry(source)
    scale = fw / sw
    sprite = _scaled(np.concatenate([rgb.astype(np.float32), alpha[..., None]], axis=2), scale)
    ox, oy = round(fx - sx * scale), round(fy - sy * scale)
    ph, pw = sprite.shape[:2]
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(width, ox + pw), min(height, oy + ph)
    if x1 > x0 and y1 > y0:
        part = sprite[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        a = np.clip(part[..., 3:], 0.0, 1.0)
        frame[y0:y1, x0:x1] = a * part[..., :3] + (1 - a) * frame[y0:y1, x0:x1]
    fh = sh * scale
    bx0, by0 = max(0.0, fx), max(0.0, fy)
    bx1, by1 = min(float(width), fx + fw), min(float(height), fy + fh)
    if bx1 <= bx0 or by1 <= by0:
        return None
    visible = (bx1 - bx0) * (by1 - by0) / (fw * fh)
    box = FaceBox(bx0 / width, by0 / height, (bx1 - bx0) / width, (by1 - by0) / height)
    return box, visible


def _sources() -> list[str]:
    return sorted(CREMA_D_FACE_BOXES)


def _still(x: float, y: float, w: float) -> Callable[[float], tuple[float, float, float]]:
    return lambda t: (x, y, w)


def face_at_width(path: str | Path, face_px: float, *, width: int = 1280, height: int = 720,
                  seconds: float = 2.0, fps: float = 25.0, backdrop: str = "textured",
                  drift: float = 40.0, source: int = 0) -> tuple[Path, GroundTruth]:
    """One face `face_px` pixels wide, at about (0.62, 0.35) of the frame, drifting `drift`
    pixels per second to the right."""
    x0, y0 = 0.62 * width, 0.35 * height
    track = Track(_sources()[source], "a", lambda t: (x0 + drift * t, y0, face_px))
    return compose_video(path, [track], width=width, height=height, seconds=seconds, fps=fps,
                         backdrop=backdrop)


def one_face_quarter(path: str | Path, **kw: object) -> tuple[Path, GroundTruth]:
    """(a) One face a quarter of the frame's width, off centre (left third), 1280x720."""
    track = Track(_sources()[0], "a", _still(0.12 * 1280, 0.2 * 720, 0.25 * 1280))
    return compose_video(path, [track], **kw)  # type: ignore[arg-type]


def two_faces(path: str | Path, **kw: object) -> tuple[Path, GroundTruth]:
    """(b) Two faces side by side (160 px wide), the second moving from right to left across
    the frame, passing below the first."""
    seconds = float(kw.get("seconds", 2.0))  # type: ignore[arg-type]
    a = Track(_sources()[1], "a", _still(300.0, 120.0, 160.0))
    b = Track(_sources()[2], "b", lambda t: (1050.0 - 800.0 * t / seconds, 400.0, 140.0))
    return compose_video(path, [a, b], **kw)  # type: ignore[arg-type]


def leaving_face(path: str | Path, **kw: object) -> tuple[Path, GroundTruth]:
    """(c) A face 200 px wide that moves right and leaves the frame through its right edge
    half way through the video."""
    seconds = float(kw.get("seconds", 2.0))  # type: ignore[arg-type]
    track = Track(_sources()[3], "a", lambda t: (700.0 + 580.0 * 2 * t / seconds, 250.0, 200.0))
    return compose_video(path, [track], **kw)  # type: ignore[arg-type]


def small_face(path: str | Path, **kw: object) -> tuple[Path, GroundTruth]:
    """(d) One face 10 % of the frame's width (128 px of 1280)."""
    return face_at_width(path, 0.10 * 1280, **kw)  # type: ignore[arg-type]


def faceless(path: str | Path, **kw: object) -> tuple[Path, GroundTruth]:
    """(e) Background with discs, rings, skin-coloured blobs and stripes; no face."""
    kw.setdefault("backdrop", "shapes")
    return compose_video(path, [], **kw)  # type: ignore[arg-type]


def tiny_face(path: str | Path, **kw: object) -> tuple[Path, GroundTruth]:
    """(f) One face 30 px wide in 1280x720."""
    return face_at_width(path, 30.0, **kw)  # type: ignore[arg-type]


def decode_scaled(path: str | Path, width: int, height: int) -> list[np.ndarray]:
    """Every frame of `path` as uint8 RGB scaled to `width` x `height` by FFmpeg (swscale, as a
    pipeline would convert frames to a detector's `detection_size`)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24", width=width, height=height)
                for f in container.decode(video=0)]


def match_faces(detections: Sequence[FaceBox], truths: Sequence[TrueFace], *,
                min_iou: float = 0.5, min_visible: float = 0.5
                ) -> tuple[int, int, int, list[float]]:
    """Greedy one-to-one matching by IoU (detections clipped to the frame first).

    Returns (true faces found, true faces missed, false detections, IoU of each match). Faces
    less than `min_visible` inside the frame count neither as missed nor, when a detection
    matches them, as false detections.
    """
    clipped = [_clip(d) for d in detections]
    pairs = sorted(((c.iou(t.box), i, j) for i, c in enumerate(clipped)
                    for j, t in enumerate(truths)), reverse=True)
    used_d: set[int] = set()
    used_t: set[int] = set()
    ious: list[float] = []
    for iou, i, j in pairs:
        if iou < min_iou or i in used_d or j in used_t:
            continue
        used_d.add(i)
        used_t.add(j)
        if truths[j].visible >= min_visible:
            ious.append(iou)
    counted = [j for j, t in enumerate(truths) if t.visible >= min_visible]
    found = sum(1 for j in counted if j in used_t)
    false = len(detections) - len(used_d)
    return found, len(counted) - found, false, ious


def _clip(b: FaceBox) -> FaceBox:
    x0, y0 = min(max(b.x, 0.0), 1.0), min(max(b.y, 0.0), 1.0)
    x1, y1 = min(max(b.x + b.w, 0.0), 1.0), min(max(b.y + b.h, 0.0), 1.0)
    return FaceBox(x0, y0, x1 - x0, y1 - y0, b.score)
