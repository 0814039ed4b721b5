"""The ``batch-inference`` flow end to end: real Prefect (one test server for the session),
S3 through the moto server (reached as AWS is, by endpoint URL), PyAV-encoded videos, and an
untrained small model (16 frames of 64 px).

Layout and counts are DESIGN.md "Outputs" and "Errors": every listed video ends in exactly one
``videos`` or ``errors`` row, counts add up, retried shards leave no duplicates.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs
from video_fixtures import make_test_pattern

from emotion_model.checkpoint import load_deployment
from emotion_model.errors import CheckpointError
from emotion_model.labels import EMOTION_LABELS
from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference
from tasks.common.storage import with_retries
from tasks.errors import OutputNotWritableError, SourceNotFoundError

# The fixtures' types live in tests/flows/conftest.py (not importable as a module here).
FaultProxy = VideoCorpus = VideoSpec = Any

PROBS = [f"prob_{label}" for label in EMOTION_LABELS]
PREDICTION_COLUMNS = [
    "run_id", "video_uri", "video_etag", "video_bytes", "video_duration_s", "clip_index",
    "clip_start_s", "clip_end_s", "face_id", "face_x", "face_y", "face_w", "face_h",
    "face_score", "audio_present", "modality", "label", "confidence", *PROBS, "model_version",
    "processed_at",
]
ERROR_COLUMNS = ["run_id", "video_uri", "video_etag", "stage", "error_type", "message",
                 "processed_at"]
CLIP_SECONDS = 1.0  # the S3 corpus: 0.5-3 s videos give 1-3 clips each


# --- helpers -------------------------------------------------------------------------------------
def s3fs_for(storage_options: dict[str, Any]) -> s3fs.S3FileSystem:
    """A fresh s3fs client (no instance or listing cache) with these options."""
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                             **storage_options)


def read_rows(output: str, table: str, storage_options: dict[str, Any] | None = None,
              run_id: str | None = None) -> pd.DataFrame:
    """``<output>/<table>`` read with pandas (over s3 with storage_options), one run's rows."""
    if output.startswith("s3://"):
        fs = s3fs_for(storage_options or {})
        if not fs.exists(f"{output[5:]}/{table}"):
            return pd.DataFrame()
        # no listing cache: the fsspec instance is shared between reads, runs add files
        options = {**(storage_options or {}), "use_listings_cache": False}
        frame = pd.read_parquet(f"{output}/{table}/", storage_options=options)
    else:
        if not (Path(output) / table).exists():
            return pd.DataFrame()
        frame = pd.read_parquet(Path(output) / table)
    if run_id is not None:
        frame = frame[frame["run_id"] == run_id]
    return frame.reset_index(drop=True)


def output_files(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every file under `output` (relative names); [] when it does not exist."""
    if output.startswith("s3://"):
        fs = s3fs_for(storage_options or {})
        base = output[5:].rstrip("/")
        if not fs.exists(base):
            return []
        return sorted(p[len(base) + 1:] for p in fs.find(base))
    root = Path(output)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def read_summary(output: str, run_id: str, storage_options: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    if output.startswith("s3://"):
        data = s3fs_for(storage_options or {}).cat_file(f"{output[5:]}/runs/{run_id}.json")
    else:
        data = (Path(output) / "runs" / f"{run_id}.json").read_bytes()
    return json.loads(data)


def assert_counts_add_up(summary: dict[str, Any]) -> None:
    c = summary["counts"]
    assert c["listed"] == (
        c["skipped_done"] + c["deferred_max_videos"] + c["succeeded"] + c["failed"]
    ), c
    assert c["processed"] == c["succeeded"] + c["failed"], c
    assert sum(summary["failed_by_stage"].values()) == c["failed"], summary["failed_by_stage"]
    assert sum(summary["label_distribution"].values()) == c["succeeded"] - c["no_face"]


def assert_one_row_per_video(
    *, predictions: pd.DataFrame, videos: pd.DataFrame, errors: pd.DataFrame,
    good_uris: set[str], bad: dict[str, set[str]],
) -> None:
    """Each good video: its clip rows and exactly one videos row; each bad one: one errors row
    (stage decode, an expected error type); nothing else."""
    assert sorted(videos["video_uri"]) == sorted(good_uris)
    assert set(predictions["video_uri"]) == good_uris
    assert sorted(errors["video_uri"]) == sorted(bad)
    assert not predictions.duplicated(["video_uri", "clip_index"]).any()
    for row in videos.itertuples():
        clips = predictions[predictions["video_uri"] == row.video_uri].sort_values("clip_index")
        assert list(clips["clip_index"]) == list(range(row.num_clips)), row.video_uri
        assert (clips["clip_start_s"] >= 0).all()
        assert (clips["clip_end_s"] > clips["clip_start_s"]).all()
        assert (clips["clip_end_s"] <= row.video_duration_s + 0.15).all(), row.video_uri
    for row in errors.itertuples():
        assert row.stage == "decode", row
        assert row.error_type in bad[row.video_uri], row
        assert "\n" not in row.message and row.message.startswith(row.video_uri), row.message
    probs = predictions[PROBS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(predictions["confidence"], probs.max(axis=1), rtol=1e-6)
    assert list(predictions["label"].astype(str)) == [EMOTION_LABELS[i]
                                                      for i in probs.argmax(axis=1)]


def run_flow(**params: Any) -> tuple[dict[str, Any], str]:
    """Run the flow; return its summary and its Prefect flow-run id."""
    state = batch_inference(**params, return_state=True)
    summary = state.result()
    return summary, str(state.state_details.flow_run_id)


# --- the S3 corpus -------------------------------------------------------------------------------
@dataclass
class S3Corpus:
    bucket: str
    source: str
    output: str
    model: str
    storage_options: dict[str, Any]
    corpus: VideoCorpus

    def uri(self, key: str) -> str:
        return f"{self.source}{key}"

    @property
    def good_uris(self) -> set[str]:
        return {self.uri(k) for k in self.corpus.good}

    @property
    def bad(self) -> dict[str, set[str]]:
        return {self.uri(k): v for k, v in self.corpus.bad.items()}

    def params(self, **extra: Any) -> dict[str, Any]:
        return {"source": self.source, "output": self.output, "model": self.model,
                "storage_options": self.storage_options, "clip_seconds": CLIP_SECONDS,
                "batch_size": 4, "shard_size": 5, "shard_concurrency": 2, "device": "cpu",
                **extra}


@pytest.fixture(scope="module")
def s3_corpus(s3_server: Any, video_corpus: VideoCorpus, model_path: Path) -> S3Corpus:
    """The corpus uploaded under ``s3://<bucket>/videos/``, the model under ``models/``."""
    bucket = f"flows-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    for key, path in video_corpus.files().items():
        client.upload_file(str(path), bucket, f"videos/{key}")
    client.upload_file(str(model_path), bucket, "models/small.safetensors")
    return S3Corpus(bucket=bucket, source=f"s3://{bucket}/videos/", output=f"s3://{bucket}/out",
                    model=f"s3://{bucket}/models/small.safetensors",
                    storage_options=dict(s3_server.storage_options), corpus=video_corpus)


@pytest.fixture(scope="module")
def first_s3_run(prefect_server: None, s3_corpus: S3Corpus) -> dict[str, Any]:
    summary, _ = run_flow(**s3_corpus.params())
    return summary


def test_s3_run_writes_one_outcome_per_video(s3_corpus: S3Corpus, first_s3_run: dict) -> None:
    so, run_id = s3_corpus.storage_options, first_s3_run["run_id"]
    predictions = read_rows(s3_corpus.output, "predictions", so, run_id)
    videos = read_rows(s3_corpus.output, "videos", so, run_id)
    errors = read_rows(s3_corpus.output, "errors", so, run_id)
    assert_one_row_per_video(predictions=predictions, videos=videos, errors=errors,
                             good_uris=s3_corpus.good_uris, bad=s3_corpus.bad)
    assert list(predictions.columns[: len(PREDICTION_COLUMNS)]) == PREDICTION_COLUMNS
    assert set(ERROR_COLUMNS) <= set(errors.columns)
    # a model file written before face crops (no `crop` in its metadata): whole frames
    assert (predictions["face_id"] == -1).all() and predictions["face_x"].isna().all()
    assert set(videos["crop"]) == {"frame"} and videos["faces"].isna().all()
    # a video model: no clip's sound used, none demuxed
    assert not predictions["audio_present"].any() and set(predictions["modality"]) == {"video"}
    assert videos["audio_codec"].isna().all() and videos["clips_no_audio"].isna().all()
    assert not any("poster.jpg" in u for u in [*videos.video_uri, *errors.video_uri])

    # identity columns: S3's ETag and size (the key with spaces and non-ASCII), model version
    fs = s3fs_for(s3_corpus.storage_options)
    nested = s3_corpus.uri(s3_corpus.corpus.nested_key)
    info = fs.info(nested[5:])
    row = videos[videos["video_uri"] == nested].iloc[0]
    assert row.video_etag == info["ETag"].strip('"') and row.video_bytes == info["size"]
    _, meta = load_deployment(fs.cat_file(s3_corpus.model[5:]))
    assert set(predictions["model_version"]) == {meta["model_version"]}
    assert set(videos["model_version"]) == {meta["model_version"]}

    # clip counts follow the windows of each video (1 s clips, 1 s stride)
    by_uri = videos.set_index("video_uri")
    for key, spec in s3_corpus.corpus.good.items():
        row = by_uri.loc[s3_corpus.uri(key)]
        assert row.video_duration_s == pytest.approx(spec.duration, abs=0.1), key
        assert row.num_clips == _expected_clips(spec), key
        assert not row.partial, (key, row.partial_reason)


def _expected_clips(spec: VideoSpec) -> int:
    """1 s windows every 1 s, plus an end-aligned one when at least half a stride is left."""
    if spec.duration < CLIP_SECONDS:
        return 1
    full = int(spec.duration // CLIP_SECONDS)
    return full + (spec.duration - full * CLIP_SECONDS >= CLIP_SECONDS / 2)


def test_s3_run_summary_counts_add_up(s3_corpus: S3Corpus, first_s3_run: dict) -> None:
    summary = read_summary(s3_corpus.output, first_s3_run["run_id"], s3_corpus.storage_options)
    n_good, n_bad = len(s3_corpus.corpus.good), len(s3_corpus.corpus.bad)
    assert summary["counts"] == first_s3_run["counts"]
    assert summary["status"] == "completed"
    c = summary["counts"]
    assert c["listed"] == n_good + n_bad
    assert c["skipped_not_video"] == len(s3_corpus.corpus.not_video)
    assert (c["skipped_done"], c["deferred_max_videos"]) == (0, 0)
    assert (c["succeeded"], c["failed"], c["processed"]) == (n_good, n_bad, n_good + n_bad)
    assert summary["failed_by_stage"] == {"decode": n_bad}
    predictions = read_rows(s3_corpus.output, "predictions", s3_corpus.storage_options,
                            summary["run_id"])
    assert c["clips"] == len(predictions)
    assert_counts_add_up(summary)
    assert summary["model"]["untrained"] is True and summary["model"]["modality"] == "video"
    assert c["clips_no_audio"] == 0  # a video model reads no sound
    # the endpoint is kept, the secret is not
    assert summary["parameters"]["storage_options"]["endpoint_url"].startswith("http://127.")
    assert summary["parameters"]["storage_options"]["secret"] == "***"
    assert len(summary["shards"]) == -(-c["listed"] // 5)


def test_s3_outputs_read_back_with_pyarrow_dataset(s3_corpus: S3Corpus,
                                                   first_s3_run: dict) -> None:
    fs = s3fs_for(s3_corpus.storage_options)
    run_id = first_s3_run["run_id"]
    base = f"{s3_corpus.bucket}/out"
    n_shards = len(first_s3_run["shards"])
    for table in ("predictions", "videos", "errors"):
        dataset = ds.dataset(f"{base}/{table}", format="parquet", partitioning="hive",
                             filesystem=fs)
        data = dataset.to_table(filter=ds.field("run_id") == run_id)
        assert data.num_rows > 0
        assert "date" in data.column_names
        (date,) = set(map(str, data.column("date").to_pylist()))
        assert first_s3_run["started_at"].startswith(date)
        # one file per shard (errors only where a shard had bad videos), named for the shard
        files = [f for f in dataset.files if run_id in f]
        assert all(f.startswith(f"{base}/{table}/date={date}/{run_id}-") for f in files)
        assert len(files) == len(set(files)) <= n_shards
        if table != "errors":
            assert len(files) == n_shards
    # zstd, and the label column dictionary-encoded
    (first,) = [f for f in fs.find(f"{base}/predictions") if f.endswith(f"{run_id}-00000.parquet")]
    with fs.open(first, "rb") as fh:
        meta = pq.ParquetFile(fh).metadata
        label = meta.schema.names.index("label")
        column = meta.row_group(0).column(label)
        assert column.compression == "ZSTD"
        assert any("DICTIONARY" in e for e in column.encodings)
    # no temp or probe objects left behind
    assert not [f for f in fs.find(base) if "_probe" in f or f.endswith(".tmp")]


def test_s3_run_publishes_a_table_artifact(s3_corpus: S3Corpus, first_s3_run: dict) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["batch-inference-summary"]))
        )
    mine = [a for a in artifacts if first_s3_run["run_id"] in (a.description or "")]
    assert len(mine) == 1 and mine[0].type == "table"
    data = mine[0].data if isinstance(mine[0].data, list) else json.loads(mine[0].data)
    metrics = {row["metric"]: row["value"] for row in data}
    assert metrics["succeeded"] == first_s3_run["counts"]["succeeded"]
    assert metrics["failed"] == first_s3_run["counts"]["failed"]


@pytest.mark.slow
def test_s3_rerun_skips_done_reprocesses_changed_and_all_on_request(
    s3_server: Any, s3_corpus: S3Corpus, first_s3_run: dict, tmp_path: Path
) -> None:
    so, n_listed = s3_corpus.storage_options, first_s3_run["counts"]["listed"]

    # 1. nothing new: every good and every decode-failed video is skipped as done
    second, _ = run_flow(**s3_corpus.params())
    c = second["counts"]
    assert (c["skipped_done"], c["processed"], c["succeeded"], c["failed"]) == (n_listed, 0, 0, 0)
    assert_counts_add_up(second)
    # only the run's records: its summary, drift row and report; no table file
    assert not [f for f in output_files(s3_corpus.output, so)
                if second["run_id"] in f and not f.startswith(("runs/", "drift/", "reports/"))]

    # 2. one object replaced (new bytes, so a new ETag): it alone is processed
    key = "h264_96x64.mp4"
    spec = s3_corpus.corpus.good[key]
    old_etag = s3fs_for(so).info(s3_corpus.uri(key)[5:])["ETag"].strip('"')
    new_file = spec.encode(tmp_path, seed=1234)
    s3_server.client().upload_file(str(new_file), s3_corpus.bucket, f"videos/{key}")
    third, _ = run_flow(**s3_corpus.params())
    c = third["counts"]
    assert (c["skipped_done"], c["processed"], c["succeeded"], c["failed"]) == (
        n_listed - 1, 1, 1, 0)
    assert_counts_add_up(third)
    videos = read_rows(s3_corpus.output, "videos", so, third["run_id"])
    assert list(videos["video_uri"]) == [s3_corpus.uri(key)]
    assert videos["video_etag"].iloc[0] not in ("", old_etag)

    # 3. reprocess=True redoes everything, good and bad
    fourth, _ = run_flow(**s3_corpus.params(reprocess=True))
    c = fourth["counts"]
    n_good, n_bad = len(s3_corpus.corpus.good), len(s3_corpus.corpus.bad)
    assert (c["skipped_done"], c["processed"], c["succeeded"], c["failed"]) == (
        0, n_listed, n_good, n_bad)
    assert_counts_add_up(fourth)
    assert_one_row_per_video(
        predictions=read_rows(s3_corpus.output, "predictions", so, fourth["run_id"]),
        videos=read_rows(s3_corpus.output, "videos", so, fourth["run_id"]),
        errors=read_rows(s3_corpus.output, "errors", so, fourth["run_id"]),
        good_uris=s3_corpus.good_uris, bad=s3_corpus.bad,
    )
    runs = [f for f in output_files(s3_corpus.output, so) if f.startswith("runs/")]
    assert {f"runs/{s['run_id']}.json" for s in (first_s3_run, second, third, fourth)} <= set(runs)


# --- a transient S3 failure, retried -------------------------------------------------------------
@pytest.mark.slow
def test_shard_retried_after_transient_s3_error_leaves_no_duplicates(
    prefect_server: None, s3_server: Any, fault_proxy: FaultProxy, video_corpus: VideoCorpus,
    model_path: Path,
) -> None:
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    keys = ["h264_96x64.mp4", "bad/text_renamed.mp4", "mpeg4_odd_97x71.mp4",
            "short_half_second.MP4"]
    for key in keys:
        client.upload_file(str(video_corpus.root / key), bucket, f"videos/{key}")
    # botocore's own retries off, so the pipeline's retries are what is tested
    storage_options = {**fault_proxy.storage_options,
                       "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    attempts = inspect.signature(with_retries).parameters["attempts"].default
    # shard 0: its videos file (written last, after predictions and errors) fails on every
    # in-task try, so the whole Prefect task fails once and is retried; shard 1: one 503 on
    # its predictions file, absorbed by the in-task retry
    shard0 = fault_proxy.fail(status=503, method="PUT", path=r"/out/videos/.*-00000\.parquet$",
                              times=attempts)
    shard1 = fault_proxy.fail(status=503, method="PUT",
                              path=r"/out/predictions/.*-00001\.parquet$", times=1)

    summary, flow_run_id = run_flow(
        source=f"s3://{bucket}/videos/", output=f"s3://{bucket}/out", model=str(model_path),
        storage_options=storage_options, clip_seconds=CLIP_SECONDS, shard_size=2,
        batch_size=2, device="cpu",
    )

    assert (shard0.injected, shard1.injected) == (attempts, 1)
    assert summary["status"] == "completed" and summary["failed_shards"] == {}
    c = summary["counts"]
    assert (c["listed"], c["succeeded"], c["failed"]) == (4, 3, 1)
    assert_counts_add_up(summary)

    # the Prefect task of shard 0 ran twice, shard 1's once
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
        )
    run_counts = {t.name: t.run_count for t in task_runs if t.name.startswith("infer-shard")}
    assert run_counts == {"infer-shard-0": 2, "infer-shard-1": 1}

    # the retry rewrote the same keys: one file per table and shard, no duplicate rows
    so = dict(s3_server.storage_options)
    files = output_files(f"s3://{bucket}/out", so)
    run_id = summary["run_id"]
    for table in ("predictions", "videos"):
        mine = [f for f in files if f.startswith(f"{table}/") and run_id in f]
        assert sorted(Path(f).name for f in mine) == [f"{run_id}-00000.parquet",
                                                      f"{run_id}-00001.parquet"]
    puts = fault_proxy.requests("PUT", rf"/out/predictions/.*{run_id}-00000\.parquet$")
    assert [r.outcome for r in puts] == ["200", "200"]  # written by both tries
    predictions = read_rows(f"s3://{bucket}/out", "predictions", so, run_id)
    videos = read_rows(f"s3://{bucket}/out", "videos", so, run_id)
    errors = read_rows(f"s3://{bucket}/out", "errors", so, run_id)
    assert_one_row_per_video(
        predictions=predictions, videos=videos, errors=errors,
        good_uris={f"s3://{bucket}/videos/{k}" for k in keys if not k.startswith("bad/")},
        bad={f"s3://{bucket}/videos/bad/text_renamed.mp4": {"CorruptVideoError"}},
    )


# --- a local folder ------------------------------------------------------------------------------
LONG_KEY = "long/twenty_seconds.mp4"
LOCAL_GOOD = ["h264_320x240.mp4", "mpeg4_160x120.avi", "vp8_112x80.webm"]


@pytest.fixture(scope="module")
def local_folder(tmp_path_factory: pytest.TempPathFactory, video_corpus: VideoCorpus) -> Path:
    """A few good videos, a 20 s one (64x48, 10 fps), every bad object and the jpg."""
    root = tmp_path_factory.mktemp("local-videos")
    for key in [*LOCAL_GOOD, video_corpus.nested_key, *video_corpus.bad, *video_corpus.not_video]:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video_corpus.root / key, root / key)
    encode_video(root / LONG_KEY, make_test_pattern(200, 48, 64, seed=20), fps=10,
                 options={"preset": "ultrafast"})
    return root


def _clips_of(predictions: pd.DataFrame, uri: str) -> pd.DataFrame:
    return predictions[predictions["video_uri"] == uri].sort_values("clip_index")


@pytest.mark.slow
def test_local_folder_run_and_rerun(prefect_server: None, local_folder: Path, model_path: Path,
                                    tmp_path: Path, video_corpus: VideoCorpus) -> None:
    output = str(tmp_path / "out")
    params = {"source": str(local_folder), "output": output, "model": str(model_path),
              "clip_seconds": 4.0, "batch_size": 3, "shard_size": 4, "device": "cpu"}
    summary, _ = run_flow(**params)

    good = {str(local_folder / k) for k in [*LOCAL_GOOD, video_corpus.nested_key, LONG_KEY]}
    bad = {str(local_folder / k): v for k, v in video_corpus.bad.items()}
    c = summary["counts"]
    assert (c["listed"], c["skipped_not_video"]) == (len(good) + len(bad), 1)
    assert (c["succeeded"], c["failed"]) == (len(good), len(bad))
    assert_counts_add_up(summary)
    assert read_summary(output, summary["run_id"])["counts"] == c
    predictions = read_rows(output, "predictions")
    videos = read_rows(output, "videos")
    assert_one_row_per_video(predictions=predictions, videos=videos,
                             errors=read_rows(output, "errors"), good_uris=good, bad=bad)

    # the 20 s video: five 4 s clips, back to back
    long_uri = str(local_folder / LONG_KEY)
    clips = _clips_of(predictions, long_uri)
    assert list(clips["clip_index"]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(clips["clip_start_s"], [0, 4, 8, 12, 16], atol=0.1)
    np.testing.assert_allclose(clips["clip_end_s"], [4, 8, 12, 16, 20], atol=0.1)
    np.testing.assert_allclose(clips["video_duration_s"], 20.0, atol=0.1)
    assert videos.set_index("video_uri").loc[long_uri, "num_clips"] == 5
    # shorter videos are one clip over their whole length
    short = _clips_of(predictions, str(local_folder / "h264_320x240.mp4"))
    assert len(short) == 1
    assert short["clip_end_s"].iloc[0] == pytest.approx(2.0, abs=0.1)

    # written whole: no temp files, no probe folder; readable as a hive dataset
    files = output_files(output)
    assert not [f for f in files if f.endswith(".tmp") or "_probe" in f or "/." in f]
    dataset = ds.dataset(Path(output) / "videos", format="parquet", partitioning="hive")
    assert dataset.to_table().num_rows == len(good)

    # a second run finds everything done (local etags: size and mtime)
    again, _ = run_flow(**params)
    c = again["counts"]
    assert (c["skipped_done"], c["processed"]) == (len(good) + len(bad), 0)
    assert_counts_add_up(again)


@pytest.mark.slow
def test_long_video_overlapping_windows(prefect_server: None, local_folder: Path,
                                        model_path: Path, tmp_path: Path) -> None:
    """4 s windows every 3.5 s over 20 s: 0, 3.5, 7, 10.5, 14, then one aligned to the end."""
    long_file = local_folder / LONG_KEY
    summary, _ = run_flow(source=str(long_file), output=str(tmp_path / "out"),
                          model=str(model_path), clip_seconds=4.0, stride_seconds=3.5,
                          batch_size=4, device="cpu")
    assert (summary["counts"]["listed"], summary["counts"]["succeeded"]) == (1, 1)
    clips = _clips_of(read_rows(str(tmp_path / "out"), "predictions"), str(long_file))
    starts = [0.0, 3.5, 7.0, 10.5, 14.0, 16.0]
    assert list(clips["clip_index"]) == list(range(len(starts)))
    np.testing.assert_allclose(clips["clip_start_s"], starts, atol=0.1)
    np.testing.assert_allclose(clips["clip_end_s"], np.add(starts, 4.0), atol=0.1)
    assert summary["counts"]["clips"] == len(starts)


# --- bad parameters fail before any video is read ------------------------------------------------
@pytest.mark.parametrize("case", ["missing_source", "unwritable_output", "garbage_model",
                                  "batch_size_zero"])
def test_bad_parameter_fails_before_reading_videos(
    case: str, prefect_server: None, local_folder: Path, model_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    params: dict[str, Any] = {"source": str(local_folder), "output": str(output),
                              "model": str(model_path), "device": "cpu"}
    if case == "missing_source":
        params["source"] = str(tmp_path / "no-such-folder")
        expected, match = SourceNotFoundError, r"no-such-folder: source not found"
    elif case == "unwritable_output":
        blocker = tmp_path / "a-file.txt"
        blocker.write_text("a regular file, not a folder\n")
        output = blocker / "out"
        params["output"] = str(output)
        expected, match = OutputNotWritableError, r"a-file.txt/out: output location is not writ"
    elif case == "garbage_model":
        garbage = tmp_path / "garbage.safetensors"
        garbage.write_bytes(np.random.default_rng(0).bytes(4096))
        params["model"] = str(garbage)
        expected, match = CheckpointError, r"garbage.safetensors"
    else:
        params["batch_size"] = 0
        expected, match = ValueError, r"invalid parameter 'batch_size'"

    with pytest.raises(expected, match=match) as raised:
        batch_inference(**params)

    assert "\n" not in str(raised.value)
    assert output_files(str(output)) == []
    if case == "unwritable_output":
        assert blocker.read_text() == "a regular file, not a folder\n"


@pytest.mark.parametrize("case", ["missing_output_bucket", "garbage_model_on_s3"])
def test_bad_s3_parameter_fails_without_reading_a_video(
    case: str, prefect_server: None, s3_corpus: S3Corpus, fault_proxy: FaultProxy
) -> None:
    so = fault_proxy.storage_options
    params = s3_corpus.params(storage_options=so)
    if case == "missing_output_bucket":
        params["output"] = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
        expected, match = OutputNotWritableError, r"no-such-bucket-.*not writable"
    else:
        params["model"] = f"s3://{s3_corpus.bucket}/models/garbage.safetensors"
        s3fs_for(so).pipe_file(params["model"][5:], b"\x00not a model" * 100)
        expected, match = CheckpointError, r"garbage.safetensors"

    with pytest.raises(expected, match=match) as raised:
        batch_inference(**params)

    assert "\n" not in str(raised.value)
    assert fault_proxy.requests(path=r"/videos/") == []  # not even listed


# --- the fault proxy itself (reused by the storage-fault tests) ----------------------------------
def test_fault_proxy_breaks_only_the_chosen_requests(fault_proxy: FaultProxy, s3_bucket: str
                                                     ) -> None:
    # neither botocore nor s3fs retries: each fault surfaces
    fs = s3fs_for({**fault_proxy.storage_options,
                   "config_kwargs": {"retries": {"total_max_attempts": 1}}})
    fs.retries = 1
    key = f"{s3_bucket}/dir with spaces/é.bin"
    fs.pipe_file(key, b"x" * 1000)
    assert fault_proxy.requests("PUT", "/dir with spaces/é.bin$")[0].outcome == "200"

    fault_proxy.fail(status=500, method="GET", path=r"é\.bin$", times=1)
    with pytest.raises(OSError):
        fs.cat_file(key)
    assert fs.cat_file(key) == b"x" * 1000  # only the first one failed

    # the PUT reaches S3, its answer is lost: the object is there all the same
    fault_proxy.fail(status=503, method="PUT", path=r"/applied$", after_upstream=True)
    with pytest.raises(OSError):
        fs.pipe_file(f"{s3_bucket}/applied", b"y")
    assert fs.cat_file(f"{s3_bucket}/applied") == b"y"

    fault_proxy.reset(method="GET", path=r"/applied$", skip=1)
    assert fs.cat_file(f"{s3_bucket}/applied") == b"y"  # skipped
    fs.cat_file(f"{s3_bucket}/applied")  # reset; the HTTP client may reconnect and retry
    gets = [r.outcome for r in fault_proxy.requests("GET", r"/applied$")]
    assert gets[:3] == ["200", "200", "reset"], gets

    fault_proxy.stall(0.3, method="HEAD")
    started = time.monotonic()
    assert fs.info(f"{s3_bucket}/applied")["size"] == 1
    assert time.monotonic() - started >= 0.3
    outcomes = [r.outcome for r in fault_proxy.log if r.injected]
    assert outcomes == ["500", "200+503", "reset", "stall+200"], fault_proxy.log
