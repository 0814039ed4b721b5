"""``emotion-pipeline train``: the retrain flow on this machine (Prefect's ephemeral server),
with a progress bar for the clip cache and one per epoch."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.run import quiet_prefect
from cli.settings_args import add_settings_arguments, parameters_from_args, with_endpoint_url
from tasks.common.storage import local_path
from tasks.errors import SourceNotFoundError
from tasks.training.settings import RetrainSettings

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return with_endpoint_url(parameters_from_args(RetrainSettings, args), args.endpoint_url)


def run_retrain(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run ``retrain`` in this process with progress bars; returns its summary."""
    from flows.retrain import retrain

    return run_with_progress(retrain, params, show_progress=show_progress)


STAGES = {"cache": "clip cache", "teacher": "teacher outputs", "train": "epochs"}
"""The progress bars a training flow's stages get (``tasks.common.progress`` events)."""


def run_with_progress(flow: Any, params: dict[str, Any], *, show_progress: bool = True
                      ) -> dict[str, Any]:
    """Run a training flow (``retrain``, ``distill``) in this process with a progress bar per
    stage (clip cache, teacher outputs, epochs); returns its summary."""
    from tasks.common import progress

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
        console=err, disable=not show_progress,
    )
    tasks: dict[str, Any] = {}
    score = "agreement" if getattr(flow, "name", "") == "distill" else "val acc"

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "stage":
            name = STAGES.get(data["name"], data["name"])
            tasks[data["name"]] = bar.add_task(name, total=data["total"], note="")
        elif event in ("cache", "teacher") and event in tasks:
            bar.update(tasks[event], completed=data["done"])
        elif event == "epoch" and "train" in tasks:
            bar.update(tasks["train"], completed=data["epoch"], total=data["epochs"],
                       note=f"loss {data['train_loss']:.3f}, {score} {data['val_accuracy']:.3f}"
                       f", {data['seconds']:.1f}s/epoch")

    unsubscribe = progress.subscribe(on_event)
    try:
        with bar:
            return flow(**params)
    finally:
        unsubscribe()


def check_local_sources(sources: list[str]) -> None:
    """Refuse, in one line, a local source folder or file that does not exist."""
    for source in sources:
        local = local_path(source)
        if local is not None and not os.path.exists(local):
            raise SourceNotFoundError(source, "source not found (no such file or folder)")


def cmd_train(args: argparse.Namespace) -> int:
    """Run the retrain flow; print where the model went and whether it was promoted."""
    quiet_prefect(args.verbose)
    params = _params(args)
    settings = RetrainSettings.from_parameters(**params)  # a bad one fails here, in one line
    check_local_sources(settings.sources)
    summary = run_retrain(params, show_progress=not args.no_progress)
    m = summary["metrics"]
    console.print(
        f"model {summary['model_version']}: validation accuracy {m['val_accuracy']:.4f}, "
        f"macro-F1 {m['val_macro_f1']:.4f} on {m['n_val']} videos of held-out actors "
        f"({m['epochs_run']} epochs, best {m['best_epoch']})"
    )
    console.print(f"published {summary['version_uri']}")
    console.print(("promoted: " if summary["promoted"] else "not promoted: ") +
                  summary["decision"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = sub.add_parser(
        "train", help="retrain the model on labelled videos and publish it to a registry",
        description="Label videos by their RAVDESS or CREMA-D names (or a manifest), split by "
        "actor, decode each once into a clip cache, train with the model card's recipe "
        "(AdamW, one-cycle, label smoothing, early stopping), evaluate on held-out actors and "
        "publish REGISTRY/<model_version>/; REGISTRY/production.json moves only when the new "
        "model beats the current one on the same split. Runs on Prefect's ephemeral server.",
    )
    add_settings_arguments(p, RetrainSettings, positional=["sources"])
    p.add_argument("--small", dest="preset", action="store_const", const="small",
                   default=argparse.SUPPRESS, help="the width-16 variant (CPUs): --preset small")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (MinIO, a test server); added to --storage-options")
    p.add_argument("--json", default=None, help="also write the run summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
