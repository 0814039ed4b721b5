"""Training speed on this machine: time per epoch of the small and the R50 model on the model
card's clips (48 frames of 112 px), and what the clip cache saves.

For each preset, in one run on the same videos:
  1. build the clip cache (every video decoded once),
  2. train ``--epochs`` epochs reading the cache,
  3. rebuild the cache warm (nothing decoded) to show a later retrain's cost.
The first epoch of a cold run costs cache build + epoch; every later epoch (and every later
retrain) costs the epoch alone. Without the cache, every epoch would pay the decode again.

    python bench/training.py            # 4 actors x 6 emotions, 480x360 30 fps, 2 epochs
    python bench/training.py --presets small --size 720 1280 --seconds 3.5   # RAVDESS-like
    python bench/training.py --json out.json --presets small
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion_model.sample_data import make_sample_dataset  # noqa: E402
from tasks.training.clip_cache import ClipCache, ClipSpec, build_cache  # noqa: E402
from tasks.training.data import collect_examples  # noqa: E402
from tasks.training.loop import train  # noqa: E402
from tasks.training.settings import RetrainSettings  # noqa: E402
from tasks.training.split import split_by_actor  # noqa: E402


def measure(preset: str, data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Cache build, epochs from the cache and a warm cache pass for one preset."""
    settings = RetrainSettings(
        sources=[str(data)], registry=str(work / preset), preset=preset,
        num_frames=args.num_frames, img_size=args.img_size, epochs=args.epochs,
        patience=args.epochs, val_fraction=0.25, device=args.device,
        batch_size=args.batch_size, decode_threads=2,
    )
    examples, _ = collect_examples(settings.sources)
    spec = ClipSpec(settings.num_frames, settings.img_size, settings.clip_seconds,
                    settings.max_clips_per_video)
    cache = ClipCache(settings.cache_uri, spec)
    kept, cold = build_cache(cache, examples, threads=2)
    _, warm = build_cache(ClipCache(settings.cache_uri, spec), kept, threads=2)
    split = split_by_actor(kept, settings.val_fraction, settings.seed)
    start = time.perf_counter()
    result = train(settings, split.train, split.val, ClipCache(settings.cache_uri, spec))
    wall = time.perf_counter() - start
    epoch_s = [h["train_s"] + h["val_s"] for h in result.history]
    later = sum(epoch_s[1:]) / max(1, len(epoch_s) - 1) if len(epoch_s) > 1 else epoch_s[0]
    return {
        "videos": len(kept), "train_clips": len(split.train), "val_clips": len(split.val),
        "cache_build_s": round(cold.decode_s, 2), "cache_warm_s": round(warm.decode_s, 3),
        "epoch_s": [round(s, 2) for s in epoch_s],
        "train_s_per_clip": round(result.history[-1]["train_s"] / max(1, len(split.train)), 3),
        "first_epoch_cold_s": round(cold.decode_s + epoch_s[0], 2),
        "later_epoch_s": round(later, 2),
        "epoch_without_cache_s": round(later + cold.decode_s, 2),
        "cache_saving_per_epoch": round((later + cold.decode_s) / later, 2),
        "train_wall_s": round(wall, 1),
    }


def main() -> None:
    """Parse arguments, render the videos once, measure each preset, print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "r50"])
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=48)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"),
                        help="video height and width (720 1280 for RAVDESS-like clips)")
    parser.add_argument("--seconds", type=float, default=2.5, help="video length")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    results: dict[str, Any] = {"device": "cuda" if args.device != "cpu" and
                               torch.cuda.is_available() else "cpu",
                               "threads": torch.get_num_threads(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        make_sample_dataset(data, actors=args.actors, layout="crema-d", seconds=args.seconds,
                            fps=30, size=tuple(args.size))
        print(f"rendered {args.actors * 6} videos of {args.size[1]}x{args.size[0]} 30 fps "
              f"{args.seconds} s in "
              f"{time.perf_counter() - t:.0f}s", flush=True)
        for preset in args.presets:
            results["models"][preset] = measure(preset, data, Path(tmp), args)
            print(preset, json.dumps(results["models"][preset]), flush=True)
    print(f"\n{'model':6} {'videos':>6} {'cache build':>11} {'warm':>6} {'epoch 1 cold':>12} "
          f"{'later epoch':>11} {'w/o cache':>9} {'saving':>7} {'s/clip':>7}")
    for preset, r in results["models"].items():
        print(f"{preset:6} {r['videos']:>6} {r['cache_build_s']:>10.1f}s "
              f"{r['cache_warm_s']:>5.2f}s "
              f"{r['first_epoch_cold_s']:>11.1f}s {r['later_epoch_s']:>10.1f}s "
              f"{r['epoch_without_cache_s']:>8.1f}s {r['cache_saving_per_epoch']:>6.2f}x "
              f"{r['train_s_per_clip']:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
