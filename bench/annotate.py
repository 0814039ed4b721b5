"""The annotated preview's cost: ``annotate_video`` beside ``predict_video`` on the same videos
and model (the difference is what drawing and encoding add to the one decoding pass), and beside
a plain re-encode of the same video (PyAV decode -> RGB -> libx264 with the same settings, no
model, no drawing: the part of that difference the encoder itself costs).

    .venv/bin/python bench/annotate.py [--repeats 3] [--seconds 4] [--json PATH]

Videos: the four real CREMA-D clips (480x360, VP6, ~2 s, with audio) and a 1280x720 H.264 video
composed from one of them (tests/face_fixtures.py, one face a quarter of the width). Model: the
small variant, untrained, face crops, 48 frames of 112 px (the model card's clip); CPU. Each
video's three measurements alternate, ``--repeats`` times; the best of each (the machine's
other work only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import face_fixtures as ff  # noqa: E402
from video_fixtures import CREMA_D_CLIPS, CREMA_D_DIR  # noqa: E402

from emotion_model.annotate import X264_OPTIONS, annotate_video  # noqa: E402
from emotion_model.clip_windows import to_rgb, upright_size  # noqa: E402
from emotion_model.predict import Predictor, predict_video  # noqa: E402


def reencode(source: Path, output: Path) -> int:
    """Decode ``source`` and encode its frames (through RGB, as annotate does) with libx264 at
    annotate's settings; no audio, no model, no drawing. Returns the frames."""
    with av.open(str(source)) as src, av.open(str(output), "w", format="mp4") as out:
        stream_in = src.streams.video[0]
        stream = None
        count = 0
        for frame in src.decode(stream_in):
            width, height = upright_size(frame)
            if stream is None:
                rate = stream_in.average_rate or 30
                stream = out.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.time_base = frame.time_base
            image = to_rgb(frame, width, height)
            encoded = av.VideoFrame.from_ndarray(image, format="rgb24")
            encoded.pts, encoded.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(encoded))
            count += 1
        out.mux(stream.encode(None))
    return count


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the 720p video")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from emotion_model.checkpoint import save_deployment
    from emotion_model.face_clips import CropSpec
    from emotion_model.model import build_model

    work = Path(tempfile.mkdtemp(prefix="bench-annotate-"))
    torch.manual_seed(0)
    model_file = work / "small-face.safetensors"
    save_deployment(build_model("small").eval(), model_file, num_frames=48, img_size=112,
                    crop=CropSpec.face().to_metadata(), untrained=True)
    predictor = Predictor.from_file(model_file, device="cpu")
    videos = [CREMA_D_DIR / name for name in sorted(CREMA_D_CLIPS)]
    videos.append(ff.one_face_quarter(work / "quarter-720p.mp4", seconds=args.seconds)[0])
    predict_video(predictor, videos[0])  # warm: detector, model, font
    annotate_video(predictor, videos[0], work / "warm.mp4")

    rows = []
    print(f"{'video':28} {'frames':>6} {'predict s':>9} {'annotate s':>10} {'ratio':>6} "
          f"{'+ms/frame':>9} {'re-encode s':>11}")
    for video in videos:
        times: dict[str, list[float]] = {"predict": [], "annotate": [], "reencode": []}
        frames = 0
        for _ in range(args.repeats):
            times["predict"].append(_timed(lambda v=video: predict_video(predictor, v)))
            out = work / f"{video.stem}-annotated.mp4"
            times["annotate"].append(_timed(lambda v=video, o=out: annotate_video(
                predictor, v, o)))
            times["reencode"].append(_timed(lambda v=video: reencode(v, work / "plain.mp4")))
        with av.open(str(out)) as check:
            frames = check.streams.video[0].frames
        med = {k: min(v) for k, v in times.items()}
        extra_ms = (med["annotate"] - med["predict"]) / max(1, frames) * 1e3
        row = {"video": video.name, "frames": frames, **{f"{k}_s": v for k, v in med.items()},
               "annotate_over_predict": med["annotate"] / med["predict"],
               "extra_ms_per_frame": extra_ms}
        rows.append(row)
        print(f"{video.name:28} {frames:6d} {med['predict']:9.2f} {med['annotate']:10.2f} "
              f"{row['annotate_over_predict']:6.2f} {extra_ms:9.1f} {med['reencode']:11.2f}")
    total = {k: float(np.sum([r[f"{k}_s"] for r in rows])) for k in times}
    print(f"all: annotate / predict = {total['annotate'] / total['predict']:.2f}; annotate - "
          f"predict = {total['annotate'] - total['predict']:.2f} s, a plain re-encode "
          f"{total['reencode']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "total": total}, indent=2))


if __name__ == "__main__":
    main()
