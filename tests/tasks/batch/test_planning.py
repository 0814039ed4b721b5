"""Preflight (model loads, output writable) and plan_run (list, skip done, shard): planning.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from video_fixtures import make_test_pattern

from emotion_model.checkpoint import save_deployment
from emotion_model.errors import CheckpointError
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import build_model
from emotion_model.video_writer import encode_video
from tasks.batch.planning import ModelInfo, RunPlan, plan_run, preflight
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import ShardWriter, prob_columns
from tasks.common.listing import local_etag
from tasks.errors import OutputNotWritableError, SourceNotFoundError

MODEL_VERSION = "a1b2c3d4e5f6"
NAMES = [f"v{i}.mp4" for i in range(5)]
UNIFORM = prob_columns([1 / 6] * 6)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deployment file saved without the ``untrained`` flag."""
    path = tmp_path_factory.mktemp("trained") / "small.safetensors"
    torch.manual_seed(1)
    save_deployment(build_model("small").eval(), path, num_frames=16, img_size=64)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 1-second videos, a text file and a jpg (not videos by extension)."""
    root = tmp_path_factory.mktemp("plan-source")
    for i, name in enumerate(NAMES):
        encode_video(root / name, make_test_pattern(10, 48, 64, seed=i), fps=10,
                     options={"preset": "ultrafast"})
    (root / "notes.txt").write_text("not a video")
    (root / "stills").mkdir()
    (root / "stills" / "poster.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def settings_for(source: Path, output: Path, model: str = "unused.safetensors",
                 **extra: Any) -> BatchSettings:
    return BatchSettings.from_parameters(source=str(source), output=str(output), model=model,
                                         device="cpu", **extra)


def etag_of(path: Path) -> str:
    st = path.stat()
    return local_etag(st.st_size, st.st_mtime_ns)


def video_row(path: Path, etag: str | None = None) -> dict[str, Any]:
    return {"video_uri": str(path), "video_etag": etag or etag_of(path),
            "video_bytes": path.stat().st_size, "video_duration_s": 1.0, "num_clips": 1,
            "label": "neutral", "confidence": 1 / 6, **UNIFORM}


# --- preflight -----------------------------------------------------------------------------------
def test_preflight_describes_the_untrained_model(model_path: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    info = preflight(settings_for(tmp_path, output, str(model_path)))
    assert isinstance(info, ModelInfo)
    assert info.uri == str(model_path)
    assert len(info.model_version) == 12 and int(info.model_version, 16) >= 0
    assert (info.labels, info.num_frames, info.img_size, info.untrained) == (
        EMOTION_LABELS, 16, 64, True)
    assert output.is_dir() and list(output.iterdir()) == []  # the probe left nothing behind


def test_preflight_of_a_trained_model_and_through_a_pointer(
    trained_model: Path, model_path: Path, tmp_path: Path
) -> None:
    pointer = tmp_path / "registry" / "production.json"
    pointer.parent.mkdir()
    pointer.write_text(json.dumps({"uri": os.path.relpath(trained_model, pointer.parent)}))
    via_pointer = preflight(settings_for(tmp_path, tmp_path / "out", str(pointer)))
    direct = preflight(settings_for(tmp_path, tmp_path / "out", str(trained_model)))
    assert via_pointer.untrained is False
    assert via_pointer.model_version == direct.model_version
    assert Path(via_pointer.uri).resolve() == trained_model.resolve()
    untrained = preflight(settings_for(tmp_path, tmp_path / "out", str(model_path)))
    assert untrained.model_version != direct.model_version


def test_an_unwritable_output_fails_preflight_and_writes_nothing(
    model_path: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    output = blocker / "out"
    with pytest.raises(OutputNotWritableError, match="output location is not writable") as raised:
        preflight(settings_for(tmp_path, output, str(model_path)))
    assert str(raised.value).startswith(f"{output}: ") and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_missing_model_file_fails_before_the_output_is_touched(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "gone.safetensors"
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match="no such model file$") as raised:
        preflight(settings_for(tmp_path, output, str(missing)))
    assert str(raised.value) == f"{missing}: no such model file"
    assert not output.exists()


def test_a_pointer_to_a_missing_model_file_names_the_file(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "production.json").write_text(json.dumps({"uri": "v9/model.safetensors"}))
    with pytest.raises(CheckpointError, match="no such model file$") as raised:
        preflight(settings_for(tmp_path, tmp_path / "out", str(registry / "production.json")))
    assert raised.value.uri == f"{registry}/v9/model.safetensors"


# --- plan_run ------------------------------------------------------------------------------------
def assert_counts_add_up(plan: RunPlan) -> None:
    assert plan.listed == plan.skipped_done + plan.truncated + plan.to_process


def test_plan_cuts_every_video_into_shards_of_shard_size(source: Path, tmp_path: Path) -> None:
    plan = plan_run(settings_for(source, tmp_path / "out", shard_size=2), MODEL_VERSION)
    assert [s.shard for s in plan.shards] == [0, 1, 2]
    assert [[Path(v.uri).name for v in s.videos] for s in plan.shards] == [
        ["v0.mp4", "v1.mp4"], ["v2.mp4", "v3.mp4"], ["v4.mp4"]]
    first = plan.shards[0].videos[0]
    assert (first.uri, first.size, first.etag) == (
        str(source / "v0.mp4"), (source / "v0.mp4").stat().st_size, etag_of(source / "v0.mp4"))
    assert (plan.listed, plan.skipped_done, plan.truncated, plan.to_process) == (5, 0, 0, 5)
    assert plan.skipped_not_video == 2
    assert plan.examples_not_video == [str(source / "notes.txt"),
                                       str(source / "stills" / "poster.jpg")]
    assert plan.orphans_removed == []
    one = plan_run(settings_for(source, tmp_path / "out", shard_size=100), MODEL_VERSION)
    assert len(one.shards) == 1 and one.to_process == 5


def test_plan_skips_what_this_model_version_already_did(source: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with ShardWriter(str(output), "20240501T000000Z-prev0001", 0, "2024-05-01",
                     model_version=MODEL_VERSION) as writer:
        writer.add_video(video_row(source / "v1.mp4"))  # done
        writer.add_error(video_uri=str(source / "v3.mp4"), video_etag=etag_of(source / "v3.mp4"),
                         stage="decode", error_type="CorruptVideoError", message="bad")  # done
        writer.add_error(video_uri=str(source / "v4.mp4"), video_etag=etag_of(source / "v4.mp4"),
                         stage="read", error_type="ConnectionError", message="retry me")
        writer.add_video(video_row(source / "v2.mp4", etag="0123456789abcdef"))  # replaced since
    with ShardWriter(str(output), "20240501T000000Z-prev0002", 0, "2024-05-01",
                     model_version="ffffffffffff") as writer:
        writer.add_video(video_row(source / "v0.mp4"))  # done by another model version

    plan = plan_run(settings_for(source, output, shard_size=2), MODEL_VERSION)
    todo = [Path(v.uri).name for s in plan.shards for v in s.videos]
    assert todo == ["v0.mp4", "v2.mp4", "v4.mp4"]
    assert (plan.listed, plan.skipped_done, plan.truncated, plan.to_process) == (5, 2, 0, 3)
    assert [len(s.videos) for s in plan.shards] == [2, 1]
    assert_counts_add_up(plan)

    again = plan_run(settings_for(source, output, shard_size=2, reprocess=True), MODEL_VERSION)
    assert (again.skipped_done, again.to_process) == (0, 5)

    capped = plan_run(settings_for(source, output, shard_size=2, max_videos=2), MODEL_VERSION)
    assert [Path(v.uri).name for s in capped.shards for v in s.videos] == ["v0.mp4", "v2.mp4"]
    assert (capped.listed, capped.skipped_done, capped.truncated, capped.to_process) == (5, 2, 1,
                                                                                        2)
    assert_counts_add_up(capped)


@pytest.mark.parametrize(("max_videos", "truncated", "shards"), [(1, 4, 1), (3, 2, 2), (5, 0, 3),
                                                                 (50, 0, 3)])
def test_max_videos_truncates_after_skipping(
    source: Path, tmp_path: Path, max_videos: int, truncated: int, shards: int
) -> None:
    plan = plan_run(settings_for(source, tmp_path / "out", shard_size=2, max_videos=max_videos),
                    MODEL_VERSION)
    assert (plan.truncated, plan.to_process, len(plan.shards)) == (
        truncated, min(5, max_videos), shards)
    assert_counts_add_up(plan)


def test_plan_removes_a_dead_shards_old_predictions(source: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with ShardWriter(str(output), "20240501T000000Z-dead0001", 3, "2024-05-01",
                     model_version=MODEL_VERSION) as writer:
        writer.add_prediction(video_uri=str(source / "v0.mp4"), video_etag=etag_of(
            source / "v0.mp4"), video_bytes=1, video_duration_s=1.0, clip_index=0,
            clip_start_s=0.0, clip_end_s=1.0, label="happy", confidence=0.5, **UNIFORM)
    orphan = output / "predictions" / "date=2024-05-01" / "20240501T000000Z-dead0001-00003.parquet"
    assert orphan.is_file()
    hour_ago = time.time() - 2 * 3600
    os.utime(orphan, (hour_ago, hour_ago))
    plan = plan_run(settings_for(source, output), MODEL_VERSION)
    assert plan.orphans_removed == [str(orphan)]
    assert not orphan.exists() and plan.to_process == 5


def test_plan_of_a_missing_source_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SourceNotFoundError, match="source not found") as raised:
        plan_run(settings_for(missing, tmp_path / "out"), MODEL_VERSION)
    assert raised.value.uri == str(missing)
