"""The retrain data step (tasks/training/steps.py): spec, fingerprint, prepare_data in a flow."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from emotion_model.audio import AudioSpec
from emotion_model.face_clips import FRAME_CROP, CropSpec
from tasks.common import progress
from tasks.errors import NoTrainingDataError
from tasks.training.clip_cache import ClipSpec, cache_key
from tasks.training.data import Example
from tasks.training.settings import RetrainSettings
from tasks.training.steps import PreparedData, data_fingerprint, prepare_data, spec_of

EXAMPLES = [
    Example("/d/1001_DFA_ANG_XX.mp4", "e1", 100, "angry", "crema-d:1001", "crema-d"),
    Example("/d/1002_DFA_HAP_XX.mp4", "e2", 200, "happy", "crema-d:1002", "crema-d"),
    Example("s3://b/01-01-03-01-01-01-12.mp4", "e3", 300, "happy", "ravdess:12", "ravdess"),
]


# --- spec_of -------------------------------------------------------------------------------------
def test_spec_of_takes_the_settings_clip_fields() -> None:
    settings = RetrainSettings(sources=["/d"], registry="/r", num_frames=32, img_size=96,
                               clip_seconds=2.5, max_clips_per_video=3)
    assert spec_of(settings) == ClipSpec(num_frames=32, img_size=96, clip_seconds=2.5,
                                         max_clips=3, crop=CropSpec.face())
    assert spec_of(settings).cached_frames == 64
    frame = settings.model_copy(update={"crop": "frame"})
    assert spec_of(frame).crop == FRAME_CROP


def test_spec_of_another_models_frames_size_and_crop() -> None:
    settings = RetrainSettings(sources=["/d"], registry="/r", detect_fps=2.0)
    face = CropSpec.face(detect_fps=2.0)
    assert spec_of(settings, 16, 64) == ClipSpec(16, 64, 4.0, 4, face)
    assert spec_of(settings, img_size=160) == ClipSpec(48, 160, 4.0, 4, face)
    assert spec_of(settings, 16, 64, FRAME_CROP) == ClipSpec(16, 64, 4.0, 4, FRAME_CROP)


# --- data_fingerprint ----------------------------------------------------------------------------
def test_fingerprint_is_sha256_of_the_sorted_uri_etag_label_lines() -> None:
    lines = "".join(f"{e.uri}|{e.etag}|{e.label}\n" for e in sorted(EXAMPLES, key=lambda e: e.uri))
    assert data_fingerprint(EXAMPLES) == hashlib.sha256(lines.encode()).hexdigest()[:16]
    assert data_fingerprint([]) == "e3b0c44298fc1c14"  # sha256 of nothing


def test_fingerprint_is_stable_and_ignores_order() -> None:
    first = data_fingerprint(EXAMPLES)
    assert data_fingerprint(EXAMPLES) == first
    assert data_fingerprint(list(reversed(EXAMPLES))) == first
    assert data_fingerprint([EXAMPLES[1], EXAMPLES[2], EXAMPLES[0]]) == first
    assert len(first) == 16 and int(first, 16) >= 0


@pytest.mark.parametrize("change", [{"etag": "e2-new"}, {"label": "sad"},
                                    {"uri": "/d/1002_DFA_HAP_XY.mp4"}])
def test_fingerprint_changes_with_an_etag_a_label_or_a_uri(change: dict[str, Any]) -> None:
    changed = [EXAMPLES[0], dataclasses.replace(EXAMPLES[1], **change), EXAMPLES[2]]
    assert data_fingerprint(changed) != data_fingerprint(EXAMPLES)


@pytest.mark.parametrize("change", [{"size": 999}, {"actor": "crema-d:9999"},
                                    {"dataset": "manifest"}])
def test_fingerprint_ignores_size_actor_and_dataset(change: dict[str, Any]) -> None:
    changed = [EXAMPLES[0], dataclasses.replace(EXAMPLES[1], **change), EXAMPLES[2]]
    assert data_fingerprint(changed) == data_fingerprint(EXAMPLES)


def test_fingerprint_changes_when_a_video_is_added_or_removed() -> None:
    assert data_fingerprint(EXAMPLES[:2]) != data_fingerprint(EXAMPLES)


# --- prepare_data in a flow ----------------------------------------------------------------------
@flow(name="prepare-data-test", validate_parameters=False)
def prepare_in_a_flow(settings: RetrainSettings) -> PreparedData:
    return prepare_data(settings)


@pytest.fixture(scope="module")
def faces(face_videos: Any) -> Path:
    """6 actors x 6 emotions x 1 take of 1.5 s, CREMA-D names (36 videos; as test_retrain)."""
    return face_videos("crema-d", takes=1, seconds=1.5)


def settings_for(sources: list[str], registry: Path) -> RetrainSettings:
    return RetrainSettings(sources=sources, registry=str(registry), preset="small",
                           num_frames=16, img_size=64, clip_seconds=1.0, max_clips_per_video=1,
                           val_fraction=0.34, seed=0, device="cpu", decode_threads=2)


def test_prepare_data_splits_by_actor_and_fills_the_clip_cache(
    prefect_server: None, faces: Path, tmp_path: Path
) -> None:
    settings = settings_for([str(faces)], tmp_path / "registry")
    events: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = progress.subscribe(lambda event, data: events.append((event, data)))
    try:
        data = prepare_in_a_flow(settings)
    finally:
        unsubscribe()

    split = data.split
    assert len(split.train) + len(split.val) == 36
    assert not set(split.train_actors) & set(split.val_actors)
    assert len(split.val_actors) == 2 and len(split.train_actors) == 4  # round(6 x 0.34)
    assert all(a.startswith("crema-d:") for a in split.train_actors + split.val_actors)
    assert {e.actor for e in split.val} == set(split.val_actors)
    assert (data.report.listed, data.report.used, data.report.corrupt) == (36, 36, 0)
    assert (data.cache.decoded, data.cache.cached, data.cache.corrupt) == (36, 0, [])
    assert data.spec == ClipSpec(16, 64, 1.0, 1, CropSpec.face())  # face crops by default
    assert data.fingerprint == data_fingerprint(split.train)
    files = sorted(p.name for p in (tmp_path / "registry" / "cache" / "clips").iterdir())
    assert files == sorted(cache_key(e, data.spec) for e in split.train + split.val)

    assert events[0] == ("stage", {"name": "cache", "total": 36})
    cache_events = [d for e, d in events if e == "cache"]
    assert [d["done"] for d in cache_events] == list(range(1, 37))
    assert all(d["total"] == 36 and d["ok"] is True for d in cache_events)

    again = prepare_in_a_flow(settings)  # the second run reads the cache
    assert (again.cache.decoded, again.cache.cached) == (0, 36)
    assert again.split == split and again.fingerprint == data.fingerprint


def test_prepare_data_without_labelled_videos_fails(prefect_server: None, tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("no videos here")
    (folder / "holiday.mp4").write_bytes(b"")  # a video by name, but neither dataset's layout
    settings = settings_for([str(folder)], tmp_path / "registry")
    with pytest.raises(NoTrainingDataError, match=r"^no labelled videos under \[") as raised:
        prepare_in_a_flow(settings)
    assert str(folder) in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert not (tmp_path / "registry").exists()  # nothing decoded, no cache written


def test_prepare_data_refuses_a_class_without_training_videos_before_decoding(
    prefect_server: None, faces: Path, tmp_path: Path
) -> None:
    """No disgust video at all: the model could never learn it; said before any decoding."""
    folder = tmp_path / "no-disgust"
    folder.mkdir()
    for video in faces.rglob("*.mp4"):
        if "_DIS_" not in video.name:
            (folder / video.name).write_bytes(video.read_bytes())
    settings = settings_for([str(folder)], tmp_path / "registry")
    with pytest.raises(NoTrainingDataError, match=r"^no training video of disgust \(training "
                                                  r"side: .*\): the model could never learn it"):
        prepare_in_a_flow(settings)
    assert not (tmp_path / "registry").exists()  # refused before the clip cache


def test_prepare_data_refuses_fewer_training_clips_than_a_batch(
    prefect_server: None, faces: Path, tmp_path: Path
) -> None:
    """24 training videos of one clip each cannot fill a batch of 32."""
    settings = settings_for([str(faces)], tmp_path / "registry").model_copy(
        update={"batch_size": 32})
    with pytest.raises(NoTrainingDataError, match=r"^24 training clips are fewer than one "
                                                  r"batch \(32\)"):
        prepare_in_a_flow(settings)


# --- models that read audio ----------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["audio", "audio-video"])
def test_prepare_data_counts_the_videos_without_sound(
    prefect_server: None, voiced: Path, tmp_path: Path, modality: str
) -> None:
    """Actor 1004's videos have no audio stream: counted for both; an audio-only model leaves
    them out, an audio-video one trains on their frames (with its no-audio embedding)."""
    settings = settings_for([str(voiced)], tmp_path / "registry").model_copy(
        update={"modality": modality, "crop": "frame", "img_size": 32})
    data = prepare_in_a_flow(settings)
    assert data.spec.audio == AudioSpec(seconds=1.0)
    report = data.report
    assert report.no_audio == 6 and all("/1004_" in uri for uri in report.no_audio_examples)
    actors = set(data.split.train_actors + data.split.val_actors)
    if modality == "audio":
        assert report.no_audio_left_out == 6 and "crema-d:1004" not in actors
        assert len(data.split.train) + len(data.split.val) == 18
    else:
        assert report.no_audio_left_out == 0 and "crema-d:1004" in actors
        assert len(data.split.train) + len(data.split.val) == 24
    assert report.as_dict()["no_audio"] == 6


def test_an_audio_model_without_any_sound_is_refused(prefect_server: None, faces: Path,
                                                     tmp_path: Path) -> None:
    settings = settings_for([str(faces)], tmp_path / "registry").model_copy(
        update={"modality": "audio", "crop": "frame", "img_size": 32, "num_frames": 4})
    with pytest.raises(NoTrainingDataError, match=r"^none of the 36 videos has sound: an audio "
                                                  r"model has nothing to learn from \(RAVDESS: "):
        prepare_in_a_flow(settings)
