"""Before any video is read: check the run's model and output, list the source, skip what is
done, and cut the rest into shards of many videos (one Prefect task per shard, not per video)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from emotion_model.errors import CheckpointError
from emotion_model.face_clips import CropSpec
from tasks.batch.predictors import load_predictor
from tasks.batch.settings import BatchSettings
from tasks.batch.sink import read_done_keys, sweep_orphan_predictions
from tasks.common import progress
from tasks.common.listing import Listing, VideoObject, list_videos
from tasks.common.model_pointer import resolve_model_uri
from tasks.common.storage import check_writable, retry_transient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """The deployment file a run uses, resolved and loaded once to prove it works."""

    uri: str
    model_version: str
    labels: tuple[str, ...]
    num_frames: int
    img_size: int
    untrained: bool = False
    crop: str = "frame"
    """``"face"`` or ``"frame"``: how the model cuts its clips (its ``crop`` metadata)."""
    modality: str = "video"
    """``"video"``, ``"audio"`` or ``"audio-video"``: what the model reads (its ``modality``
    metadata; a file without it is a video model)."""


@dataclass
class ShardPlan:
    """One shard: its index and the videos it processes."""

    shard: int
    videos: list[VideoObject]


@dataclass
class RunPlan:
    """What a run will do: the shards, and what it skipped before starting."""

    shards: list[ShardPlan]
    listed: int
    skipped_not_video: int
    skipped_done: int
    truncated: int
    examples_not_video: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    """predictions files of shards that died before their videos file (see sink)."""

    @property
    def to_process(self) -> int:
        """Videos in the shards."""
        return sum(len(s.videos) for s in self.shards)


def preflight(settings: BatchSettings) -> ModelInfo:
    """Fail fast, before any video is read: the model loads, the output is writable.

    Loads the model through the per-process cache, so the shard tasks reuse it.
    """
    uri = resolve_model_uri(settings.model, settings.storage_options)
    # on Dask the workers run the model (and check their device); this process may have no GPU
    device = "cpu" if settings.task_runner == "dask" else settings.device
    try:
        predictor = load_predictor(uri, device, settings.storage_options)
    except FileNotFoundError as exc:
        raise CheckpointError(uri, "no such model file") from exc
    check_writable(settings.output, settings.storage_options)
    meta = predictor.metadata
    crop = predictor.crop
    if crop.mode == "face":
        installed = CropSpec.face(detector=crop.detector)
        if installed.detector_version != crop.detector_version:
            log.warning(
                "model %s was trained with face detector %s %s; this install has %s: its "
                "crops may differ slightly from the training ones", predictor.model_version,
                crop.detector, crop.detector_version, installed.detector_version)
    return ModelInfo(
        uri=uri,
        model_version=predictor.model_version,
        labels=predictor.labels,
        num_frames=predictor.num_frames,
        img_size=predictor.img_size,
        untrained=bool(meta.get("untrained", False)),
        crop=crop.mode,
        modality=predictor.modality,
    )


def plan_run(settings: BatchSettings, model_version: str) -> RunPlan:
    """List the source, drop videos already done by ``model_version``, cut into shards."""
    listing: Listing = list_videos(
        settings.source, settings.storage_options, max_videos=None
    )
    videos = listing.videos
    orphans = sweep_orphan_predictions(settings.output, settings.storage_options)
    skipped_done = 0
    if not settings.reprocess:
        done = read_done_keys(settings.output, model_version, settings.storage_options)
        todo = [v for v in videos if (v.uri, v.etag) not in done]
        skipped_done = len(videos) - len(todo)
        videos = todo
    truncated = 0
    if settings.max_videos is not None and len(videos) > settings.max_videos:
        truncated = len(videos) - settings.max_videos
        videos = videos[: settings.max_videos]
    size = settings.shard_size
    shards = [
        ShardPlan(shard=i, videos=videos[start : start + size])
        for i, start in enumerate(range(0, len(videos), size))
    ]
    return RunPlan(
        shards=shards,
        listed=len(listing.videos),
        skipped_not_video=listing.skipped_not_video,
        skipped_done=skipped_done,
        truncated=truncated,
        examples_not_video=list(listing.skipped_not_video_examples),
        orphans_removed=orphans,
    )


# --- Prefect tasks -----------------------------------------------------------------------------
def _preflight_task(settings: BatchSettings) -> ModelInfo:
    info = preflight(settings)
    get_run_logger().info(
        "model %s (version %s%s), output %s is writable",
        info.uri, info.model_version, ", UNTRAINED" if info.untrained else "", settings.output,
    )
    return info


def _plan_task(settings: BatchSettings, model_version: str) -> RunPlan:
    plan = plan_run(settings, model_version)
    progress.emit("planned", total=plan.to_process)
    get_run_logger().info(
        "listed %d videos under %s (%d other objects skipped); %d already done; "
        "%d to process in %d shards of up to %d",
        plan.listed, settings.source, plan.skipped_not_video, plan.skipped_done,
        plan.to_process, len(plan.shards), settings.shard_size,
    )
    return plan


preflight_task = task(
    _preflight_task, name="preflight", retries=2, retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
plan_run_task = task(
    _plan_task, name="list-and-plan", retries=3, retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
