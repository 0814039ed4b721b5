"""The flow's process killed (SIGKILL) in the middle of a shard: no partial Parquet file is
visible, and the next run completes the work with no duplicates and every video accounted for
exactly once. The killed run is a real child process running the flow against the session's
Prefect test server; its output goes to S3 through the fault proxy, which holds shard 1's first
output PUT open until the kill (so the process dies mid-write).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import s3fs
from reliability_helpers import assert_counts_add_up, assert_each_video_once
from video_fixtures import make_test_pattern

from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference

KEYS = [f"v{i}.mp4" for i in range(4)]
_CHILD = """
import json, sys
from flows.batch_inference import batch_inference
batch_inference(**json.loads(sys.argv[1]))
"""


def test_sigkill_mid_shard_then_next_run_completes_exactly_once(
    prefect_server: None, s3_server: Any, fault_proxy: Any, model_path: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    bucket = f"crash-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    for i, key in enumerate(KEYS):
        path = encode_video(tmp_path / key, make_test_pattern(10, 64, 64, seed=i), fps=10)
        client.upload_file(str(path), bucket, f"videos/{key}")
    output = f"s3://{bucket}/out"
    params = {"source": f"s3://{bucket}/videos/", "output": output, "model": str(model_path),
              "clip_seconds": 1.0, "batch_size": 2, "shard_size": 2, "device": "cpu"}
    hold = fault_proxy.stall(300, method="PUT", path=r"/out/predictions/.*-00001\.parquet$",
                             then="reset")

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child_params = {**params, "storage_options": fault_proxy.storage_options}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(child_params)],
                             env=env, cwd=Path(__file__).parents[2],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while hold.injected == 0 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hold.injected == 1, "the child never reached shard 1's write"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    fault_proxy.clear()

    so = dict(s3_server.storage_options)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **so)
    visible = [k for k in fs.find(f"{bucket}/out") if k.endswith(".parquet")]
    # shard 0 is whole; shard 1 left nothing; no run summary for the killed run
    assert sorted(k.split("/")[2] for k in visible) == ["predictions", "videos"]
    assert all(k.endswith("-00000.parquet") for k in visible)
    for key in visible:  # every visible file is whole
        with fs.open(key, "rb") as fh:
            assert pq.ParquetFile(fh).metadata.num_rows > 0
    assert not fs.exists(f"{bucket}/out/runs")

    summary = batch_inference(**params, storage_options=so)
    c = summary["counts"]
    assert summary["status"] == "completed"
    assert (c["listed"], c["skipped_done"], c["succeeded"], c["failed"]) == (4, 2, 2, 0)
    assert_counts_add_up(summary)
    # over both runs: every video exactly once, no clip twice
    assert_each_video_once(output, {f"s3://{bucket}/videos/{k}" for k in KEYS}, so)


def test_killed_between_predictions_and_videos_writes_leaves_no_duplicate_clips(
    prefect_server: None, model_path: Path, tmp_path: Path
) -> None:
    """The narrow window: a shard's predictions file written, its videos file never. The next
    run sweeps the dead shard's predictions (older than ORPHAN_AGE_S) before redoing its
    videos, so every clip appears once; a young orphan (a shard still committing) is kept."""
    from tasks.batch.sink import ORPHAN_AGE_S, sweep_orphan_predictions

    source, output = tmp_path / "videos", tmp_path / "out"
    for i, key in enumerate(KEYS):
        encode_video(source / key, make_test_pattern(12, 48, 48, seed=i), fps=6)
    first = batch_inference(source=str(source), model=str(model_path), output=str(output),
                            shard_size=2)
    videos_files = sorted((output / "videos").rglob("*.parquet"))
    assert len(videos_files) == 2
    dead = videos_files[0]
    dead.unlink()  # the process died right after this shard's predictions PUT
    orphan = output / "predictions" / dead.relative_to(output / "videos")
    assert orphan.exists()
    assert sweep_orphan_predictions(str(output)) == []  # young: it may still be committing
    old = time.time() - ORPHAN_AGE_S - 60
    os.utime(orphan, (old, old))

    second = batch_inference(source=str(source), model=str(model_path), output=str(output),
                             shard_size=2)
    assert not orphan.exists()
    assert second["counts"]["succeeded"] == 2 and second["counts"]["skipped_done"] == 2
    assert_counts_add_up(first)
    assert_counts_add_up(second)
    assert_each_video_once(str(output), {str(source / k) for k in KEYS})
