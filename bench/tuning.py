"""The CPU tuning candidates of the benchmarks issue, each against its baseline in the same run.

Prepares its own inputs (drawn-face 1280x720 30 fps H.264 clips of 3.5 s made with
``emotion_model.sample_data``) and measures, alternating baseline and variant repeats (so load
from other processes on the machine falls on both alike), reporting medians and median ratios:

- ``nonref``:  decoding with ``codec_context.skip_frame = "NONREF"`` vs every frame (raw decode and
               ``ClipReader``), and how many of the 48 sampled frames are non-reference frames for
               x264 encodes with B-frames (presets medium, veryfast, slow; 3.5 s and 8 s videos)
- ``compile``: ``torch.compile`` of the model (compile time, steady-state ms per clip) vs eager
- ``bf16``:    ``torch.autocast("cpu", torch.bfloat16)`` vs fp32, and the probability difference
- ``onnx``:    ONNX Runtime (``emotion_model.export``, CPU provider, 2 intra-op threads) vs eager
- ``queue``:   ``tasks.batch.infer.process_shard`` with queue_depth 4, 8 (the default), 16, 32
- ``card``:    the model card's decode alone (cv2, one CAP_PROP_POS_FRAMES seek per sampled frame)
               vs ``ClipReader``'s single pass, seconds per video

Model timings are eager ``channels_last_3d`` fp32 (what ``Predictor`` runs on a CPU) unless the
variant says otherwise, on 48 x 112 x 112 clips at batch 2, both untrained presets (small, R50).

    python bench/tuning.py --quick              # fewer clips and repeats, ~4 min on 2 cores
    python bench/tuning.py --json tuning.json   # the full run
    python bench/tuning.py --only nonref,card   # some sections
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTIONS = ("nonref", "compile", "bf16", "onnx", "queue", "card")
T, SIZE, BATCH = 48, 112, 2


# --- helpers ------------------------------------------------------------------------------------
def load() -> float:
    """1-minute load average of the machine."""
    return round(os.getloadavg()[0], 2)


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each callable per repeat; the order flips every repeat (A B, B A, ...)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over repeats of baseline time / variant time (> 1: the variant is faster)."""
    return {
        name: statistics.median(b / v for b, v in zip(times[base], ts, strict=True))
        for name, ts in times.items()
    }


def med(values: list[float]) -> float:
    """Median."""
    return statistics.median(values)


def make_video(path: Path, seconds: float, height: int = 720, width: int = 1280,
               options: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A drawn-face H.264 clip at 30 fps (x264 defaults unless ``options``)."""
    from emotion_model.labels import EMOTION_LABELS
    from emotion_model.sample_data import render_face_clip
    from emotion_model.video_writer import encode_video

    if not path.exists():
        frames = render_face_clip(EMOTION_LABELS[seed % 6], actor_seed=seed,
                                  num_frames=int(round(seconds * 30)), height=height,
                                  width=width, fps=30)
        encode_video(path, frames, fps=30, codec="libx264", options=options)
    return path


def plain_ints(model: Any) -> Any:
    """Python ints for the convolution and pooling geometry: pytorchvideo's SlowFast builder
    leaves numpy int64 strides (``np.prod``), which Inductor cannot compile
    (``aten._local_scalar_dense``: a graph break and a failed compile at every shortcut conv)."""
    for module in model.modules():
        for attr in ("stride", "padding", "dilation", "kernel_size"):
            value = getattr(module, attr, None)
            if isinstance(value, tuple) and not any(isinstance(v, str) for v in value):
                setattr(module, attr, tuple(int(v) for v in value))
    return model


def build(name: str) -> Any:
    """An untrained preset in eval mode, channels_last_3d (as Predictor holds it on a CPU)."""
    import torch

    from emotion_model.model import build_model

    torch.manual_seed(0)
    return plain_ints(build_model(name).eval()).to(memory_format=torch.channels_last_3d)


def batch_input(folder: Path) -> Any:
    """Normalized float32 [2, 48, 3, 112, 112] from two decoded 720p clips."""
    import numpy as np

    from emotion_model.preprocess import normalize
    from emotion_model.video import read_clips

    clips = [read_clips(make_video(folder / f"in{i}.mp4", 3.5, seed=i))[0][0].frames
             for i in range(BATCH)]
    return normalize(np.stack(clips))


def softmax(logits: Any) -> Any:
    """Probabilities as numpy float32."""
    import torch

    return torch.softmax(torch.as_tensor(logits).float(), -1).numpy()


# --- (a) skipping non-reference frames ----------------------------------------------------------
def sampled_times(path: Path, clip_seconds: float = 4.0) -> tuple[list[float], list[float]]:
    """(every frame's time, the times of the frames ClipReader samples), seconds from frame 0.

    Same rule as ClipReader: per window, T bin-centre targets; each takes the frame on screen.
    """
    import av
    import numpy as np

    from emotion_model.video import plan_targets, plan_window_starts

    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(c.streams.video[0])]
    t0 = times[0]
    rel = np.array(sorted(t - t0 for t in times))
    end = rel[-1] + float(np.median(np.diff(rel)))
    if end < clip_seconds + 1e-3:
        targets = [plan_targets(0.0, end, T)]
    else:
        targets = [plan_targets(s, clip_seconds, T)
                   for s in plan_window_starts(end, clip_seconds, clip_seconds)]
    picked = []
    for tg in targets:
        idx = np.clip(np.searchsorted(rel, tg, side="right") - 1, 0, len(rel) - 1)
        picked += [float(rel[i]) for i in idx]
    return [float(x) for x in rel], picked


def reference_times(path: Path) -> list[float]:
    """Times of the frames left when non-reference frames are skipped."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        first = next(c.decode(s)).time  # the first frame (an IDR) always decodes
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        return [float(f.time - first) for f in c.decode(s)]


def nonref_section(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Decode time with and without NONREF; non-reference frames among the sampled ones."""
    import av
    import numpy as np

    from emotion_model.video import ClipReader

    encodes: dict[str, Any] = {}
    kinds = [("medium (x264 default)", None, 3.5), ("veryfast", {"preset": "veryfast"}, 3.5),
             ("slow", {"preset": "slow"}, 3.5), ("medium, 8 s (2 clips)", None, 8.0)]
    for label, options, seconds in kinds:
        tag = label.split()[0].strip(",") + f"_{seconds:g}s"
        path = make_video(folder / f"enc_{tag}.mp4", seconds, options=options, seed=7)
        every, picked = sampled_times(path)
        refs = np.array(reference_times(path))
        nonref = [t for t in picked if not np.isclose(refs, t, atol=1e-4).any()]
        # with NONREF the frame on screen at a sampled time is the previous reference frame
        shift = [t - refs[max(np.searchsorted(refs, t + 1e-6) - 1, 0)] for t in picked]
        encodes[label] = {
            "frames": len(every), "reference_frames": len(refs),
            "sampled": len(picked), "sampled_nonref": len(nonref),
            "sampled_distinct_with_nonref_skipped": len(
                {float(refs[max(np.searchsorted(refs, t + 1e-6) - 1, 0)]) for t in picked}),
            "max_shift_ms_with_nonref_skipped": 1000 * max(shift),
        }

    videos = [make_video(folder / f"in{i}.mp4", 3.5, seed=i) for i in range(args.videos)]

    def raw(skip: str | None) -> Callable[[], None]:
        def run() -> None:
            for p in videos:
                with av.open(str(p)) as c:
                    s = c.streams.video[0]
                    s.thread_type = "AUTO"
                    if skip:
                        s.codec_context.skip_frame = skip
                    for _ in c.decode(s):
                        pass
        return run

    class SkipReader(ClipReader):
        def _decode(self, container: Any) -> Any:
            container.streams.video[0].codec_context.skip_frame = "NONREF"
            return super()._decode(container)

    def reader(cls: type[ClipReader]) -> Callable[[], None]:
        def run() -> None:
            for p in videos:
                for _ in cls(p, num_frames=T, img_size=SIZE):
                    pass
        return run

    before = load()
    t_raw = alternate({"all": raw(None), "nonref": raw("NONREF")}, args.repeats)
    t_reader = alternate({"all": reader(ClipReader), "nonref": reader(SkipReader)}, args.repeats)
    # ClipReader with clip_seconds <= the video's length converts only the sampled frames
    t_conv = alternate({"all": lambda: [list(ClipReader(p, clip_seconds=3.0)) for p in videos],
                        "nonref": lambda: [list(SkipReader(p, clip_seconds=3.0))
                                           for p in videos]}, args.repeats)
    # 3.5 s videos are shorter than the 4 s window: ClipReader converts every frame (to sample
    # over the real length); a 3.4 s window over the same video converts only the 48 sampled
    t_short = alternate({"window_4s": lambda: [list(ClipReader(p)) for p in videos],
                         "window_3.4s": lambda: [list(ClipReader(p, clip_seconds=3.4))
                                                 for p in videos]}, args.repeats)
    return {
        "short_video_s_per_video": {k: med(v) / len(videos) for k, v in t_short.items()},
        "short_video_convert_sampled_only_speedup": ratios(t_short, "window_4s")["window_3.4s"],
        "encodes": encodes,
        "videos": len(videos),
        "raw_decode_s_per_video": {k: med(v) / len(videos) for k, v in t_raw.items()},
        "raw_decode_speedup": ratios(t_raw, "all")["nonref"],
        "clipreader_s_per_video": {k: med(v) / len(videos) for k, v in t_reader.items()},
        "clipreader_speedup": ratios(t_reader, "all")["nonref"],
        "clipreader_3s_window_s_per_video": {k: med(v) / len(videos) for k, v in t_conv.items()},
        "clipreader_3s_window_speedup": ratios(t_conv, "all")["nonref"],
        "load": [before, load()],
    }


# --- (b) torch.compile --------------------------------------------------------------------------
def compile_section(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Compile time and steady-state ms per clip, compiled vs eager."""
    import torch

    x = batch_input(folder)
    out: dict[str, Any] = {}
    for name in args.models:
        model = build(name)
        with torch.inference_mode():
            want = softmax(model(x))
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            got = softmax(compiled(x))
            compile_s = time.perf_counter() - t0
            compiled(x)
            before = load()
            times = alternate({"eager": lambda m=model: m(x), "compiled": lambda c=compiled: c(x)},
                              args.repeats)
        out[name] = {
            "compile_s": compile_s,
            "ms_per_clip": {k: 1000 * med(v) / BATCH for k, v in times.items()},
            "speedup": ratios(times, "eager")["compiled"],
            "max_prob_diff": float(abs(got - want).max()),
            "load": [before, load()],
        }
        torch._dynamo.reset()
    return out


# --- (c) bf16 autocast --------------------------------------------------------------------------
def bf16_section(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """bf16 autocast vs fp32: ms per clip and output differences."""
    import torch

    x = batch_input(folder)
    out: dict[str, Any] = {}
    for name in args.models:
        model = build(name)

        def bf16(m: Any = model) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x)

        with torch.inference_mode():
            logits32 = model(x)
            logits16 = bf16().float()
            before = load()
            times = alternate({"fp32": lambda m=model: m(x), "bf16": bf16}, args.repeats)
        p32, p16 = softmax(logits32), softmax(logits16)
        # An untrained head gives near-uniform probabilities, which hide differences. Scale the
        # logits (the last layer is linear: the same as scaling its weights) to a spread of 10,
        # like a confident trained model, and compare there too.
        k = 10.0 / float(logits32.max(-1).values.sub(logits32.min(-1).values).min())
        c32, c16 = softmax(k * logits32), softmax(k * logits16)
        out[name] = {
            "max_prob_diff_confident": float(abs(c16 - c32).max()),
            "confident_top_prob": float(c32.max(-1).min()),
            "ms_per_clip": {k: 1000 * med(v) / BATCH for k, v in times.items()},
            "speedup": ratios(times, "fp32")["bf16"],
            "max_prob_diff": float(abs(p16 - p32).max()),
            "max_logit_diff": float((logits16 - logits32).abs().max()),
            "logit_range": float(logits32.max() - logits32.min()),
            "load": [before, load()],
        }
    return out


# --- (d) ONNX Runtime ---------------------------------------------------------------------------
def onnx_section(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """ONNX Runtime CPU provider (2 intra-op threads) vs eager channels_last_3d fp32."""
    import onnxruntime as ort
    import torch

    from emotion_model.export import export_onnx
    from emotion_model.model import build_model

    x = batch_input(folder)
    xn = x.contiguous().numpy()
    meta = {"num_frames": T, "img_size": SIZE}
    out: dict[str, Any] = {}
    for name in args.models:
        torch.manual_seed(0)
        plain = build_model(name).eval()
        t0 = time.perf_counter()
        data, parity = export_onnx(plain, meta)
        export_s = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        model = build(name)
        with torch.inference_mode():
            want = softmax(model(x))
            got = softmax(session.run(["logits"], {"frames": xn})[0])
            before = load()
            times = alternate({"eager": lambda m=model: m(x),
                               "onnxruntime": lambda s=session: s.run(["logits"], {"frames": xn})},
                              args.repeats)
        out[name] = {
            "export_s": export_s,
            "export_parity": parity,
            "ms_per_clip": {k: 1000 * med(v) / BATCH for k, v in times.items()},
            "speedup": ratios(times, "eager")["onnxruntime"],
            "max_prob_diff": float(abs(got - want).max()),
            "load": [before, load()],
        }
    return out


# --- (e) queue depth ----------------------------------------------------------------------------
def queue_section(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """process_shard clips/s at queue_depth 4, 8 (default), 16, 32; same videos, same model."""
    import shutil

    import torch

    from emotion_model.predict import Predictor
    from tasks.batch.infer import process_shard
    from tasks.batch.settings import BatchSettings
    from tasks.common.listing import VideoObject

    videos = [make_video(folder / f"in{i}.mp4", 3.5, seed=i) for i in range(args.videos)]
    objects = [VideoObject(uri=str(p), size=p.stat().st_size, etag=f"e{i}")
               for i, p in enumerate(videos)]
    depths = (4, 8, 16, 32)
    out: dict[str, Any] = {}
    for name in args.models:
        predictor = Predictor(build(name), {"num_frames": T, "img_size": SIZE}, device="cpu")
        clips = [0]

        def run(depth: int, predictor: Predictor = predictor,
                clips: list[int] = clips) -> Callable[[], None]:
            def go() -> None:
                dest = Path(tempfile.mkdtemp(prefix="tuning-queue-"))
                settings = BatchSettings(source=str(folder), output=str(dest),
                                         model="unused.safetensors", device="cpu",
                                         batch_size=BATCH, queue_depth=depth, decode_threads=2)
                result = process_shard(0, objects, settings, run_id="tuning",
                                       predictor=predictor, date="2026-01-01")
                clips[0] = result.clips
                shutil.rmtree(dest, ignore_errors=True)
            return go

        with torch.inference_mode():
            predictor.probabilities(torch.zeros(BATCH, T, SIZE, SIZE, 3, dtype=torch.uint8))
        run(8)()  # warm-up (imports, first Parquet write)
        before = load()
        times = alternate({f"depth_{d}": run(d) for d in depths}, min(args.repeats, 5))
        out[name] = {
            "clips": clips[0],
            "clips_per_s": {k: clips[0] / med(v) for k, v in times.items()},
            "vs_depth_8": ratios(times, "depth_8"),
            "load": [before, load()],
        }
    return out


# --- the model card's decode ----------------------------------------------------------------------
def card_section(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per video: cv2 with 48 seeks (the card's decode, no model) vs ClipReader."""
    import cv2
    import numpy as np

    from emotion_model.video import ClipReader

    n = max(2, args.videos // 2)  # the card takes seconds per 720p video
    repeats = min(args.repeats, 3)
    sets = {
        "1280x720": [make_video(folder / f"in{i}.mp4", 3.5, seed=i) for i in range(n)],
        "480x360": [make_video(folder / f"small{i}.mp4", 3.5, 360, 480, seed=i)
                    for i in range(n)],
    }

    def card(paths: list[Path]) -> Callable[[], None]:
        def run() -> None:
            for path in paths:
                cap = cv2.VideoCapture(str(path))
                total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                for index in np.linspace(0, max(total - 1, 0), T).astype(int):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
                    ok, frame = cap.read()
                    if ok:
                        cv2.cvtColor(cv2.resize(frame, (SIZE, SIZE)), cv2.COLOR_BGR2RGB)
                cap.release()
        return run

    def single(paths: list[Path]) -> Callable[[], None]:
        def run() -> None:
            for path in paths:
                list(ClipReader(path, num_frames=T, img_size=SIZE))
        return run

    def sequential(paths: list[Path]) -> Callable[[], None]:
        """cv2 reading every frame once, no seek (what one pass costs in OpenCV)."""
        def run() -> None:
            for path in paths:
                cap = cv2.VideoCapture(str(path))
                while cap.grab():
                    pass
                cap.release()
        return run

    import torch

    from emotion_model.preprocess import normalize

    model = build("r50")
    one = normalize(torch.zeros(1, T, SIZE, SIZE, 3, dtype=torch.uint8))
    two = normalize(torch.zeros(BATCH, T, SIZE, SIZE, 3, dtype=torch.uint8))
    with torch.inference_mode():
        model(two)
        fwd = alternate({"batch1": lambda: model(one), "batch2": lambda: model(two)}, repeats)
    r50 = {"forward_s_batch1": med(fwd["batch1"]), "forward_s_per_clip_batch2":
           med(fwd["batch2"]) / BATCH}
    out: dict[str, Any] = {"r50": r50}
    for label, paths in sets.items():
        before = load()
        times = alternate({"clipreader": single(paths), "card_48_seeks": card(paths),
                           "cv2_one_pass": sequential(paths)}, repeats)
        per_video = {k: med(v) / len(paths) for k, v in times.items()}
        out[label] = {
            "s_per_video": per_video,
            "card_vs_clipreader": 1 / ratios(times, "clipreader")["card_48_seeks"],
            "card_vs_cv2_one_pass": 1 / ratios(times, "cv2_one_pass")["card_48_seeks"],
            "load": [before, load()],
        }
        # R50 on these videos alone (one clip each): the card's s per video, the serial
        # ceiling's s per clip, and compute alone (decode for free)
        card_s = per_video["card_48_seeks"] + r50["forward_s_batch1"]
        ceiling_s = per_video["clipreader"] + r50["forward_s_per_clip_batch2"]
        out[label]["r50_card_clips_per_s"] = 1 / card_s
        out[label]["r50_ceiling_vs_card"] = card_s / ceiling_s
        out[label]["r50_compute_only_vs_card"] = card_s / r50["forward_s_per_clip_batch2"]
    return out


# --- main ---------------------------------------------------------------------------------------
def print_report(results: dict[str, Any]) -> None:
    """A short human-readable summary of every section measured."""
    print(f"\nload average at start {results['load_start']}, end {results['load_end']}; "
          f"torch threads {results['torch_threads']}; cpu flags: {results['cpu_flags']}")
    if "nonref" in results:
        r = results["nonref"]
        print("\n(a) skip_frame=NONREF, 1280x720 H.264 (x264 defaults), s per video:")
        s = r["short_video_s_per_video"]
        print(f"  ClipReader, 3.5 s video: 4 s window (converts every frame) {s['window_4s']:.3f}"
              f"  3.4 s window (the 48 sampled) {s['window_3.4s']:.3f}  speedup "
              f"x{r['short_video_convert_sampled_only_speedup']:.2f}")
        for k in ("raw_decode", "clipreader", "clipreader_3s_window"):
            s = r[f"{k}_s_per_video"]
            print(f"  {k:22} all {s['all']:.3f}  nonref {s['nonref']:.3f}  "
                  f"speedup x{r[f'{k}_speedup']:.2f}")
        for label, e in r["encodes"].items():
            print(f"  {label:24} frames {e['frames']:3d}  reference {e['reference_frames']:3d}  "
                  f"sampled {e['sampled']}: non-reference {e['sampled_nonref']}  "
                  f"(skipping leaves {e['sampled_distinct_with_nonref_skipped']} distinct, "
                  f"max shift {e['max_shift_ms_with_nonref_skipped']:.0f} ms)")
    for key, title, base, variant in (("compile", "(b) torch.compile", "eager", "compiled"),
                                      ("bf16", "(c) bf16 autocast", "fp32", "bf16"),
                                      ("onnx", "(d) ONNX Runtime", "eager", "onnxruntime")):
        if key not in results:
            continue
        print(f"\n{title}, batch {BATCH}, {T}x{SIZE}x{SIZE}, ms per clip:")
        for name, r in results[key].items():
            ms = r["ms_per_clip"]
            extra = (f"  compile {r['compile_s']:.0f} s" if "compile_s" in r else "")
            if "max_prob_diff_confident" in r:
                extra += (f"  (logits spread to 10, top p >= {r['confident_top_prob']:.2f}: max "
                          f"prob diff {r['max_prob_diff_confident']:.1e})")
            print(f"  {name:6} {base} {ms[base]:7.1f}  {variant} {ms[variant]:7.1f}  "
                  f"speedup x{r['speedup']:.2f}  max prob diff {r['max_prob_diff']:.1e}"
                  f"{extra}  load {r['load']}")
    if "queue" in results:
        print("\n(e) process_shard, queue_depth, clips/s (ratio to depth 8):")
        for name, r in results["queue"].items():
            cells = "  ".join(f"{k.split('_')[1]}: {v:.2f} (x{r['vs_depth_8'][k]:.2f})"
                              for k, v in r["clips_per_s"].items())
            print(f"  {name:6} {r['clips']} clips  {cells}  load {r['load']}")
    if "card" in results:
        r50 = results["card"]["r50"]
        print(f"\nmodel card decode (48 seeks) vs one pass, s per video (R50 forward: batch 1 "
              f"{r50['forward_s_batch1']:.3f} s, batch 2 {r50['forward_s_per_clip_batch2']:.3f}"
              " s per clip):")
        for label, r in results["card"].items():
            if label == "r50":
                continue
            s = r["s_per_video"]
            print(f"  {label:9} ClipReader {s['clipreader']:.3f}  cv2 one pass "
                  f"{s['cv2_one_pass']:.3f}  card 48 seeks {s['card_48_seeks']:.3f}  "
                  f"card / ClipReader x{r['card_vs_clipreader']:.1f}  card / cv2 pass "
                  f"x{r['card_vs_cv2_one_pass']:.1f}  load {r['load']}")
            print(f"  {'':9} R50: card {r['r50_card_clips_per_s']:.2f} clips/s; serial ceiling "
                  f"x{r['r50_ceiling_vs_card']:.1f} the card, compute alone "
                  f"x{r['r50_compute_only_vs_card']:.1f}")


def cpu_flags() -> str:
    """The bf16/AMX/AVX-512 flags of /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2"))]
    if "avx512_bf16" not in flags:
        keep.append("(no avx512_bf16)")
    if not any(f.startswith("amx") for f in flags):
        keep.append("(no amx)")
    return " ".join(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos and repeats")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma list of sections ({','.join(SECTIONS)})")
    parser.add_argument("--models", default="small,r50", help="comma list (small,r50)")
    parser.add_argument("--repeats", type=int, default=None, help="alternated repeats (7; 3)")
    parser.add_argument("--videos", type=int, default=None, help="720p videos (8; 4 quick)")
    parser.add_argument("--inputs", default=None, help="folder for the generated inputs")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.videos = args.videos or (4 if args.quick else 8)
    args.models = [m for m in args.models.split(",") if m]
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import torch

    folder = Path(args.inputs or Path(tempfile.gettempdir()) / "emotion-tuning-inputs")
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"load_start": list(os.getloadavg()),
                               "torch_threads": torch.get_num_threads(),
                               "cpu_flags": cpu_flags(), "repeats": args.repeats}
    funcs = {"nonref": nonref_section, "compile": compile_section, "bf16": bf16_section,
             "onnx": onnx_section, "queue": queue_section, "card": card_section}
    if args.worker:  # one section, in its own process
        print(json.dumps(funcs[args.worker](folder, args)))
        return 0
    for name in only:
        # Each section in a fresh process: once Inductor's compiled kernels have run, their
        # OpenMP threads compete with eager PyTorch's for the rest of the process.
        print(f"measuring {name} ... (load {load()})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--worker", name, "--inputs", str(folder),
               "--models", ",".join(args.models), "--repeats", str(args.repeats),
               "--videos", str(args.videos)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    results["load_end"] = list(os.getloadavg())
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
