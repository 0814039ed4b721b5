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

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "sources": args.sources, "registry": args.registry, "cache": args.cache,
        "checkpoint_dir": args.checkpoint_dir, "preset": "small" if args.small else "r50",
        "num_frames": args.num_frames, "img_size": args.img_size, "epochs": args.epochs,
        "patience": args.patience, "batch_size": args.batch_size, "lr": args.lr,
        "crop_scale": args.crop_scale, "val_fraction": args.val_fraction, "seed": args.seed,
        "init": args.init, "pretrained": args.pretrained, "resume": args.resume,
        "force": args.force, "device": args.device, "decode_threads": args.decode_threads,
    }
    if args.endpoint_url:
        params["storage_options"] = {"endpoint_url": args.endpoint_url}
    return params


def run_retrain(params: dict[str, Any], *, show_progress: bool = True) -> dict[str, Any]:
    """Run ``retrain`` in this process with progress bars; returns its summary."""
    from flows.retrain import retrain
    from tasks.common import progress

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
        console=err, disable=not show_progress,
    )
    tasks: dict[str, Any] = {}

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "stage":
            name = "clip cache" if data["name"] == "cache" else "epochs"
            tasks[data["name"]] = bar.add_task(name, total=data["total"], note="")
        elif event == "cache" and "cache" in tasks:
            bar.update(tasks["cache"], completed=data["done"])
        elif event == "epoch" and "train" in tasks:
            bar.update(tasks["train"], completed=data["epoch"], total=data["epochs"],
                       note=f"loss {data['train_loss']:.3f}, val acc {data['val_accuracy']:.3f}"
                       f", {data['seconds']:.1f}s/epoch")

    unsubscribe = progress.subscribe(on_event)
    try:
        with bar:
            return retrain(**params)
    finally:
        unsubscribe()


def cmd_train(args: argparse.Namespace) -> int:
    """Run the retrain flow; print where the model went and whether it was promoted."""
    quiet_prefect(args.verbose)
    params = _params(args)
    from flows.retrain import make_retrain_settings
    from tasks.batch.settings import local_path
    from tasks.common.storage import SourceNotFoundError

    settings = make_retrain_settings(**params)  # a bad parameter fails here, in one line
    for source in settings.sources:
        local = local_path(source)
        if local is not None and not os.path.exists(local):
            raise SourceNotFoundError(source, "source not found (no such file or folder)")
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
    p.add_argument("sources", nargs="+",
                   help="folders or s3:// prefixes of videos, or .csv/.parquet manifests")
    p.add_argument("--registry", required=True, help="model registry folder or s3:// prefix")
    p.add_argument("--small", action="store_true", help="the width-16 variant (for CPUs)")
    p.add_argument("--epochs", type=int, default=60, help="epochs planned (60)")
    p.add_argument("--patience", type=int, default=10,
                   help="stop after N epochs without a better validation accuracy (10)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per step (CPU 8, GPU 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3)")
    p.add_argument("--crop-scale", type=float, default=0.8,
                   help="random resized crop: smallest area share kept (0.8; 1 = no crop)")
    p.add_argument("--num-frames", type=int, default=48, help="frames per clip (48)")
    p.add_argument("--img-size", type=int, default=112, help="frame size in pixels (112)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of actors held out for validation (0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and training (0)")
    p.add_argument("--cache", default=None, help="clip cache (default REGISTRY/cache)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="per-epoch checkpoints (default REGISTRY/training/<run key>)")
    p.add_argument("--init", default=None, help="deployment file to fine-tune from")
    p.add_argument("--pretrained", default=None, help="Kinetics SlowFast-R50 weights (r50)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint of the same data and recipe")
    p.add_argument("--force", action="store_true",
                   help="promote even when the new model does not beat production")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--decode-threads", type=int, default=2, help="videos decoded at once (2)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO, a test server)")
    p.add_argument("--json", default=None, help="also write the run summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
