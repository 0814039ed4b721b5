"""The run report: one self-contained HTML page per batch run, built from what the run wrote
(``runs/<run_id>.json`` and its Parquet files) and written to ``reports/<run_id>.html``.

The page holds counts, the label and confidence distributions, this run's label mix against the
runs before it (with the drift verdict), the least confident videos with their timelines, errors
grouped by stage and type, timings and the model. Charts are matplotlib SVG inlined in the page
and timelines PNG data URIs: the file opens offline, with no script, font or image fetched from
anywhere (`tasks.batch.charts` says why matplotlib).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from emotion_model.errors import one_line
from emotion_model.labels import EMOTION_LABELS
from tasks.batch.charts import confidence_histogram, label_bars, label_mix_bars, to_svg
from tasks.batch.drift import recent_summaries
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import PROB_COLUMNS, read_table, run_summary_key
from tasks.batch.timeline import VideoRows, timeline_png
from tasks.common.storage import atomic_write_bytes, join, read_bytes, resolve

logger = logging.getLogger(__name__)

__all__ = [
    "RunReport",
    "build_run_report",
    "latest_run_id",
    "publish_run_report",
    "report_key",
    "write_run_report",
]

LEAST_CONFIDENT = 10
"""Rows in the least-confident table."""
TIMELINES = 5
"""Of those, how many get their timeline drawn in the page."""
HISTORY = 7
"""Runs before this one shown in the label-mix comparison (the drift check's default window)."""
EXAMPLES = 3
"""Example videos shown per error group."""


@dataclass(frozen=True)
class RunReport:
    """A built report: the run it is about, the page, and how long building it took."""

    run_id: str
    html: str
    build_s: float

    @property
    def size(self) -> int:
        """The page's size in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))


def report_key(output: str, run_id: str) -> str:
    """``<output>/reports/<run_id>.html``."""
    return join(output, "reports", f"{run_id}.html")


def latest_run_id(output: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The newest run with a summary under `output` (run ids sort by time)."""
    fs, path = resolve(join(output, "runs"), storage_options)
    try:
        names = [n.rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]
    except FileNotFoundError:
        names = []
    runs = sorted(n[: -len(".json")] for n in names if n.endswith(".json") and n[0] not in "._")
    if not runs:
        raise ValueError(f"no run summaries under {join(output, 'runs')}: has a batch run "
                         "written to this output?")
    return runs[-1]


def _read_summary(output: str, run_id: str, storage_options: Mapping[str, Any] | None) -> dict:
    uri = run_summary_key(output, run_id)
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError:
        raise ValueError(f"no summary for run {run_id} ({uri} is missing)") from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{uri} is not a valid run summary: {one_line(str(exc), 120)}") from None


# --- the page's parts ---------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x:.0%}"


def _when(iso: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS UTC`` (as given when it does not parse)."""
    try:
        return dt.datetime.fromisoformat(str(iso)).astimezone(dt.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(iso or "")


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _cards(counts: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    def card(key: str, title: str, tone: str = "") -> dict:
        value = int(counts.get(key) or 0)
        return {"key": key, "title": title, "value": f"{value:,}",
                "tone": tone if value else ""}

    major = [card("listed", "videos listed"), card("succeeded", "done", "good"),
             card("skipped_done", "skipped: already done"),
             card("deferred_max_videos", "deferred (max_videos)"),
             card("failed", "failed", "bad"), card("no_face", "no face found")]
    minor = [card("partial", "partly decoded"), card("faces", "face tracks"),
             card("clips", "clips"), card("clips_no_audio", "clips without audio"),
             card("skipped_not_video", "non-video objects skipped")]
    return major, minor


def _label_rows(videos: pa.Table) -> tuple[dict[str, int], list[dict], list[float], list[str]]:
    labelled = videos.filter(pc.is_valid(videos.column("label")))
    labels = labelled.column("label").to_pylist()
    conf = [float(c) for c in labelled.column("confidence").to_pylist()]
    counts = {label: labels.count(label) for label in EMOTION_LABELS}
    rows = []
    for label in EMOTION_LABELS:
        mine = [c for c, lab in zip(conf, labels, strict=True) if lab == label]
        rows.append({"label": label, "videos": f"{len(mine):,}",
                     "share": _pct(len(mine) / len(labels)) if labels else "-",
                     "confidence": f"{sum(mine) / len(mine):.2f}" if mine else "-"})
    return counts, rows, conf, labels


def _least_confident(videos: pa.Table, n: int) -> list[dict]:
    labelled = videos.filter(pc.is_valid(videos.column("label")))
    if not labelled.num_rows:
        return []
    order = pc.sort_indices(labelled, sort_keys=[("confidence", "ascending"),
                                                 ("video_uri", "ascending")])
    rows = labelled.take(order.slice(0, n)).to_pylist()
    out = []
    for i, row in enumerate(rows):
        probs = sorted(((row[c], label) for c, label in zip(PROB_COLUMNS, EMOTION_LABELS,
                                                              strict=True)), reverse=True)
        out.append({
            "uri": row["video_uri"], "name": row["video_uri"].rsplit("/", 1)[-1],
            "label": row["label"], "confidence": f"{row['confidence']:.3f}",
            "runner_up": probs[1][1], "margin": f"{probs[0][0] - probs[1][0]:.3f}",
            "faces": "-" if row.get("faces") is None else row["faces"],
            "anchor": f"timeline-{i}", "timeline": None,
        })
    return out


def _add_timelines(output: str, run_id: str, videos: list[dict], model_version: str,
                   storage_options: Mapping[str, Any] | None, n: int) -> None:
    chosen = videos[:n]
    if not chosen:
        return
    uris = [v["uri"] for v in chosen]
    rows = read_table(output, "predictions", storage_options, run_id=run_id,
                      filter=pc.field("video_uri").isin(uris))
    for v in chosen:
        mine = rows.filter(pc.equal(rows.column("video_uri"), v["uri"])).sort_by(
            [("face_id", "ascending"), ("clip_index", "ascending")])
        if mine.num_rows:
            png = timeline_png(VideoRows(v["uri"], run_id, model_version, mine), dpi=72)
            v["timeline"] = base64.b64encode(png).decode("ascii")
    for v in videos:
        if not v["timeline"]:
            v["anchor"] = None


def _error_groups(errors: pa.Table) -> list[dict]:
    groups: dict[tuple[str, str], dict] = {}
    for row in errors.select(["stage", "error_type", "video_uri", "message"]).to_pylist():
        key = (row["stage"], row["error_type"])
        group = groups.setdefault(key, {"stage": key[0], "error_type": key[1], "count": 0,
                                        "examples": []})
        group["count"] += 1
        if len(group["examples"]) < EXAMPLES:
            group["examples"].append({"uri": row["video_uri"], "message": row["message"]})
    return sorted(groups.values(), key=lambda g: (-g["count"], g["stage"], g["error_type"]))


def _drift_text(drift: Mapping[str, Any] | None) -> dict:
    if not drift:
        return {"flagged": False, "compared": False, "text": ""}
    if drift.get("error"):
        return {"flagged": False, "compared": False,
                "text": f"The drift check failed: {drift['error']}"}
    if drift.get("distance") is None:
        return {"flagged": False, "compared": False,
                "text": drift.get("note") or "Nothing to compare this run with."}
    refs = drift.get("reference_runs") or []
    p = drift.get("p_value")
    text = (f"{drift.get('test', 'Jensen-Shannon distance')} between this run's label mix "
            f"and the pooled mix of the {len(refs)} run(s) before it: "
            f"{drift['distance']:.3f} (flagged above {drift.get('threshold')})"
            + (f"; chi-square p = {p:.3g}" if p is not None else "") + "."
            + (f" Note: {drift['note']}." if drift.get("note") else ""))
    return {"flagged": bool(drift.get("flagged")), "compared": True, "text": text}


def _history(summary: Mapping[str, Any], before: Sequence[Mapping[str, Any]]) -> list[dict]:
    rows = []
    for s in [*before, summary]:
        mix = s.get("label_distribution") or {}
        total = sum(mix.values())
        rows.append({
            "run_id": s["run_id"], "videos": f"{total:,}", "mix": mix,
            "shares": [_pct(mix.get(label, 0) / total) if total else "-"
                       for label in EMOTION_LABELS],
            "model_version": s.get("model_version", ""), "current": s is summary,
        })
    return rows


def _timings(summary: Mapping[str, Any]) -> list[dict]:
    t = summary.get("timings") or {}
    rows = [("wall time", _seconds(float(summary.get("wall_s") or 0))),
            ("decoding (thread seconds, detection included)", _seconds(t.get("decode_s", 0))),
            ("face detection (thread seconds)", _seconds(t.get("detect_s", 0))),
            ("model (seconds)", _seconds(t.get("infer_s", 0))),
            ("clips per second", f"{summary.get('clips_per_s', 0):.2f}"),
            ("videos per second", f"{summary.get('videos_per_s', 0):.2f}")]
    return [{"name": k, "value": v} for k, v in rows]


def _shard_rows(summary: Mapping[str, Any]) -> list[dict]:
    keys = ("decode_s", "infer_s", "wall_s")
    return [{**s, **{k: f"{float(s.get(k, 0)):.1f}" for k in keys}}
            for s in summary.get("shards") or []]


def _failed_shards(summary: Mapping[str, Any]) -> list[tuple[str, dict]]:
    sizes = {str(s.get("shard")): s.get("videos", "") for s in summary.get("shards") or []}
    return [(k, {"text": v, "videos": sizes.get(k, "")})
            for k, v in sorted((summary.get("failed_shards") or {}).items())]


@cache
def _template() -> jinja2.Template:
    text = resources.files("tasks.batch").joinpath("templates/run_report.html.j2").read_text(
        encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=False, lstrip_blocks=False)
    return env.from_string(text)


# --- build and write -----------------------------------------------------------------------------
def build_run_report(
    output: str,
    run_id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    least_confident: int = LEAST_CONFIDENT,
    timelines: int = TIMELINES,
    history: int = HISTORY,
) -> RunReport:
    """Build the report of `run_id` (default: the newest run) from what it wrote under
    `output`. Raises ValueError with one line when there is no such run."""
    started = time.perf_counter()
    run_id = run_id or latest_run_id(output, storage_options)
    summary = _read_summary(output, run_id, storage_options)
    videos = read_table(output, "videos", storage_options, run_id=run_id)
    errors = read_table(output, "errors", storage_options, run_id=run_id)
    before = recent_summaries(output, before_run_id=run_id, limit=history,
                              storage_options=storage_options)
    counts = summary.get("counts") or {}
    cards, minor = _cards(counts)
    label_counts, label_rows, conf, labels = _label_rows(videos)
    worst = _least_confident(videos, least_confident)
    model = summary.get("model") or {}
    _add_timelines(output, run_id, worst, str(summary.get("model_version", "")),
                   storage_options, timelines)
    hist = _history(summary, before)
    params = summary.get("parameters") or {}
    added = int(counts.get("skipped_done", 0)) + int(counts.get("deferred_max_videos", 0))
    html = _template().render(
        run_id=run_id, status=summary.get("status", "unknown"),
        started_at=_when(summary.get("started_at")), finished_at=_when(summary.get("finished_at")),
        wall=_seconds(float(summary.get("wall_s") or 0)),
        source=params.get("source", ""), output=output,
        untrained=bool(model.get("untrained")),
        cards=cards, minor_counts=minor,
        counts_add_up=int(counts.get("listed", 0)) == added + int(counts.get("succeeded", 0))
        + int(counts.get("failed", 0)),
        labelled=len(labels), label_rows=label_rows, labels=EMOTION_LABELS,
        label_chart=to_svg(label_bars(label_counts, title="Videos per label")),
        confidence_chart=to_svg(confidence_histogram(
            conf, labels, title="Confidence of each video's label")),
        history=hist if len(hist) > 1 or label_counts else [],
        history_chart=to_svg(label_mix_bars(
            [(h["run_id"] + (" (this run)" if h["current"] else ""), h["mix"]) for h in hist],
            title="Label mix per run")),
        drift=_drift_text(summary.get("drift")),
        least_confident=worst,
        error_groups=_error_groups(errors), failed_shards=_failed_shards(summary),
        timings=_timings(summary), shards=_shard_rows(summary),
        model=[(k, v) for k, v in model.items()], parameters=sorted(params.items()),
        summary_uri=run_summary_key(output, run_id),
        generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    return RunReport(run_id=run_id, html=html, build_s=time.perf_counter() - started)


def write_run_report(
    output: str,
    run_id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    html_path: str | None = None,
) -> tuple[RunReport, str]:
    """Build the report and write it, atomically, to `html_path` (default
    ``reports/<run_id>.html`` under `output`). Returns the report and where it went."""
    report = build_run_report(output, run_id, storage_options)
    uri = html_path or report_key(output, report.run_id)
    atomic_write_bytes(uri, report.html.encode("utf-8"), storage_options)
    return report, uri


@task(name="publish-run-report", cache_policy=NO_CACHE)
def publish_run_report(summary: Mapping[str, Any], settings: BatchSettings) -> str | None:
    """Write ``reports/<run_id>.html`` and link it from a Prefect artifact. The report is
    derived from files already committed, so a failure here is logged, not raised (rebuild it
    with ``emotion-pipeline report``); returns the report's URI, or None."""
    log = get_run_logger()
    try:
        report, uri = write_run_report(settings.output, summary["run_id"],
                                       settings.storage_options)
    except Exception as exc:
        log.warning("run report not written (rebuild it with `emotion-pipeline report "
                    "%s --run %s`): %s", settings.output, summary["run_id"],
                    one_line(f"{type(exc).__name__}: {exc}", 300))
        return None
    flagged = bool((summary.get("drift") or {}).get("flagged"))
    create_link_artifact(
        key="batch-inference-report",
        link=uri if "://" in uri else f"file://{os.path.abspath(uri)}",
        link_text=f"run report {summary['run_id']}",
        description=("DRIFT FLAGGED: " if flagged else "")
        + f"batch-inference run {summary['run_id']}: {summary.get('status')}; "
        f"report ({report.size / 1024:.0f} KiB) at {uri}",
    )
    log.info("run report %s (%.0f KiB, built in %.2f s)", uri, report.size / 1024,
             report.build_s)
    return uri
