"""Shards on a Dask cluster (``task_runner="dask"``): the Prefect task runner a run's settings
ask for, and the resources each shard task reserves on the cluster's workers.

::

    dask_address=tcp://host:8786  -> DaskTaskRunner(address=...)   an existing cluster
    dask_local_workers=N          -> DaskTaskRunner(LocalCluster)  N worker processes here,
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

from prefect.context import FlowRunContext

from tasks.settings import BatchSettings

GPU_RESOURCE = "GPU"
"""The worker resource that marks one GPU (``dask-worker --resources GPU=1``)."""

WAIT_FOR_WORKERS_S = 120.0
"""How long a run waits for the cluster's first worker before it fails."""


class NoDaskWorkersError(RuntimeError):
    """The Dask scheduler has no workers to run shards on."""


def dask_task_runner(settings: BatchSettings) -> Any:
    """The ``DaskTaskRunner`` for ``settings``: the cluster at ``dask_address``, or a local
    cluster of ``dask_local_workers`` processes started (and stopped) with the run."""
    from prefect_dask import DaskTaskRunner

    if settings.dask_address is not None:
        return DaskTaskRunner(address=settings.dask_address)
    workers = settings.dask_local_workers or 1
    torch_threads = max(1, (os.cpu_count() or 1) // workers)  # the cores, shared out
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,  # one shard at a time per process
            "processes": True,
            "dashboard_address": None,
            "env": {"OMP_NUM_THREADS": str(torch_threads)},  # torch reads it at import
        },
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


@contextlib.contextmanager
def shard_placement() -> Iterator[dict[str, float]]:
    """Within the block, tasks submitted to the flow's Dask cluster need ``shard_resources``.

    Yields the resources (``{}`` on a CPU-only cluster).
    """
    import dask

    resources = shard_resources(current_dask_client())
    if not resources:
        yield resources
        return
    with dask.annotate(resources=resources):
        yield resources
