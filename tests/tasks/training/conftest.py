"""Fixtures of the training tasks' tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emotion_model.sample_data import make_sample_dataset


@pytest.fixture(scope="session")
def two_layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RAVDESS tree (3 actors) and a CREMA-D folder (3 actors) of tiny synthetic videos,
    plus the things a real archive has: calm and surprised takes, an audio-video copy of a
    video-only performance, a name that parses as neither, a corrupt file."""
    root = tmp_path_factory.mktemp("labelled")
    make_sample_dataset(root / "ravdess", actors=3, layout="ravdess", seconds=0.6, fps=10,
                        size=(48, 48), emotions=("angry", "happy", "sad"))
    make_sample_dataset(root / "crema", actors=3, layout="crema-d", seconds=0.6, fps=10,
                        size=(48, 48), emotions=("angry", "neutral"), seed=1)
    actor = root / "ravdess" / "Actor_01"
    some = sorted(actor.glob("*.mp4"))[0]
    parts = some.name.split("-")
    shutil.copy(some, actor / "-".join(["01", *parts[1:]]))  # audio-video copy of the same take
    shutil.copy(some, actor / "-".join([*parts[:2], "02", *parts[3:]]))  # calm
    shutil.copy(some, actor / "-".join([*parts[:2], "08", *parts[3:]]))  # surprised
    shutil.copy(some, root / "ravdess" / "holiday_clip.mp4")  # no convention
    (root / "crema" / "1003_IEO_SAD_HI.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" * 5)
    return root


@pytest.fixture(scope="session")
def voiced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three actors x 6 emotions with voices (CREMA-D names, 0.6 s, 48x48) and a fourth
    actor's 6 videos without an audio stream (``1004_*``): 24 videos."""
    root = tmp_path_factory.mktemp("voiced")
    make_sample_dataset(root, actors=3, layout="crema-d", seconds=0.6, fps=10, size=(48, 48),
                        audio=True)
    make_sample_dataset(root, actors=1, first_actor=4, layout="crema-d", seconds=0.6, fps=10,
                        size=(48, 48))
    return root
