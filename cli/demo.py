"""``emotion-pipeline demo``: the whole product on drawn faces, from nothing, on a CPU.

::

    render drawn-face videos: training actors (RAVDESS names) + held-out actors (never trained on)
        -> the retrain flow: split by actor, clip cache, train the small model, evaluate, publish
           <registry>/<model_version>/ and production.json (cli/train.py's run_retrain)
        -> the batch flow with model=<registry>/production.json over the held-out actors
           (cli/run.py's run_flow)
        -> the per-video table beside the true labels (parsed from the names), the accuracy,
           and where the Parquet, the confusion matrix and the run summary are

Drawn faces are not real data: the accuracy says the pipeline learns and serves what it is
shown, nothing about real faces. A second ``demo`` reuses the videos and the published model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.run import print_summary, quiet_prefect, run_flow
from cli.train import run_retrain

console = Console(soft_wrap=True)

TRAIN_ACTORS = 6
HELD_OUT_ACTORS = 2
RECIPE: dict[str, Any] = {
    "preset": "small", "num_frames": 16, "img_size": 64, "batch_size": 8, "lr": 3e-3,
    "crop_scale": 1.0, "val_fraction": 0.34, "seed": 0, "epochs": 20, "patience": 20,
    "max_clips_per_video": 1,
}
"""tests/flows/test_retrain.py's recipe: the width-16 model at 16 frames of 64 px, about 3 s
an epoch on 2 cores; held-out accuracy about 0.8 after 20 epochs on face crops of these faces."""
VIDEO = {"seconds": 2.0, "fps": 15, "size": (96, 96)}
"""The drawn faces: 2 s at 15 fps, 96 x 96 (cheap to render, decode and train on)."""

NOT_REAL = ("[yellow]These are drawn faces, not real data: the accuracy shows the pipeline "
            "learning and serving what it was shown, nothing about real faces.[/yellow]")


def _render(root: Path, *, actors: int, takes: int, first_actor: int = 1) -> int:
    from emotion_model.sample_data import make_sample_dataset

    if any(root.rglob("*.mp4")):
        return 0
    paths = make_sample_dataset(root, actors=actors, layout="ravdess", takes_per_emotion=takes,
                                first_actor=first_actor, seed=0, **VIDEO)  # type: ignore[arg-type]
    return len(paths)


def _train(data: Path, registry: Path, epochs: int, show_progress: bool) -> dict[str, Any]:
    """Train and publish, or reuse what an earlier demo published from the same data."""
    pointer = registry / "production.json"
    if pointer.exists():
        production = json.loads(pointer.read_text())
        console.print(f"reusing the published model {production['model_version']} "
                      f"({pointer}); delete {registry} to train again")
        return {"model_version": production["model_version"], "promoted": True,
                "version_uri": str(registry / production["model_version"]), "reused": True}
    params = {"sources": [str(data)], "registry": str(registry), **RECIPE,
              "epochs": epochs, "patience": epochs}
    summary = run_retrain(params, show_progress=show_progress)
    m = summary["metrics"]
    console.print(
        f"trained model {summary['model_version']}: validation accuracy "
        f"{m['val_accuracy']:.3f} on {m['n_val']} videos of held-out validation actors "
        f"({m['epochs_run']} epochs); {'promoted' if summary['promoted'] else 'NOT promoted'}: "
        f"{summary['decision']}")
    return summary


def _results_table(videos: Any) -> tuple[Table, float]:
    import pandas as pd

    from emotion_model.labels import parse_name

    table = Table(title="held-out actors: predicted vs true")
    for column in ("video", "actor", "true", "predicted", "confidence", "faces", "clips"):
        table.add_column(column, justify="left" if column in ("video", "actor", "true",
                                                               "predicted") else "right")
    correct = 0
    for row in videos.sort_values("video_uri").itertuples():
        parsed = parse_name(row.video_uri)
        truth = parsed.label if parsed is not None else "?"
        ok = truth == row.label
        correct += ok
        faces = "-" if pd.isna(row.faces) else str(int(row.faces))
        confidence = "-" if pd.isna(row.confidence) else f"{row.confidence:.2f}"
        predicted = row.label if isinstance(row.label, str) else "no face"
        table.add_row(Path(row.video_uri).name, parsed.actor if parsed else "?", truth,
                      f"[green]{predicted}[/green]" if ok else f"[red]{predicted}[/red]",
                      confidence, faces, str(row.num_clips))
    return table, correct / max(1, len(videos))


def cmd_demo(args: argparse.Namespace) -> int:
    """Render, train, publish, serve held-out actors, and show the result beside the truth."""
    quiet_prefect(args.verbose)
    import pandas as pd

    started = time.perf_counter()
    root = Path(args.dir).resolve()
    train_data, held_out = root / "data" / "train", root / "data" / "held-out"
    registry, output = root / "registry", root / "outputs"
    show = not args.no_progress

    made = _render(train_data, actors=TRAIN_ACTORS, takes=args.takes)
    made += _render(held_out, actors=HELD_OUT_ACTORS, takes=2,  # actors 07, 08: new faces
                    first_actor=TRAIN_ACTORS + 1)
    if made:
        console.print(f"rendered {made} drawn-face videos under {root / 'data'}: "
                      f"training actors 01-{TRAIN_ACTORS:02d}, held-out actors "
                      f"{TRAIN_ACTORS + 1:02d}-{TRAIN_ACTORS + HELD_OUT_ACTORS:02d}")
    trained = _train(train_data, registry, args.epochs, show)
    if trained["promoted"]:
        model = str(registry / "production.json")
    else:  # below the promotion floor: serve the published version anyway, and say so
        model = str(Path(trained["version_uri"]) / "model.safetensors")
        console.print(f"[yellow]serving the unpromoted candidate {model}[/yellow]")

    summary = run_flow({"source": str(held_out), "model": model, "output": str(output),
                        "reprocess": True}, show_progress=show)
    print_summary(summary, str(output))
    videos = pd.read_parquet(output / "videos", filters=[("run_id", "==", summary["run_id"])])
    table, accuracy = _results_table(videos)
    console.print(table)
    version = summary["model_version"]
    console.print(
        f"[bold]accuracy on {len(videos)} videos of {HELD_OUT_ACTORS} actors the model never "
        f"saw: {accuracy:.2f}[/bold] (chance: 0.17)")
    console.print(f"Parquet:          {output}/predictions/, faces/, videos/, errors/")
    console.print(f"run summary:      {summary.get('summary_uri')}")
    console.print(f"confusion matrix: {registry / version / 'confusion.png'} "
                  f"(validation actors; metrics.json beside it)")
    console.print(f"model pointer:    {registry / 'production.json'}")
    console.print(NOT_REAL)
    console.print(f"demo took {time.perf_counter() - started:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = sub.add_parser(
        "demo", help="drawn faces -> train -> publish -> serve held-out actors (the product)",
        description="Render drawn-face videos of 6 training and 2 held-out actors, train the "
        "small model with the retrain flow and publish it (production.json), run the "
        "batch-inference flow with that pointer over the held-out actors, and print each "
        "video's prediction beside its true label, the accuracy, and where the outputs are. "
        "Drawn faces are not real data. A second run reuses the videos and the model.",
    )
    p.add_argument("--dir", default="demo", help="working folder (default ./demo)")
    p.add_argument("--takes", type=int, default=4,
                   help="takes per emotion per training actor (default 4: 144 videos)")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"],
                   help=f"training epochs (default {RECIPE['epochs']}; fewer: faster, worse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
