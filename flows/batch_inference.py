"""Flow ``batch-inference``: videos under an S3 prefix or a folder in, Parquet out.

preflight (model loads, output writable) -> list + skip done + plan shards -> map the shard
task, at most ``shard_concurrency`` at once -> label drift against the trailing runs -> commit
the run summary -> the run report (``reports/<run_id>.html``). Wiring only: the work lives in
``tasks/``.

``task_runner="dask"``: a flow's task runner is fixed when the flow starts, so listing, planning
and the shards run in a child flow, ``batch-inference-on-dask``, whose ``DaskTaskRunner`` is
built from this run's parameters (``dask_address`` or ``dask_local_workers``). All shards are
submitted at once; the cluster's task slots, and its ``GPU`` resources where workers declare
them, decide how many run together, and a shard whose worker dies is rerun on another.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.batch.cluster import current_dask_client, dask_task_runner, shard_placement
from tasks.batch.drift import check_label_drift
from tasks.batch.infer import ShardResult, infer_shard
from tasks.batch.planning import ModelInfo, RunPlan, ShardPlan, plan_run_task, preflight_task
from tasks.batch.report import publish_run_report
from tasks.batch.settings import BatchSettings
from tasks.batch.summary import build_summary, commit_run_summary
from tasks.common.settings import document_parameters
from tasks.errors import RunFailedError, error_line

MAX_SHARD_THREADS = 64
"""Upper bound of the thread pool; ``shard_concurrency`` bounds what actually runs."""


def new_run_id() -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sortable, unique, safe in object keys."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run = flow_run.get_id()
    return f"{now}-{(str(run) if run else uuid.uuid4().hex).replace('-', '')[:8]}"


def plan_and_infer(
    settings: BatchSettings, run_id: str, model: ModelInfo, date: str, *,
    in_flight: int | None,
) -> tuple[RunPlan, list[ShardResult], dict[int, str]]:
    """List + plan, then the shard tasks on the current flow's task runner, at most
    ``in_flight`` submitted at once (None: all). Returns the plan, the results and the
    shards that failed (index -> one-line reason)."""
    logger = get_run_logger()
    plan = plan_run_task(settings, model.model_version)
    results: list[ShardResult] = []
    failed: dict[int, str] = {}

    def collect(future: Any, index: int) -> None:
        try:
            results.append(future.result())
        except Exception as exc:  # the shard's output could not be written, after retries
            failed[index] = error_line(exc)
            logger.error("shard %d failed: %s", index, failed[index])

    def submit(shard: ShardPlan) -> Any:
        return infer_shard.submit(shard, settings, run_id, model.uri, date)

    if in_flight is None:  # the task runner queues them: submit all, collect as they finish
        running = {submit(shard): shard.shard for shard in plan.shards}
        for future in as_completed(list(running)):
            collect(future, running[future])
        return plan, sorted(results, key=lambda r: r.shard), failed
    running = {}
    queue = list(plan.shards)
    while queue or running:
        while queue and len(running) < in_flight:
            shard = queue.pop(0)
            running[submit(shard)] = shard.shard
        future = next(iter(as_completed(list(running))))  # the first to finish
        collect(future, running.pop(future))
    return plan, sorted(results, key=lambda r: r.shard), failed


def drift_or_error(summary: dict[str, Any], settings: BatchSettings, date: str) -> dict[str, Any]:
    """The label-drift task's result for ``summary["drift"]``; when it fails (after its retries)
    the failure is logged and recorded as ``{"error": ...}``, and the run summary is still
    committed."""
    try:
        return check_label_drift(summary, settings, date).as_dict()
    except Exception as exc:
        line = error_line(exc)
        get_run_logger().error("label drift check failed; the run summary goes without it: %s",
                               line)
        return {"error": line}


@flow(name="batch-inference-on-dask", validate_parameters=False)
def plan_and_infer_on_dask(
    settings: BatchSettings, run_id: str, model: ModelInfo, date: str
) -> tuple[RunPlan, list[ShardResult], dict[int, str]]:
    """``plan_and_infer`` with every shard submitted to the Dask cluster of this flow's task
    runner (set by ``batch_inference``), each needing one GPU where the workers declare GPUs."""
    with shard_placement() as resources:
        client = current_dask_client()
        get_run_logger().info(
            "Dask cluster %s: %d workers; each shard needs %s", client.scheduler.address,
            len(client.scheduler_info()["workers"]), resources or "no resource",
        )
        return plan_and_infer(settings, run_id, model, date, in_flight=None)


@flow(
    name="batch-inference",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_SHARD_THREADS),
    validate_parameters=False,  # BatchSettings validates, with one clear message per field
)
@document_parameters(BatchSettings)
def batch_inference(
    source: str,
    model: str,
    output: str = "./outputs",
    clip_seconds: float = 4.0,
    stride_seconds: float | None = None,
    detect_fps: float | None = None,
    max_faces: int = 4,
    batch_size: int | None = None,
    shard_size: int = 64,
    device: str = "auto",
    max_videos: int | None = None,
    reprocess: bool = False,
    storage_options: dict[str, Any] | None = None,
    decode_threads: int = 2,
    queue_depth: int | None = None,
    shard_concurrency: int = 1,
    task_runner: str = "threads",
    dask_address: str | None = None,
    dask_local_workers: int | None = None,
    drift_threshold: float = 0.1,
    drift_window: int = 7,
) -> dict[str, Any]:
    """Predict every new or changed video under ``source``; write Parquet under ``output``.

    The parameters are the fields of ``BatchSettings`` (tasks/batch/settings.py), which
    validates them; a test keeps this signature and the model in step. Returns the run summary
    (also written to ``runs/<run_id>.json``).
    """
    settings = BatchSettings.from_parameters(**locals())  # locals(): exactly the parameters
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id()
    date = started.strftime("%Y-%m-%d")
    logger.info("run %s: %s -> %s", run_id, settings.source, settings.output)

    model_info = preflight_task(settings)
    if settings.task_runner == "dask":
        on_dask = plan_and_infer_on_dask.with_options(task_runner=dask_task_runner(settings))
        plan, results, failed = on_dask(settings, run_id, model_info, date)
    else:
        plan, results, failed = plan_and_infer(
            settings, run_id, model_info, date, in_flight=settings.shard_concurrency
        )

    summary = build_summary(
        run_id=run_id, settings=settings, model=model_info, plan=plan,
        results=results, failed_shards=failed,
        started_at=started, finished_at=dt.datetime.now(dt.UTC),
    )
    summary["drift"] = drift_or_error(summary, settings, date)
    summary["summary_uri"] = commit_run_summary(summary, settings)
    summary["report_uri"] = publish_run_report(summary, settings)
    if failed:
        raise RunFailedError(
            f"{len(failed)} of {len(plan.shards)} shards failed to write; see "
            f"{summary['summary_uri']}"
        )
    return summary
