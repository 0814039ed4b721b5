"""The audio branch's cost beside the video's (issue 16): decoding and model compute, same run.

Prepares its own inputs beside the repository's real clips and measures, alternating the
video-only baseline and the audio variant in every repeat (the order flips each repeat, so load
from other processes falls on both alike), medians over repeats and median per-repeat ratios:

- decode:  ``ClipReader`` (48 frames at 112 px, 4 s windows, the deployment defaults) over each
           video with ``audio=None`` (the baseline: the audio packets are demuxed and dropped)
           and with ``audio=AudioSpec()`` (the first audio stream decoded, resampled to 16 kHz
           mono and each clip's window turned into a 64 x 400 log-mel), for whole frames
           (``--crop frame``) and face crops (``face``: detection and tracking included in
           both variants). The audio runs are instrumented (``AudioTrack.decode`` / ``push`` /
           ``window`` and ``log_mel`` timed in place), which splits the audio's cost into codec
           decoding, resampling (+ keeping the samples), the log-mel, and the rest (the window's
           waveform copy, demuxing the audio packets, clips waiting for their audio). Per input
           set: ms per clip, audio / baseline, and the audio's share of the decode time.
- compute: forward passes of untrained models through ``Predictor.probabilities`` (what the
           pipeline calls: uint8 clips normalized inside, eval, ``channels_last_3d`` backbone,
           fp32, CPU, torch threads = cores), batch 8 (``--batch``) of real decoded clips
           (48 x 112 x 112 frames and their log-mels): for the small preset and R50, the video
           model (baseline), the audio-video model, the audio-only model (no backbone: the same
           for both presets) and the audio encoder alone; ms per clip, ratios, the audio
           encoder's share of the fused model's time (direct, and as the fused - video
           difference), GFLOPs per clip (``FlopCounterMode``), parameters and the deployment
           file's size (``save_deployment`` to a temporary file).
- together: ms per clip of decode (whole frames, all inputs) + compute, video-only vs fused.

Inputs: the 4 CREMA-D clips in tests/data/crema_d (480x360 VP6 + MP3 44.1 kHz mono, ~2 s),
drawn-face videos with a synthetic voice as ``make-sample-data --audio`` writes them (480x360
H.264 + AAC 16 kHz mono, 3.5 s) and RAVDESS-like 1280x720 H.264 videos with a 48 kHz stereo
AAC track (3.5 s; RAVDESS' audio-video files carry 48 kHz stereo). Every video is shorter than
a 4 s window, so it gives one clip, as RAVDESS and CREMA-D do.

    python bench/audio.py --quick              # fewer videos and repeats (~45 s on 2 cores, quiet)
    python bench/audio.py --json audio.json    # the full run (~1.7 min quiet; 3-6 min shared)
    python bench/audio.py --crop frame --models small
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
REAL_CLIPS = ROOT / "tests" / "data" / "crema_d"

from tuning import alternate, load  # noqa: E402  (bench/ is on sys.path when run as a script)

T, SIZE, CLIP_SECONDS = 48, 112, 4.0  # the deployment defaults (checkpoint.DEFAULT_*)
GROUPS = ("crema-d", "sample-360p", "720p")
GROUP_NOTES = {
    "crema-d": "real CREMA-D, 480x360 VP6 + MP3 44.1 kHz mono",
    "sample-360p": "drawn face + synthetic voice, 480x360 H.264 + AAC 16 kHz mono",
    "720p": "drawn face + synthetic voice, 1280x720 H.264 + AAC 48 kHz stereo",
}


# --- helpers ------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def med(values: list[float]) -> float:
    """Median."""
    return statistics.median(values)


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of ``num / den`` (paired by repeat)."""
    return statistics.median(n / d for n, d in zip(num, den, strict=True))


# --- inputs -------------------------------------------------------------------------------------
def make_inputs(folder: Path, *, n360: int, n720: int, seconds: float,
                real: Path | None = REAL_CLIPS) -> dict[str, list[Path]]:
    """The benchmark's videos by input set (files already in ``folder`` are reused)."""
    import numpy as np

    from emotion_model.labels import EMOTION_LABELS
    from emotion_model.sample_data import make_sample_dataset, render_face_clip
    from emotion_model.sample_voice import render_voice
    from emotion_model.video_writer import AudioTrack, encode_video

    groups: dict[str, list[Path]] = {g: [] for g in GROUPS}
    if real is not None:
        groups["crema-d"] = sorted(p for p in real.iterdir()
                                   if p.suffix.lower() in (".flv", ".mp4"))
    if n360:
        actors = math.ceil(n360 / 6)
        root = folder / f"sample360_{actors}x{math.ceil(n360 / actors)}_{seconds:g}s"
        emotions = EMOTION_LABELS[:math.ceil(n360 / actors)]
        paths = sorted(root.rglob("*.mp4"))
        if len(paths) < n360:
            paths = make_sample_dataset(root, actors=actors, layout="ravdess", emotions=emotions,
                                        seconds=seconds, size=(360, 480), audio=True, seed=16)
        groups["sample-360p"] = paths[:n360]
    for i in range(n720):
        path = folder / f"ravdess720_{i:02d}_{seconds:g}s.mp4"
        if not path.exists():
            emotion = EMOTION_LABELS[(i + 1) % 6]
            frames = render_face_clip(emotion, actor_seed=100 + i, num_frames=round(seconds * 30),
                                      height=720, width=1280, fps=30)
            voice = render_voice(emotion, actor_seed=100 + i, seconds=seconds,
                                 sample_rate=48_000)
            stereo = np.stack([voice, 0.9 * voice])
            encode_video(path, frames, fps=30, codec="libx264",
                         options={"preset": "veryfast", "crf": "20"},
                         audio=AudioTrack(stereo, 48_000, bit_rate=128_000,
                                          options={"aac_coder": "fast"}))
        groups["720p"].append(path)
    return {g: ps for g, ps in groups.items() if ps}


# --- decode -------------------------------------------------------------------------------------
PARTS = ("codec", "resample", "log_mel", "window_rest")
"""The audio's instrumented parts: audio codec decoding (``AudioTrack.decode`` less ``push``),
resampling + keeping the samples (``push``), the log-mel (``log_mel``), and the rest of
``window`` (cutting the window's waveform out of the kept samples)."""


@contextmanager
def audio_timers() -> Iterator[dict[str, float]]:
    """Time ``AudioTrack.decode``, ``.push``, ``.window`` and ``log_mel`` in place (seconds
    summed into the yielded dict); the originals come back on exit."""
    import emotion_model.audio as audio_mod

    acc = {"decode": 0.0, "push": 0.0, "window": 0.0, "log_mel": 0.0}
    originals = {"decode": audio_mod.AudioTrack.decode, "push": audio_mod.AudioTrack.push,
                 "window": audio_mod.AudioTrack.window}
    original_log_mel = audio_mod.log_mel

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[name] += time.perf_counter() - t0
        return wrapper

    for name, fn in originals.items():
        setattr(audio_mod.AudioTrack, name, timed(name, fn))
    audio_mod.log_mel = timed("log_mel", original_log_mel)  # type: ignore[assignment]
    try:
        yield acc
    finally:
        for name, fn in originals.items():
            setattr(audio_mod.AudioTrack, name, fn)
        audio_mod.log_mel = original_log_mel  # type: ignore[assignment]


def read(path: Path, crop: Any, audio: Any) -> tuple[list[Any], Any]:
    """All clips of ``path`` and the reader's info."""
    from emotion_model.video import ClipReader

    reader = ClipReader(path, num_frames=T, img_size=SIZE, clip_seconds=CLIP_SECONDS,
                        crop=crop, audio=audio)
    return list(reader), reader.info


def decode_section(groups: dict[str, list[Path]], crop_mode: str,
                   repeats: int) -> tuple[dict[str, Any], list[Any]]:
    """Per input set: seconds per repeat without and with audio (each video read both ways
    back to back, the order flipping every repeat), the audio's parts, clips. Also returns
    the clips of the last audio pass (for the compute section)."""
    from emotion_model.audio import AudioSpec
    from emotion_model.face_clips import FRAME_CROP, CropSpec

    crop = CropSpec.face() if crop_mode == "face" else FRAME_CROP
    spec = AudioSpec()
    videos = [(g, p) for g, ps in groups.items() for p in ps]
    for _, path in videos[:2]:  # warm-up: imports, detector, first-call costs
        read(path, crop, None)
        read(path, crop, spec)
    out: dict[str, Any] = {
        g: {"videos": len(ps), "clips": 0, "audio_present": 0, "none_s": [], "audio_s": [],
            **{f"{k}_s": [] for k in PARTS}, "audio_streams": set()}
        for g, ps in groups.items()
    }
    last_clips: list[Any] = []
    for r in range(repeats):
        sums = {g: {"none": 0.0, "audio": 0.0, **dict.fromkeys(PARTS, 0.0)} for g in groups}
        clips_this: list[Any] = []
        for group, path in videos:
            order = ("none", "audio") if r % 2 == 0 else ("audio", "none")
            for variant in order:
                if variant == "none":
                    t0 = time.perf_counter()
                    read(path, crop, None)
                    sums[group]["none"] += time.perf_counter() - t0
                    continue
                with audio_timers() as acc:
                    t0 = time.perf_counter()
                    clips, info = read(path, crop, spec)
                    seconds = time.perf_counter() - t0
                s = sums[group]
                s["audio"] += seconds
                s["codec"] += acc["decode"] - acc["push"]
                s["resample"] += acc["push"]
                s["log_mel"] += acc["log_mel"]
                s["window_rest"] += acc["window"] - acc["log_mel"]
                clips_this.extend(clips)
                if r == 0:
                    g = out[group]
                    g["clips"] += len(clips)
                    g["audio_present"] += sum(bool(c.audio_present) for c in clips)
                    g["audio_streams"].add(f"{info.audio_codec} {info.audio_sample_rate} Hz "
                                           f"{info.audio_channels} ch")
        for group in groups:
            g = out[group]
            g["none_s"].append(sums[group]["none"])
            g["audio_s"].append(sums[group]["audio"])
            for k in PARTS:
                g[f"{k}_s"].append(sums[group][k])
        last_clips = clips_this
    out["all"] = {
        "videos": sum(out[g]["videos"] for g in groups),
        "clips": sum(out[g]["clips"] for g in groups),
        "audio_present": sum(out[g]["audio_present"] for g in groups),
        **{key: [sum(vals) for vals in zip(*(out[g][key] for g in groups), strict=True)]
           for key in ("none_s", "audio_s", *(f"{k}_s" for k in PARTS))},
        "audio_streams": set(),
    }
    for g in out.values():
        g["audio_streams"] = sorted(g["audio_streams"])
        g.update(summarise_decode(g))
    return out, last_clips


def summarise_decode(g: dict[str, Any]) -> dict[str, Any]:
    """Medians, per-clip ms, the ratio and the audio's shares for one input set."""
    clips = max(1, g["clips"])
    none, audio = med(g["none_s"]), med(g["audio_s"])
    ratio = median_ratio(g["audio_s"], g["none_s"])
    parts = {k: med(g[f"{k}_s"]) for k in PARTS}
    per_repeat_share = [(a - n) / a for a, n in zip(g["audio_s"], g["none_s"], strict=True)]
    return {
        "none_ms_per_clip": 1000 * none / clips,
        "audio_ms_per_clip": 1000 * audio / clips,
        "audio_over_none": ratio,
        "audio_share": 1 - 1 / ratio,  # (audio - none) / audio, from the median ratio
        "audio_share_min_max": [min(per_repeat_share), max(per_repeat_share)],
        "parts_ms_per_clip": {k: 1000 * v / clips for k, v in parts.items()},
        "parts_share_of_audio_decode": {k: v / audio for k, v in parts.items()},
        "measured_parts_share": sum(parts.values()) / audio,
    }


# --- compute ------------------------------------------------------------------------------------
def count_params(module: Any) -> int:
    """Parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def model_facts(model: Any, tmp: Path, name: str, frames: Any, audio: Any) -> dict[str, Any]:
    """Parameters, deployment-file MB and GFLOPs per clip of one model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from emotion_model.checkpoint import save_deployment

    path = tmp / f"{name}.safetensors"
    save_deployment(model, path, untrained=True)
    size = path.stat().st_size
    path.unlink()
    encoder = getattr(model, "audio_encoder", None)
    x = None if frames is None else torch.randn(1, T, 3, SIZE, SIZE)
    a = None if audio is None else torch.from_numpy(audio[:1])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x) if a is None else model(x, a)
    facts: dict[str, Any] = {
        "parameters": count_params(model),
        "audio_encoder_parameters": 0 if encoder is None else count_params(encoder),
        "deployment_file_mb": size / 1e6,
        "gflops_per_clip": counter.get_total_flops() / 1e9,
    }
    if encoder is not None:
        with FlopCounterMode(display=False) as enc_counter, torch.inference_mode():
            encoder(a)
        facts["audio_encoder_gflops_per_clip"] = enc_counter.get_total_flops() / 1e9
    return facts


def compute_section(preset: str, clips: list[Any], args: argparse.Namespace,
                    tmp: Path) -> dict[str, Any]:
    """One preset: video vs audio-video vs audio-only model vs the audio encoder alone."""
    import numpy as np
    import torch

    from emotion_model.audio import AudioSpec
    from emotion_model.model import build_model
    from emotion_model.predict import Predictor

    spec = AudioSpec()
    batch = [clips[i % len(clips)] for i in range(args.batch)]
    frames = np.stack([c.frames for c in batch])
    audio = np.stack([c.audio for c in batch]).astype(np.float32)
    present = np.ones(len(batch), dtype=bool)
    predictors: dict[str, Predictor] = {}
    facts: dict[str, Any] = {}
    for modality in ("video", "audio-video", "audio"):
        torch.manual_seed(0)
        model = build_model(preset, modality=modality,  # type: ignore[arg-type]
                            audio_spec=None if modality == "video" else spec).eval()
        facts[modality] = model_facts(model, tmp, f"{preset}-{modality}",
                                      None if modality == "audio" else frames,
                                      None if modality == "video" else audio)
        predictors[modality] = Predictor(model, device="cpu")
    encoder = predictors["audio-video"].model.audio_encoder
    audio_t = torch.from_numpy(audio)

    def encoder_alone() -> None:
        with torch.inference_mode():
            encoder(audio_t)

    fns: dict[str, Callable[[], Any]] = {
        "video": lambda: predictors["video"].probabilities(frames),
        "audio-video": lambda: predictors["audio-video"].probabilities(frames, audio, present),
        "audio": lambda: predictors["audio"].probabilities(None, audio, present),
        "audio_encoder": encoder_alone,
    }
    for fn in fns.values():  # warm-up: oneDNN primitives, allocator
        fn()
    times = alternate(fns, args.compute_repeats)
    n = len(batch)
    video = times["video"]
    result: dict[str, Any] = {
        "batch": n,
        "facts": facts,
        "seconds": times,
        "ms_per_clip": {k: 1000 * med(v) / n for k, v in times.items()},
        "best_ms_per_clip": {k: 1000 * min(v) / n for k, v in times.items()},
        "over_video": {k: median_ratio(v, video) for k, v in times.items()},
        "encoder_share_of_fused": median_ratio(times["audio_encoder"], times["audio-video"]),
        "fused_minus_video_share": 1 - 1 / median_ratio(times["audio-video"], video),
    }
    av = facts["audio-video"]
    result["encoder_gflops_share"] = av["audio_encoder_gflops_per_clip"] / av["gflops_per_clip"]
    result["audio_parameter_share"] = (
        (av["parameters"] - facts["video"]["parameters"]) / av["parameters"])
    return result


# --- report -------------------------------------------------------------------------------------
def print_report(results: dict[str, Any]) -> None:
    """Tables of the decode and compute numbers, ratios against the same run's baseline."""
    section_load = ", ".join(f"{k} {v:.2f}" for k, v in results["section_load"].items())
    print(f"\nmachine: {results['machine']}; torch threads {results['torch_threads']}; "
          f"load {results['load_start']:.2f} -> {results['load_end']:.2f}; "
          f"{results['wall_s']:.0f} s")
    print(f"load after each section: {section_load}")
    for crop, section in results["decode"].items():
        print(f"\nDecode, ClipReader ({T} frames at {SIZE} px, {CLIP_SECONDS:g} s windows), "
              f"crop={crop}, {results['repeats']} alternated repeats, medians; ms per clip")
        print("| set | videos | clips (audio present) | audio streams | video only | "
              "+ audio | audio / video | audio share | codec | resample | log-mel | "
              "window rest | timed parts / audio's extra | timed parts' share |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, g in section.items():
            p = g["parts_ms_per_clip"]
            extra = g["audio_ms_per_clip"] - g["none_ms_per_clip"]
            lo, hi = g["audio_share_min_max"]
            streams = "; ".join(g["audio_streams"]) or "-"
            print(f"| {name} | {g['videos']} | {g['clips']} ({g['audio_present']}) | {streams} "
                  f"| {g['none_ms_per_clip']:.1f} | {g['audio_ms_per_clip']:.1f} | "
                  f"{g['audio_over_none']:.3f}x | {100 * g['audio_share']:.1f} % "
                  f"({100 * lo:.0f}..{100 * hi:.0f}) | {p['codec']:.2f} | {p['resample']:.2f} | "
                  f"{p['log_mel']:.2f} | {p['window_rest']:.2f} | "
                  f"{sum(p.values()):.1f} / {extra:.1f} | "
                  f"{100 * g['measured_parts_share']:.1f} % |")
    for preset, c in results["compute"].items():
        f = c["facts"]
        ms, best, over = c["ms_per_clip"], c["best_ms_per_clip"], c["over_video"]
        print(f"\nCompute, {preset}: Predictor.probabilities, batch {c['batch']}, "
              f"{T} x {SIZE} px + 64 x 400 log-mel, CPU fp32, "
              f"{results['compute_repeats']} alternated repeats, medians")
        print("| model | parameters | audio encoder params | file MB | GFLOPs/clip | "
              "ms per clip (best) | / video |")
        print("|---|---|---|---|---|---|---|")
        for name in ("video", "audio-video", "audio"):
            print(f"| {preset} {name} | {f[name]['parameters']:,} | "
                  f"{f[name]['audio_encoder_parameters']:,} | "
                  f"{f[name]['deployment_file_mb']:.2f} | {f[name]['gflops_per_clip']:.3f} | "
                  f"{ms[name]:.1f} ({best[name]:.1f}) | {over[name]:.3f}x |")
        print(f"| audio encoder alone | {f['audio-video']['audio_encoder_parameters']:,} | | | "
              f"{f['audio-video']['audio_encoder_gflops_per_clip']:.3f} | "
              f"{ms['audio_encoder']:.2f} ({best['audio_encoder']:.2f}) | "
              f"{over['audio_encoder']:.4f}x |")
        print(f"audio encoder's share of the fused model: {100 * c['encoder_share_of_fused']:.1f} "
              f"% of its time (encoder alone / fused), "
              f"{100 * c['fused_minus_video_share']:.1f} % as (fused - video) / fused, "
              f"{100 * c['encoder_gflops_share']:.1f} % of its FLOPs, "
              f"{100 * c['audio_parameter_share']:.2f} % of its parameters")
    together = results.get("together")
    if together:
        print("\nPer clip, decode (whole frames, all inputs) + compute, ms: video-only vs fused")
        print("| preset | video: decode + compute | fused: decode + compute | fused / video | "
              "audio's share of the fused clip |")
        print("|---|---|---|---|---|")
        for preset, t in together.items():
            print(f"| {preset} | {t['video_decode_ms']:.1f} + {t['video_compute_ms']:.1f} = "
                  f"{t['video_ms']:.1f} | {t['fused_decode_ms']:.1f} + "
                  f"{t['fused_compute_ms']:.1f} = {t['fused_ms']:.1f} | {t['ratio']:.3f}x | "
                  f"{100 * t['audio_share']:.1f} % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 + 1 drawn-face videos and fewer repeats")
    parser.add_argument("--crop", choices=("frame", "face", "both"), default="both")
    parser.add_argument("--models", default="small,r50", help="comma list (small,r50)")
    parser.add_argument("--batch", type=int, default=8, help="clips per forward pass (8)")
    parser.add_argument("--repeats", type=int, default=None, help="decode repeats (9; quick 3)")
    parser.add_argument("--compute-repeats", type=int, default=None,
                        help="compute repeats (5; quick 3)")
    parser.add_argument("--n360", type=int, default=None,
                        help="480x360 voiced sample videos (8; quick 4)")
    parser.add_argument("--n720", type=int, default=None,
                        help="1280x720 voiced videos (2; quick 1)")
    parser.add_argument("--seconds", type=float, default=3.5, help="drawn-face video length")
    parser.add_argument("--clips", type=Path, default=REAL_CLIPS,
                        help="folder of real clips with audio (tests/data/crema_d)")
    parser.add_argument("--inputs", type=Path, default=None,
                        help="keep (and reuse) the rendered videos here (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.compute_repeats = args.compute_repeats or (3 if args.quick else 5)
    n360 = args.n360 if args.n360 is not None else (4 if args.quick else 8)
    n720 = args.n720 if args.n720 is not None else (1 if args.quick else 2)

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_start": load(), "section_load": {}, "repeats": args.repeats,
        "compute_repeats": args.compute_repeats,
    }
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp_name:
        tmp = Path(tmp_name)
        folder = args.inputs or tmp / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        groups = make_inputs(folder, n360=n360, n720=n720, seconds=args.seconds,
                             real=args.clips)
        results["inputs"] = {g: [p.name for p in ps] for g, ps in groups.items()}
        results["inputs_s"] = time.perf_counter() - t0
        print(f"inputs: {', '.join(f'{g} {len(ps)}' for g, ps in groups.items())} "
              f"({results['inputs_s']:.0f} s)", flush=True)
        crops = ("frame", "face") if args.crop == "both" else (args.crop,)
        results["decode"] = {}
        clips: list[Any] = []
        for crop in crops:
            t0 = time.perf_counter()
            results["decode"][crop], got = decode_section(groups, crop, args.repeats)
            if crop == "frame" or not clips:
                clips = got
            results["section_load"][f"decode {crop}"] = load()
            print(f"decode {crop}: {time.perf_counter() - t0:.0f} s, load {load()}", flush=True)
        clips = [c for c in clips if c.audio_present] or clips
        results["compute"] = {}
        for preset in [m.strip() for m in args.models.split(",") if m.strip()]:
            t0 = time.perf_counter()
            results["compute"][preset] = compute_section(preset, clips, args, tmp)
            results["section_load"][f"compute {preset}"] = load()
            print(f"compute {preset}: {time.perf_counter() - t0:.0f} s, load {load()}",
                  flush=True)
        results["load_end"] = load()
    frame = results["decode"].get("frame", {}).get("all")
    if frame:
        results["together"] = {}
        for preset, c in results["compute"].items():
            v_dec, f_dec = frame["none_ms_per_clip"], frame["audio_ms_per_clip"]
            v_cmp, f_cmp = c["ms_per_clip"]["video"], c["ms_per_clip"]["audio-video"]
            results["together"][preset] = {
                "video_decode_ms": v_dec, "video_compute_ms": v_cmp, "video_ms": v_dec + v_cmp,
                "fused_decode_ms": f_dec, "fused_compute_ms": f_cmp, "fused_ms": f_dec + f_cmp,
                "ratio": (f_dec + f_cmp) / (v_dec + v_cmp),
                "audio_share": 1 - (v_dec + v_cmp) / (f_dec + f_cmp),
            }
    results["wall_s"] = time.perf_counter() - t_start
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
