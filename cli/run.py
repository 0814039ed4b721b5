"""``emotion-pipeline run`` and ``emotion-pipeline demo``: the batch flow on this machine,
on Prefect's ephemeral local server (nothing to start), with a progress bar."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.settings_args import add_settings_arguments, parameters_from_args, with_endpoint_url
from tasks.batch.settings import BatchSettings
from tasks.common.storage import local_path
from tasks.errors import SourceNotFoundError

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def quiet_prefect(verbose: bool) -> None:
    if not verbose:  # the progress bar and the one-line errors replace Prefect's log lines
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def run_flow(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run ``batch-inference`` in this process with a progress bar; returns its summary."""
    from flows.batch_inference import batch_inference
    from tasks.common import progress

    bar = Progress(
        TextColumn("[bold]batch-inference"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
        console=err, disable=not show_progress, transient=False,
    )
    task_id = bar.add_task("videos", total=None, failed=0)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "planned":
            bar.update(task_id, total=data["total"])
        elif event == "video":
            failed = bar.tasks[0].fields["failed"] + (0 if data["ok"] else 1)
            bar.update(task_id, advance=1, failed=failed)

    unsubscribe = progress.subscribe(on_event)
    try:
        with bar:
            return batch_inference(**params)
    finally:
        unsubscribe()


def print_summary(summary: dict[str, Any], output: str) -> None:
    """The run's counts, where its files are, and where the errors are."""
    c = summary["counts"]
    console.print(
        f"run {summary['run_id']} {summary['status']}: {c['succeeded']} videos predicted "
        f"({c['clips']} clips, {summary['clips_per_s']:.2f} clips/s), {c['failed']} failed, "
        f"{c['skipped_done']} already done, {c['skipped_not_video']} non-video objects skipped"
    )
    console.print(f"outputs under {output}: predictions/ videos/ errors/ runs/")
    console.print(f"summary: {summary.get('summary_uri')}")
    if summary.get("report_uri"):
        console.print(f"report: {summary['report_uri']}")
    drift = summary.get("drift") or {}
    if drift.get("distance") is not None:
        refs = len(drift["reference_runs"])
        verdict = "[yellow]flagged[/yellow]" if drift["flagged"] else "not flagged"
        console.print(f"label drift {verdict}: Jensen-Shannon distance {drift['distance']:.3f} "
                      f"(threshold {drift['threshold']}) against {refs} earlier runs")
    elif drift.get("note") or drift.get("error"):
        console.print(f"label drift: {drift.get('note') or drift.get('error')}", markup=False)
    if c["failed"]:
        stages = ", ".join(f"{k}: {v}" for k, v in summary["failed_by_stage"].items())
        console.print(
            f"[yellow]{c['failed']} videos failed ({stages}); one row each in "
            f"{output.rstrip('/')}/errors/[/yellow]"
        )
    if summary["model"].get("untrained"):
        console.print("[yellow]note: the model is untrained: its labels mean nothing[/yellow]")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return with_endpoint_url(parameters_from_args(BatchSettings, args), args.endpoint_url)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the batch flow; 0 when the run completes (even with bad videos), 1 when it fails."""
    quiet_prefect(args.verbose)
    params = _params(args)
    settings = BatchSettings.from_parameters(**params)  # a bad one fails here, before Prefect
    local = local_path(settings.source)
    if local is not None and not os.path.exists(local):  # no Prefect traceback for a typo
        raise SourceNotFoundError(settings.source, "source not found (no such file or folder)")
    summary = run_flow(params, show_progress=not args.no_progress)
    print_summary(summary, args.output)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    p = sub.add_parser(
        "run", help="run the batch-inference flow on a folder or S3 prefix",
        description="List the videos under SOURCE, predict every new or changed one and write "
        "Parquet under --output (predictions/, videos/, errors/, runs/). Runs on Prefect's "
        "ephemeral local server. Exit 0 when the run completes, even when some videos are bad "
        "(they are rows in errors/); 1 when the run fails; 2 for a bad parameter. The flags are "
        "the batch-inference flow's parameters.",
    )
    add_settings_arguments(p, BatchSettings, positional=["source"])
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (MinIO, a test server); added to --storage-options")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
