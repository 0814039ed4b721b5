"""Fixtures of the flow tests: a video corpus. The Prefect test server (`prefect_server`) and
the fault-injecting HTTP proxy in front of the moto S3 server (`fault_proxy`) are shared by
tests/reliability too, so they live in tests/conftest.py.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from video_fixtures import encode_audio_only, make_test_pattern

from emotion_model.video_writer import available_encoders, encode_video

# --- videos --------------------------------------------------------------------------------------

NESTED_KEY = unicodedata.normalize("NFC", "nested/dir with spaces/vidéo ünï.mp4")
"""A good video under a key with spaces and non-ASCII characters."""


@dataclass(frozen=True)
class VideoSpec:
    """A good test video: its relative key and how it is encoded."""

    key: str
    width: int
    height: int
    seconds: float
    fps: float
    codec: str = "libx264"
    seed: int = 0
    vfr: bool = False

    @property
    def num_frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def pts_seconds(self) -> list[float] | None:
        """VFR: frame gaps alternate 1x and 2x the nominal frame duration; else None."""
        if not self.vfr:
            return None
        steps = np.where(np.arange(self.num_frames - 1) % 2 == 0, 1.0, 2.0) / self.fps
        return [0.0, *np.cumsum(steps).round(3).tolist()]

    @property
    def duration(self) -> float:
        """Seconds the decoder should find: the last frame's time plus one (median) gap."""
        pts = self.pts_seconds()
        if pts is None:
            return self.num_frames / self.fps
        return pts[-1] + float(np.median(np.diff(pts)))

    def encode(self, root: Path, *, seed: int | None = None) -> Path:
        """Write the video under `root`; another `seed` gives other bytes (a new ETag)."""
        frames = make_test_pattern(self.num_frames, self.height, self.width,
                                   seed=self.seed if seed is None else seed)
        options = {"preset": "ultrafast"} if self.codec == "libx264" else None
        pts = self.pts_seconds()
        return encode_video(root / self.key, frames, fps=self.fps, codec=self.codec,
                            options=options, pts_seconds=pts,
                            time_base=Fraction(1, 1000) if pts else None)


def _good_specs() -> list[VideoSpec]:
    encoders = available_encoders()

    def pick(codec: str, fallback: str = "mpeg4") -> str:
        return codec if codec in encoders else fallback

    return [
        VideoSpec("h264_96x64.mp4", 96, 64, 1.0, 10, seed=1),
        VideoSpec("h264_320x240.mp4", 320, 240, 2.0, 12, seed=2),
        VideoSpec("h264_3s.mp4", 128, 96, 3.0, 10, seed=3),
        VideoSpec("mpeg4_160x120.avi", 160, 120, 1.2, 15, codec="mpeg4", seed=4),
        VideoSpec("mpeg4_odd_97x71.mp4", 97, 71, 1.0, 10, codec="mpeg4", seed=5),
        VideoSpec("h264_128x96.mkv", 128, 96, 2.2, 10, seed=6),
        VideoSpec("vp8_112x80.webm", 112, 80, 1.2, 12, codec=pick("libvpx"), seed=7),
        VideoSpec("vp9_144x108.webm", 144, 108, 0.8, 10, codec=pick("libvpx-vp9"), seed=8),
        VideoSpec("h264_160x90.mov", 160, 90, 2.0, 15, seed=9),
        VideoSpec("mjpeg_96x96.avi", 96, 96, 1.0, 10, codec=pick("mjpeg"), seed=10),
        VideoSpec("flv1_128x96.flv", 128, 96, 1.0, 10, codec=pick("flv"), seed=11),
        VideoSpec("vfr_mpeg4_128x96.mkv", 128, 96, 1.0, 12, codec="mpeg4", seed=12, vfr=True),
        VideoSpec("short_half_second.MP4", 64, 64, 0.5, 10, seed=13),
        VideoSpec(NESTED_KEY, 96, 64, 1.0, 10, seed=14),
    ]


GOOD_SPECS: list[VideoSpec] = _good_specs()

BAD_EXPECTED: dict[str, set[str]] = {
    "bad/zero_bytes.mp4": {"EmptyVideoError"},
    "bad/truncated_half.mp4": {"CorruptVideoError", "NoDecodableFramesError"},
    "bad/text_renamed.mp4": {"CorruptVideoError"},
    "bad/audio_only.mp4": {"NoVideoStreamError"},
}
"""Bad objects (keys) -> the error types their one ``errors`` row (stage decode) may carry."""

NOT_VIDEO_KEYS = ("stills/poster.jpg",)
"""Objects that are not videos by extension: counted in ``skipped_not_video``, no row."""


def write_bad_files(root: Path) -> dict[str, Path]:
    """The bad objects of `BAD_EXPECTED` plus the non-videos of `NOT_VIDEO_KEYS` under `root`."""
    out: dict[str, Path] = {}
    zero = root / "bad/zero_bytes.mp4"
    zero.parent.mkdir(parents=True, exist_ok=True)
    zero.write_bytes(b"")
    out["bad/zero_bytes.mp4"] = zero
    full = encode_video(root / "bad/.full.mp4", make_test_pattern(20, 64, 96, seed=99), fps=10,
                        options={"preset": "ultrafast"})
    data = full.read_bytes()
    full.unlink()
    truncated = root / "bad/truncated_half.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    out["bad/truncated_half.mp4"] = truncated
    text = root / "bad/text_renamed.mp4"
    text.write_text("this is a text file, renamed to .mp4\n" * 40)
    out["bad/text_renamed.mp4"] = text
    out["bad/audio_only.mp4"] = encode_audio_only(root / "bad/audio_only.mp4")
    for key in NOT_VIDEO_KEYS:
        out[key] = encode_video(root / key, make_test_pattern(1, 48, 64, seed=5), fps=1,
                                codec="mjpeg", container_format="image2")
    return out


@dataclass(frozen=True)
class VideoCorpus:
    """A local folder with the good videos, the bad objects and the non-videos, by key."""

    root: Path
    good: dict[str, VideoSpec]
    bad: dict[str, set[str]]
    not_video: tuple[str, ...]
    nested_key: str = NESTED_KEY

    def files(self) -> dict[str, Path]:
        """Every object of the corpus: key -> local path."""
        keys = [*self.good, *self.bad, *self.not_video]
        return {k: self.root / k for k in keys}


@pytest.fixture(scope="session")
def video_corpus(tmp_path_factory: pytest.TempPathFactory) -> VideoCorpus:
    """14 good videos (5 containers, 6 codecs, 64x64 to 320x240, 0.5-3 s, one VFR, one under a
    nested key with spaces and non-ASCII) + 4 bad objects + 1 jpg, encoded once."""
    root = tmp_path_factory.mktemp("corpus")
    for spec in GOOD_SPECS:
        spec.encode(root)
    write_bad_files(root)
    return VideoCorpus(root=root, good={s.key: s for s in GOOD_SPECS}, bad=dict(BAD_EXPECTED),
                       not_video=NOT_VIDEO_KEYS)
