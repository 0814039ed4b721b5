"""Storage faults between s3fs and S3 (the fault proxy in front of the moto server): 500/503,
connection resets and stalls on listing, reads and output writes are retried and the run
completes with nothing lost; a fault that persists ends that video (or that shard's write) as
an error and the summary says so. botocore's own retries are off, so the pipeline's are tested.

Reused: tests/flows/test_batch_inference.py proves a shard whose output PUT fails on every
in-task try is retried by Prefect without duplicates, and that a missing output bucket or an
unwritable local output fails the run before any video is read.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import assert_counts_add_up, assert_each_video_once
from video_fixtures import make_test_pattern

import flows.batch_inference as batch_module
from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference
from tasks.batch.infer import infer_shard
from tasks.errors import OutputNotWritableError, RunFailedError

KEYS = [f"v{i}.mp4" for i in range(4)]


@pytest.fixture
def bucket(s3_server: Any, tmp_path: Path) -> str:
    """A bucket with four 1 s videos under ``videos/``."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    for i, key in enumerate(KEYS):
        path = encode_video(tmp_path / key, make_test_pattern(10, 64, 64, seed=i), fps=10)
        client.upload_file(str(path), name, f"videos/{key}")
    return name


def _options(proxy: Any) -> dict[str, Any]:
    """Through the proxy; one HTTP try per call and a 1 s read timeout (stalls time out)."""
    return {**proxy.storage_options, "config_kwargs": {
        "retries": {"total_max_attempts": 1}, "read_timeout": 1, "connect_timeout": 1}}


def _run(bucket: str, proxy: Any, model_path: Path, **extra: Any) -> dict[str, Any]:
    return batch_inference(source=f"s3://{bucket}/videos/", output=f"s3://{bucket}/out",
                           model=str(model_path), storage_options=_options(proxy),
                           clip_seconds=1.0, batch_size=2, shard_size=2, device="cpu", **extra)


def test_transient_faults_everywhere_are_retried_and_nothing_is_lost(
    prefect_server: None, s3_server: Any, fault_proxy: Any, bucket: str, model_path: Path
) -> None:
    listing = r"/videos/?\?.*list-type=2|prefix=videos"
    rules = {
        "list 503": fault_proxy.fail(status=503, method="GET", path=listing),
        "list stall": fault_proxy.stall(3.0, method="GET", path=listing),
        "read 500": fault_proxy.fail(status=500, method="GET", path=r"/videos/v0\.mp4$"),
        "read reset": fault_proxy.reset(method="GET", path=r"/videos/v1\.mp4$"),
        "read stall": fault_proxy.stall(3.0, method="GET", path=r"/videos/v2\.mp4$"),
        "write 503": fault_proxy.fail(status=503, method="PUT", path=r"/out/predictions/"),
        "write reset": fault_proxy.reset(method="PUT", path=r"/out/videos/"),
        "write stall": fault_proxy.stall(3.0, method="PUT", path=r"/out/runs/"),
    }
    summary = _run(bucket, fault_proxy, model_path)

    assert {name: rule.injected for name, rule in rules.items()} == dict.fromkeys(rules, 1)
    assert summary["status"] == "completed"
    c = summary["counts"]
    assert (c["listed"], c["succeeded"], c["failed"]) == (4, 4, 0)
    assert_counts_add_up(summary)
    so = dict(s3_server.storage_options)
    uris = {f"s3://{bucket}/videos/{k}" for k in KEYS}
    assert_each_video_once(f"s3://{bucket}/out", uris, so, summary["run_id"])


def test_a_read_that_keeps_failing_ends_that_video_only(
    prefect_server: None, s3_server: Any, fault_proxy: Any, bucket: str, model_path: Path
) -> None:
    rule = fault_proxy.fail(status=503, method="GET", path=r"/videos/v3\.mp4$", times=None)
    summary = _run(bucket, fault_proxy, model_path)

    assert rule.injected >= 2  # tried again before giving up
    assert summary["status"] == "completed"
    assert (summary["counts"]["succeeded"], summary["counts"]["failed"]) == (3, 1)
    assert summary["failed_by_stage"] == {"read": 1}
    assert_counts_add_up(summary)
    so = dict(s3_server.storage_options)
    _, errors = assert_each_video_once(f"s3://{bucket}/out",
                                       {f"s3://{bucket}/videos/{k}" for k in KEYS}, so)
    (row,) = errors.itertuples()
    assert row.video_uri.endswith("/v3.mp4") and row.stage == "read"
    # a read error is not "done": the next run (fault gone) processes it
    fault_proxy.clear()
    again = _run(bucket, fault_proxy, model_path)
    assert (again["counts"]["skipped_done"], again["counts"]["succeeded"]) == (3, 1)


def test_a_shard_write_that_keeps_failing_fails_the_run_and_the_summary_says_so(
    prefect_server: None, s3_server: Any, fault_proxy: Any, bucket: str, model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prefect's retry delays (2, 10, 30 s) cut to 0 so the test is quick; the tries still happen
    monkeypatch.setattr(batch_module, "infer_shard",
                        infer_shard.with_options(retry_delay_seconds=0))
    rule = fault_proxy.fail(status=503, method="PUT", path=r"/out/videos/.*-00001\.parquet$",
                            times=None)
    with pytest.raises(RunFailedError, match="1 of 2 shards failed to write") as raised:
        _run(bucket, fault_proxy, model_path)
    assert rule.injected >= 4  # every Prefect try retried in the task too

    so = dict(s3_server.storage_options)
    import json

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **so)
    (summary_key,) = fs.find(f"{bucket}/out/runs")
    assert summary_key.rsplit("/", 1)[1] in str(raised.value)
    summary = json.loads(fs.cat_file(summary_key))
    assert summary["status"] == "failed" and list(summary["failed_shards"]) == ["1"]
    assert "injected by the test FaultProxy" in summary["failed_shards"]["1"]  # the cause
    assert (summary["counts"]["succeeded"], summary["counts"]["failed"]) == (2, 2)
    assert summary["failed_by_stage"] == {"write": 2}
    assert_counts_add_up(summary)
    # shard 0 is whole; shard 1 left no videos file, so its two videos are redone next run
    videos = [k for k in fs.find(f"{bucket}/out/videos")]
    assert len(videos) == 1 and videos[0].endswith("-00000.parquet")
    fault_proxy.clear()
    again = _run(bucket, fault_proxy, model_path)
    assert (again["counts"]["skipped_done"], again["counts"]["succeeded"]) == (2, 2)


def test_unwritable_s3_output_fails_before_any_video_is_read(
    prefect_server: None, fault_proxy: Any, bucket: str, model_path: Path
) -> None:
    rule = fault_proxy.fail(status=403, code="AccessDenied", method="PUT", path=r"/out/",
                            times=None)
    with pytest.raises(OutputNotWritableError, match=r"/out: output location is not writable"):
        _run(bucket, fault_proxy, model_path)
    assert rule.injected >= 1
    assert fault_proxy.requests(path=r"/videos") == []  # neither listed nor read
