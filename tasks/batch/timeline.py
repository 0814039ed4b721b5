"""Emotion timelines from the Parquet already written: a video's six probabilities over time,
one panel per face track, with its clip windows drawn under the curves. No model runs.

``emotion-pipeline timeline VIDEO --output OUTPUT_ROOT --png PATH`` and the run report's
least-confident videos use the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure

from emotion_model.labels import EMOTION_LABELS
from tasks.batch.charts import LABEL_COLORS, axes, figure, to_png
from tasks.batch.sink import PROB_COLUMNS, read_table

__all__ = [
    "TIMELINE_COLUMNS",
    "VideoRows",
    "draw_timeline",
    "find_video",
    "read_video_predictions",
    "timeline_png",
]

TIMELINE_COLUMNS: tuple[str, ...] = (
    "run_id", "video_uri", "clip_index", "clip_start_s", "clip_end_s", "face_id", "label",
    "confidence", *PROB_COLUMNS, "model_version",
)
"""The ``predictions`` columns a timeline reads."""


@dataclass(frozen=True)
class VideoRows:
    """One video's clip predictions from one run, sorted by face then clip."""

    video_uri: str
    run_id: str
    model_version: str
    rows: pa.Table


def _forms(video: str) -> list[str]:
    """The URIs `video` may have been listed as: as given, and as a local file's URI."""
    forms = [video]
    if "://" not in video and os.path.exists(video):
        forms += [os.path.abspath(video), "file://" + os.path.abspath(video)]
    return forms


def find_video(
    output: str, video: str, *, run_id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """``(video_uri, run_id)`` of `video` in the ``videos`` table under `output`.

    `video` is a URI, a local path, or the end of a URI after a ``/`` (``clip.mp4``,
    ``night/clip.mp4``); the latest run that processed it, unless `run_id` is given. Raises
    ValueError with one line when it matches nothing or more than one video.
    """
    table = read_table(output, "videos", storage_options,
                       columns=["run_id", "video_uri", "processed_at"], run_id=run_id)
    if not table.num_rows:
        where = f"run {run_id}" if run_id else output
        raise ValueError(f"no videos in {where}: has a batch run written there?")
    uris = set(table.column("video_uri").to_pylist())
    exact = sorted({form for form in _forms(video) if form in uris})
    matches = exact or sorted(u for u in uris if u.endswith("/" + video.lstrip("/")))
    if not matches:
        raise ValueError(_not_found(output, video, len(uris), run_id, storage_options))
    if len(matches) > 1:
        raise ValueError(f"{video} matches {len(matches)} videos ({', '.join(matches[:3])}"
                         f"{', ...' if len(matches) > 3 else ''}): give more of the path")
    uri = matches[0]
    mine = table.filter(pc.equal(table.column("video_uri"), uri))
    latest = int(pc.index(mine.column("processed_at"), pc.max(mine.column("processed_at"))).as_py())
    return uri, str(mine.column("run_id")[latest].as_py())


def _not_found(output: str, video: str, videos: int, run_id: str | None,
               storage_options: Mapping[str, Any] | None) -> str:
    """Why `video` has no timeline: it failed (its ``errors`` row), or it was never listed."""
    errors = read_table(output, "errors", storage_options, run_id=run_id,
                        columns=["run_id", "video_uri", "stage", "error_type", "message"])
    forms = _forms(video)
    for row in reversed(errors.to_pylist()):
        uri = row["video_uri"]
        if uri in forms or uri.endswith("/" + video.lstrip("/")):
            return (f"{uri} failed in run {row['run_id']} ({row['stage']}: "
                    f"{row['error_type']}: {row['message']}): it has no predictions")
    return (f"{video} is not among the {videos} videos in {output}"
            + (f" (run {run_id})" if run_id else ""))


def read_video_predictions(
    output: str, video_uri: str, run_id: str,
    storage_options: Mapping[str, Any] | None = None,
) -> VideoRows:
    """The clip rows of `video_uri` written by run `run_id`, sorted by face, then clip."""
    table = read_table(output, "predictions", storage_options, columns=list(TIMELINE_COLUMNS),
                       filter=pc.field("video_uri") == video_uri, run_id=run_id)
    table = table.sort_by([("face_id", "ascending"), ("clip_index", "ascending")])
    version = str(table.column("model_version")[0].as_py()) if table.num_rows else ""
    return VideoRows(video_uri=video_uri, run_id=run_id, model_version=version, rows=table)


def _face_title(face_id: int, start: np.ndarray, end: np.ndarray, probs: np.ndarray) -> str:
    mean = probs.mean(axis=0)
    top = int(mean.argmax())
    who = "whole frame" if face_id < 0 else f"face {face_id}"
    return (f"{who}: {start.min():.1f}-{end.max():.1f} s, {len(start)} clips, "
            f"mostly {EMOTION_LABELS[top]} ({mean[top]:.2f})")


def draw_timeline(video: VideoRows, *, width: float = 8.0) -> Figure:
    """The figure: per face track, the six probabilities at each clip window's middle, and the
    windows themselves as bars under the curves (coloured by the clip's label; overlapping
    windows on separate rows)."""
    rows = video.rows
    faces = sorted(set(rows.column("face_id").to_pylist())) or [-1]
    fig = figure(width, 0.6 + 2.2 * len(faces))
    name = video.video_uri.rsplit("/", 1)[-1]
    fig.suptitle(f"{name}  (run {video.run_id}, model {video.model_version})",
                 fontsize=9, x=0.01, ha="left")
    end_all = max(rows.column("clip_end_s").to_pylist(), default=1.0)
    for i, face in enumerate(faces):
        ax = axes(fig, len(faces), 1, i + 1)
        mine = rows.filter(pc.equal(rows.column("face_id"), face))
        if not mine.num_rows:
            ax.text(0.5, 0.5, "no clips", ha="center", transform=ax.transAxes)
            continue
        start = mine.column("clip_start_s").to_numpy()
        end = mine.column("clip_end_s").to_numpy()
        probs = np.stack([mine.column(c).to_numpy() for c in PROB_COLUMNS], axis=1)
        middle = (start + end) / 2
        for k, label in enumerate(EMOTION_LABELS):
            ax.plot(middle, probs[:, k], color=LABEL_COLORS[label], marker="o", ms=3, lw=1.4,
                    label=label)
        labels = mine.column("label").to_pylist()
        lanes = _lanes(start, end)
        for s, e, lane, label in zip(start, end, lanes, labels, strict=True):
            ax.broken_barh([(s, e - s)], (-0.1 - 0.06 * lane, 0.045),
                           facecolors=LABEL_COLORS.get(label, "#444"), edgecolor="white", lw=1)
        ax.axhline(0, color="#bbb", lw=0.5)
        ax.set_ylim(-0.06 - 0.06 * (max(lanes) + 1), 1.02)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xlim(0, end_all)
        ax.set_ylabel("probability", fontsize=8)
        ax.set_title(_face_title(face, start, end, probs), loc="left", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, frameon=False, ncols=6, loc="lower left",
                      bbox_to_anchor=(0, 1.08))
    ax.set_xlabel("time (s); bars: clip windows, coloured by the clip's label")
    return fig


def _lanes(start: Sequence[float], end: Sequence[float]) -> list[int]:
    """A row per window so that windows on the same row do not overlap (greedy)."""
    lane_end: list[float] = []
    lanes = []
    for s, e in zip(start, end, strict=True):
        lane = next((i for i, last in enumerate(lane_end) if s >= last - 1e-6), len(lane_end))
        if lane == len(lane_end):
            lane_end.append(e)
        lane_end[lane] = e
        lanes.append(lane)
    return lanes


def timeline_png(video: VideoRows, *, dpi: int = 100, width: float = 8.0) -> bytes:
    """`draw_timeline` as PNG bytes. Raises ValueError when the video has no clip rows (a face
    model that found no face writes none)."""
    if not video.rows.num_rows:
        raise ValueError(f"{video.video_uri} has no clip predictions in run {video.run_id} "
                         "(no face was found in it, or it had no clips)")
    return to_png(draw_timeline(video, width=width), dpi=dpi)

