"""Tests for tasks/sink.py: the Parquet contract, atomic and idempotent shard writes, read-back."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from emotion_model.labels import EMOTION_LABELS
from emotion_model.predict import CLIP_MODALITIES
from tasks.batch.sink import (
    ERRORS_SCHEMA,
    MODALITIES,
    PREDICTIONS_SCHEMA,
    PROB_COLUMNS,
    VIDEOS_SCHEMA,
    ShardWriter,
    output_key,
    prob_columns,
    read_done_keys,
    read_table,
    write_run_summary,
)
from tasks.common.storage import resolve

DATE = "2024-05-01"
MV = "a1b2c3d4e5f6"
PROBS = [0.05, 0.05, 0.1, 0.6, 0.1, 0.1]


def _prediction(uri: str, clip: int, etag: str = "e1") -> dict[str, Any]:
    return {
        "video_uri": uri,
        "video_etag": etag,
        "video_bytes": 1234,
        "video_duration_s": 6.5,
        "clip_index": clip,
        "clip_start_s": 2.0 * clip,
        "clip_end_s": 2.0 * clip + 2.0,
        "label": "happy",
        "confidence": 0.6,
        **prob_columns(PROBS),
    }


def _video(uri: str, etag: str = "e1", **extra: Any) -> dict[str, Any]:
    row = {
        "video_uri": uri,
        "video_etag": etag,
        "video_bytes": 1234,
        "video_duration_s": 6.5,
        "num_clips": 3,
        "label": "happy",
        "confidence": 0.6,
        **prob_columns(PROBS),
    }
    return {**row, **extra}


def _error(uri: str, stage: str, etag: str = "e1", **extra: Any) -> dict[str, Any]:
    row = {
        "video_uri": uri,
        "video_etag": etag,
        "video_bytes": 10,
        "stage": stage,
        "error_type": "CorruptVideoError",
        "message": f"{uri}: invalid data\nfound when processing input",
    }
    return {**row, **extra}


def _write_shard(
    output: str,
    storage_options: dict[str, Any] | None = None,
    *,
    run_id: str = "run-1",
    shard: int = 3,
    videos: tuple[str, ...] = ("s3://src/a.mp4", "s3://src/b é.mp4"),
    errors: tuple[str, ...] = ("s3://src/bad.mp4",),
):
    with ShardWriter(output, run_id, shard, DATE, storage_options, model_version=MV) as w:
        for uri in videos:
            for clip in range(3):
                w.add_prediction(_prediction(uri, clip))
            w.add_video(**_video(uri))
        for uri in errors:
            w.add_error(_error(uri, "decode"))
    return w


# --- keys --------------------------------------------------------------------------------------
def test_output_key_layout() -> None:
    assert (
        output_key("s3://b/out/", "predictions", "run-1", 7, DATE)
        == "s3://b/out/predictions/date=2024-05-01/run-1-00007.parquet"
    )
    assert (
        output_key("/data/out", "errors", "r", 0, dt.date(2024, 1, 2))
        == "/data/out/errors/date=2024-01-02/r-00000.parquet"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table": "clips"}, "table must be one of"),
        ({"run_id": "a/b"}, "run_id must match"),
        ({"run_id": "_hidden"}, "run_id must match"),
        ({"run_id": ""}, "run_id must match"),
        ({"shard": -1}, "shard must be"),
        ({"date": "2024-5-1"}, "date must be 'YYYY-MM-DD'"),
        ({"date": "yesterday"}, "date must be 'YYYY-MM-DD'"),
    ],
)
def test_output_key_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    args = {"output": "/o", "table": "videos", "run_id": "r", "shard": 0, "date": DATE, **kwargs}
    with pytest.raises(ValueError, match=match):
        output_key(**args)


# --- writing locally ---------------------------------------------------------------------------
def test_shard_writer_local_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = _write_shard(str(out))

    assert w.stats is not None
    assert w.stats.rows == {"predictions": 6, "faces": 0, "videos": 2, "errors": 1}
    for table in ("predictions", "videos", "errors"):
        path = out / table / f"date={DATE}" / "run-1-00003.parquet"
        assert path.is_file()
        assert w.stats.bytes[table] == path.stat().st_size
        assert w.stats.uris[table] == str(path)

    # pyarrow dataset, hive partitioning, straight on the folder
    dataset = ds.dataset(out / "predictions", partitioning="hive", format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 6
    for f in PREDICTIONS_SCHEMA:
        assert table.schema.field(f.name).type == f.type, f.name
    assert set(table.column("date").to_pylist()) == {DATE}

    # pandas, as analysts read it
    frame = pd.read_parquet(out / "videos")
    assert sorted(frame["video_uri"]) == ["s3://src/a.mp4", "s3://src/b é.mp4"]
    assert frame["partial"].tolist() == [False, False]
    assert frame["partial_reason"].isna().all()
    assert frame["run_id"].unique().tolist() == ["run-1"]
    assert frame["model_version"].unique().tolist() == [MV]
    assert str(frame["processed_at"].dt.tz) == "UTC"
    assert frame[list(PROB_COLUMNS)].to_numpy().dtype == "float32"

    errors = pd.read_parquet(out / "errors")
    assert errors["message"].tolist() == [
        "s3://src/bad.mp4: invalid data found when processing input"
    ]
    assert errors["stage"].tolist() == ["decode"]


def test_files_match_schemas_zstd_and_dictionary_label(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_shard(str(out))
    for table, schema in (
        ("predictions", PREDICTIONS_SCHEMA),
        ("videos", VIDEOS_SCHEMA),
        ("errors", ERRORS_SCHEMA),
    ):
        pf = pq.ParquetFile(out / table / f"date={DATE}" / "run-1-00003.parquet")
        assert pf.schema_arrow.equals(schema), table
        row_group = pf.metadata.row_group(0)
        columns = {
            row_group.column(i).path_in_schema: row_group.column(i)
            for i in range(pf.metadata.num_columns)
        }
        assert {c.compression for c in columns.values()} == {"ZSTD"}, table
        for name in ("label", "modality", "crop"):  # the dictionary columns filled here
            if name in columns:
                assert any("DICTIONARY" in e for e in columns[name].encodings), (table, name)
        assert not any("DICTIONARY" in e for e in columns["video_uri"].encodings), table
    ts = pq.read_schema(out / "predictions" / f"date={DATE}" / "run-1-00003.parquet")
    assert ts.field("processed_at").type == pa.timestamp("us", tz="UTC")


def test_rewriting_a_shard_overwrites(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    _write_shard(out)
    _write_shard(out)  # the retried shard
    assert read_table(out, "predictions").num_rows == 6
    assert read_table(out, "videos").num_rows == 2
    assert read_table(out, "errors").num_rows == 1
    # another shard of the same run adds to it
    _write_shard(out, shard=4, videos=("s3://src/c.mp4",), errors=())
    assert read_table(out, "videos").num_rows == 3


def test_retried_shard_removes_stale_table_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_shard(str(out), videos=("s3://src/a.mp4",), errors=("s3://src/b.mp4",))
    # on the retry b.mp4 succeeds: it must not stay in errors as well
    _write_shard(str(out), videos=("s3://src/a.mp4", "s3://src/b.mp4"), errors=())
    assert not (out / "errors" / f"date={DATE}" / "run-1-00003.parquet").exists()
    assert read_table(str(out), "errors").num_rows == 0
    assert read_table(str(out), "videos").num_rows == 2


def test_nothing_written_when_body_raises(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = ShardWriter(str(out), "run-1", 0, DATE, model_version=MV)
    with pytest.raises(RuntimeError, match="boom"), w:
        w.add_video(_video("s3://src/a.mp4"))
        w.add_prediction(_prediction("s3://src/a.mp4", 0))
        raise RuntimeError("boom")
    assert not out.exists()
    assert w.stats is None
    with pytest.raises(RuntimeError, match="discarded"):
        w.close()


def test_bad_value_fails_before_any_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = ShardWriter(str(out), "run-1", 0, DATE, model_version=MV)
    w.add_video(_video("s3://src/a.mp4"))
    w.add_prediction(_prediction("s3://src/a.mp4", 0) | {"confidence": "high"})
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        w.close()
    assert not out.exists()


def test_no_temp_files_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_shard(str(out))
    _write_shard(str(out))
    write_run_summary(str(out), "run-1", {"n": 1})
    names = [name for _, _, files in os.walk(out) for name in files]
    assert sorted(names) == ["run-1-00003.parquet"] * 3 + ["run-1.json"]


def test_add_row_validation(tmp_path: Path) -> None:
    w = ShardWriter(str(tmp_path), "run-1", 0, DATE, model_version=MV)
    with pytest.raises(ValueError, match="unknown videos columns: colour"):
        w.add_video(_video("u") | {"colour": "red"})
    with pytest.raises(ValueError, match="label must be one of"):
        w.add_video(_video("u") | {"label": "surprised"})
    with pytest.raises(ValueError, match="stage must be one of"):
        w.add_error(_error("u", "upload"))
    with pytest.raises(ValueError, match="missing predictions columns: clip_index"):
        w.add_prediction({k: v for k, v in _prediction("u", 0).items() if k != "clip_index"})
    with pytest.raises(ValueError, match="run_id"):
        w.add_video(_video("u") | {"run_id": "other"})
    no_mv = ShardWriter(str(tmp_path), "run-1", 0, DATE)
    with pytest.raises(ValueError, match="missing videos columns: model_version"):
        no_mv.add_video(_video("u"))
    no_mv.add_video(_video("u"), model_version="explicit")
    assert w.counts == {"predictions": 0, "faces": 0, "videos": 0, "errors": 0}
    with pytest.raises(ValueError, match="expected 6 probabilities"):
        prob_columns([0.5, 0.5])


def test_row_values_and_defaults(tmp_path: Path) -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    with ShardWriter(str(tmp_path), "run-1", 0, DATE, model_version=MV) as w:
        w.add_video(
            _video("u"), partial=True, partial_reason="decode stopped at 4.0 s", processed_at=when
        )
    row = read_table(str(tmp_path), "videos").to_pylist()[0]
    assert row["partial"] is True
    assert row["partial_reason"] == "decode stopped at 4.0 s"
    assert row["processed_at"] == when
    assert row["date"] == DATE
    assert [round(row[c], 6) for c in PROB_COLUMNS] == PROBS
    assert tuple(c.removeprefix("prob_") for c in PROB_COLUMNS) == EMOTION_LABELS


def test_duckdb_reads_the_layout(tmp_path: Path) -> None:
    import duckdb  # the dev extra installs it
    out = tmp_path / "out"
    _write_shard(str(out))
    n, labels, date = duckdb.sql(
        f"select count(*), count(distinct label), any_value(date) "
        f"from read_parquet('{out}/predictions/*/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert (n, labels, str(date)) == (6, 1, DATE)


# --- S3 ----------------------------------------------------------------------------------------
def test_shard_writer_s3_roundtrip(s3_server, s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/results"
    so = s3_server.storage_options
    w = _write_shard(out, so)
    _write_shard(out, so)  # retried: same keys

    keys = sorted(
        o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    )
    assert keys == [
        f"results/{t}/date={DATE}/run-1-00003.parquet" for t in ("errors", "predictions", "videos")
    ]
    assert w.stats.uris["videos"] == f"{out}/videos/date={DATE}/run-1-00003.parquet"

    fs, path = resolve(out, so)
    table = ds.dataset(f"{path}/predictions", filesystem=fs, partitioning="hive").to_table()
    assert table.num_rows == 6
    frame = pd.read_parquet(f"{out}/videos", storage_options=so)
    assert len(frame) == 2
    assert read_table(out, "errors", so).num_rows == 1
    assert read_done_keys(out, MV, so) == {
        ("s3://src/a.mp4", "e1"),
        ("s3://src/b é.mp4", "e1"),
        ("s3://src/bad.mp4", "e1"),
    }


def test_run_summary_s3(s3_server, s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/results/"
    when = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    uri = write_run_summary(out, "run-1", {"listed": 3, "started": when}, s3_server.storage_options)
    assert uri == f"s3://{s3_bucket}/results/runs/run-1.json"
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="results/runs/run-1.json")["Body"]
    assert json.loads(body.read()) == {"listed": 3, "started": str(when)}


# --- reading back ------------------------------------------------------------------------------
def test_read_done_keys_semantics(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert read_done_keys(out, MV) == set()  # nothing written yet

    with ShardWriter(out, "run-1", 0, DATE, model_version=MV) as w:
        w.add_video(_video("ok1"))
        w.add_video(_video("ok2", etag="e2"))
        w.add_error(_error("corrupt", "decode"))
        for stage in ("list", "read", "infer", "write"):
            w.add_error(_error(f"transient-{stage}", stage))
    with ShardWriter(out, "run-0", 0, "2024-04-30", model_version="oldmodel0000") as w:
        w.add_video(_video("old"))
        w.add_error(_error("old-corrupt", "decode"))

    # stray files in the table folders are ignored
    stray = tmp_path / "out" / "videos" / f"date={DATE}"
    (stray / "README.txt").write_text("not parquet")
    (stray / "_SUCCESS").write_text("")
    (stray / ".run-9-00000.parquet.abc.tmp").write_bytes(b"partial")

    assert read_done_keys(out, MV) == {("ok1", "e1"), ("ok2", "e2"), ("corrupt", "e1")}
    assert read_done_keys(out, MV, skip_decode_errors=False) == {("ok1", "e1"), ("ok2", "e2")}
    assert read_done_keys(out, "oldmodel0000") == {("old", "e1"), ("old-corrupt", "e1")}
    assert read_done_keys(out, "never-used") == set()


def test_audio_columns_default_to_a_video_model_and_are_checked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ShardWriter(str(out), "run-1", 0, DATE, model_version=MV) as w:
        w.add_prediction(_prediction("a", 0))  # a video model's clip: the defaults
        w.add_prediction(_prediction("a", 1), audio_present=True, modality="audio-video")
        w.add_prediction(_prediction("b", 0), modality="none")  # an audio model, no sound
        with pytest.raises(ValueError, match="modality must be one of video, audio, "):
            w.add_prediction(_prediction("a", 2), modality="speech")
        w.add_video(_video("a"), audio_codec="aac", clips_no_audio=0)
        w.add_video(_video("b"))  # a video model: both null
    clips = read_table(str(out), "predictions").to_pandas()
    assert clips["audio_present"].tolist() == [False, True, False]
    assert clips["modality"].astype(str).tolist() == ["video", "audio-video", "none"]
    videos = read_table(str(out), "videos")
    assert videos.column("audio_codec").to_pylist() == ["aac", None]
    assert videos.column("clips_no_audio").to_pylist() == [0, None]
    assert set(MODALITIES) == {"video", "audio", "audio-video", "none"} == set(CLIP_MODALITIES)


def test_files_written_before_the_audio_columns_read_with_nulls(tmp_path: Path) -> None:
    """The migration note: a file of the schema before (no audio columns) beside a new one."""
    new = ("audio_present", "modality", "audio_codec", "clips_no_audio")
    out = tmp_path / "out"
    _write_shard(str(out), shard=1, errors=())
    for table in ("predictions", "videos"):
        path = out / table / f"date={DATE}" / "run-0-00000.parquet"
        written = pq.read_table(out / table / f"date={DATE}" / "run-1-00001.parquet")
        pq.write_table(written.drop_columns([n for n in new if n in written.column_names]), path)
    for table in ("predictions", "videos"):
        old = read_table(str(out), table, run_id="run-0")  # the file by its name
        assert old.num_rows == read_table(str(out), table).num_rows / 2 > 0
        for name in [n for n in new if n in old.column_names]:
            assert old.column(name).null_count == old.num_rows, (table, name)
    # pandas infers the columns from the first file (the old one): a schema is needed
    assert "audio_present" not in pd.read_parquet(out / "predictions").columns
    schema = PREDICTIONS_SCHEMA.append(pa.field("date", pa.string()))
    assert pd.read_parquet(out / "predictions", schema=schema)["audio_present"].isna().sum() == 6


def test_read_table_missing_is_empty_with_schema(tmp_path: Path) -> None:
    table = read_table(str(tmp_path / "nothing"), "predictions")
    assert table.num_rows == 0
    assert table.schema.names == [*PREDICTIONS_SCHEMA.names, "date"]
    with pytest.raises(ValueError, match="table must be one of"):
        read_table(str(tmp_path), "clips")  # type: ignore[arg-type]
