"""The run summary (tasks/batch/summary.py): counts that add up, masking, the commit task."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from video_fixtures import make_test_pattern

from emotion_model.labels import EMOTION_LABELS
from emotion_model.video_writer import encode_video
from tasks.batch.infer import ShardResult, process_shard
from tasks.batch.planning import ModelInfo, RunPlan, plan_run, preflight
from tasks.batch.predictors import load_predictor
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import ShardWriter, prob_columns, run_summary_key
from tasks.batch.summary import build_summary, commit_run_summary
from tasks.common.listing import local_etag
from tasks.errors import error_line

RUN_ID = "20240501T000000Z-summ0001"
DATE = "2024-05-01"
STARTED = dt.datetime(2024, 5, 1, 0, 0, 0, tzinfo=dt.UTC)
FINISHED = STARTED + dt.timedelta(seconds=10)
SECRETS = {"key": "AKIAEXAMPLEKEY", "secret": "hunter2-secret", "endpoint_url": "http://x:9"}
"""Storage options with credentials (a local source ignores them; the summary must mask them)."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v0, v1, v3, v4: 1-second videos (one 1 s clip each); v2_bad.mp4: text, not a video."""
    root = tmp_path_factory.mktemp("summary-source")
    for i in (0, 1, 3, 4):
        encode_video(root / f"v{i}.mp4", make_test_pattern(10, 48, 64, seed=i), fps=10,
                     options={"preset": "ultrafast"})
    (root / "v2_bad.mp4").write_text("this is not a video\n" * 20)
    return root


@dataclass(frozen=True)
class Run:
    """A run done by hand, step by step as the flow does it, with shard 1 unable to write."""

    settings: BatchSettings
    model: ModelInfo
    plan: RunPlan
    results: list[ShardResult]
    failed: dict[int, str]
    retried: ShardResult
    """Shard 1 run again into a writable output: what a completed run would have had."""


def settings_for(source: Path, output: Path, model_path: Path) -> BatchSettings:
    return BatchSettings.from_parameters(
        source=str(source), output=str(output), model=str(model_path), device="cpu",
        clip_seconds=1.0, batch_size=2, shard_size=2, max_videos=3, storage_options=SECRETS)


@pytest.fixture(scope="module")
def run(source: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """listed 5: v0 done before, v1 + v2_bad in shard 0, v3 in shard 1, v4 over max_videos."""
    output = tmp_path_factory.mktemp("summary-out")
    settings = settings_for(source, output, model_path)
    model = preflight(settings)
    v0 = source / "v0.mp4"
    with ShardWriter(str(output), "20240430T000000Z-prev0001", 0, "2024-04-30",
                     model_version=model.model_version) as writer:
        st = v0.stat()
        writer.add_video(video_uri=str(v0), video_etag=local_etag(st.st_size, st.st_mtime_ns),
                         video_bytes=st.st_size, video_duration_s=1.0, num_clips=1,
                         label="happy", confidence=0.2, **prob_columns([1 / 6] * 6))
    plan = plan_run(settings, model.model_version)
    predictor = load_predictor(model.uri, "cpu")
    results = [process_shard(0, plan.shards[0].videos, settings, run_id=RUN_ID,
                             predictor=predictor, date=DATE)]
    # shard 1 cannot write: a folder sits where its predictions file goes
    (output / "predictions" / f"date={DATE}" / f"{RUN_ID}-00001.parquet").mkdir(parents=True)
    failed: dict[int, str] = {}
    try:
        process_shard(1, plan.shards[1].videos, settings, run_id=RUN_ID, predictor=predictor,
                      date=DATE)
    except Exception as exc:  # as the flow collects a shard that failed after its retries
        failed[1] = error_line(exc)
    writable = settings.model_copy(update={"output": str(output / "elsewhere")})
    retried = process_shard(1, plan.shards[1].videos, writable, run_id=RUN_ID,
                            predictor=predictor, date=DATE)
    return Run(settings, model, plan, results, failed, retried)


def summary_of(run: Run, *, results: list[ShardResult] | None = None,
               failed: dict[int, str] | None = None) -> dict[str, Any]:
    return build_summary(run_id=RUN_ID, settings=run.settings, model=run.model, plan=run.plan,
                         results=run.results if results is None else results,
                         failed_shards=run.failed if failed is None else failed,
                         started_at=STARTED, finished_at=FINISHED)


def assert_counts_add_up(counts: dict[str, int]) -> None:
    assert counts["listed"] == (counts["skipped_done"] + counts["deferred_max_videos"]
                                + counts["succeeded"] + counts["failed"])
    assert counts["processed"] == counts["succeeded"] + counts["failed"]


def test_the_run_went_as_planned(run: Run) -> None:
    assert [[Path(v.uri).name for v in s.videos] for s in run.plan.shards] == [
        ["v1.mp4", "v2_bad.mp4"], ["v3.mp4"]]
    (result,) = run.results
    assert (result.succeeded, result.failed, result.clips) == (1, 1, 1)
    assert list(run.failed) == [1]
    assert run.failed[1].startswith("IsADirectoryError: ") and "\n" not in run.failed[1]
    assert (run.retried.succeeded, run.retried.clips) == (1, 1)


def test_a_failed_shard_counts_its_videos_failed_at_stage_write(run: Run) -> None:
    summary = summary_of(run)
    counts = summary["counts"]
    assert counts == {"listed": 5, "skipped_not_video": 0, "skipped_done": 1,
                      "deferred_max_videos": 1, "processed": 3, "succeeded": 1, "failed": 2,
                      "partial": 0, "no_face": 0, "faces": 0, "clips": 1,
                      "clips_no_audio": 0}
    assert_counts_add_up(counts)
    assert summary["status"] == "failed"
    assert summary["failed_by_stage"] == {"decode": 1, "write": 1}
    assert summary["failed_shards"] == {"1": run.failed[1]}
    assert summary["shards"] == [run.results[0].as_dict()]


def test_a_completed_run(run: Run) -> None:
    summary = summary_of(run, results=[*run.results, run.retried], failed={})
    counts = summary["counts"]
    assert (counts["succeeded"], counts["failed"], counts["clips"]) == (2, 1, 2)
    assert_counts_add_up(counts)
    assert summary["status"] == "completed" and summary["failed_shards"] == {}
    assert summary["failed_by_stage"] == {"decode": 1}
    assert sum(summary["label_distribution"].values()) == 2
    assert [s["shard"] for s in summary["shards"]] == [0, 1]


def test_rates_times_model_and_labels(run: Run) -> None:
    summary = summary_of(run)
    assert summary["run_id"] == RUN_ID and summary["model_version"] == run.model.model_version
    assert (summary["started_at"], summary["finished_at"]) == (
        "2024-05-01T00:00:00+00:00", "2024-05-01T00:00:10+00:00")
    assert summary["wall_s"] == 10.0
    assert (summary["clips_per_s"], summary["videos_per_s"]) == (0.1, 0.1)
    assert summary["model"] == {"uri": run.model.uri, "model_version": run.model.model_version,
                                "untrained": True, "num_frames": 16, "img_size": 64,
                                "crop": "frame", "modality": "video"}
    assert list(summary["label_distribution"]) == list(EMOTION_LABELS)
    assert summary["label_distribution"] == {
        label: run.results[0].labels.get(label, 0) for label in EMOTION_LABELS}
    assert summary["timings"] == {"decode_s": round(run.results[0].decode_s, 3),
                                  "detect_s": 0.0, "infer_s": round(run.results[0].infer_s, 3)}


def test_secrets_are_masked_in_the_parameters(run: Run) -> None:
    summary = summary_of(run)
    assert summary["parameters"]["storage_options"] == {
        "key": "***", "secret": "***", "endpoint_url": "http://x:9"}
    assert summary["parameters"]["max_videos"] == 3
    text = json.dumps(summary, default=str)
    assert "hunter2-secret" not in text and "AKIAEXAMPLEKEY" not in text


@flow(name="commit-summary-test", validate_parameters=False)
def commit_in_a_flow(summary: dict[str, Any], settings: BatchSettings) -> str:
    return commit_run_summary(summary, settings)


def test_commit_writes_the_summary_and_a_table_artifact(
    prefect_server: None, run: Run, tmp_path: Path
) -> None:
    settings = run.settings.model_copy(update={"output": str(tmp_path / "out")})
    summary = summary_of(run)
    state = commit_in_a_flow(summary, settings, return_state=True)
    uri = state.result()
    assert uri == run_summary_key(str(tmp_path / "out"), RUN_ID)
    assert uri == str(tmp_path / "out" / "runs" / f"{RUN_ID}.json")
    written = json.loads(Path(uri).read_text())
    assert written == json.loads(json.dumps(summary, default=str))
    assert "hunter2-secret" not in Path(uri).read_text()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (artifact,) = artifacts
    assert artifact.key == "batch-inference-summary" and artifact.type == "table"
    assert f"batch-inference run {RUN_ID}: failed" in (artifact.description or "")
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    table = {row["metric"]: row["value"] for row in rows}
    assert table["listed"] == 5 and table["failed"] == 2 and table["status"] == "failed"
    assert table["model_version"] == run.model.model_version
    assert table["label:angry"] == summary["label_distribution"]["angry"]
