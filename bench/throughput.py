"""Throughput of the batch pipeline against model-only compute and decode-only, same clips.

Prepares its own inputs (1280x720 30 fps H.264 clips like RAVDESS, 480x360 like CREMA-D, and the
real clips: the repository's four CREMA-D clips in tests/data/crema_d, or the .mp4/.flv files
below ``--clips DIR``), then for the small model and for R50 measures, in one run, on the same
files:

1. pipeline:  the ``batch-inference`` flow, local folder -> Parquet (warm Prefect server)
2. compute:   model-only forward on pre-decoded uint8 clips, same batch size
3. decode:    ``emotion_model.video`` decode-and-sample alone, same thread count
4. ceiling:   CPU: 1 / (1/compute + 1/decode) (decode and the model share the cores);
              GPU: min(compute, decode)
5. model card (optional, needs ``opencv-python-headless``): cv2.VideoCapture with one
   CAP_PROP_POS_FRAMES seek per sampled frame, resize, one model call per video.

Each model runs in a fresh subprocess, so its peak RSS is its own. Prints one table of clips/s
and ratios; ``--json PATH`` writes them with the machine's description.

    python bench/throughput.py --quick          # a few clips, both models, ~2-3 min on 2 cores
    python bench/throughput.py --json out.json  # the full run
"""

from __future__ import annotations

import argparse
import json
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


def measure(model_name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All measurements for one model, in this process."""
    import numpy as np
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model
    from emotion_model.predict import Predictor
    from emotion_model.video import ClipReader

    work = Path(tempfile.mkdtemp(prefix=f"bench-{model_name}-"))
    torch.manual_seed(0)
    model_path = work / "model.safetensors"
    save_deployment(build_model(model_name).eval(), model_path, num_frames=args.clip_frames,
                    img_size=args.img_size, untrained=True)
    predictor = Predictor.from_file(model_path, device=args.device)
    args.batch_size = args.batch_size or predictor.preferred_batch_size
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".flv"))
    reader_kwargs = {"num_frames": args.clip_frames, "img_size": args.img_size,
                     "clip_seconds": args.clip_seconds}

    # decode alone: the pipeline's decode pool size, every clip of every video
    from concurrent.futures import ThreadPoolExecutor

    def decode(path: Path) -> list[Any]:
        return [c.frames for c in ClipReader(path, **reader_kwargs)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.decode_threads) as pool:
        decoded = [f for clips in pool.map(decode, videos) for f in clips]
    decode_s = time.perf_counter() - t0
    n_clips = len(decoded)

    # compute alone: the same clips, pre-decoded, batches of batch_size
    batches = [np.stack(decoded[i : i + args.batch_size])
               for i in range(0, n_clips, args.batch_size)]
    predictor.probabilities(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        predictor.probabilities(batch)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    compute_s = time.perf_counter() - t0

    # the pipeline: the batch-inference flow on the folder (Prefect server warmed first)
    from flows.batch_inference import batch_inference

    warm = work / "warm"
    warm.mkdir()
    shutil.copyfile(videos[0], warm / videos[0].name)
    batch_inference(source=str(warm), model=str(model_path), output=str(work / "warm-out"),
                    device=args.device, clip_seconds=args.clip_seconds)
    t0 = time.perf_counter()
    summary = batch_inference(
        source=str(folder), model=str(model_path), output=str(work / "out"),
        batch_size=args.batch_size, device=args.device, decode_threads=args.decode_threads,
        clip_seconds=args.clip_seconds, reprocess=True, shard_size=max(64, len(videos)),
    )
    flow_s = time.perf_counter() - t0
    shard_s = sum(s["wall_s"] for s in summary["shards"])
    assert summary["counts"]["clips"] == n_clips, (summary["counts"], n_clips)

    compute = n_clips / compute_s
    decode_rate = n_clips / decode_s
    on_gpu = predictor.device.type == "cuda"
    ceiling = min(compute, decode_rate) if on_gpu else 1 / (1 / compute + 1 / decode_rate)
    pipeline = n_clips / flow_s
    result: dict[str, Any] = {
        "clips": n_clips,
        "videos": len(videos),
        "batch_size": args.batch_size,
        "pipeline_clips_per_s": pipeline,
        "pipeline_shard_clips_per_s": n_clips / shard_s,
        "compute_clips_per_s": compute,
        "decode_clips_per_s": decode_rate,
        "ceiling_clips_per_s": ceiling,
        "ceiling_kind": "min" if on_gpu else "serial",
        "pipeline_vs_compute": pipeline / compute,
        "pipeline_vs_ceiling": pipeline / ceiling,
        "forward_ms_per_clip": 1000 / compute,
        "peak_rss_mb": _peak_rss_mb(),
    }
    card = model_card_approach(predictor, videos, args)
    if card is not None:
        result["model_card_clips_per_s"] = card
        result["pipeline_vs_model_card"] = pipeline / card
    shutil.rmtree(work, ignore_errors=True)
    return result


def model_card_approach(
    predictor: Any, videos: list[Path], args: argparse.Namespace
) -> float | None:
    """cv2.VideoCapture + one seek per sampled frame + one model call per video (clips/s)."""
    try:
        import cv2
    except ImportError:
        return None
    import numpy as np

    t0 = time.perf_counter()
    count = 0
    for path in videos:
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
        count += 1
    return count / (time.perf_counter() - t0)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few clips (~2-3 min on 2 cores)")
    parser.add_argument("--models", default="small,r50", help="comma list (small,r50)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--clip-frames", type=int, default=48, help="frames per clip (48)")
    parser.add_argument("--img-size", type=int, default=112, help="frame size (112)")
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the device's default")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--videos-720p", type=int, default=None)
    parser.add_argument("--videos-360p", type=int, default=None)
    parser.add_argument("--inputs", default=None, help="folder for the generated inputs")
    parser.add_argument("--clips", default=str(REAL_CLIPS),
                        help="folder of real clips to add (.mp4/.flv below it); default "
                             "tests/data/crema_d; 'none' for none")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    n720 = args.videos_720p if args.videos_720p is not None else (4 if args.quick else 16)
    n360 = args.videos_360p if args.videos_360p is not None else (4 if args.quick else 16)
    # One folder per input set: --quick must not pick up the clips of an earlier full run.
    inputs = Path(args.inputs or Path(tempfile.gettempdir()) /
                  f"emotion-bench-inputs-{n720}x720p-{n360}x360p")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    if args.worker:  # one model, in its own process
        print(json.dumps(measure(args.worker, inputs, args)))
        return 0

    clips = None if args.clips.lower() == "none" else Path(args.clips)
    make_inputs(inputs, n720=n720, n360=n360, seconds=3.5, clips=clips)
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--inputs", str(inputs)]
        for flag in ("device", "clip_frames", "img_size", "clip_seconds", "batch_size",
                     "decode_threads"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])

    info = machine()
    print(f"\n{info['cpu']} x{info['cores']}, torch {info['torch']}, gpu: {info['gpu']}")
    print(f"inputs: {n720} x 1280x720 + {n360} x 480x360 H.264 clips of 3.5 s, plus real clips;"
          f" {args.clip_frames} frames at {args.img_size} px per clip, batch "
          f"{args.batch_size or 'auto (CPU 2, GPU 32)'}")
    header = (f"{'model':6} {'clips':>5} {'pipeline':>9} {'compute':>9} {'decode':>9} "
              f"{'ceiling':>9} {'card':>7} {'pipe/comp':>9} {'pipe/ceil':>9} {'pipe/card':>9} "
              f"{'RSS MB':>7}")
    print(header)
    for name, r in results.items():
        card = r.get("model_card_clips_per_s")
        print(f"{name:6} {r['clips']:5d} {r['pipeline_clips_per_s']:9.2f} "
              f"{r['compute_clips_per_s']:9.2f} {r['decode_clips_per_s']:9.2f} "
              f"{r['ceiling_clips_per_s']:9.2f} {card if card else float('nan'):7.2f} "
              f"{r['pipeline_vs_compute']:9.2f} {r['pipeline_vs_ceiling']:9.2f} "
              f"{r.get('pipeline_vs_model_card', float('nan')):9.2f} {r['peak_rss_mb']:7.0f}")
    print("(clips/s; ceiling = serial 1/(1/compute + 1/decode) on CPU, min on GPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": info, "models": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
