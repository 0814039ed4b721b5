"""The shard task: stream a shard's videos through decoding and the model, write its Parquet.

::

    videos of one shard
        -> decode pool (settings.decode_threads threads): read bytes through fsspec (retried),
           emotion_model.video.ClipReader -> uint8 clips
        -> bounded queue (2 x batch_size clips, >= 8: memory stays bounded)
        -> one consumer: batches of batch_size clips across videos -> Predictor (GPU: AMP,
           pinned memory; CPU: fp32) under torch.inference_mode()
        -> ShardWriter: predictions / videos / errors, one atomic file per table

Decode and compute overlap: the pool decodes the next clips while the model runs. A bad video
becomes one ``errors`` row; only storage errors escape (and the Prefect task retries them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from emotion_model.errors import VideoError, one_line
from emotion_model.labels import EMOTION_LABELS
from emotion_model.predict import Predictor, label_probabilities
from emotion_model.video import Clip, ClipReader, VideoInfo
from tasks.batch.planning import ShardPlan
from tasks.batch.predictors import load_predictor
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import ShardWriter, prob_columns
from tasks.common import progress
from tasks.common.listing import VideoObject
from tasks.common.storage import is_local, read_bytes, resolve, retry_transient

log = logging.getLogger(__name__)

STREAM_THRESHOLD_BYTES = 64 * 1024 * 1024
"""Remote objects above this size are streamed through fsspec instead of read into memory."""


@dataclass
class ShardResult:
    """Counts and timings of one shard, for the run summary."""

    shard: int
    videos: int = 0
    succeeded: int = 0
    failed: int = 0
    partial: int = 0
    clips: int = 0
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    decode_s: float = 0.0
    infer_s: float = 0.0
    wall_s: float = 0.0
    files: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    """``host:pid`` of the process that ran the shard (a Dask worker, or the flow's own)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly)."""
        return dataclasses.asdict(self)


@dataclass
class _VideoState:
    video: VideoObject
    clips: list[tuple[int, float, float]] = field(default_factory=list)  # index, start, end
    probs: dict[int, np.ndarray] = field(default_factory=dict)
    info: VideoInfo | None = None
    error: tuple[str, str, str] | None = None  # stage, error_type, message


def _error_of(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, one_line(exc)


def _open_video(video: VideoObject, storage_options: Mapping[str, Any] | None) -> Any:
    """A path (local), bytes (small remote objects) or a streaming file object (large ones)."""
    if is_local(video.uri):
        path = resolve(video.uri, storage_options)[1]
        if not os.path.isfile(path):  # gone since listing: a read error, retried next run
            raise FileNotFoundError(f"{video.uri}: no such file (removed after listing?)")
        return path
    if video.size <= STREAM_THRESHOLD_BYTES:
        return read_bytes(video.uri, storage_options)
    fs, path = resolve(video.uri, storage_options)
    return fs.open(path, "rb", block_size=8 * 1024 * 1024)


def process_shard(
    shard: int,
    videos: list[VideoObject],
    settings: BatchSettings,
    *,
    run_id: str,
    predictor: Predictor,
    date: str | None = None,
    on_video_done: Callable[[VideoObject, bool], None] | None = None,
) -> ShardResult:
    """Decode, predict and write one shard; returns its counts. Plain function (no Prefect).

    Every video of ``videos`` ends as one ``videos`` row (plus its clip rows) or one ``errors``
    row. Raises only when the shard's output cannot be written (after retries).
    """
    start = time.perf_counter()
    date = date or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    result = ShardResult(shard=shard, videos=len(videos),
                         worker=f"{socket.gethostname()}:{os.getpid()}")
    batch_size = settings.batch_size or predictor.preferred_batch_size
    clip_queue: queue.Queue[Any] = queue.Queue(maxsize=settings.clip_queue_depth(batch_size))
    states = [_VideoState(v) for v in videos]
    stop = threading.Event()
    decode_time = [0.0]
    time_lock = threading.Lock()

    def put(item: tuple[str, int, Any]) -> None:
        while not stop.is_set():
            try:
                clip_queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def decode_one(index: int) -> None:
        state = states[index]
        t0 = time.perf_counter()
        try:
            if stop.is_set():
                return
            try:
                source = _open_video(state.video, settings.storage_options)
            except Exception as exc:  # storage failure after retries, or the object vanished
                put(("error", index, ("read", *_error_of(exc))))
                return
            reader = ClipReader(
                source,
                num_frames=predictor.num_frames,
                img_size=predictor.img_size,
                clip_seconds=settings.clip_seconds,
                stride_seconds=settings.stride_seconds,
                uri=state.video.uri,
                threads=0,
            )
            try:
                for clip in reader:
                    if stop.is_set():
                        return
                    put(("clip", index, clip))
            except VideoError as exc:
                put(("error", index, ("decode", type(exc).__name__, exc.reason)))
                return
            except Exception as exc:  # an unexpected decoder failure is still one video's
                put(("error", index, ("decode", *_error_of(exc))))
                return
            finally:
                close = getattr(source, "close", None)
                if callable(close):
                    close()
            put(("done", index, reader.info))
        finally:
            with time_lock:
                decode_time[0] += time.perf_counter() - t0

    def decode_guarded(index: int) -> None:
        try:
            decode_one(index)
        except BaseException as exc:  # never leave the consumer waiting for this video
            put(("error", index, ("decode", *_error_of(exc))))

    writer = ShardWriter(
        settings.output, run_id, shard, date, settings.storage_options,
        model_version=predictor.model_version,
    )
    pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
    pending: list[tuple[int, Clip]] = []
    finished = 0
    labels = predictor.labels
    if tuple(labels) != EMOTION_LABELS:
        raise ValueError(f"model labels {labels} differ from {EMOTION_LABELS}")

    def run_batch() -> None:
        nonlocal pending
        if not pending:
            return
        batch, pending = pending, []
        t0 = time.perf_counter()
        try:
            probs = predictor.probabilities(np.stack([c.frames for _, c in batch]))
        except Exception as exc:  # e.g. out of memory: the batch's videos fail, the run goes on
            error = ("infer", *_error_of(exc))
            for index, _ in batch:
                states[index].error = states[index].error or error
        else:
            for (index, clip), p in zip(batch, probs, strict=True):
                states[index].probs[clip.index] = p
        result.infer_s += time.perf_counter() - t0

    def finish(index: int) -> None:
        nonlocal finished
        state = states[index]
        finished += 1
        ok = _record(writer, state, labels, result)
        state.clips.clear()
        state.probs.clear()
        if on_video_done is not None:
            on_video_done(state.video, ok)

    try:
        with writer:
            for index in range(len(states)):
                pool.submit(decode_guarded, index)
            decoded = 0
            waiting: set[int] = set()  # decoded, waiting for their clips' batch
            while finished < len(states):
                if pending and decoded == len(states):
                    run_batch()  # every clip has arrived (each video's clips precede its end)
                else:
                    kind, index, payload = clip_queue.get()
                    if kind == "clip":
                        clip = payload
                        # keep only the clip's place: its frames go with the batch
                        states[index].clips.append((clip.index, clip.start_s, clip.end_s))
                        pending.append((index, payload))
                        if len(pending) >= batch_size:
                            run_batch()
                    else:  # "done" with the VideoInfo, or "error" with (stage, type, message)
                        if kind == "done":
                            states[index].info = payload
                        else:
                            states[index].error = payload
                        decoded += 1
                        waiting.add(index)
                queued = {i for i, _ in pending}
                for i in sorted(waiting - queued):  # all clips predicted (or failed): record
                    waiting.discard(i)
                    finish(i)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    result.decode_s = decode_time[0]
    result.wall_s = time.perf_counter() - start
    if writer.stats is not None:
        result.files = writer.stats.as_dict()
    return result


def _record(
    writer: ShardWriter, state: _VideoState, labels: tuple[str, ...], result: ShardResult
) -> bool:
    video = state.video
    info = state.info
    if state.error is None and (not state.clips or len(state.probs) != len(state.clips)):
        state.error = ("infer", "InferenceError", "no prediction for some clips")
    if state.error is not None:
        stage, error_type, message = state.error
        if not message.startswith(video.uri):
            message = f"{video.uri}: {message}"
        writer.add_error(
            video_uri=video.uri, video_etag=video.etag, video_bytes=video.size,
            stage=stage, error_type=error_type, message=message,
        )
        result.failed += 1
        result.failed_by_stage[stage] = result.failed_by_stage.get(stage, 0) + 1
        return False
    assert info is not None
    common = {
        "video_uri": video.uri,
        "video_etag": video.etag,
        "video_bytes": video.size,
        "video_duration_s": float(info.duration_s),
    }
    probs = []
    for clip_index, start_s, end_s in state.clips:
        p = state.probs[clip_index]
        probs.append(p)
        label, confidence, _ = label_probabilities(p, labels)
        writer.add_prediction(
            **common, clip_index=clip_index, clip_start_s=start_s, clip_end_s=end_s,
            label=label, confidence=confidence, **prob_columns(p),
        )
    mean = np.mean(probs, axis=0)
    label, confidence, _ = label_probabilities(mean, labels)
    writer.add_video(
        **common, num_clips=len(state.clips), partial=info.partial,
        partial_reason=info.partial_reason, label=label, confidence=confidence,
        **prob_columns(mean),
    )
    result.succeeded += 1
    result.partial += int(info.partial)
    result.clips += len(state.clips)
    result.labels[label] = result.labels.get(label, 0) + 1
    return True


def merge_results(results: list[ShardResult]) -> dict[str, Any]:
    """Totals over shards for the run summary."""
    labels: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for r in results:
        labels.update(r.labels)
        stages.update(r.failed_by_stage)
    return {
        "videos": sum(r.videos for r in results),
        "succeeded": sum(r.succeeded for r in results),
        "failed": sum(r.failed for r in results),
        "partial": sum(r.partial for r in results),
        "clips": sum(r.clips for r in results),
        "failed_by_stage": dict(stages),
        "label_distribution": {k: labels.get(k, 0) for k in EMOTION_LABELS},
        "decode_s": round(sum(r.decode_s for r in results), 3),
        "infer_s": round(sum(r.infer_s for r in results), 3),
    }


# --- Prefect task -----------------------------------------------------------------------------
@task(
    name="infer-shard",
    task_run_name="infer-shard-{shard.shard}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
)
def infer_shard(
    shard: ShardPlan, settings: BatchSettings, run_id: str, model_uri: str, date: str
) -> ShardResult:
    """Run one shard (see ``process_shard``); retried only on transient storage errors."""
    logger = get_run_logger()
    predictor = load_predictor(model_uri, settings.device, settings.storage_options)
    total = len(shard.videos)
    done = [0]
    step = max(1, total // 10)

    def on_video_done(video: VideoObject, ok: bool) -> None:
        done[0] += 1
        progress.emit("video", uri=video.uri, ok=ok)
        if done[0] % step == 0 or done[0] == total:
            logger.info("shard %d: %d/%d videos", shard.shard, done[0], total)

    result = process_shard(
        shard.shard, shard.videos, settings, run_id=run_id, predictor=predictor, date=date,
        on_video_done=on_video_done,
    )
    logger.info(
        "shard %d done: %d ok, %d failed, %d clips in %.1fs (%.2f clips/s)",
        shard.shard, result.succeeded, result.failed, result.clips, result.wall_s,
        result.clips / result.wall_s if result.wall_s else 0.0,
    )
    return result
