"""Shards on a Dask cluster (``task_runner="dask"``): the Prefect task runner a run's settings
ask for, and the resources each shard task reserves on the cluster's workers.

::

    dask_address=tcp://host:8786  -> DaskTaskRunner(address=...)   an existing cluster
    dask_local_workers=N          -> DaskTaskRunner(local_cluster) N worker processes here,
                                     1 task slot each, cores // N torch threads each
    workers declare GPU (dask-worker --resources GPU=1, or dask-cuda with resources={"GPU": 1})
                                  -> each shard task needs GPU=1: one shard per GPU at a time
    no worker declares GPU        -> no restriction: the workers' task slots bound concurrency
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import distributed
from prefect.context import FlowRunContext

from tasks.batch.settings import BatchSettings
from tasks.errors import NoDaskWorkersError

GPU_RESOURCE = "GPU"
"""The worker resource that marks one GPU (``dask-worker --resources GPU=1``)."""

WAIT_FOR_WORKERS_S = 120.0
"""How long a run waits for the cluster's first worker before it fails."""


def local_cluster(*, n_workers: int, torch_threads: int | None = None) -> distributed.LocalCluster:
    """``n_workers`` worker processes on this machine, each running one shard at a time with
    ``torch_threads`` torch threads (default: the cores shared out, at least one).

    Dask's nanny exports its workers' ``pre-spawn-environ`` into this process before it spawns
    them, and a value already in this environment wins over the config: both are set here for
    the spawn, then this process's environment is put back. ``MALLOC_TRIM_THRESHOLD_`` (Dask
    sets 65536) is left out: it turns off glibc's adaptive mmap threshold, so every large tensor
    buffer is mapped and unmapped anew, and a shard ran at half speed (bench/README.md).
    ``OMP_WAIT_POLICY=PASSIVE``: see below.
    """
    import dask

    threads = torch_threads or max(1, (os.cpu_count() or 1) // n_workers)
    # torch takes its threads from both OMP and MKL variables; spinning OpenMP threads starved
    # the worker's other threads (shards of 5-10 s instead of 0.6 s), passive ones do not
    spawn_env = {
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "MALLOC_TRIM_THRESHOLD_": None, "OMP_WAIT_POLICY": "PASSIVE",
    }
    saved = dict(os.environ)  # the nanny exports more of its own (PYTHONHASHSEED, ...)
    config = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in spawn_env.items()}
    try:
        for key, value in spawn_env.items():
            _set_env(key, value)
        with dask.config.set(config):
            return distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=None,
            )
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def dask_task_runner(settings: BatchSettings) -> Any:
    """The ``DaskTaskRunner`` for ``settings``: the cluster at ``dask_address``, or a
    ``local_cluster`` of ``dask_local_workers`` processes started (and stopped) with the run."""
    from prefect_dask import DaskTaskRunner

    if settings.dask_address is not None:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_class=local_cluster, cluster_kwargs={"n_workers": settings.dask_local_workers or 1}
    )


def current_dask_client() -> Any:
    """The Dask client of the running flow's task runner (a ``DaskTaskRunner``)."""
    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    client = getattr(runner, "client", None)
    if client is None:
        raise RuntimeError("not inside a flow run that uses a DaskTaskRunner")
    return client


def shard_resources(client: Any, *, timeout_s: float = WAIT_FOR_WORKERS_S) -> dict[str, float]:
    """What one shard task reserves on ``client``'s cluster: ``{"GPU": 1}`` when any worker
    declares a GPU resource (then only those run shards, one per GPU unit), else nothing.

    Waits up to ``timeout_s`` for a first worker, so that a cluster still starting up is not
    taken for a CPU-only one.
    """
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError as exc:
        raise NoDaskWorkersError(
            f"no Dask worker joined the scheduler {client.scheduler.address} "
            f"within {timeout_s:.0f}s"
        ) from exc
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    has_gpu = any(w.get("resources", {}).get(GPU_RESOURCE, 0) > 0 for w in workers)
    return {GPU_RESOURCE: 1} if has_gpu else {}


def prefect_api_url() -> str:
    """The Prefect API this process reports to: ``PREFECT_API_URL``, or the URL of the
    ephemeral local server that Prefect started for it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return str(PREFECT_API_URL.value())
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


@contextlib.contextmanager
def shard_placement() -> Iterator[dict[str, float]]:
    """Within the block, tasks submitted to the flow's Dask cluster need ``shard_resources``
    and report to this run's Prefect API. Yields the resources (``{}``: CPU-only cluster).

    Without ``PREFECT_API_URL`` (Prefect's ephemeral local server), each worker would start a
    server of its own; the task context sent with each shard names this one instead.
    """
    import dask
    from prefect.settings import PREFECT_API_URL, temporary_settings

    resources = shard_resources(current_dask_client())
    with contextlib.ExitStack() as stack:
        if not PREFECT_API_URL.value():
            stack.enter_context(temporary_settings({PREFECT_API_URL: prefect_api_url()}))
        if resources:
            stack.enter_context(dask.annotate(resources=resources))
        yield resources
