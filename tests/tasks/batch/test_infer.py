"""`tasks.batch.infer.process_shard` without Prefect: decode pool -> bounded queue -> one consumer
batching clips across videos -> the model -> one Parquet file per table.

Real PyAV-encoded videos on disk, an untrained small model (16 frames of 64 px) on the CPU.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from video_fixtures import make_test_pattern

from emotion_model.errors import LabelMismatchError
from emotion_model.predict import Predictor
from emotion_model.video import ClipReader
from emotion_model.video_writer import encode_video
from tasks.batch.infer import process_shard
from tasks.batch.settings import BatchSettings
from tasks.common.listing import VideoObject, local_etag

RUN_ID = "20240501T000000Z-test0001"
DATE = "2024-05-01"
PROBS = ["prob_angry", "prob_disgust", "prob_fearful", "prob_happy", "prob_neutral", "prob_sad"]
# (name, height, width, seconds, fps, codec): with 1 s clips each gives 3 clips
GOOD = [
    ("a.mp4", 48, 64, 3.0, 10, "libx264"),
    ("b.avi", 64, 96, 3.0, 12, "mpeg4"),
    ("c.mkv", 48, 64, 3.0, 10, "libx264"),
    ("d.mp4", 72, 96, 3.0, 15, "libx264"),
    ("e.webm", 48, 64, 3.0, 10, "libvpx"),
]
BAD = {"truncated.mp4": "CorruptVideoError", "text.mp4": "CorruptVideoError",
       "empty.mp4": "EmptyVideoError"}
CLIPS_PER_VIDEO = 3





@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.from_file(model_path, device="cpu")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shard-videos")
    for i, (name, h, w, seconds, fps, codec) in enumerate(GOOD):
        options = {"preset": "ultrafast"} if codec == "libx264" else None
        encode_video(root / name, make_test_pattern(round(seconds * fps), h, w, seed=i),
                     fps=fps, codec=codec, options=options)
    data = (root / "a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "text.mp4").write_text("not a video at all\n" * 50)
    (root / "empty.mp4").write_bytes(b"")
    return root


def video_object(path: Path) -> VideoObject:
    st = path.stat()
    return VideoObject(uri=str(path), size=st.st_size, etag=local_etag(st.st_size, st.st_mtime_ns))


def make_settings(video_dir: Path, output: Path, **overrides: Any) -> BatchSettings:
    values: dict[str, Any] = {
        "source": str(video_dir), "output": str(output), "model": "unused.safetensors",
        "clip_seconds": 1.0, "device": "cpu", "batch_size": 3, "queue_depth": 2,
        "decode_threads": 2,
    }
    return BatchSettings(**{**values, **overrides})


def read_table(output: Path, table: str) -> pd.DataFrame:
    folder = output / table
    if not folder.exists():
        return pd.DataFrame()
    return pd.read_parquet(folder)


def predict_alone(predictor: Predictor, path: Path, clip_seconds: float = 1.0) -> np.ndarray:
    """float32 ``[clips, 6]``: the video's clips decoded on their own, one model call."""
    reader = ClipReader(str(path), num_frames=predictor.num_frames, img_size=predictor.img_size,
                        clip_seconds=clip_seconds)
    clips = np.stack([c.frames for c in reader])  # uint8 [N, T, H, W, 3]
    return predictor.probabilities(clips)


class RecordingPredictor:
    """The real predictor, recording how many clips each model call gets."""

    def __init__(self, inner: Predictor) -> None:
        self._inner = inner
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batch_sizes.append(len(clips))
        return self._inner.probabilities(clips)


@pytest.mark.timeout(120)
def test_tiny_queue_many_clips_completes_with_every_clip_predicted(
    video_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    settings = make_settings(video_dir, output, clip_seconds=0.5, queue_depth=2, batch_size=3,
                             decode_threads=3)
    videos = [video_object(video_dir / name) for name, *_ in GOOD]
    done: list[tuple[str, bool]] = []

    result = process_shard(0, videos, settings, run_id=RUN_ID, predictor=predictor, date=DATE,
                           on_video_done=lambda v, ok: done.append((v.uri, ok)))

    expected = 6 * len(GOOD)  # 3 s in 0.5 s clips
    assert (result.videos, result.succeeded, result.failed) == (len(GOOD), len(GOOD), 0)
    assert result.clips == expected
    assert sorted(done) == sorted((v.uri, True) for v in videos)
    predictions = read_table(output, "predictions")
    assert len(predictions) == expected
    assert not predictions.duplicated(["video_uri", "clip_index"]).any()
    for uri, rows in predictions.groupby("video_uri"):
        assert sorted(rows["clip_index"]) == list(range(6)), uri
        np.testing.assert_allclose(sorted(rows["clip_start_s"]), np.arange(6) * 0.5, atol=0.05)
    assert len(read_table(output, "videos")) == len(GOOD)
    assert result.files["rows"] == {"predictions": expected, "faces": 0, "videos": len(GOOD),
                                    "errors": 0}
    assert not (output / "errors").exists()


def test_batches_mix_videos_and_match_predicting_each_alone(
    video_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    recording = RecordingPredictor(predictor)
    settings = make_settings(video_dir, output, batch_size=4, queue_depth=8)
    paths = [video_dir / name for name, *_ in GOOD]

    result = process_shard(3, [video_object(p) for p in paths], settings, run_id=RUN_ID,
                           predictor=recording, date=DATE)  # type: ignore[arg-type]

    assert result.clips == CLIPS_PER_VIDEO * len(GOOD)
    # every video has 3 clips, so a batch of 4 holds clips of two videos
    assert max(recording.batch_sizes) == 4
    assert sum(recording.batch_sizes) == result.clips
    predictions = read_table(output, "predictions")
    videos = read_table(output, "videos").set_index("video_uri")
    for path in paths:
        rows = predictions[predictions["video_uri"] == str(path)].sort_values("clip_index")
        alone = predict_alone(predictor, path)
        assert len(rows) == len(alone) == CLIPS_PER_VIDEO
        np.testing.assert_allclose(rows[PROBS].to_numpy(), alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(videos.loc[str(path), PROBS].to_numpy(dtype=np.float32),
                                   alone.mean(axis=0), atol=1e-5, rtol=0)
    assert (output / "predictions" / f"date={DATE}" / f"{RUN_ID}-00003.parquet").is_file()


def test_bad_videos_in_between_do_not_disturb_the_good_ones(
    video_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    settings = make_settings(video_dir, output, batch_size=3, queue_depth=2)
    order = ["a.mp4", "truncated.mp4", "b.avi", "text.mp4", "c.mkv", "empty.mp4", "d.mp4"]
    videos = [video_object(video_dir / name) for name in order]

    result = process_shard(1, videos, settings, run_id=RUN_ID, predictor=predictor, date=DATE)

    assert (result.succeeded, result.failed) == (4, 3)
    assert result.failed_by_stage == {"decode": 3}
    errors = read_table(output, "errors")
    assert sorted(errors["video_uri"]) == sorted(str(video_dir / n) for n in BAD)
    for row in errors.itertuples():
        assert row.stage == "decode"
        assert row.error_type == BAD[Path(row.video_uri).name], row
        assert row.message.startswith(row.video_uri) and "\n" not in row.message
        assert row.video_etag == video_object(Path(row.video_uri)).etag
    predictions = read_table(output, "predictions")
    good = [n for n in order if n not in BAD]
    assert sorted(set(predictions["video_uri"])) == sorted(str(video_dir / n) for n in good)
    for name in good:
        rows = predictions[predictions["video_uri"] == str(video_dir / name)]
        rows = rows.sort_values("clip_index")
        np.testing.assert_allclose(rows[PROBS].to_numpy(), predict_alone(predictor,
                                   video_dir / name), atol=1e-5, rtol=0)

    # the same shard again (a retry) overwrites its files: same keys, no duplicate rows
    again = process_shard(1, videos, settings, run_id=RUN_ID, predictor=predictor, date=DATE)
    assert again.files["uris"] == result.files["uris"]
    assert len(read_table(output, "predictions")) == len(predictions)
    assert len(read_table(output, "errors")) == len(BAD)
    assert len(read_table(output, "videos")) == len(good)
    leftovers = [p for p in output.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert leftovers == []


class OutOfMemoryPredictor(Predictor):
    """The real model, but the model calls numbered in ``fail_calls`` (1-based) raise, as a GPU
    out of memory would."""

    fail_calls: frozenset[int] = frozenset()

    def probabilities(self, clips: Any) -> np.ndarray:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls in self.fail_calls:
            raise MemoryError(f"out of memory on a batch of {len(clips)} clips")
        return super().probabilities(clips)


def test_a_failed_model_call_fails_only_the_videos_with_clips_in_that_batch(
    video_dir: Path, model_path: Path, predictor: Predictor, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    failing = OutOfMemoryPredictor.from_file(model_path, device="cpu")
    failing.fail_calls = frozenset({2})
    # one decode thread: clips arrive in order, so batches of 2 are [a0 a1] [a2 b0] [b1 b2] ...
    settings = make_settings(video_dir, output, batch_size=2, queue_depth=2, decode_threads=1)
    names = ["a.mp4", "b.avi", "c.mkv", "d.mp4"]
    videos = [video_object(video_dir / name) for name in names]
    done: list[tuple[str, bool]] = []

    result = process_shard(2, videos, settings, run_id=RUN_ID, predictor=failing, date=DATE,
                           on_video_done=lambda v, ok: done.append((v.uri, ok)))

    assert failing.calls == 6  # 12 clips in batches of 2, the failed call included
    assert (result.succeeded, result.failed, result.clips) == (2, 2, 6)
    assert result.failed_by_stage == {"infer": 2}
    assert sorted(done) == sorted((v.uri, v.uri.endswith(("c.mkv", "d.mp4"))) for v in videos)
    errors = read_table(output, "errors").sort_values("video_uri")
    assert list(errors["video_uri"]) == [str(video_dir / "a.mp4"), str(video_dir / "b.avi")]
    assert set(errors["stage"]) == {"infer"} and set(errors["error_type"]) == {"MemoryError"}
    for row in errors.itertuples():
        assert row.message == f"{row.video_uri}: out of memory on a batch of 2 clips"
    # the failed videos left no clip rows; the others are as if predicted alone
    predictions = read_table(output, "predictions")
    assert sorted(set(predictions["video_uri"])) == [str(video_dir / n) for n in names[2:]]
    for name in names[2:]:
        rows = predictions[predictions["video_uri"] == str(video_dir / name)]
        np.testing.assert_allclose(rows.sort_values("clip_index")[PROBS].to_numpy(),
                                   predict_alone(predictor, video_dir / name), atol=1e-5, rtol=0)
    assert sorted(read_table(output, "videos")["video_uri"]) == [
        str(video_dir / n) for n in names[2:]]
    assert result.files["rows"] == {"predictions": 6, "faces": 0, "videos": 2, "errors": 2}
    assert result.decode_s > 0 and result.infer_s > 0 and result.wall_s >= result.infer_s


def test_a_local_file_removed_after_listing_is_one_read_error(
    video_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    gone = tmp_path / "gone.mp4"
    gone.write_bytes((video_dir / "a.mp4").read_bytes())
    videos = [video_object(gone), video_object(video_dir / "b.avi")]
    gone.unlink()
    settings = make_settings(video_dir, output)

    result = process_shard(0, videos, settings, run_id=RUN_ID, predictor=predictor, date=DATE)

    assert (result.succeeded, result.failed, result.clips) == (1, 1, CLIPS_PER_VIDEO)
    assert result.failed_by_stage == {"read": 1}
    (row,) = read_table(output, "errors").itertuples()
    assert (row.video_uri, row.stage, row.error_type) == (str(gone), "read", "FileNotFoundError")
    assert row.message == f"{gone}: no such file (removed after listing?)"  # the URI once
    assert row.video_etag == videos[0].etag and row.video_bytes == videos[0].size
    assert list(read_table(output, "videos")["video_uri"]) == [str(video_dir / "b.avi")]


@pytest.mark.timeout(60)
def test_a_failure_while_recording_stops_the_decoders_and_writes_nothing(
    video_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    """The consumer raises with decoders blocked on the full queue: they stop, the pool is shut
    down before process_shard returns, and no Parquet file is written."""
    output = tmp_path / "out"
    settings = make_settings(video_dir, output, clip_seconds=0.5, batch_size=2, queue_depth=2,
                             decode_threads=3)
    videos = [video_object(video_dir / name) for name, *_ in GOOD] * 2
    calls: list[str] = []

    def on_video_done(video: VideoObject, ok: bool) -> None:
        calls.append(video.uri)
        raise RuntimeError("the progress listener broke")

    with pytest.raises(RuntimeError, match="the progress listener broke"):
        process_shard(0, videos, settings, run_id=RUN_ID, predictor=predictor, date=DATE,
                      on_video_done=on_video_done)

    assert len(calls) == 1
    assert [t.name for t in threading.enumerate() if t.name.startswith("decode")] == []
    assert not output.exists() or [p for p in output.rglob("*") if p.is_file()] == []


def test_a_model_with_other_labels_is_refused_before_any_video_is_read(
    video_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    other = Predictor.from_file(model_path, device="cpu")
    other.labels = tuple(reversed(other.labels))
    settings = make_settings(video_dir, tmp_path / "out")
    with pytest.raises(LabelMismatchError, match=r"^model \w{12}: labels .* differ from"):
        process_shard(0, [video_object(video_dir / "a.mp4")], settings, run_id=RUN_ID,
                      predictor=other, date=DATE)
    assert not (tmp_path / "out").exists()
