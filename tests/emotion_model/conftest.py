"""Fixtures for the emotion_model tests: one CPU thread, a seeded small model, encoded videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from video_fixtures import make_test_pattern

from emotion_model.model import EmotionClassifier, build_model
from emotion_model.video_writer import encode_video


@pytest.fixture(scope="module")
def small_model() -> EmotionClassifier:
    """The width-16 variant, seeded, in eval mode."""
    torch.manual_seed(0)
    return build_model("small").eval()


@pytest.fixture(scope="session")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of 64x64 H.264 at 10 fps: five 4-second clips."""
    path = tmp_path_factory.mktemp("videos") / "long_20s.mp4"
    return encode_video(path, make_test_pattern(200, 64, 64, seed=3), fps=10)

