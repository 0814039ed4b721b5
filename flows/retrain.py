"""Flow ``retrain``: labelled videos in, an evaluated model version out, promoted to
``production.json`` only when it beats the current one on the same validation split.

list + label -> split by actor -> clip cache -> train (resumable) -> evaluate -> publish.
Wiring only: the work lives in ``tasks/``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger

from tasks.common.settings import document_parameters
from tasks.training.settings import RetrainSettings
from tasks.training.steps import (
    evaluate_candidate,
    prepare_data,
    publish_candidate,
    train_candidate,
)


@flow(name="retrain", validate_parameters=False)  # RetrainSettings validates, field by field
@document_parameters(RetrainSettings)
def retrain(
    sources: list[str],
    registry: str,
    cache: str | None = None,
    checkpoint_dir: str | None = None,
    preset: str = "r50",
    modality: str = "video",
    num_frames: int = 48,
    img_size: int = 112,
    clip_seconds: float = 4.0,
    crop: str = "face",
    detect_fps: float = 5.0,
    max_clips_per_video: int = 4,
    epochs: int = 60,
    patience: int = 10,
    batch_size: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.05,
    crop_scale: float = 0.8,
    grad_clip: float | None = 1.0,
    val_fraction: float = 0.2,
    seed: int = 0,
    init: str | None = None,
    pretrained: str | None = None,
    resume: bool = False,
    force: bool = False,
    min_val_accuracy: float = 0.4,
    device: str = "auto",
    decode_threads: int = 2,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a candidate on ``sources``, evaluate it on held-out actors and publish it.

    The parameters are the fields of ``RetrainSettings`` (tasks/training/settings.py), which
    validates them; a test keeps this signature and the model in step. Returns a summary:
    model_version, where it was published, whether it was promoted and why, its metrics, the
    data counts and the timings.
    """
    settings = RetrainSettings.from_parameters(**locals())  # locals(): exactly the parameters
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    logger.info("retrain %s (run key %s) -> %s", settings.sources, settings.run_key(),
                settings.registry)
    data = prepare_data(settings)
    result = train_candidate(settings, data)
    evaluation = evaluate_candidate(settings, data, result)
    published = publish_candidate(settings, data, result, evaluation)
    epoch_s = [h["train_s"] + h["val_s"] for h in result.history]
    return {
        **published,
        "modality": settings.modality,
        "run_key": settings.run_key(),
        "checkpoint_uri": result.checkpoint_uri,
        "resumed_from_epoch": result.resumed_from,
        "data": data.report.as_dict(),
        "train_videos": len(data.split.train),
        "val_videos": len(data.split.val),
        "val_actors": data.split.val_actors,
        "timings": {
            "cache_s": round(data.cache.decode_s, 3),
            "decoded": data.cache.decoded,
            "already_cached": data.cache.cached,
            "epoch_s": [round(s, 3) for s in epoch_s],
            "total_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3),
        },
    }
