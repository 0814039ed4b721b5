"""Throughput of ``batch-inference`` on Dask local clusters of 1 and 2 worker processes, as
ratios against the threads runner measured in the same run, on the same videos and model.

Runs, each over the same folder with ``reprocess=True`` (so every video is redone):

1. threads:        the default runner, shards one after another in this process
                   (warm: the model is already in this process's cache)
2. dask N, cold:   ``task_runner="dask", dask_local_workers=N``: what a run costs end to end,
                   cluster start, worker imports and model load included
3. dask N, warm:   the same cluster kept up (``dask_address``) after one run on it: the steady
                   state of a long run or a long-lived cluster

Prints clips/s and the ratio to threads; ``--json PATH`` writes them with the machine.

    python bench/dask_scaling.py                 # 16 videos, the small model, ~3-4 min on 2 cores
    python bench/dask_scaling.py --model r50 --videos 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_inputs(folder: Path, *, n: int, seconds: float) -> list[Path]:
    """``n`` short 480x360 30 fps H.264 videos (drawn faces), one clip each at 4 s clips."""
    from emotion_model.labels import EMOTION_LABELS
    from emotion_model.sample_data import render_face_clip
    from emotion_model.video_writer import encode_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"face_{i:03d}.mp4"
        frames = render_face_clip(EMOTION_LABELS[i % 6], actor_seed=i,
                                  num_frames=int(seconds * 30), height=360, width=480, fps=30)
        paths.append(encode_video(path, frames, fps=30, codec="libx264"))
    return paths


@contextlib.contextmanager
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for the whole benchmark; its URL reaches the Dask workers
    with each task's context."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def run(params: dict[str, Any]) -> dict[str, Any]:
    """One flow run; its summary plus the wall time seen from here."""
    from flows.batch_inference import batch_inference

    t0 = time.perf_counter()
    summary = batch_inference(**params, reprocess=True)
    summary["bench_wall_s"] = time.perf_counter() - t0
    return summary


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every configuration, in one process and against one Prefect server."""
    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model
    from tasks.batch.cluster import local_cluster

    videos = make_inputs(work / "videos", n=args.videos, seconds=args.seconds)
    model_path = work / f"{args.model}.safetensors"
    torch.manual_seed(0)
    save_deployment(build_model(args.model).eval(), model_path, untrained=True)
    base = {"source": str(work / "videos"), "model": str(model_path),
            "output": str(work / "out"), "shard_size": args.shard_size, "device": "cpu"}
    rows: list[dict[str, Any]] = []

    def record(name: str, summary: dict[str, Any], **extra: Any) -> None:
        clips = summary["counts"]["clips"]
        assert summary["counts"]["succeeded"] == len(videos), summary["counts"]
        rows.append({"runner": name, "clips": clips, "wall_s": round(summary["bench_wall_s"], 2),
                     "clips_per_s": clips / summary["bench_wall_s"],
                     "workers": sorted({s["worker"] for s in summary["shards"]}), **extra})
        print(f"  {name:<22} {clips} clips in {summary['bench_wall_s']:.1f}s", flush=True)

    with prefect_server():
        run(base)  # warm-up: Prefect server, this process's imports and model cache
        record("threads", run(base))
        for n in args.workers:
            record(f"dask {n} worker(s), cold", run({**base, "task_runner": "dask",
                                                     "dask_local_workers": n}))
            # the same cluster the flow would start, kept up between two runs
            with local_cluster(n_workers=n) as cluster:
                warm = {**base, "task_runner": "dask", "dask_address": cluster.scheduler_address}
                run(warm)
                record(f"dask {n} worker(s), warm", run(warm))
    threads = rows[0]["clips_per_s"]
    for row in rows:
        row["ratio_to_threads"] = row["clips_per_s"] / threads
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.5, help="length of each video")
    parser.add_argument("--model", default="small", choices=["small", "r50"])
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    with tempfile.TemporaryDirectory(prefix="dask-scaling-") as tmp:
        rows = measure(args, Path(tmp))
    print(f"\n{args.videos} videos, model {args.model}, shards of {args.shard_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'runner':<26}{'clips/s':>9}{'ratio':>8}{'wall s':>8}")
    for row in rows:
        print(f"{row['runner']:<26}{row['clips_per_s']:>9.2f}{row['ratio_to_threads']:>8.2f}"
              f"{row['wall_s']:>8.1f}")
    if args.json:
        import torch

        args.json.write_text(json.dumps({
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
                        else None},
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": rows,
        }, indent=2))


if __name__ == "__main__":
    main()
