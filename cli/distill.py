"""``emotion-pipeline distill``: the distill flow on this machine (Prefect's ephemeral server),
with progress bars for the clip cache, the teacher's outputs and the epochs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from cli.run import quiet_prefect
from cli.settings_args import add_settings_arguments, parameters_from_args, with_endpoint_url
from cli.train import check_local_sources, run_with_progress
from tasks.training.distill_settings import DistillSettings

console = Console(soft_wrap=True)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return with_endpoint_url(parameters_from_args(DistillSettings, args), args.endpoint_url)


def cmd_distill(args: argparse.Namespace) -> int:
    """Run the distill flow; print the student's agreement and where it went."""
    from flows.distill import distill

    quiet_prefect(args.verbose)
    params = _params(args)
    settings = DistillSettings.from_parameters(**params)  # a bad one fails here, in one line
    check_local_sources([*settings.sources, *settings.labelled])
    summary = run_with_progress(distill, params, show_progress=not args.no_progress)
    m = summary["metrics"]
    line = (f"student {summary['model_version']} of teacher {summary['teacher_version']}: "
            f"agreement {m['agreement']:.4f} on {m['n_videos']} held-out videos (clips "
            f"{m['clip_agreement']:.4f}), mean KL {m['mean_kl']:.4f}")
    if m.get("labelled"):
        lab = m["labelled"]
        line += (f"; labelled accuracy {lab['student']['accuracy']:.4f} (teacher "
                 f"{lab['teacher']['accuracy']:.4f}) on {lab['n_videos']} videos")
    console.print(line)
    console.print(f"published {summary['version_uri']}")
    console.print(("student.json points to it: " if summary["pointed_at"]
                   else "student.json unchanged: ") + summary["decision"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``distill`` subcommand."""
    p = sub.add_parser(
        "distill", help="train a small student to copy a model, on unlabelled videos",
        description="Distil TEACHER (a deployment file or a registry's production.json) into "
        "a small student (X3D-XS by default) on unlabelled videos (SOURCES: the teacher labels "
        "them) and optionally labelled ones (--labelled). The teacher runs once per clip (its "
        "outputs are cached beside the clip cache); the student learns the teacher's "
        "temperature-softened probabilities, is evaluated by its agreement with the teacher on "
        "held-out actors (or videos) and published to REGISTRY/<model_version>/; "
        "REGISTRY/student.json points to it when its agreement reaches --min-agreement. "
        "production.json is never touched. Runs on Prefect's ephemeral server.",
    )
    add_settings_arguments(p, DistillSettings, positional=["sources"])
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (MinIO, a test server); added to --storage-options")
    p.add_argument("--json", default=None, help="also write the run summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_distill)
