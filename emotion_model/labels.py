"""The six emotion labels and the RAVDESS and CREMA-D file-name parsers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

EMOTION_LABELS: tuple[str, ...] = ("angry", "disgust", "fearful", "happy", "neutral", "sad")
"""Class order of every model output and every `prob_*` column."""

Dataset = Literal["ravdess", "crema-d"]

# RAVDESS emotion codes; 02 (calm) and 08 (surprised) are outside the six classes.
_RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
_CREMA_D_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
_RAVDESS_RE = re.compile(r"(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})", re.ASCII)
_CREMA_D_RE = re.compile(r"(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z0-9]{2})", re.ASCII)


@dataclass(frozen=True)
class ParsedName:
    """What a dataset file name says: the emotion, the actor and the dataset.

    `label` may be outside `EMOTION_LABELS` (RAVDESS calm and surprised); `in_classes` tells.
    For RAVDESS, `performance` identifies a performance independently of its modality, so the
    audio-video (01) and video-only (02) copies of one performance share it.
    """

    label: str
    actor: str  # the dataset's own actor field ("12", "1001"); unique together with dataset
    dataset: Dataset
    performance: str

    @property
    def in_classes(self) -> bool:
        """True when the label is one of the six model classes."""
        return self.label in EMOTION_LABELS


def _stem(name: object) -> str | None:
    if not isinstance(name, str | PurePosixPath) and not hasattr(name, "__fspath__"):
        return None
    text = str(name).replace("\\", "/").rstrip("/")
    base = text.rsplit("/", 1)[-1]
    return base.split(".", 1)[0] if base else None


def parse_ravdess(name: object) -> ParsedName | None:
    """Parse a RAVDESS name such as `01-02-05-01-02-01-12.mp4` (or a path ending in one).

    Fields: modality, vocal channel, emotion, intensity, statement, repetition, actor.
    Returns None for a name that does not fit; never raises.
    """
    stem = _stem(name)
    m = _RAVDESS_RE.fullmatch(stem or "")
    if m is None:
        return None
    label = _RAVDESS_EMOTIONS.get(m.group(3))
    if label is None:
        return None
    actor = m.group(7)
    performance = "-".join(m.group(i) for i in range(2, 8))  # everything but the modality
    return ParsedName(label=label, actor=actor, dataset="ravdess",
                      performance=f"ravdess-{performance}")


def parse_crema_d(name: object) -> ParsedName | None:
    """Parse a CREMA-D name such as `1001_DFA_ANG_XX.flv` (or a path ending in one).

    Fields: actor, sentence, emotion, level. Returns None for a name that does not fit.
    """
    stem = _stem(name)
    m = _CREMA_D_RE.fullmatch(stem or "")
    if m is None:
        return None
    label = _CREMA_D_EMOTIONS.get(m.group(3).upper())
    if label is None:
        return None
    return ParsedName(label=label, actor=m.group(1), dataset="crema-d",
                      performance=f"crema-d-{stem}")


def parse_name(name: object) -> ParsedName | None:
    """Try each dataset convention in turn; None when none fits."""
    return parse_ravdess(name) or parse_crema_d(name)
