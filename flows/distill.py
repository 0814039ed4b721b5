"""Flow ``distill``: a small student trained to copy a teacher's probabilities on unlabelled
(and labelled) videos, evaluated by its agreement with the teacher on held-out videos, and
published under ``student.json`` (``production.json`` is never touched).

load teacher -> list + split -> clip cache -> teacher outputs (cached) -> train (resumable)
-> evaluate -> publish. Wiring only: the work lives in ``tasks/``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger

from tasks.common.settings import document_parameters
from tasks.training.distill_settings import DistillSettings
from tasks.training.distill_steps import (
    evaluate_student,
    label_clips,
    load_teacher,
    prepare_distill_data,
    publish_student,
    recipe_of,
    train_student,
)


@flow(name="distill", validate_parameters=False)  # DistillSettings validates, field by field
@document_parameters(DistillSettings)
def distill(
    teacher: str,
    registry: str,
    sources: list[str] | None = None,
    labelled: list[str] | None = None,
    cache: str | None = None,
    checkpoint_dir: str | None = None,
    preset: str = "student",
    temperature: float = 4.0,
    kd_weight: float = 1.0,
    label_weight: float = 0.5,
    clip_seconds: float = 4.0,
    max_clips_per_video: int = 4,
    epochs: int = 30,
    patience: int = 10,
    batch_size: int | None = None,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    crop_scale: float = 0.8,
    grad_clip: float | None = 1.0,
    val_fraction: float = 0.2,
    seed: int = 0,
    resume: bool = False,
    min_agreement: float = 0.8,
    force: bool = False,
    device: str = "auto",
    decode_threads: int = 2,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Distill ``teacher`` into a student on ``sources`` (unlabelled) and ``labelled``, and
    publish it.

    The parameters are the fields of ``DistillSettings`` (tasks/training/distill_settings.py),
    which validates them. Returns a summary: the student's version, where it was published,
    whether ``student.json`` points to it and why, its agreement metrics, the data counts and
    the timings.
    """
    settings = DistillSettings.from_parameters(**locals())  # locals(): exactly the parameters
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    logger.info("distill %s on %d unlabelled and %d labelled sources -> %s", settings.teacher,
                len(settings.sources), len(settings.labelled), settings.registry)
    model = load_teacher(settings)
    data = prepare_distill_data(settings, model)
    teacher_report = label_clips(settings, model, data)
    result = train_student(settings, model, data)
    metrics = evaluate_student(settings, model, data, result)
    published = publish_student(settings, model, data, result, metrics, teacher_report)
    epoch_s = [h["train_s"] + h["val_s"] for h in result.history]
    return {
        **published,
        "teacher_version": model.version,
        "teacher_uri": model.uri,
        "preset": settings.preset,
        "run_key": recipe_of(settings, model).run_key(),
        "checkpoint_uri": result.checkpoint_uri,
        "resumed_from_epoch": result.resumed_from,
        "metrics": {k: metrics[k] for k in ("agreement", "clip_agreement", "mean_kl",
                                            "n_videos", "n_clips", "labelled")}
        | {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch},
        "train_videos": len(data.split.train),
        "val_videos": len(data.split.val),
        "timings": {
            "cache_s": round(data.cache.decode_s, 3),
            "decoded": data.cache.decoded,
            "already_cached": data.cache.cached,
            "teacher_s": round(teacher_report.seconds, 3),
            "teacher_computed": teacher_report.computed,
            "teacher_already_cached": teacher_report.already_cached,
            "epoch_s": [round(s, 3) for s in epoch_s],
            "total_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3),
        },
    }
