"""Flow ``retrain``: labelled videos in, an evaluated model version out, promoted to
``production.json`` only when it beats the current one on the same validation split.

list + label -> split by actor -> clip cache -> train (resumable) -> evaluate -> publish.
Wiring only: the work lives in ``tasks/``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from pydantic import ValidationError

from tasks.batch.settings import format_validation_error
from tasks.training.settings import RetrainSettings
from tasks.training.steps import (
    evaluate_candidate,
    prepare_data,
    publish_candidate,
    train_candidate,
)


def make_retrain_settings(**parameters: Any) -> RetrainSettings:
    """Validate the flow's parameters; a bad one raises ValueError naming the field."""
    try:
        return RetrainSettings(**parameters)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc)) from None


@flow(name="retrain", validate_parameters=False)  # RetrainSettings validates, field by field
def retrain(
    sources: list[str],
    registry: str,
    cache: str | None = None,
    checkpoint_dir: str | None = None,
    preset: str = "r50",
    num_frames: int = 48,
    img_size: int = 112,
    clip_seconds: float = 4.0,
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
    device: str = "auto",
    decode_threads: int = 2,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a candidate on ``sources``, evaluate it on held-out actors and publish it.

    Args:
        sources: folders or s3:// prefixes in RAVDESS or CREMA-D layout, or manifests (.csv or
            .parquet with uri, label, actor).
        registry: folder or s3:// prefix of the model registry.
        cache: clip cache (default ``<registry>/cache``).
        checkpoint_dir: per-epoch checkpoint folder (default ``<registry>/training/<run key>``).
        preset: ``r50`` (the model card) or ``small`` (width 16).
        num_frames: frames per clip (multiple of 4). img_size: frame size in pixels.
        clip_seconds: clip window; max_clips_per_video: windows cached per video.
        epochs: epochs planned (the one-cycle schedule spans them). patience: early stopping.
        batch_size: clips per step (default CPU 8, GPU 16). lr: peak learning rate.
        weight_decay, label_smoothing, crop_scale, grad_clip: the recipe's knobs.
        val_fraction: share of actors held out. seed: split, shuffles and initial weights.
        init: deployment file to fine-tune. pretrained: Kinetics SlowFast-R50 weights.
        resume: continue from the last checkpoint of this run key (a lost spot instance).
        force: promote even when the candidate does not beat production (logged).
        device: auto, cpu, cuda or cuda:N. decode_threads: videos decoded at once.
        storage_options: s3fs options (endpoint_url, profile, ...).

    Returns a summary: model_version, where it was published, whether it was promoted and
    why, its metrics, the data counts and the timings.
    """
    settings = make_retrain_settings(
        sources=sources, registry=registry, cache=cache, checkpoint_dir=checkpoint_dir,
        preset=preset, num_frames=num_frames, img_size=img_size, clip_seconds=clip_seconds,
        max_clips_per_video=max_clips_per_video, epochs=epochs, patience=patience,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        label_smoothing=label_smoothing, crop_scale=crop_scale, grad_clip=grad_clip,
        val_fraction=val_fraction, seed=seed, init=init, pretrained=pretrained, resume=resume,
        force=force, device=device, decode_threads=decode_threads,
        storage_options=storage_options,
    )
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
