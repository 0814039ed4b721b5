"""Test videos: a moving pattern whose frames spell their own index (so a decoder's frame order
and timing can be checked), an audio-only file, a video shaped like the RAVDESS derivative the
workplace has (which may not be copied into the repository), where the repository's real
CREMA-D clips are, and files with sound written with PyAV (`write_av`, `tone`). Importable from
every test module (``tests/`` is on ``sys.path`` through its conftest) and nothing in the
package uses them."""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emotion_model.sample_data import render_face_clip
from emotion_model.video_writer import available_encoders, encode_video

__all__ = [
    "CREMA_D_CLIPS",
    "CREMA_D_DIR",
    "EXTRA_CLIPS_ENV",
    "RAVDESS_LIKE_NAME",
    "decode_frames",
    "encode_audio_only",
    "encode_video",
    "extra_clip_paths",
    "make_test_pattern",
    "needs_encoder",
    "pattern_frame_index",
    "tone",
    "write_av",
    "write_ravdess_like_clip",
]

CREMA_D_DIR = Path(__file__).resolve().parent / "data" / "crema_d"
"""The four real CREMA-D clips kept in the repository (ODbL; see ``tests/data/README.md``)."""

CREMA_D_CLIPS: dict[str, int] = {
    "1001_DFA_ANG_XX.flv": 67,
    "1001_DFA_HAP_XX.flv": 56,
    "1001_DFA_NEU_XX.flv": 61,
    "1001_DFA_SAD_XX.flv": 60,
}
"""File name in `CREMA_D_DIR` -> its number of video frames (FLV, VP6, 480x360, 29.97 fps)."""

RAVDESS_LIKE_NAME = "01-01-08-02-01-01-19.mp4"
"""RAVDESS's naming: audio-video, speech, emotion 08 (surprised), strong, statement 1, take 1,
actor 19. Surprised is outside the six classes the model uses."""

RAVDESS_LIKE_FPS = Fraction(30000, 1001)  # 29.97
RAVDESS_LIKE_FRAMES = 122
RAVDESS_LIKE_SIZE = 720

AUDIO_RATE = 16_000
"""Samples per second of `tone` and `write_av`'s audio by default (`AudioSpec`'s)."""

EXTRA_CLIPS_ENV = "EMOTION_PIPELINE_SHARED_DATA"
"""Names a folder of more real clips for the tests to decode as well; optional."""


def write_ravdess_like_clip(folder: str | Path, name: str = RAVDESS_LIKE_NAME) -> Path:
    """Encode a stand-in for the workplace's RAVDESS derivative into ``folder / name``.

    Same shape as that file (MPEG-4 Part 2 in .mp4, 720x720, 29.97 fps, 122 frames, no
    audio), with a drawn face (actor 19, a wide-eyed "fearful" face: the drawn faces have no
    "surprised") rather than a real one: RAVDESS is non-commercial share-alike, so it is not
    in the repository. Deterministic; about 4 s of CPU.
    """
    path = Path(folder) / name
    frames = render_face_clip("fearful", actor_seed=19, num_frames=RAVDESS_LIKE_FRAMES,
                              height=RAVDESS_LIKE_SIZE, width=RAVDESS_LIKE_SIZE,
                              fps=float(RAVDESS_LIKE_FPS))
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode_video(path, frames, fps=float(RAVDESS_LIKE_FPS), codec="mpeg4")


def extra_clip_paths() -> list[Path]:
    """Every ``.mp4`` / ``.flv`` below the folder `EXTRA_CLIPS_ENV` names, sorted; ``[]`` when
    the variable is unset or empty. A set variable naming no folder is an error (a typo should
    not pass as "no extra clips")."""
    folder = os.environ.get(EXTRA_CLIPS_ENV, "")
    if not folder:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{EXTRA_CLIPS_ENV}={folder}: not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in
                  {".mp4", ".flv"})



def encode_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """Write an .mp4 holding one AAC tone (440 Hz, mono) and no video stream."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate, n = 16_000, 1024
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(int(seconds * rate / n)):
            t = (np.arange(n) + i * n) / rate
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * n
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path

def _counter_layout(height: int, width: int) -> tuple[int, int, int]:
    """Bits, block width and bar height of the frame-index bar on top of a test pattern."""
    bits = max(1, min(16, width // 8))
    return bits, width // bits, max(2, min(8, height // 4))


def make_test_pattern(num_frames: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A cheap moving pattern, uint8 `[T, H, W, 3]`, that compresses well and changes per frame.

    A colour gradient whose blue channel drifts with time, a square bouncing across the
    frame, and a black/white bar along the top that spells the frame index in binary
    (`pattern_frame_index` reads it back from a decoded frame; up to 16 bits when
    `width >= 128`, fewer for narrower frames).
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need positive num_frames, height, width; got "
                         f"{num_frames}, {height}, {width}")
    rng = np.random.default_rng(seed)
    hue = rng.integers(0, 256, size=3)
    square_rgb = rng.integers(0, 256, size=3).astype(np.uint8)
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    base = np.empty((height, width, 3), np.uint8)
    base[..., 0] = ((xs + hue[0]) % 256).astype(np.uint8)
    base[..., 1] = ((ys + hue[1]) % 256).astype(np.uint8)
    side = max(2, min(height, width) // 4)
    vx, vy = rng.uniform(1.0, 4.0, size=2)
    bits, block, bar = _counter_layout(height, width)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frame = out[t]
        frame[:] = base
        frame[..., 2] = (hue[2] + 4 * t) % 256
        x = _bounce(vx * t, width - side)
        y = _bounce(vy * t, height - side)
        frame[y:y + side, x:x + side] = square_rgb
        for b in range(bits):
            frame[:bar, b * block:(b + 1) * block] = 255 if (t >> b) & 1 else 0
    return out


def _bounce(pos: float, span: int) -> int:
    if span <= 0:
        return 0
    p = int(pos) % (2 * span)
    return p if p <= span else 2 * span - p


def pattern_frame_index(frame: np.ndarray) -> int:
    """Read the frame index from a (decoded) `make_test_pattern` frame, uint8 `[H, W, 3]`.

    Modulo `2**bits`, where bits = min(16, width // 8).
    """
    height, width = frame.shape[:2]
    bits, block, bar = _counter_layout(height, width)
    index = 0
    for b in range(bits):
        cell = frame[:bar, b * block:(b + 1) * block]
        # read the middle of each block so codec ringing at edges does not matter
        core = cell[bar // 4: max(bar // 4 + 1, 3 * bar // 4), block // 4: 3 * block // 4 or 1]
        if core.mean() > 127:
            index |= 1 << b
    return index




def needs_encoder(codec: str) -> None:
    """Fail unless this PyAV build can encode with ``codec``: PyAV's wheels bundle FFmpeg with
    the encoders the tests use, so a missing one is a broken install, not a reason to skip."""
    assert codec in available_encoders(), f"encoder {codec} not in this PyAV build"


def decode_frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """All frames of ``path`` as uint8 RGB ``[H, W, 3]`` and their presentation times (s)."""
    with av.open(str(path)) as container:
        frames, times = [], []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
    return frames, times


# --- video with sound ----------------------------------------------------------------------------
def write_av(
    path: Path,
    frames: np.ndarray,
    *,
    fps: int = 10,
    audio: np.ndarray | None = None,
    rate: int = AUDIO_RATE,
    audio_codec: str = "pcm_s16le",
    video_start_s: float = 0.0,
    audio_start_s: float = 0.0,
    garble: Callable[[float], bool] | None = None,
) -> Path:
    """Write ``frames`` (uint8 ``[T, H, W, 3]``, MPEG-4 Part 2) and ``audio`` (float32
    ``[channels, samples]`` at ``rate``) into one file, interleaved in time order, each stream
    starting at its own time. Audio packets whose time ``garble`` accepts get random bytes."""
    fmt = {".mkv": "matroska", ".mp4": "mp4"}[path.suffix]
    rng = np.random.default_rng(0)
    chunk = 1024
    with av.open(str(path), "w", format=fmt) as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        events = [(video_start_s + i / fps, 0, i) for i in range(len(frames))]
        if audio is not None:
            sound = container.add_stream(audio_codec, rate=rate)
            sound.layout = "stereo" if audio.shape[0] == 2 else "mono"
            total = -(-audio.shape[1] // chunk) * chunk
            audio = np.pad(audio.astype(np.float32), ((0, 0), (0, total - audio.shape[1])))
            events += [(audio_start_s + k / rate, 1, k) for k in range(0, total, chunk)]

        def mux(packets: list[av.Packet]) -> None:
            for packet in packets:
                if (garble is not None and packet.stream.type == "audio"
                        and packet.pts is not None and garble(float(packet.pts
                                                                   * packet.time_base))):
                    bad = av.Packet(rng.integers(0, 256, packet.size, np.uint8).tobytes())
                    bad.pts, bad.dts, bad.duration = packet.pts, packet.dts, packet.duration
                    bad.time_base, bad.stream = packet.time_base, packet.stream
                    packet = bad
                container.mux(packet)

        for _, kind, i in sorted(events):
            if kind == 0:
                picture = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                picture.pts = i + round(video_start_s * fps)
                picture.time_base = Fraction(1, fps)
                mux(video.encode(picture))
            else:
                assert audio is not None
                samples = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, i:i + chunk]),
                                                     format="fltp", layout=sound.layout.name)
                samples.pts = i + round(audio_start_s * rate)
                samples.sample_rate, samples.time_base = rate, Fraction(1, rate)
                mux(sound.encode(samples))
        mux(video.encode())
        if audio is not None:
            mux(sound.encode(None))
    return path


def tone(seconds: float, freq: float, *, rate: int = AUDIO_RATE, channels: int = 1,
         amplitude: float = 0.3) -> np.ndarray:
    """A sine of ``freq`` Hz, float32 ``[channels, samples]``."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)
