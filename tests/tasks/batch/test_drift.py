"""Label drift across nights (tasks/batch/drift.py): the reference runs read from a real folder
and from the moto S3 server, the Jensen-Shannon test, the drift row, the task and the artifact."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from scipy.spatial.distance import jensenshannon

from emotion_model.labels import EMOTION_LABELS
from tasks.batch.drift import (
    DRIFT_SCHEMA,
    TEST_NAME,
    DriftResult,
    check_label_drift,
    drift_key,
    label_drift,
    noise_distance,
    recent_summaries,
    write_drift_row,
)
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import run_summary_key, write_run_summary
from tasks.batch.summary import commit_run_summary
from tasks.common.storage import atomic_write_bytes, resolve

DATE = "2026-03-08"
STEADY = {"neutral": 60, "happy": 20, "sad": 20}
SHIFTED = {"neutral": 20, "happy": 60, "sad": 20}


def run_id(day: int, suffix: str = "0a1b2c3d") -> str:
    return f"202603{day:02d}T020000Z-{suffix}"


def summary(rid: str, labels: dict[str, int], status: str = "completed") -> dict[str, Any]:
    """The parts of a run summary drift reads (a real one has many more keys)."""
    return {"run_id": rid, "status": status,
            "label_distribution": {label: labels.get(label, 0) for label in EMOTION_LABELS}}


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict | None]]:
    """An empty output: a local folder, or a prefix of a fresh bucket on the moto server."""
    if request.param == "local":
        yield str(tmp_path / "out"), None
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        yield f"s3://{bucket}/out", dict(server.storage_options)


def times(labels: dict[str, int], factor: float) -> dict[str, int]:
    return {k: round(v * factor) for k, v in labels.items()}


def write(output: str, so: dict | None, *summaries: dict[str, Any]) -> None:
    for s in summaries:
        write_run_summary(output, s["run_id"], s, so)


# --- the reference runs ------------------------------------------------------------------------
def test_newest_runs_before_this_one_oldest_first_within_the_window(where: tuple) -> None:
    output, so = where
    days = [5, 1, 4, 2, 6, 3]  # written out of order: the run ids give the order
    write(output, so, *(summary(run_id(d), STEADY) for d in days))
    found = recent_summaries(output, before_run_id=run_id(5), limit=3, storage_options=so)
    assert [s["run_id"] for s in found] == [run_id(2), run_id(3), run_id(4)]
    assert found[0]["label_distribution"]["neutral"] == 60
    everything = recent_summaries(output, before_run_id=run_id(9), limit=50, storage_options=so)
    assert [s["run_id"] for s in everything] == [run_id(d) for d in range(1, 7)]
    # same second: the suffix orders them, and the run itself is never its own reference
    assert [s["run_id"] for s in recent_summaries(
        output, before_run_id=run_id(6, "ffffffff"), limit=1, storage_options=so)] == [run_id(6)]
    assert recent_summaries(output, before_run_id=run_id(1), limit=7, storage_options=so) == []


def test_partial_failed_and_unlabelled_runs_are_skipped(
    where: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    output, so = where
    write(output, so, summary(run_id(1), STEADY), summary(run_id(3), STEADY, status="failed"),
          summary(run_id(4), {}))  # a face model's night with no face: nothing labelled
    good = json.dumps(summary(run_id(2), STEADY)).encode()
    atomic_write_bytes(run_summary_key(output, run_id(2)), good[: len(good) // 2], so)  # partial
    atomic_write_bytes(run_summary_key(output, run_id(5)), b"[1, 2, 3]", so)  # JSON, not a summary
    atomic_write_bytes(run_summary_key(output, "notes"), b"not a run", so)  # not a run id
    with caplog.at_level(logging.WARNING, logger="tasks.batch.drift"):
        found = recent_summaries(output, before_run_id=run_id(9), limit=1, storage_options=so)
    assert [s["run_id"] for s in found] == [run_id(1)]  # skipped runs do not use up the window
    skipped = [r.getMessage() for r in caplog.records if r.name == "tasks.batch.drift"]
    assert len(skipped) == 2 and all("unreadable" in m for m in skipped)
    assert any(run_id(2) in m for m in skipped) and any(run_id(5) in m for m in skipped)


def test_no_runs_folder_means_no_reference(where: tuple) -> None:
    output, so = where
    assert recent_summaries(output, before_run_id=run_id(1), limit=7, storage_options=so) == []


# --- the test ----------------------------------------------------------------------------------
def js_distance_by_hand(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt(H(M) - (H(P) + H(Q)) / 2) in bits, M the mean: the definition, independently."""
    def entropy(x: np.ndarray) -> float:
        x = x[x > 0]
        return float(-(x * np.log2(x)).sum())

    return float(np.sqrt(entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2))


def test_a_known_shift_is_flagged() -> None:
    refs = [summary(run_id(d), times(STEADY, 10)) for d in (1, 2, 3)]
    result = label_drift(run_id(4), times(SHIFTED, 10), refs, threshold=0.1)
    p = np.array([0, 0, 0, 60, 20, 20]) / 100
    q = np.array([0, 0, 0, 60, 180, 60]) / 300
    assert result.distance == pytest.approx(js_distance_by_hand(p, q), abs=1e-9)
    assert result.distance > 0.3 and result.flagged and result.p_value < 1e-10
    assert (result.videos, result.reference_videos) == (1000, 3000)
    assert result.reference_runs == (run_id(1), run_id(2), run_id(3))
    assert (result.test, result.threshold, result.note) == (TEST_NAME, 0.1, None)


def test_the_same_mix_is_not_flagged() -> None:
    refs = [summary(run_id(d), times(STEADY, 10)) for d in (1, 2)]
    result = label_drift(run_id(3), times(STEADY, 5), refs, threshold=0.1)
    assert result.distance == pytest.approx(0.0, abs=1e-7)
    assert result.p_value == pytest.approx(1.0) and not result.flagged and result.note is None
    # a 3-point wobble of big nights: "significant", yet not a shift worth a flag
    wobble = {"neutral": 11_400, "happy": 4300, "sad": 4300}
    big_refs = [summary(run_id(d), times(STEADY, 100)) for d in (1, 2)]
    big = label_drift(run_id(3), wobble, big_refs, threshold=0.1)
    assert big.p_value < 1e-6 and big.distance < 0.03 and not big.flagged


def test_distance_is_bounded_and_a_label_missing_on_one_side_counts_zero() -> None:
    result = label_drift(run_id(2), {"angry": 7}, [summary(run_id(1), {"happy": 9})],
                         threshold=1.0)
    assert result.distance == pytest.approx(1.0) and not result.flagged  # at most 1: never above
    assert result.p_value < 1e-3
    one_label = label_drift(run_id(2), {"sad": 400}, [summary(run_id(1), {"sad": 900})],
                            threshold=0.1)
    assert (one_label.distance, one_label.p_value, one_label.flagged) == (0.0, 1.0, False)


def test_the_first_run_says_there_is_nothing_to_compare() -> None:
    result = label_drift(run_id(1), STEADY, [], threshold=0.1)
    assert (result.distance, result.p_value, result.flagged) == (None, None, False)
    assert result.note is not None and result.note.startswith("first run on this output")
    assert (result.videos, result.reference_videos, result.reference_runs) == (100, 0, ())
    empty = label_drift(run_id(2), {}, [summary(run_id(1), STEADY)], threshold=0.1)
    assert empty.distance is None and not empty.flagged
    assert empty.note == "no labelled videos in this run: nothing to compare"
    assert empty.reference_runs == (run_id(1),)


def test_the_docstring_numbers_hold() -> None:
    """The threshold's reasons (module docstring): what 0.1 means, and where noise reaches."""
    mix = np.array([0.15, 0.10, 0.10, 0.25, 0.30, 0.10])
    moved = mix + np.array([0, 0, 0, 0.10, -0.10, 0])
    assert jensenshannon(moved, mix, base=2) == pytest.approx(0.115, abs=5e-4)
    uniform = np.full(6, 1 / 6)
    piled = uniform * 0.9 + np.eye(6)[0] * 0.1
    assert jensenshannon(piled, uniform, base=2) == pytest.approx(0.087, abs=5e-4)
    assert noise_distance(6, 250, 7 * 250) == pytest.approx(0.096, abs=2e-3)
    # the approximation against sampling itself: 95th percentile of 2000 nights of 200
    rng = np.random.default_rng(0)
    sampled = [jensenshannon(rng.multinomial(200, mix), rng.multinomial(1400, mix), base=2)
               for _ in range(2000)]
    assert np.percentile(sampled, 95) == pytest.approx(noise_distance(6, 200, 1400), rel=0.1)


def test_a_small_night_says_its_distance_is_noisy() -> None:
    refs = [summary(run_id(1), times(STEADY, 0.25))]
    result = label_drift(run_id(2), {"neutral": 4, "happy": 3, "sad": 3}, refs, threshold=0.1)
    assert result.note is not None and result.note.startswith("few videos")
    assert result.flagged and result.p_value > 0.05  # the p-value says: could be noise


# --- the row -----------------------------------------------------------------------------------
def read_rows(output: str, so: dict | None) -> pa.Table:
    fs, path = resolve(f"{output}/drift", so)
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()


def test_the_row_is_written_whole_at_its_key(where: tuple) -> None:
    output, so = where
    flagged = label_drift(run_id(4), SHIFTED, [summary(run_id(3), STEADY)], threshold=0.1)
    first = label_drift(run_id(1), STEADY, [], threshold=0.1)
    uri = write_drift_row(output, flagged, DATE, so)
    assert uri == drift_key(output, run_id(4), DATE)
    assert uri == f"{output}/drift/date={DATE}/{run_id(4)}.parquet"
    write_drift_row(output, first, "2026-03-05", so)
    write_drift_row(output, first, "2026-03-05", so)  # a retry overwrites: still one row
    table = read_rows(output, so)
    assert table.schema.remove(table.schema.get_field_index("date")) == DRIFT_SCHEMA
    rows = {r["run_id"]: r for r in table.to_pylist()}
    assert set(rows) == {run_id(1), run_id(4)}
    assert rows[run_id(4)]["reference_runs"] == [run_id(3)] and rows[run_id(4)]["flagged"]
    assert rows[run_id(4)]["distance"] == pytest.approx(flagged.distance)
    assert rows[run_id(1)]["distance"] is None and rows[run_id(1)]["p_value"] is None
    assert rows[run_id(1)]["note"] == first.note and not rows[run_id(1)]["flagged"]
    assert rows[run_id(1)]["date"] == "2026-03-05"
    fs, path = resolve(output, so)
    assert not [f for f in fs.find(path) if f.rsplit("/", 1)[-1].startswith(".")]  # no temp


def test_as_dict_is_the_row_without_its_timestamp() -> None:
    result = label_drift(run_id(2), SHIFTED, [summary(run_id(1), STEADY)], threshold=0.2)
    data = result.as_dict()
    assert set(data) == set(DRIFT_SCHEMA.names) - {"checked_at"}
    assert data["reference_runs"] == [run_id(1)] and json.loads(json.dumps(data)) == data
    assert DriftResult(**{**data, "reference_runs": tuple(data["reference_runs"])}) == result


# --- the task and the artifact -----------------------------------------------------------------
@flow(name="drift-test", validate_parameters=False)
def drift_then_commit(run: dict[str, Any], settings: BatchSettings) -> dict[str, Any]:
    """What the batch flow does after its shards: the drift task, then the summary commit."""
    run["drift"] = check_label_drift(run, settings, DATE).as_dict()
    commit_run_summary(run, settings)
    return run


def test_a_flagged_run_warns_and_marks_the_artifact(
    prefect_server: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = str(tmp_path / "out")
    write(output, None, *(summary(run_id(d), STEADY) for d in (1, 2, 3)))
    settings = BatchSettings(source="videos/", model="m.safetensors", output=output,
                             drift_window=2, drift_threshold=0.25)
    run = {**summary(run_id(4), SHIFTED), "model_version": "abc123", "clips_per_s": 1.0,
           "counts": {"succeeded": 100, "failed": 0, "skipped_done": 0}}
    task_log = logging.getLogger("prefect.task_runs")
    task_log.addHandler(caplog.handler)  # Prefect's run loggers do not propagate to the root
    try:
        state = drift_then_commit(run, settings, return_state=True)
    finally:
        task_log.removeHandler(caplog.handler)
    drift = state.result()["drift"]
    assert drift["flagged"] and drift["reference_runs"] == [run_id(2), run_id(3)]
    assert drift["threshold"] == 0.25 and drift["reference_videos"] == 200
    assert any(r.levelno == logging.WARNING and "label drift FLAGGED" in r.getMessage()
               for r in caplog.records)
    assert (tmp_path / "out" / "drift" / f"date={DATE}" / f"{run_id(4)}.parquet").is_file()
    assert json.loads((tmp_path / "out" / "runs" / f"{run_id(4)}.json").read_text())["drift"] \
        == drift

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert (artifact.description or "").startswith("DRIFT FLAGGED: batch-inference run")
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    table = {row["metric"]: row["value"] for row in rows}
    assert table["drift"].startswith("FLAGGED: distance ")
    assert table["drift:distance"] == pytest.approx(drift["distance"])
    assert (table["drift:threshold"], table["drift:reference_runs"]) == (0.25, 2)
