"""``batch-inference`` with ``task_runner="dask"`` on real ``distributed.LocalCluster``s of worker
processes (each under a nanny), against the threads runner on the same videos and model.

DESIGN.md "Scale": shards run on an existing engine; a shard that is rerun on another worker
rewrites its own keys; each GPU runs one shard at a time. Worker processes run torch on one
thread (Dask's nanny sets ``OMP_NUM_THREADS=1``), like the tests' own process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pandas as pd
import pytest
import torch
from video_fixtures import make_test_pattern

from emotion_model.labels import EMOTION_LABELS
from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference
from tasks.batch.cluster import local_cluster
from tasks.batch.planning import preflight
from tasks.batch.predictors import predictor_cache_info
from tasks.batch.settings import BatchSettings

PROBS = [f"prob_{label}" for label in EMOTION_LABELS]
SECONDS = (1.0, 2.5, 1.5, 2.0, 0.8, 2.2, 1.2, 3.0)
"""Durations of the test videos: 1 to 3 one-second clips each."""


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small H.264 videos (96x64, 10 fps, 0.8-3 s) in one folder."""
    root = tmp_path_factory.mktemp("dask-videos")
    for i, seconds in enumerate(SECONDS):
        frames = make_test_pattern(round(seconds * 10), 64, 96, seed=100 + i)
        encode_video(root / f"v{i}.mp4", frames, fps=10, options={"preset": "ultrafast"})
    return root


def params(videos: Path, model_path: Path, output: Path, **extra: Any) -> dict[str, Any]:
    """Flow parameters shared by every run here: 2 videos per shard, batch 1 (so a clip's
    probabilities do not depend on which clips share its batch)."""
    return {"source": str(videos), "model": str(model_path), "output": str(output),
            "clip_seconds": 1.0, "shard_size": 2, "batch_size": 1, "device": "cpu", **extra}


def two_worker_cluster(**kwargs: Any) -> distributed.LocalCluster:
    """A cluster of 2 worker processes on 127.0.0.1, each under a nanny."""
    return distributed.LocalCluster(n_workers=2, processes=True, host="127.0.0.1",
                                    dashboard_address=None, **kwargs)


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[tuple[Any, Any]]:
    """2 worker processes, 2 task slots each, each declaring one GPU (as
    ``dask-worker --nthreads 2 --resources GPU=1``); yields (cluster, client). Shared by the
    tests below (a worker killed by one is restarted by its nanny)."""
    environ = dict(os.environ)  # the nanny exports its worker settings into this process
    with two_worker_cluster(threads_per_worker=2, resources={"GPU": 1}) as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client
    os.environ.clear()
    os.environ.update(environ)


class ShardConcurrency(distributed.WorkerPlugin):
    """On each worker: how many shard tasks it started, and the most executing at once
    (counted from the worker's own task transitions, not from clocks)."""

    name = "shard-concurrency"

    def setup(self, worker: Any) -> None:
        self.running = self.most = self.started = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not str(key).startswith("infer_shard"):
            return
        if finish == "executing":
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        elif start == "executing":
            self.running -= 1


def _concurrency(dask_worker: Any) -> dict[str, int]:
    plugin = dask_worker.plugins[ShardConcurrency.name]
    return {"started": plugin.started, "most": plugin.most}


# --- helpers -------------------------------------------------------------------------------------
def predictions_of(output: Path) -> pd.DataFrame:
    """The run's clip rows, in (video, clip) order."""
    frame = pd.read_parquet(output / "predictions")
    return frame.sort_values(["video_uri", "clip_index"]).reset_index(drop=True)


def assert_every_video_once(output: Path, videos: Path, summary: dict[str, Any]) -> None:
    """Each video: one ``videos`` row, no ``errors`` row, its clip rows once; counts add up."""
    expected = sorted(str(p) for p in videos.glob("*.mp4"))
    rows = pd.read_parquet(output / "videos")
    assert sorted(rows["video_uri"]) == expected
    assert not (output / "errors").exists()
    clips = predictions_of(output)
    assert not clips.duplicated(["video_uri", "clip_index"]).any()
    assert sorted(set(clips["video_uri"])) == expected
    c = summary["counts"]
    assert summary["status"] == "completed" and summary["failed_shards"] == {}
    assert (c["listed"], c["succeeded"], c["failed"]) == (len(expected), len(expected), 0)
    assert c["clips"] == len(clips) == rows["num_clips"].sum()
    assert sorted(r["shard"] for r in summary["shards"]) == list(range(-(-len(expected) // 2)))


def pid_of(shard_result: dict[str, Any]) -> int:
    """The process id in a shard result's ``host:pid``."""
    return int(shard_result["worker"].rsplit(":", 1)[1])


def _executing(dask_worker: Any) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing]


# --- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"task_runner": "ray"}, "task_runner", "'threads' or 'dask'"),
        ({"task_runner": "dask"}, "dask_local_workers", "needs dask_address"),
        ({"task_runner": "dask", "dask_address": "tcp://10.0.0.5:8786",
          "dask_local_workers": 2}, "dask_local_workers", "not both"),
        ({"dask_address": "tcp://10.0.0.5:8786"}, "dask_address", "only used with"),
        ({"dask_local_workers": 2}, "dask_local_workers", "only used with"),
        ({"task_runner": "dask", "dask_address": "http://10.0.0.5:8786"}, "dask_address",
         "scheduler address"),
        ({"task_runner": "dask", "dask_address": "tcp://10.0.0.5"}, "dask_address",
         "scheduler address"),
        ({"task_runner": "dask", "dask_local_workers": 0}, "dask_local_workers",
         "greater than or equal to 1"),
    ],
)
def test_bad_runner_settings_fail_with_one_line_naming_the_field(
    extra: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ValueError, match=f"invalid parameter '{field}'") as info:
        BatchSettings.from_parameters(source="videos", model="model.safetensors", **extra)
    message = str(info.value)
    assert fragment.replace("'", "") in message.replace("'", "") and "\n" not in message
    assert message.count("invalid parameter") == 1


def test_runner_settings_accept_an_address_or_a_worker_count() -> None:
    base = {"source": "videos", "model": "model.safetensors", "task_runner": "dask"}
    remote = BatchSettings.from_parameters(**base, dask_address=" tls://scheduler.internal:8786 ")
    assert (remote.dask_address, remote.dask_local_workers) == ("tls://scheduler.internal:8786",
                                                                None)
    assert BatchSettings.from_parameters(**base, dask_local_workers=3).dask_local_workers == 3
    default = BatchSettings.from_parameters(source="videos", model="model.safetensors")
    assert default.task_runner == "threads"


def test_preflight_of_a_dask_run_loads_the_model_on_this_machines_cpu(
    model_path: Path, tmp_path: Path
) -> None:
    """The flow process of a Dask run needs no GPU: the workers run the model on theirs."""
    base = {"source": "videos", "model": str(model_path), "output": str(tmp_path),
            "device": "cuda"}
    on_dask = BatchSettings.from_parameters(**base, task_runner="dask", dask_local_workers=1)
    info = preflight(on_dask)
    assert info.untrained and len(info.model_version) == 12
    if not torch.cuda.is_available():  # the threads runner runs the model here: refused
        with pytest.raises(ValueError, match="no CUDA GPU"):
            preflight(BatchSettings.from_parameters(**base))


# --- the runs ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_local_workers_predict_what_the_threads_runner_predicts(
    prefect_server: None, videos: Path, model_path: Path, tmp_path: Path
) -> None:
    threads = batch_inference(**params(videos, model_path, tmp_path / "threads"))
    dask = batch_inference(**params(videos, model_path, tmp_path / "dask",
                                    task_runner="dask", dask_local_workers=2))

    assert_every_video_once(tmp_path / "dask", videos, dask)
    assert dask["counts"] == threads["counts"]
    # the shards ran in the local cluster's worker processes, not in this one
    assert all(pid_of(r) != os.getpid() for r in dask["shards"])
    assert all(pid_of(r) == os.getpid() for r in threads["shards"])
    # row for row: same videos, same clips, same probabilities and labels
    a, b = predictions_of(tmp_path / "threads"), predictions_of(tmp_path / "dask")
    same = ["video_uri", "video_etag", "video_bytes", "video_duration_s", "clip_index",
            "clip_start_s", "clip_end_s", "label", "model_version"]
    pd.testing.assert_frame_equal(a[same], b[same])
    np.testing.assert_allclose(a[PROBS].to_numpy(), b[PROBS].to_numpy(), rtol=0, atol=1e-6)
    assert set(a["run_id"]) == {threads["run_id"]} and set(b["run_id"]) == {dask["run_id"]}


@pytest.mark.slow
def test_local_cluster_workers_get_their_torch_threads_and_glibc_defaults() -> None:
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY")
    before = {k: os.environ.get(k) for k in keys}
    with local_cluster(n_workers=1, torch_threads=2) as cluster, \
            distributed.Client(cluster) as client:
        assert list(client.nthreads().values()) == [1]  # one shard at a time
        assert client.submit(_torch_threads, pure=False).result() == 2  # in a task's thread
        (worker_env,) = client.run(lambda: {k: os.environ.get(k) for k in keys}).values()
        assert worker_env["MALLOC_TRIM_THRESHOLD_"] == before["MALLOC_TRIM_THRESHOLD_"]
        assert worker_env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert {k: os.environ.get(k) for k in keys} == before  # this process's environment is back


@pytest.mark.slow
def test_worker_killed_mid_shard_its_shard_reruns_on_the_other(
    prefect_server: None, videos: Path, model_path: Path, tmp_path: Path,
    gpu_cluster: tuple[Any, Any],
) -> None:
    cluster, client = gpu_cluster
    pids: dict[str, int] = client.run(os.getpid)  # the worker processes, not their nannies
    assert len(set(pids.values()) - {os.getpid()}) == 2
    killed: dict[str, Any] = {}
    stop = threading.Event()

    def kill_first_busy_worker() -> None:
        """As soon as a worker is executing a shard task, SIGKILL its process."""
        while not stop.wait(0.05):
            for address, keys in client.run(_executing).items():
                if keys:
                    os.kill(pids[address], signal.SIGKILL)
                    killed.update(address=address, pid=pids[address], keys=keys)
                    return

    killer = threading.Thread(target=kill_first_busy_worker, daemon=True)
    killer.start()
    try:
        summary = batch_inference(**params(videos, model_path, tmp_path / "out",
                                           task_runner="dask",
                                           dask_address=cluster.scheduler_address))
    finally:
        stop.set()
        killer.join(timeout=10)

    assert killed, "no shard was seen executing"
    assert killed["keys"][0].startswith("infer_shard")
    # the run completed, every video exactly once, and no result came from the dead process
    assert_every_video_once(tmp_path / "out", videos, summary)
    ran_in = {pid_of(r) for r in summary["shards"]}
    assert killed["pid"] not in ran_in
    survivor = next(pid for address, pid in pids.items() if address != killed["address"])
    assert survivor in ran_in
    # one file per table and shard: the rerun shard rewrote its own keys
    for table in ("predictions", "videos"):
        names = sorted(p.name for p in (tmp_path / "out" / table).rglob("*.parquet"))
        assert names == [f"{summary['run_id']}-{s:05d}.parquet" for s in range(4)]


@pytest.mark.slow
def test_gpu_workers_run_one_shard_at_a_time_and_load_the_model_once(
    prefect_server: None, videos: Path, model_path: Path, tmp_path: Path,
    gpu_cluster: tuple[Any, Any],
) -> None:
    cluster, client = gpu_cluster
    client.wait_for_workers(2)
    assert set(client.nthreads().values()) == {2}  # each worker could run two tasks at once
    client.register_plugin(ShardConcurrency())
    summary = batch_inference(**params(videos, model_path, tmp_path / "out",
                                       task_runner="dask",
                                       dask_address=cluster.scheduler_address))
    assert_every_video_once(tmp_path / "out", videos, summary)

    # every shard reserved its worker's one GPU: never two shards at once on a worker
    seen = client.run(_concurrency)
    assert sum(s["started"] for s in seen.values()) == len(summary["shards"]) == 4
    assert {s["most"] for s in seen.values() if s["started"]} == {1}, seen

    # one torch thread per worker process, and each loaded the model once for all its shards
    assert set(client.run(_torch_threads).values()) == {1}
    shards_per_pid = defaultdict(int)
    for r in summary["shards"]:
        shards_per_pid[pid_of(r)] += 1
    caches = client.run(predictor_cache_info)
    pids = client.run(os.getpid)
    for address, info in caches.items():
        if shards_per_pid.get(pids[address]):
            assert info == {"loads": 1, "cached": 1}, (address, shards_per_pid)
    assert max(shards_per_pid.values()) >= 2  # so "once" covered more than one shard
    assert set(shards_per_pid) <= set(pids.values())


def _torch_threads() -> int:
    return torch.get_num_threads()
