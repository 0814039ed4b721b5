"""The audio branch's input: a clip window's sound as a log-mel spectrogram of fixed size.

``AudioSpec`` is the audio preprocessing a model was trained with (recorded in its deployment
file's metadata as ``audio``); the reader gives each clip the log-mel of its own time window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["AudioSpec"]


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
