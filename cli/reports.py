"""The analysts' subcommands over outputs already written (no model runs): ``report`` (a run's
self-contained HTML page) and ``timeline`` (one video's emotions over time, as PNG)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    if args.storage_options:
        try:
            options = json.loads(args.storage_options)
        except ValueError as exc:
            raise ValueError(f"--storage-options is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError("--storage-options must be a JSON object")
    if args.endpoint_url:
        options["endpoint_url"] = args.endpoint_url
    return options or None


def _check_output(output: str) -> None:
    if "://" not in output and not os.path.isdir(output):
        raise FileNotFoundError(f"{output}: no such output folder")


def _cmd_report(args: argparse.Namespace) -> int:
    from tasks.batch.report import write_run_report

    _check_output(args.output)
    report, uri = write_run_report(args.output, args.run, _storage_options(args),
                                   html_path=args.html)
    console.print(f"report of run {report.run_id}: {uri} ({report.size / 1024:.0f} KiB, "
                  f"built in {report.build_s:.2f} s)", markup=False, highlight=False)
    return 0


def _cmd_timeline(args: argparse.Namespace) -> int:
    from tasks.batch.timeline import find_video, read_video_predictions, timeline_png
    from tasks.common.storage import atomic_write_bytes

    _check_output(args.output)
    options = _storage_options(args)
    uri, run_id = find_video(args.output, args.video, run_id=args.run, storage_options=options)
    rows = read_video_predictions(args.output, uri, run_id, options)
    png = timeline_png(rows, dpi=args.dpi)
    atomic_write_bytes(args.png, png)
    faces = len(set(rows.rows.column("face_id").to_pylist()))
    console.print(f"timeline of {uri} (run {run_id}, {rows.rows.num_rows} clips, "
                  f"{faces} {'panel' if faces == 1 else 'panels'}): {args.png}",
                  markup=False, highlight=False)
    return 0


def _storage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec/s3fs options for an s3:// output, as a JSON object")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (MinIO, a test server); added to --storage-options")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` and ``timeline`` subcommands."""
    p = sub.add_parser(
        "report", help="write a batch run's HTML report",
        description="Build one self-contained HTML page about a batch run from what it wrote "
        "under OUTPUT: counts, label and confidence distributions, the label mix against the "
        "runs before it (and the drift check), the least confident videos with their "
        "timelines, errors grouped by stage and type, timings and the model. It opens offline "
        "(no scripts, fonts or images from elsewhere). Every batch run writes its own to "
        "OUTPUT/reports/<run_id>.html; this command rebuilds one.",
    )
    p.add_argument("output", help="the batch flow's output (folder or s3:// prefix)")
    p.add_argument("--run", default=None, metavar="RUN_ID",
                   help="the run (default: the newest under OUTPUT/runs/)")
    p.add_argument("--html", default=None, metavar="PATH",
                   help="where to write the page (default: OUTPUT/reports/<run_id>.html)")
    _storage_arguments(p)
    p.set_defaults(func=_cmd_report)

    t = sub.add_parser(
        "timeline", help="draw one video's emotions over time as PNG (no model run)",
        description="Draw the six probabilities over VIDEO's time from the predictions already "
        "written under --output, one panel per face track, with the clip windows as bars "
        "under the curves. VIDEO is the URI the run listed, a local path, or the end of the "
        "URI (clip.mp4). The latest run that processed it is used unless --run is given.",
    )
    t.add_argument("video", help="the video: its URI, local path, or the end of its URI")
    t.add_argument("--output", required=True, metavar="OUTPUT_ROOT",
                   help="the batch flow's output (folder or s3:// prefix)")
    t.add_argument("--png", required=True, metavar="PATH", help="the PNG file to write")
    t.add_argument("--run", default=None, metavar="RUN_ID", help="the run (default: latest)")
    t.add_argument("--dpi", type=int, default=100, help="resolution (default 100)")
    _storage_arguments(t)
    t.set_defaults(func=_cmd_timeline)
