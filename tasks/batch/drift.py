"""Label drift across nights: this run's label mix against the trailing runs on the same output.

Each run summary records ``label_distribution`` (labelled videos per label). The check pools the
counts of the last ``drift_window`` earlier runs on the output (completed, with at least one
labelled video) and compares this run's label proportions with the pooled ones:

- **The flag**: the Jensen-Shannon distance (the square root of the JS divergence, base 2) is
  bounded in [0, 1] (0: the same mix; 1: no label in common), symmetric, finite when a label is
  missing on one side, and it measures *how much* the mix moved, not how sure we are that it
  moved: it does not grow with the number of videos, so a big night is not "significant" over
  a shift nobody would act on. Flagged when ``distance > drift_threshold``.
- **The default threshold, 0.1**: about 9-11 percentage points of the videos moving from one
  label to another (10 points from ``neutral`` to ``happy`` on a 15/10/10/25/30/10 % mix give
  0.115; 10 % of a uniform mix piling onto one label, 0.087). Sampling noise alone stays under
  it 19 nights in 20 once a night has about 250 labelled videos (against a 7-night reference);
  below that the distance is noisy and the result's note says how far noise alone reaches.
- **For context**: the p-value of a chi-square test of homogeneity on the counts (this run vs
  the pooled reference; Pearson, no continuity correction). It answers "could sampling alone
  explain this?": a flag with a large p-value is a small night's noise. It is not the flag
  because with thousands of videos it is tiny for any shift at all. It needs expected counts
  of about 5 per label to be accurate.

The result is one row of ``<output>/drift/date=YYYY-MM-DD/<run_id>.parquet`` (`DRIFT_SCHEMA`) and
``summary["drift"]`` in the run summary. ``recent_summaries`` also serves the run report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2, chi2_contingency

from emotion_model.labels import EMOTION_LABELS
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import run_summary_key
from tasks.common.storage import (
    atomic_write_bytes,
    is_transient,
    join,
    read_bytes,
    resolve,
    retry_transient,
    with_retries,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DRIFT_SCHEMA",
    "TEST_NAME",
    "DriftResult",
    "check_label_drift",
    "drift_artifact_rows",
    "drift_key",
    "label_drift",
    "labelled_videos",
    "noise_distance",
    "recent_summaries",
    "write_drift_row",
]

TEST_NAME = "Jensen-Shannon distance (base 2)"
"""The ``test`` column: what ``distance`` is (``p_value``: a chi-square test of homogeneity)."""

DRIFT_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("reference_runs", pa.list_(pa.string())),  # oldest first
        pa.field("test", pa.string()),  # TEST_NAME
        pa.field("distance", pa.float64()),  # null: nothing to compare
        pa.field("p_value", pa.float64()),  # chi-square homogeneity; null: nothing to compare
        pa.field("threshold", pa.float64()),
        pa.field("flagged", pa.bool_()),
        pa.field("videos", pa.int64()),  # this run's labelled videos
        pa.field("reference_videos", pa.int64()),  # the reference runs' labelled videos
        pa.field("note", pa.string()),  # null, or why nothing was compared, or a noise warning
        pa.field("checked_at", pa.timestamp("us", tz="UTC")),
    ]
)
"""One row per run: its label mix against the trailing runs' (the contract, README "Outputs")."""

_RUN_ID_TIME = re.compile(r"^\d{8}T\d{6}Z-")  # run ids sort by time: YYYYMMDDTHHMMSSZ-xxxxxxxx
_NOISE_QUANTILE = 0.95


@dataclass(frozen=True)
class DriftResult:
    """One run's label drift against its reference runs (distance and p-value None when there
    was nothing to compare; then ``note`` says why and ``flagged`` is False)."""

    run_id: str
    reference_runs: tuple[str, ...]
    test: str
    distance: float | None
    p_value: float | None
    threshold: float
    flagged: bool
    videos: int
    reference_videos: int
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``reference_runs`` as a list): the run summary's ``drift``."""
        return {**asdict(self), "reference_runs": list(self.reference_runs)}


# --- the reference runs ------------------------------------------------------------------------
def labelled_videos(summary: Mapping[str, Any]) -> int:
    """Videos with a label in a run summary (its ``label_distribution`` summed)."""
    return sum(int(n) for n in (summary.get("label_distribution") or {}).values())


def _load_summary(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The summary at `uri`, or None (with a warning) when it is gone, not JSON or malformed."""
    try:
        summary = json.loads(read_bytes(uri, storage_options))
        if not isinstance(summary, dict) or not isinstance(
            summary.get("label_distribution", {}), dict
        ):
            raise ValueError("not a run summary")
        labelled_videos(summary)  # counts must be numbers
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        if is_transient(exc):  # still failing after retries: the task retries
            raise
        logger.warning("skipped run summary %s: unreadable (%s: %s)", uri, type(exc).__name__,
                       str(exc)[:200])
        return None
    return summary


def recent_summaries(
    output: str,
    *,
    before_run_id: str,
    limit: int,
    storage_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The summaries of the newest `limit` runs on `output` before `before_run_id`, oldest first.

    Only runs whose summary says ``status: completed`` and that labelled at least one video
    count; an unreadable or partial ``runs/<run_id>.json`` is skipped with a warning, and names
    that are not run ids (``YYYYMMDDTHHMMSSZ-...``, which sort by time) are ignored. Summaries are
    read newest first until `limit` qualify, so a long history costs one listing. Transient
    storage errors are retried; a missing ``runs/`` folder gives [].
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    folder = posixpath.dirname(run_summary_key(output, before_run_id))
    fs, path = resolve(folder, storage_options)

    def _list() -> list[str]:
        try:
            return list(fs.find(path, maxdepth=1, withdirs=False))
        except FileNotFoundError:
            return []

    names = [posixpath.basename(n) for n in with_retries(_list, what=f"list {folder}")]
    run_ids = sorted(
        (n[: -len(".json")] for n in names if n.endswith(".json") and _RUN_ID_TIME.match(n)),
        reverse=True,
    )
    found: list[dict[str, Any]] = []
    for run_id in run_ids:
        if run_id >= before_run_id:
            continue
        summary = _load_summary(run_summary_key(output, run_id), storage_options)
        if summary is None or summary.get("status") != "completed" or not labelled_videos(summary):
            continue
        found.append({**summary, "run_id": summary.get("run_id", run_id)})
        if len(found) == limit:
            break
    return found[::-1]


# --- the test ----------------------------------------------------------------------------------
def _counts(distributions: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
    return np.array([sum(int(d.get(label, 0)) for d in distributions) for label in labels],
                    dtype=np.float64)


def noise_distance(labels: int, videos: int, reference_videos: int) -> float:
    """The JS distance that sampling alone exceeds one time in 20 for two samples of these
    sizes from the same mix (from the chi-square approximation: JSD ~ X^2 (1/n + 1/m) / 8 ln 2)."""
    x2 = float(chi2.ppf(_NOISE_QUANTILE, max(labels - 1, 1)))
    return math.sqrt(x2 * (1 / videos + 1 / reference_videos) / (8 * math.log(2)))


def label_drift(
    run_id: str,
    label_distribution: Mapping[str, Any],
    references: Sequence[Mapping[str, Any]],
    *,
    threshold: float,
) -> DriftResult:
    """Compare one run's label counts with the pooled counts of `references` (run summaries).

    Labels are `EMOTION_LABELS` (then any other label seen, sorted); one missing on a side
    counts 0. See the module docstring for the test and the threshold.
    """
    reference_ids = tuple(str(r["run_id"]) for r in references)
    extra = {k for d in [label_distribution, *(r.get("label_distribution") or {}
                                               for r in references)] for k in d}
    labels = [*EMOTION_LABELS, *sorted(extra - set(EMOTION_LABELS))]
    current = _counts([label_distribution], labels)
    pooled = _counts([r.get("label_distribution") or {} for r in references], labels)
    videos, reference_videos = int(current.sum()), int(pooled.sum())
    empty = DriftResult(run_id, reference_ids, TEST_NAME, None, None, threshold, False, videos,
                        reference_videos)
    if not reference_videos:
        return replace(empty, note="first run on this output (no earlier completed run with "
                                     "labelled videos): nothing to compare")
    if not videos:
        return replace(empty, note="no labelled videos in this run: nothing to compare")
    distance = float(jensenshannon(current / videos, pooled / reference_videos, base=2))
    seen = (current + pooled) > 0
    if seen.sum() < 2:  # one label on both sides: the same mix
        p_value = 1.0
    else:
        p_value = float(chi2_contingency(np.stack([current[seen], pooled[seen]]),
                                         correction=False).pvalue)
    noise = noise_distance(int(seen.sum()), videos, reference_videos)
    note = None
    if noise > threshold:
        note = (f"few videos: sampling noise alone exceeds distance {noise:.3f} one night in 20 "
                f"(threshold {threshold:g}); see p_value")
    return DriftResult(run_id, reference_ids, TEST_NAME, distance, p_value, threshold,
                       distance > threshold, videos, reference_videos, note)


# --- writing -----------------------------------------------------------------------------------
def drift_key(output: str, run_id: str, date: str) -> str:
    """``<output>/drift/date=YYYY-MM-DD/<run_id>.parquet``."""
    if dt.date.fromisoformat(date).isoformat() != date:
        raise ValueError(f"date must be 'YYYY-MM-DD', got {date!r}")
    name = posixpath.basename(run_summary_key(output, run_id))  # checks the run id
    return join(output, "drift", f"date={date}", name.removesuffix(".json") + ".parquet")


def write_drift_row(
    output: str, result: DriftResult, date: str,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write `result` as the one row of its drift file (zstd Parquet, atomically); its URI."""
    uri = drift_key(output, result.run_id, date)
    row = {**result.as_dict(), "checked_at": dt.datetime.now(dt.UTC)}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([row], schema=DRIFT_SCHEMA), sink, compression="zstd")
    atomic_write_bytes(uri, sink.getvalue().to_pybytes(), storage_options)
    return uri


# --- the Prefect task --------------------------------------------------------------------------
@task(
    name="check-label-drift", retries=3, retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
def check_label_drift(summary: Mapping[str, Any], settings: BatchSettings, date: str
                      ) -> DriftResult:
    """Compare the run in `summary` with the last ``drift_window`` runs on its output and write
    its drift row; a flag is a warning in the run's log."""
    references = recent_summaries(settings.output, before_run_id=summary["run_id"],
                                  limit=settings.drift_window,
                                  storage_options=settings.storage_options)
    result = label_drift(summary["run_id"], summary.get("label_distribution") or {}, references,
                         threshold=settings.drift_threshold)
    uri = write_drift_row(settings.output, result, date, settings.storage_options)
    log = get_run_logger()
    if result.flagged:
        log.warning("label drift FLAGGED: distance %.3f > %g between this run's %d labelled "
                    "videos and the %d of runs %s (chi-square p %.3g); row %s", result.distance,
                    result.threshold, result.videos, result.reference_videos,
                    ", ".join(result.reference_runs), result.p_value, uri)
    else:
        log.info("label drift: distance %s (threshold %g) against %d runs%s; row %s",
                 "n/a" if result.distance is None else f"{result.distance:.3f}",
                 result.threshold, len(result.reference_runs),
                 f"; {result.note}" if result.note else "", uri)
    return result


def drift_artifact_rows(drift: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The rows the run summary's table artifact gets for ``summary["drift"]`` (none without)."""
    if not drift:
        return []
    if "error" in drift:
        return [{"metric": "drift", "value": f"check failed: {drift['error']}"}]
    if drift["flagged"]:
        verdict = f"FLAGGED: distance {drift['distance']:.3f} > {drift['threshold']:g}"
    else:
        verdict = drift["note"] if drift["distance"] is None else "not flagged"
    rows = [{"metric": "drift", "value": verdict}]
    rows += [{"metric": f"drift:{k}", "value": drift[k]}
             for k in ("distance", "p_value", "threshold", "videos", "reference_videos")]
    rows.append({"metric": "drift:reference_runs", "value": len(drift["reference_runs"])})
    return rows
