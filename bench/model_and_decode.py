"""The model package's numbers: parameters, deployment-file sizes, forward ms per clip, and
``emotion_model.video`` decode speed beside Debian's ffmpeg on the same file.

    python bench/model_and_decode.py [--json PATH]

Forward times are per clip at batch 1 and batch 8, T = 48, for 112 and 224 px. Decode: a
1280x720 30 fps H.264 clip of 3.5 s, decoded and sampled by ``ClipReader`` (48 frames at 112 px)
versus ``ffmpeg -threads 2 -i clip.mp4 -f null -``, each the best of 3 runs, frames/s of the
source video.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _best(fn: Any, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def model_numbers() -> dict[str, Any]:
    """Parameters, file size and forward ms per clip of both presets."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model

    out: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    for name in ("small", "r50"):
        torch.manual_seed(0)
        model = build_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        backbone_no_se = sum(
            p.numel() for k, p in model.named_parameters()
            if k.startswith("backbone.") and ".act_b." not in k
        )
        save_deployment(model, tmp / f"{name}.safetensors")
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.randn(1, 48, 3, 112, 112))
        entry: dict[str, Any] = {
            "parameters": params,
            "backbone_parameters_before_se": backbone_no_se,
            "deployment_file_mb": (tmp / f"{name}.safetensors").stat().st_size / 1e6,
            "gflops_per_clip_48x112": counter.get_total_flops() / 1e9,
        }
        for size in (112, 224):
            for batch in (1, 8):
                x = torch.randn(batch, 48, 3, size, size)
                with torch.inference_mode():
                    model(x[:1])  # warm-up
                    seconds = _best(lambda x=x, m=model: m(x), repeat=2 if size == 224 else 3)
                entry[f"forward_ms_per_clip_{size}_batch{batch}"] = 1000 * seconds / batch
        out[name] = entry
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def decode_numbers() -> dict[str, Any]:
    """ClipReader vs ffmpeg on one 1280x720 30 fps H.264 clip of 3.5 s."""
    from emotion_model.sample_data import render_face_clip
    from emotion_model.video import ClipReader
    from emotion_model.video_writer import encode_video

    tmp = Path(tempfile.mkdtemp())
    clip = tmp / "clip.mp4"
    frames = 105
    encode_video(clip, render_face_clip("happy", actor_seed=1, num_frames=frames, height=720,
                                        width=1280, fps=30), fps=30, codec="libx264")
    result: dict[str, Any] = {"video": "1280x720 30 fps H.264, 3.5 s", "frames": frames}
    for threads in (0, 1, 2):
        seconds = _best(lambda t=threads: list(ClipReader(clip, threads=t)))
        result[f"clipreader_threads{threads}_fps"] = frames / seconds
    if shutil.which("ffmpeg"):
        cmd = ["ffmpeg", "-v", "error", "-threads", "2", "-i", str(clip), "-f", "null", "-"]
        seconds = _best(lambda: subprocess.run(cmd, check=True))
        result["ffmpeg_threads2_fps"] = frames / seconds
        result["clipreader_vs_ffmpeg"] = result["clipreader_threads0_fps"] / (frames / seconds)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    numbers = {"decode": decode_numbers(), "models": model_numbers()}
    print(json.dumps(numbers, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
