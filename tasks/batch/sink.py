"""Parquet writers for predictions, videos, errors and run summaries (atomic, idempotent).

Layout under ``output`` (a local folder or an ``s3://`` prefix), as in DESIGN.md "Outputs"::

    predictions/date=YYYY-MM-DD/<run_id>-<shard:05d>.parquet   one row per clip (per face)
    faces/date=YYYY-MM-DD/<run_id>-<shard:05d>.parquet         one row per face track
    videos/date=YYYY-MM-DD/<run_id>-<shard:05d>.parquet        one row per video
    errors/date=YYYY-MM-DD/<run_id>-<shard:05d>.parquet        one row per failed video
    runs/<run_id>.json                                         the run summary

Each schema is declared once below. A shard is written by one `ShardWriter`: rows are
buffered, then each table becomes one zstd Parquet file written whole or not at all, at a key
that depends only on ``(run_id, shard)``, so a retried shard overwrites its earlier files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from emotion_model.errors import one_line
from emotion_model.labels import EMOTION_LABELS
from tasks.common.storage import atomic_write_bytes, join, remove_file, resolve, with_retries

logger = logging.getLogger(__name__)

__all__ = [
    "ERRORS_SCHEMA",
    "FACES_SCHEMA",
    "PREDICTIONS_SCHEMA",
    "MODALITIES",
    "PROB_COLUMNS",
    "SCHEMAS",
    "STAGES",
    "TABLES",
    "VIDEOS_SCHEMA",
    "ShardStats",
    "ShardWriter",
    "Stage",
    "TableName",
    "output_key",
    "prob_columns",
    "read_done_keys",
    "read_table",
    "run_summary_key",
    "utc_date",
    "write_run_summary",
]

TableName = Literal["predictions", "faces", "videos", "errors"]
TABLES: tuple[TableName, ...] = get_args(TableName)

Stage = Literal["list", "read", "decode", "infer", "write"]
STAGES: tuple[Stage, ...] = get_args(Stage)
"""Where a video failed: ``list`` (its metadata), ``read`` (fetching bytes), ``decode`` (the
file itself is bad), ``infer`` (the model step), ``write`` (its shard's outputs)."""

PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{label}" for label in EMOTION_LABELS)
"""The six probability columns, in `EMOTION_LABELS` order."""

MODALITIES: tuple[str, ...] = ("video", "audio", "audio-video", "none")
"""``predictions.modality``: what a clip was predicted from (its model's modality, less the
sound when the clip had none: ``none`` for an audio model's clip without sound), as
``emotion_model.predict.clip_modality`` says."""

# --- schemas (contract) ------------------------------------------------------------------------
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_PROBS = [pa.field(name, pa.float32()) for name in PROB_COLUMNS]
_VIDEO = [
    pa.field("run_id", pa.string()),
    pa.field("video_uri", pa.string()),
    pa.field("video_etag", pa.string()),
    pa.field("video_bytes", pa.int64()),
    pa.field("video_duration_s", pa.float64()),
]
_BOX = [pa.field(name, pa.float32()) for name in ("face_x", "face_y", "face_w", "face_h")]
"""A face box: left, top, width and height as fractions of the (upright) frame."""

PREDICTIONS_SCHEMA = pa.schema(
    [
        *_VIDEO,
        pa.field("clip_index", pa.int32()),
        pa.field("clip_start_s", pa.float64()),
        pa.field("clip_end_s", pa.float64()),
        pa.field("face_id", pa.int32()),  # the face track in the video; -1: whole frame
        *_BOX,  # the clip's mean face box; null for whole frames
        pa.field("face_score", pa.float32()),  # the detector's mean score; null for whole frames
        pa.field("audio_present", pa.bool_()),  # the clip's sound went into its prediction
        pa.field("modality", pa.string()),  # what it was predicted from: one of MODALITIES
        pa.field("label", pa.string()),  # dictionary-encoded in the file
        pa.field("confidence", pa.float32()),
        *_PROBS,
        pa.field("model_version", pa.string()),
        pa.field("processed_at", _TIMESTAMP),
    ]
)
"""One row per clip: per clip window and face track (face models), or per clip window."""

FACES_SCHEMA = pa.schema(
    [
        *_VIDEO,
        pa.field("face_id", pa.int32()),
        pa.field("first_s", pa.float64()),  # first and last second the track was seen
        pa.field("last_s", pa.float64()),
        *_BOX,  # mean box over the track's detections
        pa.field("num_clips", pa.int32()),
        pa.field("label", pa.string()),  # dictionary-encoded in the file
        pa.field("confidence", pa.float32()),
        *_PROBS,  # mean of the track's clips' probabilities
        pa.field("model_version", pa.string()),
        pa.field("processed_at", _TIMESTAMP),
    ]
)
"""One row per face track (face models only)."""

VIDEOS_SCHEMA = pa.schema(
    [
        *_VIDEO,
        pa.field("num_clips", pa.int32()),
        pa.field("partial", pa.bool_()),
        pa.field("partial_reason", pa.string()),  # null unless partial
        pa.field("crop", pa.string()),  # "face" or "frame": how the model cut its clips
        pa.field("faces", pa.int32()),  # face tracks kept; null for whole-frame models
        pa.field("audio_codec", pa.string()),  # the sound's codec; null: none, or not read
        pa.field("clips_no_audio", pa.int32()),  # clips without sound; null: a video model
        pa.field("label", pa.string()),  # dictionary-encoded; null when no face was found
        pa.field("confidence", pa.float32()),
        *_PROBS,  # whole frames: mean of the clips; faces: the longest-seen face track's
        pa.field("model_version", pa.string()),
        pa.field("processed_at", _TIMESTAMP),
    ]
)
"""One row per successfully processed video; its presence marks the video done."""

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("video_uri", pa.string()),
        pa.field("video_etag", pa.string()),
        pa.field("video_bytes", pa.int64()),
        pa.field("stage", pa.string()),  # one of STAGES
        pa.field("error_type", pa.string()),  # the exception's class name
        pa.field("message", pa.string()),  # one line
        pa.field("model_version", pa.string()),
        pa.field("processed_at", _TIMESTAMP),
    ]
)
"""One row per video that failed."""

SCHEMAS: dict[TableName, pa.Schema] = {
    "predictions": PREDICTIONS_SCHEMA,
    "faces": FACES_SCHEMA,
    "videos": VIDEOS_SCHEMA,
    "errors": ERRORS_SCHEMA,
}

_BOX_NAMES = frozenset({"face_x", "face_y", "face_w", "face_h"})
# Columns that may be null; the others must not.
_NULLABLE: dict[TableName, frozenset[str]] = {
    "predictions": _BOX_NAMES | {"face_score"},
    "faces": frozenset(),
    "videos": frozenset({"partial_reason", "faces", "audio_codec", "clips_no_audio", "label",
                         "confidence", *PROB_COLUMNS}),
    "errors": frozenset({"video_etag", "video_bytes", "model_version"}),
}
# Low-cardinality columns written with Parquet dictionary encoding.
_DICTIONARY_COLUMNS: dict[TableName, list[str]] = {
    "predictions": ["label", "modality"],
    "faces": ["label"],
    "videos": ["label", "crop", "audio_codec"],
    "errors": ["stage", "error_type"],
}
_COMPRESSION = "zstd"
_MAX_MESSAGE_CHARS = 2000
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --- keys --------------------------------------------------------------------------------------
def utc_date(when: dt.datetime | None = None) -> str:
    """``YYYY-MM-DD`` of `when` (default: now) in UTC: the ``date=`` partition of a run."""
    when = when or dt.datetime.now(dt.UTC)
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.date().isoformat()


def _check_run_id(run_id: str) -> str:
    # Names starting with "." or "_" are hidden from dataset readers, "/" would nest keys.
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ValueError(
            f"run_id must match {_RUN_ID_RE.pattern} (letters, digits, '.', '_', '-', "
            f"not starting with '.' or '_'), got {run_id!r}"
        )
    return run_id


def _check_date(date: str | dt.date) -> str:
    if isinstance(date, dt.datetime):
        return utc_date(date)
    if isinstance(date, dt.date):
        return date.isoformat()
    try:
        parsed = dt.date.fromisoformat(date)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.isoformat() != date:
        raise ValueError(f"date must be 'YYYY-MM-DD', got {date!r}")
    return date


def _check_table(table: str) -> TableName:
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}; got {table!r}")
    return table  # type: ignore[return-value]


def output_key(output: str, table: TableName, run_id: str, shard: int, date: str | dt.date) -> str:
    """``<output>/<table>/date=YYYY-MM-DD/<run_id>-<shard:05d>.parquet``.

    Deterministic in ``(run_id, shard)``: a retried shard writes to the same keys.
    """
    _check_table(table)
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        raise ValueError(f"shard must be an int >= 0, got {shard!r}")
    return join(
        output, table, f"date={_check_date(date)}", f"{_check_run_id(run_id)}-{shard:05d}.parquet"
    )


def run_summary_key(output: str, run_id: str) -> str:
    """``<output>/runs/<run_id>.json``."""
    return join(output, "runs", f"{_check_run_id(run_id)}.json")


def prob_columns(probs: Sequence[float]) -> dict[str, float]:
    """Six probabilities in `EMOTION_LABELS` order -> ``{"prob_angry": ..., ...}``."""
    values = [float(p) for p in probs]
    if len(values) != len(PROB_COLUMNS):
        raise ValueError(f"expected {len(PROB_COLUMNS)} probabilities, got {len(values)}")
    return dict(zip(PROB_COLUMNS, values, strict=True))


# --- writer ------------------------------------------------------------------------------------
@dataclass
class ShardStats:
    """What a `ShardWriter` wrote: rows, bytes and URI per table (empty tables: 0, no URI)."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    uris: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Bytes written over all tables."""
        return sum(self.bytes.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for a run summary."""
        return {"rows": dict(self.rows), "bytes": dict(self.bytes), "uris": dict(self.uris)}


class ShardWriter:
    """Buffer one shard's rows and write each table as one Parquet file on exit.

    Rows are added with keyword arguments, a mapping, or both (keywords win)::

        with ShardWriter(output, run_id, shard, date, model_version="a1b2c3d4e5f6") as w:
            w.add_prediction(video_uri=..., clip_index=0, label="happy", ..., **prob_columns(p))
            w.add_video({...})
            w.add_error(video_uri=..., stage="decode", error_type="CorruptVideoError", ...)
        w.stats.rows  # {"predictions": ..., "videos": ..., "errors": ...}

    Column names are those of the schemas; ``run_id`` defaults to the writer's (a different
    one is refused), ``model_version`` to the writer's, ``processed_at`` to now (UTC). Unknown
    columns, missing non-null columns, labels outside `EMOTION_LABELS`, modalities outside
    `MODALITIES` and stages outside `STAGES` raise ``ValueError`` when the row is added.
    Error messages are cut to one line.

    On a clean exit (or `close`) every non-empty table is written with zstd compression and
    dictionary-encoded ``label`` (and the other low-cardinality strings); the file of a table
    left empty is deleted if an earlier try of the same shard wrote one, so a retried shard
    never leaves stale rows. ``videos`` is written last because its rows mark videos done.
    When the ``with`` body raises, nothing is written.
    """

    def __init__(
        self,
        output: str,
        run_id: str,
        shard: int,
        date: str | dt.date,
        storage_options: Mapping[str, Any] | None = None,
        *,
        model_version: str | None = None,
    ) -> None:
        self.output = output
        self.run_id = _check_run_id(run_id)
        self.shard = shard
        self.date = _check_date(date)
        self.storage_options = dict(storage_options or {})
        self.model_version = model_version
        self.keys: dict[TableName, str] = {
            t: output_key(output, t, run_id, shard, self.date) for t in TABLES
        }
        self._rows: dict[TableName, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self._closed = False
        self.stats: ShardStats | None = None

    # rows
    def add_prediction(self, row: Mapping[str, Any] | None = None, /, **columns: Any) -> None:
        """Add one clip row (see `PREDICTIONS_SCHEMA`); ``face_id`` defaults to -1,
        ``audio_present`` to False and ``modality`` to ``"video"`` (a video model's clip)."""
        self._add("predictions", row, columns)

    def add_face(self, row: Mapping[str, Any] | None = None, /, **columns: Any) -> None:
        """Add one face-track row (see `FACES_SCHEMA`)."""
        self._add("faces", row, columns)

    def add_video(self, row: Mapping[str, Any] | None = None, /, **columns: Any) -> None:
        """Add one video row (see `VIDEOS_SCHEMA`); ``partial`` defaults to False, ``crop``
        to ``"frame"``."""
        self._add("videos", row, columns)

    def add_error(self, row: Mapping[str, Any] | None = None, /, **columns: Any) -> None:
        """Add one failed-video row (see `ERRORS_SCHEMA`)."""
        self._add("errors", row, columns)

    @property
    def counts(self) -> dict[str, int]:
        """Rows buffered so far, per table."""
        return {t: len(rows) for t, rows in self._rows.items()}

    def _add(
        self, table: TableName, row: Mapping[str, Any] | None, columns: Mapping[str, Any]
    ) -> None:
        if self._closed:
            raise RuntimeError(f"{self.keys[table]}: ShardWriter is closed")
        schema = SCHEMAS[table]
        values = {**(row or {}), **columns}
        unknown = sorted(set(values) - set(schema.names))
        if unknown:
            raise ValueError(f"unknown {table} columns: {', '.join(unknown)}")
        if values.setdefault("run_id", self.run_id) != self.run_id:
            raise ValueError(f"row run_id {values['run_id']!r} != writer run_id {self.run_id!r}")
        if values.get("model_version") is None:
            values["model_version"] = self.model_version
        if values.get("processed_at") is None:
            values["processed_at"] = dt.datetime.now(dt.UTC)
        if table == "videos":
            values.setdefault("partial", False)
            values.setdefault("crop", "frame")
        if table == "predictions":
            values.setdefault("face_id", -1)
            values.setdefault("audio_present", False)
            values.setdefault("modality", "video")
            if values["modality"] not in MODALITIES:
                raise ValueError(f"modality must be one of {', '.join(MODALITIES)}; "
                                 f"got {values['modality']!r}")
        if table == "errors":
            values["message"] = one_line(values.get("message"), _MAX_MESSAGE_CHARS)
            if values.get("stage") not in STAGES:
                raise ValueError(
                    f"stage must be one of {', '.join(STAGES)}; got {values.get('stage')!r}"
                )
        no_label = table == "videos" and values.get("label") is None  # no face found
        if table != "errors" and not no_label and values.get("label") not in EMOTION_LABELS:
            raise ValueError(
                f"label must be one of {', '.join(EMOTION_LABELS)}; got {values.get('label')!r}"
            )
        missing = [n for n in schema.names if n not in _NULLABLE[table] and values.get(n) is None]
        if missing:
            raise ValueError(f"missing {table} columns: {', '.join(missing)}")
        self._rows[table].append(values)

    # writing
    def _encode(self, table: TableName) -> bytes:
        arrow = pa.Table.from_pylist(self._rows[table], schema=SCHEMAS[table])
        sink = pa.BufferOutputStream()
        pq.write_table(
            arrow,
            sink,
            compression=_COMPRESSION,
            use_dictionary=_DICTIONARY_COLUMNS[table],
        )
        return sink.getvalue().to_pybytes()

    def close(self) -> ShardStats:
        """Write the buffered tables (once) and return their row and byte counts."""
        if self._closed:
            if self.stats is None:
                raise RuntimeError(f"{self.keys['videos']}: writer was discarded after an error")
            return self.stats
        # Encode everything first: a bad value fails before any file is touched.
        payloads = {t: self._encode(t) for t in TABLES if self._rows[t]}
        stats = ShardStats()
        for table in ("videos", "errors", "faces", "predictions"):
            if table not in payloads and remove_file(self.keys[table], self.storage_options):
                logger.info("removed stale %s from an earlier try", self.keys[table])
        for table in ("predictions", "faces", "errors", "videos"):
            if table not in payloads:
                continue
            atomic_write_bytes(self.keys[table], payloads[table], self.storage_options)
            stats.rows[table] = len(self._rows[table])
            stats.bytes[table] = len(payloads[table])
            stats.uris[table] = self.keys[table]
            logger.info(
                "wrote %d %s rows (%d bytes) to %s",
                stats.rows[table],
                table,
                stats.bytes[table],
                self.keys[table],
            )
        self._closed = True
        self._rows = {t: [] for t in TABLES}
        self.stats = stats
        return stats

    def discard(self) -> None:
        """Drop the buffered rows without writing anything."""
        self._closed = True
        self._rows = {t: [] for t in TABLES}

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            logger.warning(
                "shard %s-%05d failed (%s); nothing written", self.run_id, self.shard, exc_type
            )
            self.discard()


# --- run summary -------------------------------------------------------------------------------
def write_run_summary(
    output: str,
    run_id: str,
    summary: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write `summary` as indented JSON to ``<output>/runs/<run_id>.json``, atomically.

    Values JSON cannot represent (datetimes, paths) are written with ``str``. Returns the URI.
    """
    uri = run_summary_key(output, run_id)
    data = json.dumps(summary, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    atomic_write_bytes(uri, (data + "\n").encode("utf-8"), storage_options)
    logger.info("wrote run summary %s", uri)
    return uri


# --- reading back ------------------------------------------------------------------------------
def _parquet_files(fs: Any, path: str, what: str) -> list[str]:
    def _find() -> list[str]:
        try:
            return list(fs.find(path, withdirs=False))
        except FileNotFoundError:
            return []

    names = with_retries(_find, what=f"list {what}")
    return sorted(
        n
        for n in names
        if n.endswith(".parquet") and not os.path.basename(n).startswith((".", "_"))
    )


def read_table(
    output: str,
    table: TableName,
    storage_options: Mapping[str, Any] | None = None,
    *,
    columns: Sequence[str] | None = None,
    filter: pc.Expression | None = None,  # pyarrow's name
    run_id: str | None = None,
) -> pa.Table:
    """Read a whole table back (all dates, all runs) as one ``pyarrow.Table``.

    The table's schema plus the ``date`` (string) hive partition column; files not ending in
    ``.parquet`` and hidden/temp files (``.``/``_`` prefixes) are ignored. A missing table folder
    gives an empty table. `run_id` reads only that run's files (chosen by name, none opened).
    """
    schema = SCHEMAS[_check_table(table)].append(pa.field("date", pa.string()))
    base = join(output, table)
    fs, path = resolve(base, storage_options)
    files = _parquet_files(fs, path, base)
    if run_id is not None:
        name = re.compile(rf"{re.escape(_check_run_id(run_id))}-\d{{5}}\.parquet")
        files = [f for f in files if name.fullmatch(f.rsplit("/", 1)[-1])]
    cols = list(columns) if columns is not None else None
    if not files:
        empty = schema.empty_table()
        if filter is not None:
            empty = empty.filter(filter)
        return empty.select(cols) if cols is not None else empty
    dataset = ds.dataset(
        files,
        schema=schema,
        format="parquet",
        filesystem=fs,
        partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        partition_base_dir=path,
    )
    return with_retries(lambda: dataset.to_table(columns=cols, filter=filter), what=f"read {base}")


def read_done_keys(
    output: str,
    model_version: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    skip_decode_errors: bool = True,
) -> set[tuple[str, str]]:
    """The ``(video_uri, video_etag)`` pairs already handled by `model_version` under `output`.

    A video is done when:

    - a ``videos`` row records it with this model version (it was processed), or
    - with `skip_decode_errors` (the default), an ``errors`` row of stage ``decode`` records
      it with this model version: the file itself is bad, and retrying the same bytes every
      night is wasted work. A new etag (the object was replaced) or a new model version tries
      it again.

    Errors of stages ``list``, ``read``, ``infer`` and ``write`` are transient or ours, so those
    videos are retried by the next run. Only the needed columns are read.
    """
    mv = pc.field("model_version") == model_version
    cols = ["video_uri", "video_etag"]
    done = read_table(output, "videos", storage_options, columns=cols, filter=mv)
    keys = set(zip(done["video_uri"].to_pylist(), done["video_etag"].to_pylist(), strict=True))
    if skip_decode_errors:
        bad = read_table(
            output,
            "errors",
            storage_options,
            columns=cols,
            filter=mv & (pc.field("stage") == "decode"),
        )
        keys.update(zip(bad["video_uri"].to_pylist(), bad["video_etag"].to_pylist(), strict=True))
    return {(uri, etag) for uri, etag in keys if uri is not None and etag is not None}


ORPHAN_AGE_S = 3600.0
"""A ``predictions`` file with no ``videos`` file beside it is a dead shard's once it is this
old: a live shard writes ``videos`` milliseconds after ``predictions`` (retries: about a minute)."""


def sweep_orphan_predictions(
    output: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    older_than_s: float = ORPHAN_AGE_S,
) -> list[str]:
    """Delete ``predictions`` and ``faces`` files whose shard never wrote its ``videos`` file;
    return them.

    A process killed between a shard's ``predictions`` and ``videos`` writes leaves clip rows
    for videos that are not marked done; the next run redoes those videos, so without this
    sweep their clips would appear twice. Files younger than ``older_than_s`` are left alone
    (their shard may still be committing).
    """
    removed = []
    now = dt.datetime.now(dt.UTC)
    for table in ("predictions", "faces"):
        removed += _sweep_orphans(output, table, storage_options, now, older_than_s)
    return removed


def _sweep_orphans(output: str, table: TableName, storage_options: Mapping[str, Any] | None,
                   now: dt.datetime, older_than_s: float) -> list[str]:
    """`sweep_orphan_predictions` for one table."""
    base = join(output, table)
    fs, path = resolve(base, storage_options)
    removed = []
    for name in _parquet_files(fs, path, base):
        relative = name[len(path):].lstrip("/")  # date=YYYY-MM-DD/<run_id>-<shard>.parquet
        sibling = join(output, "videos", relative)
        sfs, spath = resolve(sibling, storage_options)
        if with_retries(lambda p=spath, f=sfs: f.exists(p), what=f"stat {sibling}"):
            continue
        info = with_retries(lambda n=name: fs.info(n), what=f"stat {base}/{relative}")
        modified = info.get("LastModified") or info.get("mtime") or info.get("created")
        if isinstance(modified, int | float):
            modified = dt.datetime.fromtimestamp(modified, dt.UTC)
        if not isinstance(modified, dt.datetime):
            continue  # unknown age: keep it
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=dt.UTC)
        if (now - modified).total_seconds() < older_than_s:
            continue
        uri = join(base, relative)
        if remove_file(uri, storage_options):
            logger.warning("removed %s: its shard died before writing its videos file", uri)
            removed.append(uri)
    return removed
