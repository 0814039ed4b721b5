"""``emotion-pipeline annotate``: one video re-encoded as an MP4 with each face's box, label and
confidence bar drawn on its frames (``emotion_model/annotate.py``), with a progress bar.

Heavy imports (torch, PyAV) happen inside the command, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cli.model import MODEL_HELP, PREDICT_FIELDS, print_notes
from cli.settings_args import add_settings_arguments, parameters_from_args
from tasks.batch.settings import BatchSettings

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

HELP = "write a video with each face's box, label and confidence drawn on"
DESCRIPTION = (
    "Decode VIDEO once, predict it as `predict` does, and write --output (an MP4: H.264 "
    "yuv420p, the source's frames, size and timestamps, its audio kept) with each face's box, "
    "its label and a confidence bar drawn on the frames (a whole-frame model: the label and "
    "bar in the top-left corner). The file is written whole or not at all. Exit 2 for a bad "
    "video, model, output or flag."
)
BUFFER_HELP = (
    "decoded frames held in memory at most (default 512); past it, frames are drawn as soon "
    "as their clips are predicted, and those not yet predicted are spilled to a temporary file"
)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from emotion_model.annotate import annotate_video
    from emotion_model.onnx_runtime import open_predictor

    # the batch flow's own validation and defaults for the flags predict shares with it
    given = parameters_from_args(BatchSettings, args, only=PREDICT_FIELDS)
    settings = BatchSettings.from_parameters(source=args.video, model=args.model, **given)
    if args.max_buffer_mb < 0:
        raise ValueError(f"--max-buffer-mb must be >= 0, got {args.max_buffer_mb}")
    predictor = open_predictor(args.model, device=settings.device)
    bar = Progress(
        TextColumn("[bold]annotate"), BarColumn(),
        TextColumn("{task.completed:.1f}/{task.fields[length]} s"), TimeElapsedColumn(),
        console=err, disable=args.no_progress, transient=False,
    )
    task_id = bar.add_task("video", total=None, length="?")

    def on_progress(seconds: float, length: float | None) -> None:
        if not bar.live.is_started:  # from the first frame written: no bar for a bad input
            bar.start()
        if length is not None and bar.tasks[0].total is None:
            bar.update(task_id, total=length, length=f"{length:.1f}")
        bar.update(task_id, completed=seconds)

    try:
        result = annotate_video(
            predictor, args.video, args.output, clip_seconds=settings.clip_seconds,
            stride_seconds=settings.stride_seconds, batch_size=settings.batch_size,
            detect_fps=settings.detect_fps, max_faces=settings.max_faces,
            max_buffer_bytes=int(args.max_buffer_mb * 1024 * 1024), on_progress=on_progress,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    pred = result.prediction
    console.print(
        f"wrote {result.path}: {result.frames} frames {result.width}x{result.height} "
        f"H.264 ({result.encoder}), audio: {result.audio or 'none in the source'}; "
        f"{result.seconds:.1f} s (model {pred.model_version}, {pred.crop} crops)"
    )
    for face in pred.faces:
        clips = f"{face.clips} clip" + ("s" if face.clips != 1 else "")
        console.print(f"  face {face.face_id}: {face.label} {face.confidence:.3f} "
                      f"({clips}, seen {face.first_s:.2f}-{face.last_s:.2f} s)")
    if pred.crop == "face" and not pred.faces:
        console.print(f"  no face found in {pred.duration_s:.2f} s: the frames are unmarked")
    elif pred.label is not None:
        console.print(f"  video label: [bold]{pred.label}[/bold] {pred.confidence:.3f}")
    if result.extra_faces:
        err.print(f"warning: the video passed --max-buffer-mb, so its frames were drawn before "
                  f"the faces kept were known: face(s) {list(result.extra_faces)} are drawn "
                  f"but not among the {len(pred.faces)} kept (raise --max-buffer-mb)")
    print_notes(pred, predictor)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``annotate`` subcommand."""
    p = sub.add_parser("annotate", help=HELP, description=DESCRIPTION)
    p.add_argument("video", help="path of the video file")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--output", required=True, help="the MP4 file to write (.mp4)")
    add_settings_arguments(p, BatchSettings, only=PREDICT_FIELDS)
    p.add_argument("--max-buffer-mb", type=float, default=512, help=BUFFER_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_annotate)
