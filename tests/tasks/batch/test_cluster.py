"""Dask helpers (tasks/batch/cluster.py): local cluster environment, runner choice, resources."""

# tests/flows/test_dask.py covers the runs themselves, a worker's torch threads with an explicit
# torch_threads and GPU-declaring workers; here: the default thread share, values already set
# in this process, one worker process of one task slot.

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import distributed
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from tasks.batch.cluster import (
    current_dask_client,
    dask_task_runner,
    local_cluster,
    prefect_api_url,
    shard_resources,
)
from tasks.batch.settings import BatchSettings
from tasks.errors import NoDaskWorkersError

KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY")
MINE = {"OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": None, "MALLOC_TRIM_THRESHOLD_": "123",
        "OMP_WAIT_POLICY": "ACTIVE"}
"""This process's values while the cluster starts: each differs from what workers must get."""

pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning")


@dataclass(frozen=True)
class Started:
    client: distributed.Client
    before: dict[str, str]
    """This process's environment just before ``local_cluster``."""
    after: dict[str, str]
    """... and just after it returned."""


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    """``local_cluster(n_workers=1)`` started with `MINE` in this process's environment."""
    saved = dict(os.environ)
    try:
        for key, value in MINE.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        before = dict(os.environ)
        with local_cluster(n_workers=1) as cluster:
            after = dict(os.environ)
            with distributed.Client(cluster) as client:
                yield Started(client, before, after)
    finally:  # belt and braces: test_this_processs_whole_environment_is_put_back checks it
        os.environ.clear()
        os.environ.update(saved)


def test_the_worker_got_the_spawn_environment(started: Started) -> None:
    # a lambda runs in the worker; os.environ.get itself would be pickled with this
    # process's environ and read that copy
    (worker_env,) = started.client.run(lambda: {k: os.environ.get(k) for k in KEYS}).values()
    threads = str(max(1, os.cpu_count() or 1))  # one worker: every core
    assert worker_env == {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                          "MALLOC_TRIM_THRESHOLD_": None, "OMP_WAIT_POLICY": "PASSIVE"}
    (pid,) = started.client.run(os.getpid).values()
    assert pid != os.getpid()
    assert list(started.client.nthreads().values()) == [1]  # one shard at a time


def test_this_processs_values_are_put_back(started: Started) -> None:
    assert {k: started.after.get(k) for k in KEYS} == MINE
    assert {k: os.environ.get(k) for k in KEYS} == MINE


def test_this_processs_whole_environment_is_put_back(started: Started) -> None:
    changed = {k: (started.before.get(k), started.after.get(k))
               for k in set(started.before) | set(started.after)
               if started.before.get(k) != started.after.get(k)}
    assert changed == {}


def test_a_cpu_only_cluster_asks_no_resources(started: Started) -> None:
    assert shard_resources(started.client, timeout_s=30) == {}


def test_a_cluster_without_workers_fails_naming_the_scheduler() -> None:
    with (
        distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as client,
        pytest.raises(NoDaskWorkersError, match="no Dask worker joined the scheduler "
                                                "inproc://.* within 1s$") as raised,
    ):
        shard_resources(client, timeout_s=1)
    assert isinstance(raised.value, RuntimeError) and "\n" not in str(raised.value)


# --- which runner ---------------------------------------------------------------------------------
def dask_settings(**extra: Any) -> BatchSettings:
    return BatchSettings.from_parameters(source="videos", model="model.safetensors",
                                         task_runner="dask", **extra)


def test_an_address_gives_a_runner_for_that_cluster() -> None:
    runner = dask_task_runner(dask_settings(dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786"
    assert runner.cluster_class is None and runner.cluster_kwargs == {}


@pytest.mark.parametrize("workers", [1, 3])
def test_a_worker_count_gives_a_local_cluster_of_that_size(workers: int) -> None:
    runner = dask_task_runner(dask_settings(dask_local_workers=workers))
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_class is local_cluster
    assert runner.cluster_kwargs == {"n_workers": workers}


def test_no_dask_client_outside_a_dask_flow() -> None:
    with pytest.raises(RuntimeError, match="not inside a flow run that uses a DaskTaskRunner"):
        current_dask_client()


def test_prefect_api_url_is_the_configured_one() -> None:
    with temporary_settings({PREFECT_API_URL: "http://10.0.0.9:4200/api"}):
        assert prefect_api_url() == "http://10.0.0.9:4200/api"
