"""Label drift through the real ``batch-inference`` flow: runs on the same output each write a
drift row and ``summary["drift"]``, compared with the runs before them; a drift step that fails
costs the run nothing but its drift record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from video_fixtures import make_test_pattern

from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift-videos")
    for i in range(3):
        encode_video(root / f"v{i}.mp4", make_test_pattern(10, 48, 64, seed=i), fps=10,
                     options={"preset": "ultrafast"})
    return root


def drift_rows(output: Path) -> dict[str, dict[str, Any]]:
    table = ds.dataset(output / "drift", format="parquet", partitioning="hive").to_table()
    return {row["run_id"]: row for row in table.to_pylist()}


def test_runs_on_one_output_compare_with_the_runs_before(
    prefect_server: None, three_videos: Path, model_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    params = {"source": str(three_videos), "output": str(output), "model": str(model_path),
              "clip_seconds": 1.0, "batch_size": 3, "device": "cpu"}
    first = batch_inference(**params)
    assert first["drift"]["note"].startswith("first run on this output")
    assert (first["drift"]["reference_runs"], first["drift"]["distance"]) == ([], None)
    assert first["drift"]["videos"] == 3 and not first["drift"]["flagged"]

    second = batch_inference(**params, reprocess=True)  # the same videos, the same labels
    drift = second["drift"]
    assert drift["reference_runs"] == [first["run_id"]]
    assert (drift["videos"], drift["reference_videos"]) == (3, 3)
    assert drift["distance"] == pytest.approx(0.0, abs=1e-7) and drift["p_value"] == 1.0
    assert not drift["flagged"] and drift["threshold"] == 0.1
    written = json.loads((output / "runs" / f"{second['run_id']}.json").read_text())
    assert written["drift"] == drift

    rows = drift_rows(output)
    assert set(rows) == {first["run_id"], second["run_id"]}
    assert rows[second["run_id"]]["reference_runs"] == [first["run_id"]]
    assert rows[second["run_id"]]["date"] == second["started_at"][:10]
    assert rows[first["run_id"]]["note"] == first["drift"]["note"]

    # nothing new and the drift folder unwritable (a file where it goes): the run completes,
    # its summary is committed and says why it has no drift record
    shutil.rmtree(output / "drift")
    (output / "drift").write_text("not a folder\n")
    third = batch_inference(**params)
    assert third["counts"]["succeeded"] == 0
    assert third["drift"]["error"].startswith(("FileExistsError", "NotADirectoryError"))
    written = json.loads((output / "runs" / f"{third['run_id']}.json").read_text())
    assert written["drift"] == third["drift"] and written["status"] == "completed"
