"""Face detectors on the real CREMA-D clips and on 1280x720 videos composed from them with known
face boxes (tests/face_fixtures.py): recall, false detections, mean IoU and ms per frame, beside
PyAV's decode of the same 720p video measured in the same run.

    .venv/bin/python bench/faces.py [--seconds 2] [--json PATH]

Detectors: BlazeFace short range (whole frame), full range (whole frame; + tiles; + a pass
around the previous frame's faces, "near"), and OpenCV's Haar cascade as a baseline (skipped
with a message when cv2 is missing). Each BlazeFace variant gets frames at
`FaceDetector.detection_size` (512x288 for 720p; the CREMA-D clips stay 480x360), scaled by
FFmpeg while decoding; Haar gets the full frame and, separately, the detection size. A true face
counts as found when a detection overlaps it with IoU >= 0.5 (faces less than half inside the
frame are not counted); every unmatched detection is a false one. ms/frame is the detector call
alone, single thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import face_fixtures as ff  # noqa: E402
from video_fixtures import CREMA_D_DIR  # noqa: E402

from emotion_model.faces import FaceBox, FaceDetector  # noqa: E402

COMPOSED: dict[str, Callable[..., tuple[Path, ff.GroundTruth]]] = {
    "a quarter": ff.one_face_quarter,
    "b two": ff.two_faces,
    "c leaving": ff.leaving_face,
    "d 10%": ff.small_face,
    "e none": ff.faceless,
    "f 30px": ff.tiny_face,
}

Detect = Callable[[np.ndarray, list[FaceBox]], list[FaceBox]]
"""(frame, previous frame's detections) -> detections, fractions."""


@dataclass
class Score:
    """Counts over some frames."""

    found: int = 0
    missed: int = 0
    false: int = 0
    frames: int = 0
    seconds: float = 0.0
    ious: list[float] = field(default_factory=list)

    def add(self, other: Score) -> None:
        self.found += other.found
        self.missed += other.missed
        self.false += other.false
        self.frames += other.frames
        self.seconds += other.seconds
        self.ious += other.ious

    @property
    def recall(self) -> float:
        return self.found / max(1, self.found + self.missed)

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / max(1, self.frames)


@dataclass
class Variant:
    """A detector and schedule: `make()` returns a fresh per-video detect function, `size`
    maps the frame size to the size the detector is given."""

    name: str
    make: Callable[[], Detect]
    size: Callable[[int, int], tuple[int, int]]


def blazeface_variants() -> list[Variant]:
    """The BlazeFace schedules compared."""
    short, full = FaceDetector("short_range"), FaceDetector("full_range")

    def plain(det: FaceDetector, scan: bool) -> Callable[[], Detect]:
        return lambda: (lambda img, prev: det.detect(img, scan=scan))

    def tracking(every: int) -> Callable[[], Detect]:
        """Scan on frame 0 and every `every` frames (0: only frame 0); otherwise whole + near
        (the previous frame's detections)."""
        def make() -> Detect:
            count = [0]

            def run(img: np.ndarray, prev: list[FaceBox]) -> list[FaceBox]:
                i = count[0]
                count[0] += 1
                if i == 0 or (every and i % every == 0):
                    return full.detect(img, scan=True)
                return full.detect(img, scan=False, near=prev)
            return run
        return make

    return [
        Variant("short range, whole frame", plain(short, False), short.detection_size),
        Variant("full range, whole frame", plain(full, False), full.detection_size),
        Variant("full range, whole + tiles (scan)", plain(full, True), full.detection_size),
        Variant("full range, whole + near (scan on frame 0 only)", tracking(0),
                full.detection_size),
        Variant("full range, scan every 25th frame, whole + near between", tracking(25),
                full.detection_size),
    ]


def haar_variants() -> list[Variant]:
    """OpenCV's frontal-face Haar cascade, at full size and at the BlazeFace detection size."""
    try:
        import cv2
    except ImportError:
        print("cv2 missing: no Haar baseline (pip install 'opencv-python-headless>=4.8,<5')")
        return []
    cv2.setNumThreads(1)  # single thread, like the BlazeFace interpreter
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def make() -> Detect:
        def run(img: np.ndarray, prev: list[FaceBox]) -> list[FaceBox]:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            h, w = gray.shape
            rects = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                             minSize=(20, 20))
            return [FaceBox(x / w, y / h, bw / w, bh / h) for x, y, bw, bh in rects]
        return run

    full_size = FaceDetector().detection_size
    return [Variant("OpenCV Haar cascade, full frame", make, lambda w, h: (w, h)),
            Variant("OpenCV Haar cascade, at detection size", make, full_size)]


def decode_at(path: Path, size: tuple[int, int]) -> list[np.ndarray]:
    """All frames of `path`, RGB, scaled by FFmpeg to `size` (no scaling when equal)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24", width=size[0], height=size[1])
                for f in container.decode(video=0)]


def run_video(variant: Variant, path: Path, truth: list[list[ff.TrueFace]], width: int,
              height: int) -> Score:
    """Score one variant on one video."""
    frames = decode_at(path, variant.size(width, height))
    detect = variant.make()
    detect(frames[0], [])  # warm-up (first invoke allocates), not timed or scored
    detect = variant.make()
    score = Score()
    prev: list[FaceBox] = []
    for frame, faces in zip(frames, truth, strict=True):
        t0 = time.perf_counter()
        boxes = detect(frame, prev)
        score.seconds += time.perf_counter() - t0
        prev = boxes
        f, m, fp, ious = ff.match_faces(boxes, faces)
        score.found += f
        score.missed += m
        score.false += fp
        score.ious += ious
        score.frames += 1
    return score


def decode_ms(path: Path, size: tuple[int, int] | None, *, threads: int = 0,
              repeat: int = 3) -> float:
    """Best-of-`repeat` ms per frame to decode `path` to RGB (scaled to `size` if given), with
    `threads` decoder threads (0: FFmpeg's automatic choice)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        with av.open(str(path)) as container:
            container.streams.video[0].thread_count = threads
            n = 0
            for frame in container.decode(video=0):
                if size is None:
                    frame.to_ndarray(format="rgb24")
                else:
                    frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of composed videos")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    load0 = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        videos = {k: build(Path(tmp) / f"{k[0]}.mp4", seconds=args.seconds)
                  for k, build in COMPOSED.items()}
        real = []
        for name in sorted(ff.CREMA_D_FACE_BOXES):
            n = len(decode_at(CREMA_D_DIR / name, ff.CREMA_D_SIZE))
            face = ff.TrueFace("actor", ff.crema_d_face_box(name), 1.0)
            real.append((CREMA_D_DIR / name, [[face]] * n))
        path720 = videos["a quarter"][0]
        small = FaceDetector().detection_size(1280, 720)
        decode = {"full": [decode_ms(path720, None, threads=1)],
                  "small": [decode_ms(path720, small, threads=1)],
                  "auto": [decode_ms(path720, None)]}

        rows: list[dict[str, Any]] = []
        for variant in blazeface_variants() + haar_variants():
            crema = Score()
            for path, truth in real:
                crema.add(run_video(variant, path, truth, *ff.CREMA_D_SIZE))
            per: dict[str, Score] = {}
            composed = Score()
            for key, (path, truth) in videos.items():
                per[key] = run_video(variant, path, truth.frames, truth.width, truth.height)
                composed.add(per[key])
            row = {
                "detector": variant.name,
                "size720": "x".join(map(str, variant.size(1280, 720))),
                "crema_recall": crema.recall,
                "crema_fp": crema.false / crema.frames,
                "crema_iou": float(np.mean(crema.ious)) if crema.ious else float("nan"),
                "crema_ms": crema.ms,
                **{f"recall {k}": per[k].recall for k in per if k != "e none"},
                "fp_none": per["e none"].false / per["e none"].frames,
                "fp_composed": composed.false / composed.frames,
                "iou_composed": float(np.mean(composed.ious)) if composed.ious else float("nan"),
                "ms720": composed.ms,
            }
            rows.append(row)
            print(f"  done: {variant.name} ({composed.ms:.1f} ms/frame at 720p)", flush=True)

        # decode again after the detectors: the best of both, so a busy moment at either end
        # (the machine is shared) does not skew the ratio
        decode["full"].append(decode_ms(path720, None, threads=1))
        decode["small"].append(decode_ms(path720, small, threads=1))
        decode["auto"].append(decode_ms(path720, None))
    dec_full, dec_small, dec_auto = (min(decode[k]) for k in ("full", "small", "auto"))
    for row in rows:
        row["ratio_decode"] = row["ms720"] / dec_full
    load1 = os.getloadavg()
    print(f"\nPyAV decode of the 1280x720 H.264 video (a) to RGB, one decoder thread (the "
          f"detectors run on one): {dec_full:.2f} ms/frame at 1280x720, {dec_small:.2f} "
          f"ms/frame scaled to 512x288 while decoding; FFmpeg's automatic threads: "
          f"{dec_auto:.2f} ms/frame at 1280x720 (wall). Best of 3 before and 3 after the "
          f"detectors. 'detect / decode' divides by the one-thread 1280x720 figure. Load "
          f"average before/after: {load0[0]:.2f} / "
          f"{load1[0]:.2f}.\n")
    keys = [k for k in rows[0] if k.startswith("recall ")]
    head = (["detector", "given 720p as", "CREMA-D recall", "CREMA-D FP/frame", "CREMA-D IoU",
             "CREMA-D ms/frame"] + [k.replace("recall ", "recall (") + ")" for k in keys]
            + ["FP/frame (e)", "FP/frame all composed", "IoU composed", "ms/frame 720p",
               "720p detect / decode"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["detector"], r["size720"], f"{r['crema_recall']:.3f}",
                 f"{r['crema_fp']:.2f}", f"{r['crema_iou']:.2f}", f"{r['crema_ms']:.1f}"]
        cells += [f"{r[k]:.2f}" for k in keys]
        cells += [f"{r['fp_none']:.2f}", f"{r['fp_composed']:.2f}", f"{r['iou_composed']:.2f}",
                  f"{r['ms720']:.1f}", f"{r['ratio_decode']:.1f}x"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"decode_ms_720p": dec_full,
                                         "decode_ms_720p_scaled": dec_small,
                                         "decode_ms_720p_auto_threads": dec_auto,
                                         "load": [load0, load1], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
