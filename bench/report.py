"""Size and build time of the batch run report (`tasks.batch.report.build_run_report`) for a run
of N videos, on a synthetic run written with the real `ShardWriter`.

The run: N videos in shards of 64, face model (0-3 face tracks per video, some with no face),
~8 clip windows per video, a few % of videos failed across stages and error types, Dirichlet
probabilities (seeded); plus the summaries of 7 earlier runs, and this run's summary with
consistent counts and a real drift record. Timed, alternated in each repeat: building the
report, and as the same-run baseline reading the run back without drawing anything (its summary,
the 7 runs before, and ``read_table(..., run_id=...)`` of videos, errors and predictions).
The first build (fonts, template) is shown apart. The ratio is build / baseline (medians).

    .venv/bin/python bench/report.py                  # 1,000 videos, 3 repeats
    .venv/bin/python bench/report.py --videos 10000 --html /tmp/report.html
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion_model.labels import EMOTION_LABELS  # noqa: E402
from tasks.batch import sink  # noqa: E402
from tasks.batch.drift import label_drift, recent_summaries  # noqa: E402
from tasks.batch.report import build_run_report  # noqa: E402
from tasks.batch.settings import BatchSettings  # noqa: E402

MIX = np.array([0.12, 0.06, 0.08, 0.30, 0.34, 0.10])  # the runs' label mix, EMOTION_LABELS order
ERRORS = {"read": ["ClientError", "ReadTimeoutError"], "infer": ["RuntimeError"],
          "decode": ["CorruptVideoError", "EmptyVideoError", "NoDecodableFramesError"]}
MODEL = {"uri": "s3://models/emotion/production.json", "model_version": "3f9c2a71b0de",
         "untrained": False, "num_frames": 48, "img_size": 112, "crop": "face"}
COUNTS = ("failed", "succeeded", "partial", "no_face", "faces", "clips")
BOX = ("face_x", "face_y", "face_w", "face_h")
START = dt.datetime(2026, 12, 10, 2, 0, tzinfo=dt.UTC)  # this run; the 7 before: nights before
DAY = sink.utc_date(START)


def run_id_at(when: dt.datetime, rng: np.random.Generator) -> str:
    return f"{when:%Y%m%dT%H%M%SZ}-{rng.integers(16**8):08x}"


def write_shard(out: str, run_id: str, shard: int, first: int, n: int,
                args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """One shard's Parquet files; its `ShardResult`-like dict for the summary."""
    r: dict[str, Any] = dict.fromkeys(COUNTS, 0) | {"shard": shard, "videos": n, "worker": "bench"}
    r |= {"by_stage": Counter(), "labels": Counter()}
    weights = np.array(args.faces_per_video) / sum(args.faces_per_video)
    with sink.ShardWriter(out, run_id, shard, DAY, model_version=MODEL["model_version"]) as w:
        for i in range(first, first + n):
            common = {"video_uri": f"s3://videos/night/{i // 100:04d}/clip-{i:06d}.mp4",
                      "video_etag": f"{rng.integers(16**12):012x}",
                      "video_bytes": int(rng.integers(200_000, 40_000_000))}
            if rng.random() < args.failed_share:
                stage = str(rng.choice(["read", "decode", "decode", "infer"]))
                kind = str(rng.choice(ERRORS[stage]))
                w.add_error(**common, stage=stage, error_type=kind,
                            message=f"{common['video_uri']}: {kind} at byte {rng.integers(1e6)}")
                r["failed"] += 1
                r["by_stage"][stage] += 1
                continue
            windows, faces = max(1, rng.poisson(args.clips_per_video)), rng.choice(4, p=weights)
            common["video_duration_s"] = windows * 4.0 - float(rng.uniform(0, 3.5))
            video: dict[str, Any] = {"crop": "face", "faces": int(faces), "num_clips": 0,
                                     "partial": bool(rng.random() < 0.01)}
            for face in range(faces):  # face 0 is seen throughout: the longest-seen, the main one
                start = 0 if face == 0 else int(rng.integers(windows))
                seen = range(start, windows if face == 0 else int(rng.integers(start, windows)) + 1)
                alpha = 0.6 + 4.0 * (np.arange(6) == rng.choice(6, p=MIX)) * rng.uniform(0.3, 1.5)
                probs = rng.dirichlet(20 * rng.dirichlet(alpha) + 0.05, len(seen))
                box = dict(zip(BOX, rng.uniform(0.05, 0.5, 4).tolist(), strict=True))
                for k, p in zip(seen, probs, strict=True):
                    w.add_prediction(**common, **box, clip_index=k, clip_start_s=4.0 * k,
                                     clip_end_s=4.0 * k + 4, face_id=face,
                                     face_score=float(rng.uniform(0.6, 1)), **labelled(p))
                track = labelled(probs.mean(axis=0))
                w.add_face(**common, **box, face_id=face, first_s=4.0 * seen[0],
                           last_s=4.0 * seen[-1] + 4, num_clips=len(seen), **track)
                video = track | video if face == 0 else video
                video["num_clips"] += len(seen)
            if video["partial"]:
                video["partial_reason"] = "stream ends at 3.10s of 8.00s"
            w.add_video(**common, **video)
            r["labels"][video.get("label")] += 1
            for key, add in zip(COUNTS[1:], (1, video["partial"], not faces, faces,
                                             video["num_clips"]), strict=True):
                r[key] += int(add)
    assert w.stats is not None
    busy = r["clips"] / 2.2  # thread seconds as a face model would spend them, roughly
    r["labels"].pop(None, None)
    return {**r, "failed_by_stage": dict(r.pop("by_stage")), "labels": dict(r["labels"]),
            "decode_s": round(busy * 0.55, 3), "detect_s": round(busy * 0.13, 3),
            "infer_s": round(busy * 0.45, 3), "wall_s": round(busy, 3), "files": w.stats.as_dict()}


def labelled(p: np.ndarray) -> dict[str, Any]:
    return {"label": EMOTION_LABELS[int(p.argmax())], "confidence": float(p.max()),
            **sink.prob_columns(p)}


def write_run(out: str, args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """The 7 earlier runs' summaries, this run's Parquet and its summary; its run id, shards."""
    rng = np.random.default_rng(args.seed)
    before = []
    for day in range(7, 0, -1):  # earlier nights: what drift and the report read, no Parquet
        started = START - dt.timedelta(days=day)
        mix = rng.multinomial(int(args.videos * 0.9), rng.dirichlet(400 * MIX)).tolist()
        before.append({"run_id": run_id_at(started, rng), "status": "completed",
                       "started_at": started.isoformat(), "model_version": MODEL["model_version"],
                       "counts": {"listed": args.videos, "succeeded": args.videos},
                       "label_distribution": dict(zip(EMOTION_LABELS, mix, strict=True))})
        sink.write_run_summary(out, before[-1]["run_id"], before[-1])
    run_id = run_id_at(START, rng)
    shards = [write_shard(out, run_id, k, i, min(args.shard_size, args.videos - i), args, rng)
              for k, i in enumerate(range(0, args.videos, args.shard_size))]
    total = {k: sum(s[k] for s in shards) for k in ("videos", *COUNTS)}
    labels = sum((Counter(s["labels"]) for s in shards), Counter())
    wall = sum(s["wall_s"] for s in shards) + 4.0  # shards one after another, plus preflight
    settings = BatchSettings(source="s3://videos/night/", output=out, model=MODEL["uri"])
    summary = {  # shaped like tasks.batch.summary.build_summary's
        "run_id": run_id, "status": "completed", "started_at": START.isoformat(),
        "finished_at": (START + dt.timedelta(seconds=wall)).isoformat(), "wall_s": wall,
        "parameters": settings.public_dict(), "model": MODEL,
        "model_version": MODEL["model_version"],
        "counts": {"listed": total["videos"], "skipped_not_video": 3, "skipped_done": 0,
                   "deferred_max_videos": 0, "processed": total.pop("videos"), **total},
        "failed_by_stage": dict(sum((Counter(s["failed_by_stage"]) for s in shards), Counter())),
        "failed_shards": {}, "label_distribution": {k: labels[k] for k in EMOTION_LABELS},
        "clips_per_s": round(total["clips"] / wall, 3),
        "videos_per_s": round(total["succeeded"] / wall, 3),
        "timings": {k: round(sum(s[k] for s in shards), 3)
                    for k in ("decode_s", "detect_s", "infer_s")}, "shards": shards}
    summary["drift"] = label_drift(run_id, summary["label_distribution"], before,
                                   threshold=settings.drift_threshold).as_dict()
    sink.write_run_summary(out, run_id, summary)
    return run_id, shards


def read_back(out: str, run_id: str) -> None:
    """The baseline: what the report reads, without drawing or rendering anything."""
    json.loads(Path(sink.run_summary_key(out, run_id)).read_text())
    recent_summaries(out, before_run_id=run_id, limit=7)
    for table in ("videos", "errors", "predictions"):
        sink.read_table(out, table, run_id=run_id)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--faces-per-video", type=float, nargs=4, default=[0.08, 0.62, 0.22, 0.08],
                        metavar="W", help="weights of 0, 1, 2 and 3 face tracks per video")
    parser.add_argument("--clips-per-video", type=float, default=8.0,
                        help="mean clip windows per video (Poisson)")
    parser.add_argument("--failed-share", type=float, default=0.03)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the synthetic run here (default: a temp folder)")
    parser.add_argument("--html", type=Path, help="keep the report page here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        out = args.output or tmp
        write_s, (run_id, shards) = timed(lambda: write_run(out, args))
        first_s, report = timed(lambda: build_run_report(out, run_id))
        builds, reads = [], []
        for _ in range(args.repeats):  # alternated, so both see the same load
            reads.append(timed(lambda: read_back(out, run_id))[0])
            builds.append(timed(lambda: build_run_report(out, run_id))[0])
    if args.html:
        args.html.write_text(report.html, encoding="utf-8")
    rows = {t: sum(s["files"]["rows"][t] for s in shards) for t in sink.TABLES}
    parquet = sum(sum(s["files"]["bytes"].values()) for s in shards)
    print(f"\nrun {run_id}: {args.videos:,} videos in {len(shards)} shards (written in "
          f"{write_s:.1f} s); rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items())
          + f"; Parquet {parquet / 2**20:.2f} MiB; report {report.size / 1024:.0f} KiB"
          + (f" -> {args.html}" if args.html else ""))
    base = statistics.median(reads)
    print(f"{'':<34}{'min s':>8}{'median s':>10}{'/ baseline':>12}")
    print(f"{'first build':<34}{first_s:>8.3f}{'':>10}{first_s / base:>12.1f}")
    for name, times in (("report build", builds), ("baseline: read back, no drawing", reads)):
        print(f"{name:<34}{min(times):>8.3f}{statistics.median(times):>10.3f}"
              f"{statistics.median(times) / base:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
