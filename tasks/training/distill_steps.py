"""The Prefect tasks of the ``distill`` flow: load the teacher -> prepare data -> label with the
teacher (cached) -> train the student (resumable) -> evaluate -> publish under ``student.json``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from emotion_model.audio import AudioSpec
from emotion_model.checkpoint import load_deployment, save_deployment
from emotion_model.face_clips import CropSpec
from emotion_model.model import EmotionClassifier, build_model
from emotion_model.predict import resolve_device
from tasks.common import progress
from tasks.common.model_pointer import resolve_model_uri
from tasks.common.storage import atomic_write_bytes, join, retry_transient
from tasks.errors import NoTrainingDataError
from tasks.training.clip_cache import CacheReport, ClipCache, ClipSpec, build_cache
from tasks.training.data import DataReport, Example, collect_examples, collect_unlabelled
from tasks.training.distill_settings import STUDENT_POINTER, DistillRecipe, DistillSettings
from tasks.training.distillation import (
    Distillation,
    agreement_metrics,
    labelled_comparison,
    student_summary,
)
from tasks.training.evaluation import curves_png
from tasks.training.loop import TrainResult, default_batch_size, read_model_file, train
from tasks.training.registry import MODEL_FILE, pointer_relative, version_uri, write_json
from tasks.training.split import Split, split_by_actor
from tasks.training.steps import cache_progress, data_fingerprint
from tasks.training.teacher_cache import (
    TeacherOutputs,
    TeacherReport,
    clip_logits,
    label_with_teacher,
)


@dataclass
class Teacher:
    """The loaded teacher: its model, metadata and where it came from."""

    model: EmotionClassifier
    metadata: dict[str, Any]
    uri: str

    @property
    def version(self) -> str:
        """The teacher's ``model_version``."""
        return str(self.metadata["model_version"])

    def clip_spec(self, settings: DistillSettings) -> ClipSpec:
        """The clips the teacher (and so the student) reads: its frames, size, crop and
        log-mel; the window and clips per video from the settings."""
        meta = self.metadata
        return ClipSpec(int(meta["num_frames"]), int(meta["img_size"]), settings.clip_seconds,
                        settings.max_clips_per_video, CropSpec.from_metadata(meta),
                        AudioSpec.from_metadata(meta.get("audio")))


@dataclass
class DistillData:
    """The split (labelled and unlabelled videos together), all in the clip cache."""

    split: Split
    labelled: DataReport
    unlabelled: DataReport
    cache: CacheReport
    spec: ClipSpec
    fingerprint: str


@task(name="load-teacher", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def load_teacher(settings: DistillSettings) -> Teacher:
    """The teacher a deployment file or a ``production.json`` names, loaded and checked."""
    uri = resolve_model_uri(settings.teacher, settings.storage_options)
    model, metadata = load_deployment(read_model_file(uri, settings.storage_options))
    get_run_logger().info("teacher %s (version %s, %s, %s crops, %d frames of %d px)", uri,
                          metadata["model_version"], metadata["modality"],
                          CropSpec.from_metadata(metadata).mode, metadata["num_frames"],
                          metadata["img_size"])
    return Teacher(model.eval(), metadata, uri)


@task(name="prepare-distill-data", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def prepare_distill_data(settings: DistillSettings, teacher: Teacher) -> DistillData:
    """List the labelled and unlabelled videos, split them by actor (by video where the actor
    is unknown), and decode each into the clip cache the way the teacher reads clips."""
    logger = get_run_logger()
    audio = teacher.metadata["modality"] != "video"
    labelled, labelled_report = collect_examples(settings.labelled, settings.storage_options,
                                                 audio=audio) if settings.labelled \
        else ([], DataReport())
    unlabelled, unlabelled_report = collect_unlabelled(settings.sources,
                                                       settings.storage_options, audio=audio)
    seen = {e.uri for e in labelled}
    examples = labelled + [e for e in unlabelled if e.uri not in seen]
    logger.info("distillation data: %d labelled and %d unlabelled videos",
                len(labelled), len(examples) - len(labelled))
    if not examples:
        raise NoTrainingDataError(f"no videos under {settings.sources + settings.labelled}")
    spec = teacher.clip_spec(settings)
    cache = ClipCache(settings.cache_uri, spec, settings.storage_options)
    progress.emit("stage", name="cache", total=len(examples))
    kept, cache_report = build_cache(cache, examples, threads=settings.decode_threads,
                                     on_video=cache_progress(len(examples)))
    logger.info("clip cache %s: %d decoded now, %d already cached, %d unreadable (%.1fs)",
                settings.cache_uri, cache_report.decoded, cache_report.cached,
                len(cache_report.corrupt), cache_report.decode_s)
    split = split_by_actor(kept, settings.val_fraction, settings.seed)
    if not split.train or not split.val:
        raise NoTrainingDataError(f"distillation needs videos on both sides of the split; got "
                                  f"{len(split.train)} train and {len(split.val)} held out")
    logger.info("split (seed %d): %d videos to learn from, %d held out (%d groups)",
                settings.seed, len(split.train), len(split.val), len(split.val_actors))
    return DistillData(split, labelled_report, unlabelled_report, cache_report, spec,
                       data_fingerprint(split.train))


@task(name="label-with-teacher", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def label_clips(settings: DistillSettings, teacher: Teacher, data: DistillData) -> TeacherReport:
    """The teacher's logits of every cached clip, computed once (`TeacherOutputs`)."""
    device = resolve_device(settings.device)
    cache = ClipCache(settings.cache_uri, data.spec, settings.storage_options)
    outputs = TeacherOutputs(cache, teacher.version)
    examples = data.split.train + data.split.val
    progress.emit("stage", name="teacher", total=len(examples))
    done = 0

    def on_video(example: Example) -> None:
        nonlocal done
        done += 1
        progress.emit("teacher", done=done, total=len(examples))

    report = label_with_teacher(teacher.model, outputs, examples,
                                num_frames=data.spec.num_frames,
                                batch_size=settings.batch_size or default_batch_size(device),
                                device=device, on_video=on_video)
    get_run_logger().info("teacher outputs: %d videos (%d clips) computed, %d already cached "
                          "(%.1fs)", report.computed, report.clips, report.already_cached,
                          report.seconds)
    return report


def recipe_of(settings: DistillSettings, teacher: Teacher) -> DistillRecipe:
    """The run's recipe: its run key holds the teacher's version and input contract."""
    return DistillRecipe(settings, teacher.version, int(teacher.metadata["num_frames"]),
                         int(teacher.metadata["img_size"]))


def initial_student(settings: DistillSettings, teacher: Teacher) -> EmotionClassifier:
    """A new student of the settings' preset, reading what the teacher reads."""
    torch.manual_seed(settings.seed)
    return build_model(settings.preset, modality=teacher.metadata["modality"],
                       audio_spec=AudioSpec.from_metadata(teacher.metadata.get("audio")))


@task(name="train-student", cache_policy=NO_CACHE)
def train_student(settings: DistillSettings, teacher: Teacher, data: DistillData) -> TrainResult:
    """Train (or resume) the student on the teacher's cached outputs, early-stopping on its
    agreement with the teacher on the held-out videos."""
    cache = ClipCache(settings.cache_uri, data.spec, settings.storage_options)
    outputs = TeacherOutputs(cache, teacher.version)
    objective = Distillation(settings.temperature, settings.kd_weight, settings.label_weight)
    progress.emit("stage", name="train", total=settings.epochs)

    def on_epoch(stats: Any, epochs: int) -> None:
        progress.emit("epoch", epoch=stats.epoch, epochs=epochs, train_loss=stats.train_loss,
                      val_accuracy=stats.val_accuracy, seconds=stats.train_s + stats.val_s)

    result = train(recipe_of(settings, teacher), outputs.index(data.split.train),
                   outputs.index(data.split.val), cache, on_epoch=on_epoch,
                   model=initial_student(settings, teacher), objective=objective)
    get_run_logger().info(
        "student trained %d epochs%s on %s; best agreement %.4f at epoch %d", result.epochs_run,
        f" (resumed after epoch {result.resumed_from})" if result.resumed_from is not None
        else "", result.device, result.best_val_accuracy, result.best_epoch)
    return result


@task(name="evaluate-student", cache_policy=NO_CACHE)
def evaluate_student(settings: DistillSettings, teacher: Teacher, data: DistillData,
                     result: TrainResult) -> dict[str, Any]:
    """Agreement and KL with the teacher on the held-out videos; accuracy and macro-F1 of
    student and teacher on the held-out labelled ones."""
    device = resolve_device(settings.device)
    cache = ClipCache(settings.cache_uri, data.spec, settings.storage_options)
    index = TeacherOutputs(cache, teacher.version).index(data.split.val)
    logits = clip_logits(result.model.to(device), index, cache,
                         num_frames=data.spec.num_frames,
                         batch_size=settings.batch_size or default_batch_size(device),
                         device=device)
    metrics = agreement_metrics(index, logits)
    metrics["labelled"] = labelled_comparison(index, logits)
    get_run_logger().info("student: %s", student_summary(metrics))
    return metrics


@task(name="publish-student", retries=3, retry_delay_seconds=[1, 5, 15],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def publish_student(settings: DistillSettings, teacher: Teacher, data: DistillData,
                    result: TrainResult, metrics: dict[str, Any],
                    teacher_report: TeacherReport) -> dict[str, Any]:
    """Write ``<registry>/<model_version>/`` (model, metrics.json, split.json, curves) and,
    once it is complete, point ``student.json`` at it when its agreement reaches
    ``min_agreement`` (or ``force``). ``production.json`` is never written."""
    logger = get_run_logger()
    so = settings.storage_options
    recipe = recipe_of(settings, teacher)
    buffer = io.BytesIO()
    meta = save_deployment(
        result.model, buffer, num_frames=data.spec.num_frames, img_size=data.spec.img_size,
        crop=data.spec.crop.to_metadata(),
        metrics={k: metrics[k] for k in ("agreement", "clip_agreement", "mean_kl", "n_videos")},
        data_fingerprint=data.fingerprint, val_actors=data.split.val_actors,
        teacher_version=teacher.version,
        distillation={"teacher_uri": teacher.uri, "preset": settings.preset,
                      "temperature": settings.temperature, "kd_weight": settings.kd_weight,
                      "label_weight": settings.label_weight, "epochs_run": result.epochs_run,
                      "best_epoch": result.best_epoch, "seed": settings.seed,
                      "run_key": recipe.run_key(),
                      "videos": {"learned_from": len(data.split.train),
                                 "held_out": len(data.split.val),
                                 "labelled": sum(e.label != "" for e in data.split.train)}},
    )
    version = meta["model_version"]
    folder = version_uri(settings.registry, version)
    model_uri = join(folder, MODEL_FILE)
    title = f"student {version} of {teacher.version}: agreement {metrics['agreement']:.3f}"
    atomic_write_bytes(join(folder, "split.json"),
                       json.dumps(data.split.as_dict(), indent=2).encode(), so)
    atomic_write_bytes(join(folder, "training_curves.png"), curves_png(result.history, title), so)
    atomic_write_bytes(model_uri, buffer.getvalue(), so)
    promote = settings.force or metrics["agreement"] >= settings.min_agreement
    reason = (f"agreement {metrics['agreement']:.3f} "
              + (f">= the floor {settings.min_agreement:.2f}"
                 if metrics["agreement"] >= settings.min_agreement
                 else f"< the floor {settings.min_agreement:.2f}"
                 + (": pointed at because force=True" if settings.force else "")))
    record = {
        "model_version": version, "model_uri": model_uri, "kind": "student",
        "teacher_version": teacher.version, "teacher_uri": teacher.uri,
        **metrics,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early, "resumed_from_epoch": result.resumed_from,
        "history": result.history, "device": result.device, "batch_size": result.batch_size,
        "data": {"labelled": data.labelled.as_dict(), "unlabelled": data.unlabelled.as_dict()},
        "data_fingerprint": data.fingerprint,
        "train_videos": len(data.split.train), "val_videos": len(data.split.val),
        "val_groups": data.split.val_actors,
        "cache": {"decoded": data.cache.decoded, "already_cached": data.cache.cached,
                  "decode_s": round(data.cache.decode_s, 3)},
        "teacher_outputs": {"computed": teacher_report.computed,
                            "already_cached": teacher_report.already_cached,
                            "seconds": round(teacher_report.seconds, 3)},
        "settings": settings.public_dict(), "run_key": recipe.run_key(),
        "pointed_at": promote, "decision": reason,
    }
    write_json(join(folder, "metrics.json"), record, so)  # the folder is complete from here
    pointer = None
    if promote:
        pointer = {
            "model_version": version, "uri": pointer_relative(settings.registry, model_uri),
            "kind": "student", "teacher_version": teacher.version,
            "agreement": metrics["agreement"], "mean_kl": metrics["mean_kl"],
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "reason": reason, "forced": settings.force and
            metrics["agreement"] < settings.min_agreement,
        }
        write_json(join(settings.registry, STUDENT_POINTER), pointer, so)
    logger.log(logging.INFO if promote else logging.WARNING, "published %s; %s", folder,
               f"{STUDENT_POINTER} now points to it ({reason})" if promote
               else f"{STUDENT_POINTER} unchanged ({reason})")
    create_markdown_artifact(markdown=_markdown(metrics, reason), key="distill-metrics",
                             description=title)
    return {"model_version": version, "version_uri": folder, "model_uri": model_uri,
            "pointed_at": promote, "decision": reason, "pointer": pointer}


def _markdown(metrics: dict[str, Any], reason: str) -> str:
    lines = [f"**{student_summary(metrics)}**", "", f"student.json: {reason}."]
    labelled = metrics.get("labelled")
    if labelled:
        lines += ["", "| model | accuracy | macro-F1 |", "|---|---|---|"]
        lines += [f"| {name} | {labelled[name]['accuracy']:.3f} | "
                  f"{labelled[name]['macro_f1']:.3f} |" for name in ("student", "teacher")]
    return "\n".join(lines)
