"""The model's subcommands: ``predict`` one file, ``export`` to ONNX (float or int8) or
TorchScript, write an untrained ``new-model``, and ``make-sample-data`` (drawn faces, not real
data). ``predict`` (and ``annotate``) serve a deployment file with torch or an ``.onnx`` file
with ONNX Runtime on the CPU (``emotion_model.onnx_runtime.open_predictor``).

Heavy imports (torch) happen inside each command, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.settings_args import add_settings_arguments, parameters_from_args
from tasks.batch.settings import BatchSettings

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

MODEL_HELP = ("deployment file (.safetensors) path or URI, or an .onnx file (served by ONNX "
              "Runtime on the CPU)")
PREDICT_FIELDS = ("clip_seconds", "stride_seconds", "detect_fps", "max_faces", "batch_size",
                  "device")
"""The batch flow's parameters that ``predict`` takes too (same flags, same validation)."""


def _cmd_predict(args: argparse.Namespace) -> int:
    from emotion_model.onnx_runtime import open_predictor
    from emotion_model.predict import predict_video

    # the batch flow's own validation and defaults for the flags the two share
    given = parameters_from_args(BatchSettings, args, only=PREDICT_FIELDS)
    settings = BatchSettings.from_parameters(source=args.video, model=args.model, **given)
    predictor = open_predictor(args.model, device=settings.device)
    result = predict_video(
        predictor, args.video, clip_seconds=settings.clip_seconds,
        stride_seconds=settings.stride_seconds, batch_size=settings.batch_size,
        detect_fps=settings.detect_fps, max_faces=settings.max_faces,
    )
    labels = predictor.labels
    audio = predictor.modality != "video"
    if result.crop == "frame":
        console.print(_clip_table(f"{result.uri}  (model {result.model_version})", labels,
                                  result.clips, ("video", 0.0, result.duration_s, result),
                                  audio=audio))
    elif not result.faces:
        console.print(f"{result.uri}: no face found in {result.duration_s:.2f} s "
                      f"(model {result.model_version}, face crops)")
    for face in result.faces:
        x, y, w, h = face.box
        title = (f"{result.uri}  face {face.face_id}: seen {face.first_s:.2f}-{face.last_s:.2f} "
                 f"s at x={x:.2f} y={y:.2f} w={w:.2f} h={h:.2f}  (model {result.model_version})")
        clips = [c for c in result.clips if c.face_id == face.face_id]
        console.print(_clip_table(title, labels, clips,
                                  (f"face {face.face_id}", face.first_s, face.last_s, face),
                                  audio=audio))
    if result.faces and len(result.faces) > 1 and result.label is not None:
        console.print(f"video label (the longest-seen face): [bold]{result.label}[/bold] "
                      f"{result.confidence:.3f}")
    print_notes(result, predictor)
    return 0


def print_notes(result: Any, predictor: Any) -> None:
    """The notes after a video's prediction: the sound a model that reads audio had, partly
    decoded, untrained model."""
    if predictor.modality != "video" and result.clips:
        without = sum(not c.audio_present for c in result.clips)
        alone = ("from the frames alone" if predictor.modality == "audio-video"
                 else "from nothing (left out of the means)")
        console.print(f"audio ({predictor.modality} model): {len(result.clips) - without} of "
                      f"{len(result.clips)} clips had sound"
                      + (f"; the {without} without were predicted {alone}" if without else ""))
    if result.partial:
        err.print(f"warning: {result.uri}: partly decoded: {result.partial_reason}")
    if predictor.metadata.get("untrained"):
        err.print("note: this model is untrained (random weights): its labels mean nothing")


def _clip_table(title: str, labels: tuple[str, ...], clips: list[Any],
                total: tuple[str, float, float, Any], *, audio: bool = False) -> Table:
    """One row per clip and a bold last row (the video's or the face's mean); with ``audio``
    (a model that reads it), an ``audio`` column: whether the clip's sound was used."""
    table = Table(title=title)
    for name in ("clip", "start s", "end s"):
        table.add_column(name, justify="right")
    if audio:
        table.add_column("audio")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    for label in labels:
        table.add_column(label[:7], justify="right")
    name, start, end, summary = total
    rows = [(str(c.index), c.start_s, c.end_s, "yes" if c.audio_present else "no", c.label, c)
            for c in clips]
    rows.append((name, start, end, "", f"[bold]{summary.label}[/bold]", summary))
    for first, s, e, sound, label, item in rows:
        table.add_row(first, f"{s:.2f}", f"{e:.2f}", *([sound] if audio else []), label,
                      f"{item.confidence:.3f}", *(f"{item.probabilities[k]:.3f}" for k in labels))
    return table


def _cmd_export(args: argparse.Namespace) -> int:
    from emotion_model.onnx_runtime import is_onnx

    if args.int8 and args.format != "onnx":
        raise ValueError("--int8 goes with --format onnx (TorchScript has no int8 export)")
    if not args.int8 and (args.quantization or args.calibration):
        raise ValueError("--quantization and --calibration go with --int8")
    if is_onnx(args.model) and not args.int8:
        raise ValueError(f"{args.model}: already an ONNX file: export a deployment file, or "
                         "add --int8 to quantize this one")
    if args.int8:
        return _export_int8(args)
    from emotion_model.checkpoint import load_deployment
    from emotion_model.export import export_model

    model, metadata = load_deployment(args.model)
    report = export_model(model, metadata, args.output, format=args.format)
    console.print(
        f"wrote {report['path']} ({report['bytes'] / 1e6:.1f} MB, {report['format']}); "
        f"max |probability difference| vs eager: {report['max_abs_diff']:.2e}"
    )
    return 0


def _export_int8(args: argparse.Namespace) -> int:
    """``export --format onnx --int8``: quantize, check against the float export, write."""
    from emotion_model.onnx_runtime import is_onnx
    from emotion_model.quantize import export_int8, quantize_file

    mode = args.quantization or "static"
    if is_onnx(args.model):
        report = quantize_file(args.model, args.output, quantization=mode,
                               calibration=args.calibration)
    else:
        from emotion_model.checkpoint import load_deployment

        model, metadata = load_deployment(args.model)
        report = export_int8(model, metadata, args.output, quantization=mode,
                             calibration=args.calibration)
    parity = report["max_abs_diff"]
    console.print(
        f"wrote {report['path']} ({report['bytes'] / 1e6:.1f} MB, onnx int8 {mode}, "
        f"model_version {report['model_version']}); the float export: "
        f"{report['float_bytes'] / 1e6:.1f} MB"
        + (f", max |probability difference| vs eager {parity:.2e}" if parity is not None else "")
    )
    calibration = report["calibration"]
    if calibration["clips"]:
        console.print(f"calibration: {calibration['clips']} clips, {calibration['source']}")
    check = report["check"]
    console.print(f"int8 vs float: {report['agreement'].describe()}; {check['source']}")
    speed = report["clips_per_s"]
    console.print(f"on this CPU (the check clips, batch 2): int8 {speed['int8']:.1f} clips/s, "
                  f"float {speed['float32']:.1f} clips/s")
    if speed["int8"] < speed["float32"]:
        err.print("note: int8 runs slower than float here (ONNX Runtime has no fast int8 "
                  "kernels for this model's convolutions): serve the float .onnx instead")
    return 0


def _cmd_new_model(args: argparse.Namespace) -> int:
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.face_clips import CropSpec
    from emotion_model.model import build_model

    torch.manual_seed(args.seed)
    if args.small and args.preset not in (None, "small"):
        raise ValueError(f"--small is --preset small: it conflicts with --preset {args.preset}")
    preset = args.preset or ("small" if args.small else "r50")
    model = build_model(preset, modality=args.modality).eval()
    meta = save_deployment(
        model, args.output, num_frames=args.num_frames, img_size=args.img_size,
        crop=CropSpec.of(args.crop).to_metadata(), untrained=True,
        notes="UNTRAINED: random weights, for smoke tests and benchmarks only; "
        "its predictions mean nothing",
    )
    size_mb = Path(args.output).stat().st_size / 1e6 if "://" not in str(args.output) else 0
    console.print(
        f"wrote {args.output}: untrained {preset} {args.modality} "
        f"model, {args.crop} crops, version {meta['model_version']}"
        + (f", {size_mb:.1f} MB" if size_mb else "")
    )
    return 0


def _cmd_make_sample_data(args: argparse.Namespace) -> int:
    from emotion_model.sample_data import make_sample_dataset

    paths = make_sample_dataset(
        args.output, actors=args.actors, layout=args.layout, seed=args.seed,
        takes_per_emotion=args.takes, audio=args.audio, ambiguous=args.ambiguous_faces,
    )
    sound = " with synthetic voices (prosody, not speech)" if args.audio else " (no audio)"
    console.print(f"wrote {len(paths)} synthetic videos{sound} under {args.output}")
    return 0


def _emotion_list(text: str) -> tuple[str, ...]:
    """``angry,disgust`` -> the emotions, each one of the six labels (argparse type)."""
    from emotion_model.labels import EMOTION_LABELS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in EMOTION_LABELS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown emotions {bad}; allowed: "
                                         f"{','.join(EMOTION_LABELS)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict``, ``export``, ``new-model`` and ``make-sample-data`` subcommands."""
    p = sub.add_parser("predict", help="predict the emotions of one video file",
                       description="Decode one video into clips, run the model and print a "
                       "table: one row per clip and the video's mean; for a face model, one "
                       "table per face track (its clips and its mean).")
    p.add_argument("video", help="path of the video file")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_settings_arguments(p, BatchSettings, only=PREDICT_FIELDS)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a model to ONNX (float or int8) or TorchScript",
                       description="Export a deployment file to ONNX (dynamic batch) or "
                       "TorchScript; the export is checked against the eager model "
                       "(max probability difference <= 1e-4) before it is written. With "
                       "--int8, the ONNX export is quantized with ONNX Runtime and checked "
                       "against the float export on clips the calibration did not use: its "
                       "label must be the float model's on at least 95 % of them (near ties, "
                       "probabilities within 0.01, count as agreeing), else nothing is "
                       "written. The int8 file serves as '<model_version>-int8' "
                       "(predict/run --model file.onnx, CPU only).")
    p.add_argument("model", help="deployment file path or URI (with --int8, also a float "
                   ".onnx file of ours)")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--int8", action="store_true",
                   help="quantize the ONNX export to int8 (ONNX Runtime, CPU)")
    p.add_argument("--quantization", choices=["static", "dynamic"], default=None,
                   help="with --int8: static (default; QDQ, per-channel int8 weights, uint8 "
                   "activations calibrated on clips) or dynamic (activations quantized per "
                   "call: no calibration, but slower on a CPU)")
    p.add_argument("--calibration", default=None, metavar="FOLDER",
                   help="with --int8: a folder of videos (every other one calibrates, the "
                   "others check) or a clip cache folder of the retrain flow; default: drawn "
                   "faces rendered into a temporary folder (emotion_model.sample_data) and "
                   "decoded with the model's own frames, size, crop and audio settings")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("new-model", help="write an UNTRAINED model file (smoke tests only)",
                       description="Write a deployment file with random weights. It is for "
                       "smoke tests and benchmarks only: its predictions mean nothing, and its "
                       "metadata says untrained=true.")
    p.add_argument("output", help="file to write (.safetensors)")
    p.add_argument("--preset", choices=["r50", "small", "student"], default=None,
                   help="r50 (default): the model card's SlowFast-R50; small: width 16, "
                   "1/13.5 of R50's FLOPs; student: the X3D-XS distillation student")
    p.add_argument("--small", action="store_true", help="the same as --preset small")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.add_argument("--num-frames", type=int, default=48, help="frames per clip (default 48)")
    p.add_argument("--img-size", type=int, default=112, help="frame size in pixels (112)")
    p.add_argument("--crop", choices=["face", "frame"], default="face",
                   help="face (default): clips cut around each detected face; frame: the whole "
                   "frame resized, as the model card's model")
    p.add_argument("--modality", choices=["video", "audio", "audio-video"], default="video",
                   help="video (default): the frames, as the model card's model; audio: the "
                   "clip's log-mel; audio-video: both, fused before the head")
    p.set_defaults(func=_cmd_new_model)

    p = sub.add_parser("make-sample-data", help="render synthetic face videos (not real data)",
                       description="Render short videos of drawn faces whose expression follows "
                       "each emotion, with a synthetic voice whose prosody (pitch, loudness, "
                       "rate, voice quality) follows it too (not speech: no words), named like "
                       "RAVDESS or CREMA-D, to exercise the pipeline on a CPU. Synthetic: says "
                       "nothing about accuracy on real faces or voices.")
    p.add_argument("output", help="folder to write")
    p.add_argument("--actors", type=int, default=6, help="number of actors (default 6)")
    p.add_argument("--layout", choices=["ravdess", "crema-d"], default="ravdess")
    p.add_argument("--takes", type=int, default=1, help="takes per emotion per actor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True,
                   help="a 16 kHz AAC voice track per video (default; RAVDESS names then use "
                   "modality 01, audio-video); --no-audio: video only (modality 02)")
    p.add_argument("--ambiguous-faces", type=_emotion_list, default=(), metavar="EMOTIONS",
                   help="comma-separated emotions (e.g. angry,disgust) whose faces are drawn "
                   "neutral, so only the voice tells them apart (needs --audio)")
    p.set_defaults(func=_cmd_make_sample_data)
