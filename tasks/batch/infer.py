"""The shard task: stream a shard's videos through decoding and the model, write its Parquet.

::

    videos of one shard -> ShardRunner
        -> decode pool (settings.decode_threads threads, ShardRunner._decode_clips): read bytes
           through fsspec (retried), emotion_model.video.ClipReader -> uint8 clips (face
           models: faces detected and tracked in the same pass, one clip per face track;
           models that read audio: each clip's log-mel, demuxed in the same pass)
        -> bounded queue (2 x batch_size clips, >= 8: memory stays bounded) of messages:
           ClipDecoded per clip, then VideoDecoded or VideoFailed per video
        -> one consumer (ShardRunner._consume): batches of batch_size clips across videos ->
           Predictor (GPU: AMP, pinned memory; CPU: fp32, or ONNX Runtime for an .onnx file), with
           the clips' log-mel and audio_present for a model that reads audio
        -> ShardWriter: predictions / faces / videos / errors, one atomic file per table

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
from typing import Any, assert_never

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from emotion_model.errors import LabelMismatchError, NoAudioError, VideoError, one_line
from emotion_model.labels import EMOTION_LABELS
from emotion_model.predict import (
    BasePredictor,
    audio_used,
    clip_modality,
    clip_probabilities,
    label_probabilities,
    on_kept_tracks,
    pooled_clips,
    video_label,
)
from emotion_model.video import Clip, ClipReader, VideoInfo
from tasks.batch.planning import ShardPlan
from tasks.batch.predictors import load_predictor
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import ShardWriter, Stage, prob_columns
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
    no_face: int = 0
    """Face models: videos decoded whole in which no face was found (succeeded, no label)."""
    faces: int = 0
    clips: int = 0
    clips_no_audio: int = 0
    """Clips predicted without their sound by a model that reads audio (0 for video models)."""
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    decode_s: float = 0.0
    detect_s: float = 0.0
    infer_s: float = 0.0
    wall_s: float = 0.0
    files: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    """``host:pid`` of the process that ran the shard (a Dask worker, or the flow's own)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly)."""
        return dataclasses.asdict(self)


# --- messages from the decode workers to the consumer ------------------------------------------
@dataclass(frozen=True)
class ClipDecoded:
    """One clip of video ``index``; its frames wait in the next batch."""

    index: int
    clip: Clip


@dataclass(frozen=True)
class VideoDecoded:
    """Video ``index`` decoded to its end: every one of its clips was queued before this."""

    index: int
    info: VideoInfo


@dataclass(frozen=True)
class VideoFailed:
    """Video ``index`` failed at ``stage``; it becomes one ``errors`` row."""

    index: int
    stage: Stage
    error_type: str
    message: str

    @classmethod
    def of(cls, index: int, stage: Stage, exc: BaseException) -> VideoFailed:
        """The failure ``exc`` (its class name and one-line message)."""
        return cls(index, stage, type(exc).__name__, one_line(exc))


DecodeMessage = ClipDecoded | VideoDecoded | VideoFailed
"""What the queue carries: a video's clips, then its ``VideoDecoded`` or ``VideoFailed``."""


@dataclass(frozen=True)
class _ClipPlace:
    """Where a clip is (its frames and sound go with the batch): window, face track, seconds,
    box, and whether its sound goes into its prediction."""

    index: int
    face_id: int
    start_s: float
    end_s: float
    face_box: tuple[float, float, float, float] | None
    face_score: float | None
    audio_present: bool

    @property
    def key(self) -> tuple[int, int]:
        """``(clip index, face_id)``: unique within a video."""
        return self.index, self.face_id


@dataclass
class _VideoState:
    """What the consumer knows of one video while its clips are in flight."""

    video: VideoObject
    clips: list[_ClipPlace] = field(default_factory=list)
    probs: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # by _ClipPlace.key
    info: VideoInfo | None = None
    failure: VideoFailed | None = None


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


def _close(source: Any) -> None:
    """Close ``source`` if it is a file object (paths and bytes need nothing). A failure to
    close a read-only stream is logged, never a second outcome of its video."""
    close = getattr(source, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            log.warning("closing %s failed: %s", getattr(source, "path", source), one_line(exc))


class ShardRunner:
    """One run of one shard: decode workers -> bounded queue -> batching consumer -> writer.

    Producer side (pool threads): `_decode_guarded` -> `_decode` -> `_decode_clips` put each
    video's `ClipDecoded` messages, then its `VideoDecoded` or `VideoFailed`, through `_put`.
    Consumer side (the calling thread): `_consume` takes the messages (`_receive`), runs a
    batch whenever ``batch_size`` clips wait (`_run_batch`), and records each video once all
    its clips were predicted (`_finish_ready` -> `_finish` -> `_record`). Only the decode
    time is written by several threads (under ``_decode_lock``); the rest is the consumer's.
    A runner runs once.
    """

    def __init__(
        self,
        shard: int,
        videos: list[VideoObject],
        settings: BatchSettings,
        *,
        run_id: str,
        predictor: BasePredictor,
        date: str | None = None,
        on_video_done: Callable[[VideoObject, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.on_video_done = on_video_done
        self.result = ShardResult(shard=shard, videos=len(videos),
                                  worker=f"{socket.gethostname()}:{os.getpid()}")
        self.batch_size = settings.batch_size or predictor.preferred_batch_size
        self.writer = ShardWriter(
            settings.output, run_id, shard,
            date or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), settings.storage_options,
            model_version=predictor.model_version,
        )
        self.labels = predictor.labels
        self.crop = predictor.crop.with_detect_fps(settings.detect_fps)
        if tuple(self.labels) != EMOTION_LABELS:
            raise LabelMismatchError(f"model {predictor.model_version}",
                                     f"labels {list(self.labels)} differ from "
                                     f"{list(EMOTION_LABELS)}")
        self._states = [_VideoState(v) for v in videos]
        self._queue: queue.Queue[DecodeMessage] = queue.Queue(
            maxsize=settings.clip_queue_depth(self.batch_size))
        self._stop = threading.Event()  # set on exit: the workers stop decoding and putting
        self._decode_lock = threading.Lock()
        self._decode_s = 0.0  # summed over the workers, under _decode_lock
        # the consumer's own (one thread)
        self._pending: list[ClipDecoded] = []  # clips of the next batch
        self._decoded = 0  # videos whose last message (decoded or failed) has arrived
        self._waiting: set[int] = set()  # decoded, waiting for their clips' batch
        self._finished = 0  # videos recorded
        self._ran = False

    def run(self) -> ShardResult:
        """Decode, predict and write the shard; returns its counts (see `process_shard`)."""
        if self._ran:
            raise RuntimeError("a ShardRunner runs once")
        self._ran = True
        start = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=self.settings.decode_threads,
                                  thread_name_prefix="decode")
        try:
            with self.writer:
                for index in range(len(self._states)):
                    pool.submit(self._decode_guarded, index)
                self._consume()
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        self.result.decode_s = self._decode_s
        self.result.wall_s = time.perf_counter() - start
        if self.writer.stats is not None:
            self.result.files = self.writer.stats.as_dict()
        return self.result

    # --- producer side (decode pool threads) ---------------------------------------------------
    def _put(self, message: DecodeMessage) -> None:
        """Queue ``message``, waiting while the queue is full; gives up once the run stops."""
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    def _decode_guarded(self, index: int) -> None:
        """Pool entry point: the consumer always hears how video ``index`` ended."""
        try:
            self._decode(index)
        except BaseException as exc:  # never leave the consumer waiting for this video
            self._put(VideoFailed.of(index, "decode", exc))

    def _decode(self, index: int) -> None:
        """`_decode_clips`, its time (queue waits included) added to the decode time."""
        t0 = time.perf_counter()
        try:
            self._decode_clips(index)
        finally:
            with self._decode_lock:
                self._decode_s += time.perf_counter() - t0

    def _decode_clips(self, index: int) -> None:
        """Read and decode video ``index``: its clips, then `VideoDecoded` or `VideoFailed`."""
        if self._stop.is_set():
            return
        video = self._states[index].video
        try:
            source = _open_video(video, self.settings.storage_options)
        except Exception as exc:  # storage failure after retries, or the object vanished
            self._put(VideoFailed.of(index, "read", exc))
            return
        reader = ClipReader(
            source,
            num_frames=self.predictor.num_frames,
            img_size=self.predictor.img_size,
            clip_seconds=self.settings.clip_seconds,
            stride_seconds=self.settings.stride_seconds,
            uri=video.uri,
            threads=0,
            crop=self.crop,
            max_faces=self.settings.max_faces,
            audio=self.predictor.audio_spec,  # None for a video model: no audio demuxed
        )
        try:
            for clip in reader:
                if self._stop.is_set():
                    return
                self._put(ClipDecoded(index, clip))
        except VideoError as exc:
            self._put(VideoFailed(index, "decode", type(exc).__name__, exc.reason))
            return
        except Exception as exc:  # an unexpected decoder failure is still one video's
            self._put(VideoFailed.of(index, "decode", exc))
            return
        finally:
            _close(source)
        self._put(VideoDecoded(index, reader.info))

    # --- consumer side (the calling thread) ----------------------------------------------------
    def _consume(self) -> None:
        """Take messages and run batches until every video is recorded."""
        total = len(self._states)
        while self._finished < total:
            if self._pending and self._decoded == total:
                self._run_batch()  # every clip has arrived (each video's clips precede its end)
            else:
                self._receive(self._queue.get())
            self._finish_ready()

    def _receive(self, message: DecodeMessage) -> None:
        """Note one message; a full batch runs at once."""
        state = self._states[message.index]
        match message:
            case ClipDecoded(clip=clip):
                # keep only the clip's place: its frames and sound go with the batch
                state.clips.append(_ClipPlace(
                    clip.index, clip.face_id, clip.start_s, clip.end_s, clip.face_box,
                    clip.face_score, audio_used(self.predictor.modality, clip)))
                self._pending.append(message)
                if len(self._pending) >= self.batch_size:
                    self._run_batch()
            case VideoDecoded(info=info):
                state.info = info
                self._decoded += 1
                self._waiting.add(message.index)
            case VideoFailed():
                state.failure = message
                self._decoded += 1
                self._waiting.add(message.index)
            case _:
                assert_never(message)

    def _run_batch(self) -> None:
        """Predict the pending clips in one model call; a failure fails the batch's videos."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        t0 = time.perf_counter()
        try:
            probs = clip_probabilities(self.predictor, [m.clip for m in batch])
        except Exception as exc:  # e.g. out of memory: the batch's videos fail, the run goes on
            for m in batch:
                state = self._states[m.index]
                state.failure = state.failure or VideoFailed.of(m.index, "infer", exc)
        else:
            for m, p in zip(batch, probs, strict=True):
                self._states[m.index].probs[(m.clip.index, m.clip.face_id)] = p
        self.result.infer_s += time.perf_counter() - t0

    def _finish_ready(self) -> None:
        """Record the decoded videos none of whose clips still waits for a batch."""
        queued = {m.index for m in self._pending}
        for index in sorted(self._waiting - queued):  # all clips predicted (or failed)
            self._waiting.discard(index)
            self._finish(index)

    def _finish(self, index: int) -> None:
        """Record video ``index``, free its clips and report it to ``on_video_done``."""
        state = self._states[index]
        self._finished += 1
        ok = self._record(index)
        state.clips.clear()
        state.probs.clear()
        if self.on_video_done is not None:
            self.on_video_done(state.video, ok)

    def _record(self, index: int) -> bool:
        """Write video ``index``'s rows: clips and video, or its one error; True when it
        succeeded."""
        state = self._states[index]
        no_face = self.crop.mode == "face" and not state.clips  # a result, not a failure
        if state.failure is None and not no_face and (
                not state.clips or len(state.probs) != len(state.clips)):
            state.failure = VideoFailed(index, "infer", "InferenceError",
                                        "no prediction for some clips")
        failure = state.failure
        if failure is None:
            try:
                self._record_video(state)
                return True
            except NoAudioError as exc:  # an audio model, a video without sound: nothing written
                failure = state.failure = VideoFailed.of(index, "decode", exc)
        self._record_failure(state.video, failure)
        return False

    def _record_failure(self, video: VideoObject, failure: VideoFailed) -> None:
        """One ``errors`` row; the message starts with the video's URI."""
        message = failure.message
        if not message.startswith(video.uri):
            message = f"{video.uri}: {message}"
        self.writer.add_error(
            video_uri=video.uri, video_etag=video.etag, video_bytes=video.size,
            stage=failure.stage, error_type=failure.error_type, message=message,
        )
        result = self.result
        result.failed += 1
        result.failed_by_stage[failure.stage] = result.failed_by_stage.get(failure.stage, 0) + 1

    def _record_video(self, state: _VideoState) -> None:
        """The ``predictions`` rows (one per clip), the ``faces`` rows (face models: one per
        track kept) and the ``videos`` row: the clips' mean (whole frames) or the longest-seen
        face's (faces; no label when no face was found). An audio model's clips without sound
        are written but left out of the means (`pooled_clips`; `NoAudioError`, raised before
        any row is added, when none has sound)."""
        video, info = state.video, state.info
        assert info is not None
        common = {
            "video_uri": video.uri,
            "video_etag": video.etag,
            "video_bytes": video.size,
            "video_duration_s": float(info.duration_s),
        }
        places = state.clips
        if self.crop.mode == "face":
            keep = on_kept_tracks([c.face_id for c in places], info.faces)
            places = [c for c, k in zip(places, keep, strict=True) if k]
        probs = np.array([state.probs[c.key] for c in places], np.float32).reshape(
            len(places), len(self.labels))
        modality = self.predictor.modality
        present = [c.audio_present for c in places]
        pool = pooled_clips(modality, present, info)  # NoAudioError: before any row is added
        for place, p in zip(places, probs, strict=True):
            label, confidence, _ = label_probabilities(p, self.labels)
            self.writer.add_prediction(
                **common, clip_index=place.index, clip_start_s=place.start_s,
                clip_end_s=place.end_s, face_id=place.face_id, **_box_columns(place.face_box),
                face_score=place.face_score, audio_present=place.audio_present,
                modality=clip_modality(modality, place.audio_present), label=label,
                confidence=confidence, **prob_columns(p),
            )
        faces, top = video_label(self.crop.mode, [c.face_id for c in places], probs, pool,
                                 info.faces, self.labels)
        for face in faces:
            self.writer.add_face(
                **common, face_id=face.face_id, first_s=face.first_s, last_s=face.last_s,
                **_box_columns(face.box), num_clips=face.clips, label=face.label,
                confidence=face.confidence, **prob_columns(list(face.probabilities.values())),
            )
        reads_audio = modality != "video"
        no_audio = present.count(False) if reads_audio else 0
        video_columns: dict[str, Any] = {
            "crop": self.crop.mode, "audio_codec": info.audio_codec,
            "clips_no_audio": no_audio if reads_audio else None}
        if self.crop.mode == "face":
            video_columns["faces"] = len(faces)
        label = None
        if top is not None:
            label, confidence, named = top
            video_columns |= {"label": label, "confidence": confidence,
                              **prob_columns(list(named.values()))}
        self.writer.add_video(
            **common, num_clips=len(places), partial=info.partial,
            partial_reason=info.partial_reason, **video_columns,
        )
        result = self.result
        result.succeeded += 1
        result.partial += int(info.partial)
        result.clips += len(places)
        result.clips_no_audio += no_audio
        result.faces += len(faces)
        result.no_face += int(self.crop.mode == "face" and top is None)
        result.detect_s += info.detect_s
        if label is not None:
            result.labels[label] = result.labels.get(label, 0) + 1


def _box_columns(box: tuple[float, float, float, float] | None) -> dict[str, float | None]:
    """``face_x, face_y, face_w, face_h`` of ``box`` (all None without one)."""
    values = box if box is not None else (None, None, None, None)
    return dict(zip(("face_x", "face_y", "face_w", "face_h"), values, strict=True))


def process_shard(
    shard: int,
    videos: list[VideoObject],
    settings: BatchSettings,
    *,
    run_id: str,
    predictor: BasePredictor,
    date: str | None = None,
    on_video_done: Callable[[VideoObject, bool], None] | None = None,
) -> ShardResult:
    """Decode, predict and write one shard; returns its counts. Plain function (no Prefect).

    Every video of ``videos`` ends as one ``videos`` row (plus its clip rows) or one ``errors``
    row. Raises only when the shard's output cannot be written (after retries).
    """
    return ShardRunner(
        shard, videos, settings, run_id=run_id, predictor=predictor, date=date,
        on_video_done=on_video_done,
    ).run()


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
        "no_face": sum(r.no_face for r in results),
        "faces": sum(r.faces for r in results),
        "clips": sum(r.clips for r in results),
        "clips_no_audio": sum(r.clips_no_audio for r in results),
        "failed_by_stage": dict(stages),
        "label_distribution": {k: labels.get(k, 0) for k in EMOTION_LABELS},
        "decode_s": round(sum(r.decode_s for r in results), 3),
        "detect_s": round(sum(r.detect_s for r in results), 3),
        "infer_s": round(sum(r.infer_s for r in results), 3),
    }


# --- Prefect task -----------------------------------------------------------------------------
class _ShardProgress:
    """``on_video_done`` of `infer_shard`: a progress event per video, a log line per tenth."""

    def __init__(
        self, shard: int, total: int, logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self.shard = shard
        self.total = total
        self.logger = logger
        self.step = max(1, total // 10)
        self.done = 0

    def __call__(self, video: VideoObject, ok: bool) -> None:
        """Count ``video`` done (called from the shard's one consumer thread)."""
        self.done += 1
        progress.emit("video", uri=video.uri, ok=ok)
        if self.done % self.step == 0 or self.done == self.total:
            self.logger.info("shard %d: %d/%d videos", self.shard, self.done, self.total)


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
    result = process_shard(
        shard.shard, shard.videos, settings, run_id=run_id, predictor=predictor, date=date,
        on_video_done=_ShardProgress(shard.shard, len(shard.videos), logger),
    )
    logger.info(
        "shard %d done: %d ok, %d failed, %d clips in %.1fs (%.2f clips/s)",
        shard.shard, result.succeeded, result.failed, result.clips, result.wall_s,
        result.clips / result.wall_s if result.wall_s else 0.0,
    )
    return result
