"""The run report: built by the real batch flow at the end of each run (S3 through the fault
proxy, bad videos, a read that keeps failing), opened in a real headless Chromium with the
network blocked; a run with no videos and a run where every video failed; the drift banner and
the label mix of the runs before; ``emotion-pipeline report``."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import PageVisit, open_offline
from matplotlib.image import imread
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from video_fixtures import make_test_pattern

from cli.main import main
from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference
from tasks.batch.report import build_run_report, latest_run_id, report_key
from tasks.batch.sink import run_summary_key

GOOD = [f"good/v{i}.mp4" for i in range(4)]
BAD = {"bad/zero.mp4": b"", "bad/text.mp4": b"this is text, renamed to .mp4\n" * 40}
COUNT_KEYS = ("listed", "succeeded", "skipped_done", "deferred_max_videos", "failed", "no_face",
              "partial", "faces", "clips", "clips_no_audio", "skipped_not_video")


def _write_videos(root: Path, *, good: int = len(GOOD), bad: bool = True) -> Path:
    for i, key in enumerate(GOOD[:good]):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        encode_video(root / key, make_test_pattern(10 + 5 * i, 64, 64, seed=i), fps=10)
    if bad:
        truncated = (root / GOOD[0]).read_bytes() if good else b"\x00" * 100
        for key, data in {**BAD, "bad/truncated.mp4": truncated[: len(truncated) // 3]}.items():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)
    (root / "poster.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def _run(source: str, output: str, model_path: Path, **extra: Any) -> Any:
    return batch_inference(source=source, model=str(model_path), output=output,
                           clip_seconds=1.0, batch_size=4, shard_size=4, device="cpu", **extra)


def _report_artifact(flow_run_id: Any) -> Any:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    (artifact,) = [a for a in artifacts if a.key == "batch-inference-report"]
    return artifact


def _screenshot_is_a_page(png: bytes) -> None:
    pixels = imread(io.BytesIO(png), format="png")[..., :3]
    assert pixels.shape[0] > 900 and pixels.shape[1] == 1200
    assert pixels.std() > 0.05  # not blank
    assert len(np.unique(pixels.reshape(-1, 3).round(2), axis=0)) > 50  # text and charts


def _assert_shows_the_summary(visit: PageVisit, summary: dict[str, Any], url: str) -> None:
    assert visit.requests == [url]  # nothing but the page itself: no CDN, font or image
    assert not visit.failed and not visit.page_errors and not visit.console_errors
    assert visit.counts == {k: f"{summary['counts'][k]:,}" for k in COUNT_KEYS}
    assert summary["run_id"] in visit.title and summary["status"] in visit.title
    assert summary["model_version"] in visit.text
    assert f"{summary['clips_per_s']:.2f}" in visit.text  # timings


def test_the_report_of_a_real_run_with_faults_and_bad_videos_opens_offline(
    prefect_server: None, s3_server: Any, fault_proxy: Any, model_path: Path, tmp_path: Path
) -> None:
    bucket = f"report-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    root = _write_videos(tmp_path / "src")
    for path in root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"videos/{path.relative_to(root)}")
    retried = fault_proxy.fail(status=503, method="GET", path=r"/videos/good/v1\.mp4$")
    lost = fault_proxy.fail(status=503, method="GET", path=r"/videos/good/v3\.mp4$", times=None)
    options = {**fault_proxy.storage_options,
               "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    output = f"s3://{bucket}/out"

    summary = _run(f"s3://{bucket}/videos/", output, model_path, storage_options=options)

    assert retried.injected == 1 and lost.injected >= 2
    c = summary["counts"]
    assert (c["listed"], c["succeeded"], c["failed"], c["skipped_not_video"]) == (7, 3, 4, 1)
    assert summary["report_uri"] == report_key(output, summary["run_id"])
    page = tmp_path / "report.html"
    page.write_bytes(client.get_object(
        Bucket=bucket, Key=f"out/reports/{summary['run_id']}.html")["Body"].read())
    visit = open_offline(page, screenshot=tmp_path / "report.png")

    _assert_shows_the_summary(visit, summary, page.resolve().as_uri())
    _screenshot_is_a_page(visit.screenshot)
    errors = visit.text.split("Errors", 1)[1].split("Timings", 1)[0]
    assert "read" in errors and "decode" in errors  # grouped by stage, with their types
    assert "good/v3.mp4" in errors and "bad/zero.mp4" in errors  # examples
    assert "Least confident videos" in visit.text and "timeline of" in page.read_text()
    assert "first run on this output" in visit.text  # the drift check had nothing to compare


def test_a_run_with_no_videos_and_one_where_every_video_failed(
    prefect_server: None, model_path: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = _write_videos(tmp_path / "broken", good=0)
    for name, source in (("empty", empty), ("broken", broken)):
        output = tmp_path / f"out-{name}"
        state = _run(str(source), str(output), model_path, return_state=True)
        summary = state.result()
        page = Path(summary["report_uri"])
        assert page == output / "reports" / f"{summary['run_id']}.html"
        artifact = _report_artifact(state.state_details.flow_run_id)  # the run links its page
        assert page.resolve().as_uri() in str(artifact.data)  # a link artifact (stored as markdown)
        visit = open_offline(page, screenshot=tmp_path / f"{name}.png")
        _assert_shows_the_summary(visit, summary, page.resolve().as_uri())
        _screenshot_is_a_page(visit.screenshot)
        assert "No labelled videos in this run." in visit.text
        if name == "empty":
            assert summary["counts"]["listed"] == 0 and "No errors." in visit.text
        else:
            assert summary["counts"]["failed"] == summary["counts"]["listed"] == 3
            assert "CorruptVideoError" in visit.text or "EmptyVideoError" in visit.text


def _summary(run_id: str, mix: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "status": "completed", "model_version": "m1",
            "counts": {"listed": sum(mix.values()), "succeeded": sum(mix.values())},
            "label_distribution": mix, **extra}


def test_the_label_mix_of_the_runs_before_and_a_flagged_drift(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    runs = [f"2026120{d}T010000Z-0000000{d}" for d in range(1, 5)]
    before = {"happy": 50, "neutral": 40, "sad": 10}
    for run_id in runs[:3]:
        Path(run_summary_key(output, run_id)).parent.mkdir(parents=True, exist_ok=True)
        Path(run_summary_key(output, run_id)).write_text(json.dumps(_summary(run_id, before)))
    drift = {"test": "Jensen-Shannon distance", "distance": 0.42, "p_value": 1e-9,
             "threshold": 0.1, "flagged": True, "reference_runs": runs[:3]}
    Path(run_summary_key(output, runs[3])).write_text(json.dumps(
        _summary(runs[3], {"angry": 80, "sad": 20}, drift=drift)))

    assert latest_run_id(output) == runs[3]
    html = build_run_report(output).html  # no Parquet at all: the tables are empty
    assert "Drift flagged." in html and "0.420" in html and "above 0.1" in html
    history = html.split('id="history"', 1)[1].split('id="least-confident"', 1)[0]
    assert all(run_id in history for run_id in runs) and "(this run)" in history
    older = build_run_report(output, runs[1]).html  # a past run sees only the runs before it
    assert runs[0] in older and runs[2] not in older.split('id="history"', 1)[1]


def test_report_command_writes_the_page_and_refuses_a_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    run_id = "20261201T010000Z-00000001"
    (output / "runs").mkdir(parents=True)
    (output / "runs" / f"{run_id}.json").write_text(json.dumps(_summary(run_id, {"sad": 3})))
    html = tmp_path / "page.html"

    assert main(["report", str(output), "--html", str(html)]) == 0
    assert f"report of run {run_id}: {html}" in capsys.readouterr().out
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(output), "--run", "20261201T010000Z-99999999"]) == 2
    assert "no summary for run 20261201T010000Z-99999999" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    assert "no run summaries under" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_never_fails_the_run(
    prefect_server: None, model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _write_videos(tmp_path / "src", good=1, bad=False)
    output = tmp_path / "out"
    output.mkdir()
    (output / "reports").write_text("a file where the reports folder would go\n")

    summary = _run(str(source), str(output), model_path)

    assert summary["status"] == "completed" and summary["report_uri"] is None
    assert (output / "runs" / f"{summary['run_id']}.json").is_file()  # the summary is kept
    assert any("run report not written (rebuild it with `emotion-pipeline report" in r.message
               for r in caplog.records)
