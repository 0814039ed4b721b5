"""Throughput of the batch pipeline against model-only compute and decode-only, same clips.

Prepares its own inputs (1280x720 30 fps H.264 clips like RAVDESS, 480x360 like CREMA-D, both
with a drawn face, and the real clips: the repository's four CREMA-D clips in tests/data/crema_d,
or the .mp4/.flv files below ``--clips DIR``), then for the small model and for R50, and for each
crop mode (``--crop``: ``frame``, the whole frame resized; ``face``, a face model: faces detected
at ``detect_fps`` and tracked by the decoding threads, one clip per face track), measures, in one
run, on the same files:

1. pipeline:  the ``batch-inference`` flow, local folder -> Parquet (warm Prefect server)
2. compute:   model-only forward on pre-decoded uint8 clips, same batch size
3. decode:    ``emotion_model.video`` decode-and-sample alone, same thread count; in face mode
              with face detection and tracking included (the decoding threads do it);
              detection's own cost is ``info.detect_s`` (its conversion to the detection size
              included), given as seconds, as a share of the decoding threads' seconds, and as
              ms per frame the detector looked at
4. ceiling:   CPU: 1 / (1/compute + 1/decode) (decode and the model share the cores);
              GPU: min(compute, decode)
5. model card (optional, needs ``opencv-python-headless``): cv2.VideoCapture with one
   CAP_PROP_POS_FRAMES seek per sampled frame, resize, one model call per video (whole frames
   in both modes: it is the approach being replaced; measured once per model)

Clips are counted per face track in face mode (a video with one face gives as many clips as in
frame mode). Each row is given for all inputs and for the 1280x720 clips alone (the ``720p``
rows: their own flow run, decode and card time; compute per clip is the same). Each
(model, crop) runs in a fresh subprocess, so its peak RSS is its own. Prints one table of
clips/s and ratios; ``--json PATH`` writes them with the machine's description.

    python bench/throughput.py --quick          # a few clips, both models, both crops
    python bench/throughput.py --json out.json  # the full run
    python bench/throughput.py --crop face      # the face path only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REAL_CLIPS = ROOT / "tests" / "data" / "crema_d"  # in the repository (ODbL, tests/data/README.md)


def make_inputs(folder: Path, *, n720: int, n360: int, seconds: float,
                clips: Path | None = REAL_CLIPS) -> list[Path]:
    """Encode the benchmark's videos (drawn faces, H.264) and copy in the real clips below
    `clips` (every .mp4 / .flv; none when `clips` is None)."""
    from emotion_model.labels import EMOTION_LABELS
    from emotion_model.sample_data import render_face_clip
    from emotion_model.video_writer import encode_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n720 + n360):
        big = i < n720
        h, w = (720, 1280) if big else (360, 480)
        path = folder / f"{'ravdess' if big else 'cremad'}_{i:03d}.mp4"
        if not path.exists():
            frames = render_face_clip(
                EMOTION_LABELS[i % 6], actor_seed=i, num_frames=int(seconds * 30),
                height=h, width=w, fps=30,
            )
            encode_video(path, frames, fps=30, codec="libx264")
        paths.append(path)
    if clips is not None:
        if not clips.is_dir():
            raise FileNotFoundError(f"--clips {clips}: not a folder")
        for src in sorted(clips.rglob("*")):
            if src.suffix.lower() in (".mp4", ".flv"):
                dst = folder / f"real_{src.name}"
                if not dst.exists():
                    shutil.copyfile(src, dst)  # a private copy: the flow lists one folder
                paths.append(dst)
    for stale in folder.glob("real_*"):  # real clips an earlier run (other --clips) copied in
        if stale not in paths:
            stale.unlink()
    return paths


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


GROUPS = {"ravdess": "720p", "cremad": "360p", "real": "real"}
"""Input sets by file name prefix: drawn-face 1280x720, drawn-face 480x360, real clips."""


def _group(path: Path) -> str:
    return GROUPS.get(path.name.split("_", 1)[0], "other")


def _crop_spec(mode: str, args: argparse.Namespace) -> Any:
    from emotion_model.face_clips import FRAME_CROP, CropSpec

    return CropSpec.face(detect_fps=args.detect_fps) if mode == "face" else FRAME_CROP


def decode_only(videos: list[Path], args: argparse.Namespace, crop: Any) -> dict[str, Any]:
    """Decode (and in face mode detect and track) every video with the pipeline's pool size;
    the clips, and per input set the wall seconds, the decoding threads' seconds and the
    detection's. Face mode keeps the clips of the tracks a video keeps (``info.faces``), as
    the flow does."""
    from concurrent.futures import ThreadPoolExecutor

    from emotion_model.video import ClipReader

    def decode(path: Path) -> tuple[list[Any], Any, float]:
        t0 = time.perf_counter()
        reader = ClipReader(path, num_frames=args.clip_frames, img_size=args.img_size,
                            clip_seconds=args.clip_seconds, crop=crop,
                            max_faces=args.max_faces)
        clips = list(reader)
        if crop.mode == "face":
            kept = {f.face_id for f in reader.info.faces}
            clips = [c for c in clips if c.face_id in kept]
        return [c.frames for c in clips], reader.info, time.perf_counter() - t0

    frames: list[Any] = []
    groups: dict[str, dict[str, Any]] = {}
    # one pool per input set, so each set has its own wall time; the total is their sum
    for name in dict.fromkeys(_group(v) for v in videos):
        subset = [v for v in videos if _group(v) == name]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.decode_threads) as pool:
            done = list(pool.map(decode, subset))
        wall = time.perf_counter() - t0
        for clip_frames, _, _ in done:
            frames.extend(clip_frames)
        groups[name] = {
            "videos": len(subset),
            "clips": sum(len(f) for f, _, _ in done),
            "decode_s": wall,
            "thread_s": sum(s for _, _, s in done),
            "detect_s": sum(i.detect_s for _, i, _ in done),
            "detect_frames": sum(i.detect_frames for _, i, _ in done),
            "frames_decoded": sum(i.frames_decoded for _, i, _ in done),
            "faces": sum(len(i.faces) for _, i, _ in done),
            "no_face": sum(int(crop.mode == "face" and not f) for f, _, _ in done),
        }
    return {"frames": frames, "groups": groups}


def _totals(groups: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    keys = ("videos", "clips", "decode_s", "thread_s", "detect_s", "detect_frames",
            "frames_decoded", "faces", "no_face")
    return {k: sum(groups[n][k] for n in names if n in groups) for k in keys}


def run_flow(source: Path, model_path: Path, out: Path, args: argparse.Namespace,
             face: bool, n_videos: int) -> tuple[dict[str, Any], float]:
    """The batch-inference flow on ``source``: its summary and wall seconds."""
    from flows.batch_inference import batch_inference

    extra: dict[str, Any] = (
        {"detect_fps": args.detect_fps, "max_faces": args.max_faces} if face else {})
    t0 = time.perf_counter()
    summary = batch_inference(
        source=str(source), model=str(model_path), output=str(out),
        batch_size=args.batch_size, device=args.device, decode_threads=args.decode_threads,
        clip_seconds=args.clip_seconds, reprocess=True, shard_size=max(64, n_videos), **extra,
    )
    return summary, time.perf_counter() - t0


def measure(model_name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All measurements for one model and one crop mode (``args.crop``), in this process."""
    import numpy as np
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model
    from emotion_model.predict import Predictor

    face = args.crop == "face"
    crop = _crop_spec(args.crop, args)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{model_name}-{args.crop}-"))
    torch.manual_seed(0)
    model_path = work / "model.safetensors"
    save_deployment(build_model(model_name).eval(), model_path, num_frames=args.clip_frames,
                    img_size=args.img_size, untrained=True,
                    **({"crop": crop.to_metadata()} if face else {}))
    predictor = Predictor.from_file(model_path, device=args.device)
    assert predictor.crop.mode == args.crop, predictor.crop
    args.batch_size = args.batch_size or predictor.preferred_batch_size
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".flv"))
    from emotion_model.video import ClipReader

    list(ClipReader(videos[0], num_frames=args.clip_frames, img_size=args.img_size,
                    clip_seconds=args.clip_seconds, crop=crop))  # imports (PyAV, TFLite)

    # decode alone: the pipeline's decode pool size, every clip of every video
    decoded = decode_only(videos, args, crop)
    clips = decoded.pop("frames")
    groups = decoded["groups"]
    n_clips = len(clips)

    # compute alone: the same clips, pre-decoded, batches of batch_size
    batches = [np.stack(clips[i : i + args.batch_size])
               for i in range(0, n_clips, args.batch_size)]
    predictor.probabilities(batches[0])  # warm-up
    compute_s = math.inf
    for _ in range(args.compute_repeats):  # the fastest pass: eager CPU swings under load
        t0 = time.perf_counter()
        for batch in batches:
            predictor.probabilities(batch)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        compute_s = min(compute_s, time.perf_counter() - t0)
    del clips, batches

    # the pipeline: the batch-inference flow on the folder (Prefect server warmed first),
    # then on the 720p clips alone (their own folder: the flow lists recursively)
    warm = work / "warm"
    warm.mkdir()
    shutil.copyfile(videos[0], warm / videos[0].name)
    run_flow(warm, model_path, work / "warm-out", args, face, 1)
    sets: dict[str, list[str]] = {"all": list(groups)}
    big = [v for v in videos if _group(v) == "720p"]
    if big and len(big) < len(videos):
        sets["720p"] = ["720p"]
    rows: dict[str, dict[str, Any]] = {}
    on_gpu = predictor.device.type == "cuda"
    compute = n_clips / compute_s
    for set_name, names in sets.items():
        source = folder
        if set_name != "all":
            source = work / f"in-{set_name}"
            source.mkdir()
            for v in (v for v in videos if _group(v) in names):
                try:
                    os.link(v, source / v.name)
                except OSError:
                    shutil.copyfile(v, source / v.name)
        tot = _totals(groups, names)
        summary, flow_s = run_flow(source, model_path, work / f"out-{set_name}", args, face,
                                   tot["videos"])
        assert summary["counts"]["clips"] == tot["clips"], (summary["counts"], tot)
        shard_s = sum(s["wall_s"] for s in summary["shards"])
        decode_rate = tot["clips"] / tot["decode_s"]
        ceiling = min(compute, decode_rate) if on_gpu else 1 / (1 / compute + 1 / decode_rate)
        pipeline = tot["clips"] / flow_s
        row: dict[str, Any] = {
            "clips": tot["clips"],
            "videos": tot["videos"],
            "faces": tot["faces"],
            "no_face": tot["no_face"],
            "batch_size": args.batch_size,
            "pipeline_clips_per_s": pipeline,
            "pipeline_shard_clips_per_s": tot["clips"] / shard_s,
            "compute_clips_per_s": compute,
            "decode_clips_per_s": decode_rate,
            "decode_s": tot["decode_s"],
            "decode_thread_s": tot["thread_s"],
            "ceiling_clips_per_s": ceiling,
            "ceiling_kind": "min" if on_gpu else "serial",
            "pipeline_vs_compute": pipeline / compute,
            "pipeline_vs_ceiling": pipeline / ceiling,
            "forward_ms_per_clip": 1000 / compute,
            "flow_counts": {k: summary["counts"].get(k) for k in ("clips", "faces", "no_face")},
            "flow_timings": summary.get("timings", {}),
        }
        if face:
            row |= {
                "detect_s": tot["detect_s"],
                "detect_frames": tot["detect_frames"],
                "frames_decoded": tot["frames_decoded"],
                # both are seconds of the decoding threads (a pool of decode_threads)
                "detect_share_of_decode": tot["detect_s"] / tot["thread_s"],
                "detect_ms_per_frame": 1000 * tot["detect_s"] / max(1, tot["detect_frames"]),
            }
        rows[set_name] = row
    result: dict[str, Any] = {"crop": args.crop, "rows": rows, "groups": groups,
                              "peak_rss_mb": _peak_rss_mb()}
    if args.card:
        result["model_card"] = model_card_approach(predictor, videos, args)
    shutil.rmtree(work, ignore_errors=True)
    return result


def model_card_approach(
    predictor: Any, videos: list[Path], args: argparse.Namespace
) -> dict[str, float] | None:
    """cv2.VideoCapture + one seek per sampled frame + one model call per video: seconds per
    input set (one clip per video)."""
    try:
        import cv2
    except ImportError:
        return None
    import numpy as np

    seconds: dict[str, float] = {}
    for path in videos:
        t0 = time.perf_counter()
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        for index in np.linspace(0, max(total - 1, 0), args.clip_frames).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = cap.read()
            if not ok:
                frame = frames[-1] if frames else np.zeros((args.img_size,) * 2 + (3,), np.uint8)
            else:
                frame = cv2.cvtColor(cv2.resize(frame, (args.img_size, args.img_size)),
                                     cv2.COLOR_BGR2RGB)
            frames.append(frame)
        cap.release()
        predictor.probabilities(np.stack(frames)[None])
        group = _group(path)
        seconds[group] = seconds.get(group, 0.0) + time.perf_counter() - t0
    return seconds


def machine() -> dict[str, Any]:
    """CPU, Python, torch and GPU of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One line per model, crop mode and input set."""
    header = (f"{'model':6} {'crop':5} {'set':4} {'clips':>5} {'pipeline':>8} {'compute':>8} "
              f"{'decode':>8} {'det s':>6} {'det/dec':>7} {'det ms/fr':>9} {'ceiling':>8} "
              f"{'card':>6} {'pipe/comp':>9} {'pipe/ceil':>9} {'pipe/card':>9} {'RSS MB':>6}")
    print(header)
    for r in results.values():
        for set_name, row in r["rows"].items():
            print(f"{r['model']:6} {r['crop']:5} {set_name:4} {row['clips']:5d} "
                  f"{row['pipeline_clips_per_s']:8.2f} {row['compute_clips_per_s']:8.2f} "
                  f"{row['decode_clips_per_s']:8.2f} "
                  f"{_nan(row.get('detect_s')):6.2f} "
                  f"{_nan(row.get('detect_share_of_decode')):7.0%} "
                  f"{_nan(row.get('detect_ms_per_frame')):9.1f} "
                  f"{row['ceiling_clips_per_s']:8.2f} "
                  f"{_nan(row.get('model_card_clips_per_s')):6.2f} "
                  f"{row['pipeline_vs_compute']:9.2f} {row['pipeline_vs_ceiling']:9.2f} "
                  f"{_nan(row.get('pipeline_vs_model_card')):9.2f} {r['peak_rss_mb']:6.0f}")
    print("(clips/s, face mode counting one clip per face track; decode includes face detection "
          "in face mode;\n det/dec = detection seconds / decoding threads' seconds; ceiling = "
          "serial 1/(1/compute + 1/decode) on CPU, min on GPU; card: whole frames, both modes)")


def add_card(results: dict[str, dict[str, Any]]) -> None:
    """Each row's model-card rate (the model's one card measurement, same input set)."""
    cards = {r["model"]: r["model_card"] for r in results.values() if r.get("model_card")}
    for r in results.values():
        card = cards.get(r["model"])
        if not card:
            continue
        for row in r["rows"].values():
            names = list(r["groups"]) if row is r["rows"]["all"] else ["720p"]
            seconds = sum(card.get(n, 0.0) for n in names)
            videos = sum(r["groups"][n]["videos"] for n in names if n in r["groups"])
            if seconds > 0:
                row["model_card_clips_per_s"] = videos / seconds
                row["pipeline_vs_model_card"] = (row["pipeline_clips_per_s"]
                                                 / row["model_card_clips_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few clips (~4 min on 2 cores)")
    parser.add_argument("--models", default="small,r50", help="comma list (small,r50)")
    parser.add_argument("--crop", default="both", choices=("frame", "face", "both"),
                        help="whole frames, face crops (a face model), or both (default)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--clip-frames", type=int, default=48, help="frames per clip (48)")
    parser.add_argument("--img-size", type=int, default=112, help="frame size (112)")
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--detect-fps", type=float, default=5.0, help="face mode (5)")
    parser.add_argument("--max-faces", type=int, default=4, help="face mode (4)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the device's default")
    parser.add_argument("--compute-repeats", type=int, default=None,
                        help="model-only passes, the fastest counts (default: 1 quick, 2 full)")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--videos-720p", type=int, default=None)
    parser.add_argument("--videos-360p", type=int, default=None)
    parser.add_argument("--inputs", default=None, help="folder for the generated inputs")
    parser.add_argument("--clips", default=str(REAL_CLIPS),
                        help="folder of real clips to add (.mp4/.flv below it); default "
                             "tests/data/crema_d; 'none' for none")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--card", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.compute_repeats is None:
        args.compute_repeats = 1 if args.quick else 2
    n720 = args.videos_720p if args.videos_720p is not None else (4 if args.quick else 16)
    n360 = args.videos_360p if args.videos_360p is not None else (4 if args.quick else 16)
    # One folder per input set: --quick must not pick up the clips of an earlier full run.
    inputs = Path(args.inputs or Path(tempfile.gettempdir()) /
                  f"emotion-bench-inputs-{n720}x720p-{n360}x360p")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    if args.worker:  # one model and crop mode, in its own process
        print(json.dumps(measure(args.worker, inputs, args)))
        return 0

    clips = None if args.clips.lower() == "none" else Path(args.clips)
    make_inputs(inputs, n720=n720, n360=n360, seconds=3.5, clips=clips)
    crops = ["frame", "face"] if args.crop == "both" else [args.crop]
    results: dict[str, Any] = {}
    loads = [os.getloadavg()[0]]
    started = time.perf_counter()
    for name in args.models.split(","):
        for i, crop in enumerate(crops):
            cmd = [sys.executable, __file__, "--worker", name, "--inputs", str(inputs),
                   "--crop", crop]
            for flag in ("device", "clip_frames", "img_size", "clip_seconds", "batch_size",
                         "decode_threads", "detect_fps", "max_faces", "compute_repeats"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            if i == 0:
                cmd.append("--card")  # once per model: it does not depend on the crop
            print(f"measuring {name}, {crop} crops ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            results[f"{name}/{crop}"] = {"model": name,
                                         **json.loads(out.stdout.strip().splitlines()[-1])}
            loads.append(os.getloadavg()[0])
    add_card(results)

    info = machine() | {"load_average_1min": loads, "run_s": time.perf_counter() - started}
    print(f"\n{info['cpu']} x{info['cores']}, torch {info['torch']}, gpu: {info['gpu']}; "
          f"load average (1 min) {', '.join(f'{x:.1f}' for x in loads)}; "
          f"{info['run_s']:.0f} s")
    print(f"inputs: {n720} x 1280x720 + {n360} x 480x360 H.264 clips of 3.5 s (drawn faces), "
          f"plus real clips; {args.clip_frames} frames at {args.img_size} px per clip, batch "
          f"{args.batch_size or 'auto (CPU 2, GPU 32)'}; face mode: detect_fps "
          f"{args.detect_fps:g}, max_faces {args.max_faces}")
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
