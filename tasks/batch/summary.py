"""The run summary: ``runs/<run_id>.json`` and a Prefect table artifact, written last."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.batch.drift import drift_artifact_rows
from tasks.batch.infer import ShardResult, merge_results
from tasks.batch.planning import ModelInfo, RunPlan
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import write_run_summary
from tasks.common.storage import retry_transient


def build_summary(
    *,
    run_id: str,
    settings: BatchSettings,
    model: ModelInfo,
    plan: RunPlan,
    results: list[ShardResult],
    failed_shards: dict[int, str],
    started_at: dt.datetime,
    finished_at: dt.datetime,
) -> dict[str, Any]:
    """The summary record. Counts add up: ``listed == skipped_done + deferred_max_videos +
    succeeded + failed`` (a shard whose output could not be written counts its videos failed)."""
    totals = merge_results(results)
    lost = sum(len(s.videos) for s in plan.shards if s.shard in failed_shards)
    wall = max((finished_at - started_at).total_seconds(), 1e-9)
    failed_by_stage = dict(totals["failed_by_stage"])
    if lost:
        failed_by_stage["write"] = failed_by_stage.get("write", 0) + lost
    return {
        "run_id": run_id,
        "status": "failed" if failed_shards else "completed",
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "wall_s": round(wall, 3),
        "parameters": settings.public_dict(),
        "model": {
            "uri": model.uri,
            "model_version": model.model_version,
            "untrained": model.untrained,
            "num_frames": model.num_frames,
            "img_size": model.img_size,
            "crop": model.crop,
            "modality": model.modality,
        },
        "model_version": model.model_version,
        "counts": {
            "listed": plan.listed,
            "skipped_not_video": plan.skipped_not_video,
            "skipped_done": plan.skipped_done,
            "deferred_max_videos": plan.truncated,
            "processed": plan.to_process,
            "succeeded": totals["succeeded"],
            "failed": totals["failed"] + lost,
            "partial": totals["partial"],
            "no_face": totals["no_face"],
            "faces": totals["faces"],
            "clips": totals["clips"],
            "clips_no_audio": totals["clips_no_audio"],
        },
        "failed_by_stage": failed_by_stage,
        "failed_shards": {str(k): v for k, v in failed_shards.items()},
        "label_distribution": totals["label_distribution"],
        "clips_per_s": round(totals["clips"] / wall, 3),
        "videos_per_s": round(totals["succeeded"] / wall, 3),
        # decode_s includes detect_s: faces are detected by the decoding threads
        "timings": {"decode_s": totals["decode_s"], "detect_s": totals["detect_s"],
                    "infer_s": totals["infer_s"]},
        "shards": [r.as_dict() for r in results],
    }


@task(
    name="commit-run-summary", retries=3, retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
def commit_run_summary(summary: dict[str, Any], settings: BatchSettings) -> str:
    """Write ``runs/<run_id>.json`` atomically and publish the counts as a table artifact (its
    description starts with ``DRIFT FLAGGED:`` when the label-drift check flagged the run)."""
    uri = write_run_summary(settings.output, summary["run_id"], summary, settings.storage_options)
    counts = summary["counts"]
    rows = [{"metric": k, "value": v} for k, v in counts.items()]
    rows += [
        {"metric": "clips_per_s", "value": summary["clips_per_s"]},
        {"metric": "model_version", "value": summary["model_version"]},
        {"metric": "status", "value": summary["status"]},
    ]
    rows += [{"metric": f"label:{k}", "value": v} for k, v in summary["label_distribution"].items()]
    rows += drift_artifact_rows(summary.get("drift"))
    mark = "DRIFT FLAGGED: " if (summary.get("drift") or {}).get("flagged") else ""
    create_table_artifact(
        table=rows,
        key="batch-inference-summary",
        description=f"{mark}batch-inference run {summary['run_id']}: {summary['status']}; "
        f"summary at {uri}",
    )
    get_run_logger().info(
        "run %s %s: %d ok, %d failed, %d skipped as done; %.2f clips/s; summary %s",
        summary["run_id"], summary["status"], counts["succeeded"], counts["failed"],
        counts["skipped_done"], summary["clips_per_s"], uri,
    )
    return uri
