"""The Prefect tasks of the ``retrain`` flow: prepare data -> train -> evaluate -> publish."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from emotion_model.audio import AudioSpec
from emotion_model.checkpoint import load_deployment, save_deployment
from emotion_model.face_clips import CropSpec
from emotion_model.labels import EMOTION_LABELS
from emotion_model.predict import resolve_device
from tasks.common import progress
from tasks.common.model_pointer import pointer_target, pointer_uri
from tasks.common.storage import atomic_write_bytes, join, read_bytes, retry_transient
from tasks.errors import NoTrainingDataError
from tasks.training.clip_cache import CacheReport, ClipCache, ClipSpec, build_cache
from tasks.training.data import DataReport, Example, collect_examples
from tasks.training.evaluation import (
    compute_metrics,
    confusion_parquet,
    confusion_png,
    curves_png,
    metrics_table,
    predictions_parquet,
)
from tasks.training.loop import ClipIndex, TrainResult, default_batch_size, evaluate_clips, train
from tasks.training.registry import (
    MODEL_FILE,
    Candidate,
    Decision,
    decide,
    promote_candidate,
    read_json,
    read_production,
    version_uri,
    write_json,
)
from tasks.training.settings import RetrainSettings
from tasks.training.split import Split, check_split, class_counts, split_by_actor


@dataclass
class PreparedData:
    """The split, with every video in it decoded into the clip cache."""

    split: Split
    report: DataReport
    cache: CacheReport
    spec: ClipSpec
    fingerprint: str = ""


@dataclass
class Evaluation:
    """The candidate's validation metrics, and production's on the same split."""

    metrics: dict[str, Any]
    probs: np.ndarray
    champion: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    champion_problem: str | None = None
    notes: list[str] = field(default_factory=list)


def spec_of(settings: RetrainSettings, num_frames: int | None = None,
            img_size: int | None = None, crop: CropSpec | None = None) -> ClipSpec:
    """The clip spec of the settings (or of another model's frames, size and crop), with the
    log-mel of the settings' modality (`RetrainSettings.audio_spec`)."""
    return ClipSpec(num_frames or settings.num_frames, img_size or settings.img_size,
                    settings.clip_seconds, settings.max_clips_per_video,
                    crop or settings.crop_spec(), settings.audio_spec())


def data_fingerprint(examples: list[Example]) -> str:
    """sha256 (first 16 hex) of the training videos' ``(uri, etag, label)``."""
    digest = hashlib.sha256()
    for e in sorted(examples, key=lambda e: e.uri):
        digest.update(f"{e.uri}|{e.etag}|{e.label}\n".encode())
    return digest.hexdigest()[:16]


def cache_progress(total: int) -> Any:
    """A `build_cache` ``on_video`` callback that emits ``cache`` progress events."""
    done = 0

    def on_video(example: Example, ok: bool) -> None:
        nonlocal done
        done += 1
        progress.emit("cache", done=done, total=total, ok=ok)

    return on_video


@task(name="prepare-training-data", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def prepare_data(settings: RetrainSettings) -> PreparedData:
    """List and label the videos, split them by actor, check the recipe can learn from the
    split (``check_split``: before decoding on the labels, after it on the clips), and decode
    each video into the clip cache."""
    logger = get_run_logger()
    examples, report = collect_examples(settings.sources, settings.storage_options,
                                        audio=settings.modality != "video")
    logger.info(
        "found %d labelled videos (%d listed; outside the six classes %s; %d names not "
        "parsed; %d duplicate RAVDESS copies dropped; %d manifest rows missing)",
        report.used, report.listed, report.outside_classes or "none", report.unparsed,
        report.duplicates_removed, report.missing,
    )
    if not examples:
        raise NoTrainingDataError(f"no labelled videos under {settings.sources} (names must follow "
                         "RAVDESS or CREMA-D, or give a manifest with uri, label, actor)")
    check_split(split_by_actor(examples, settings.val_fraction, settings.seed))  # before decoding
    spec = spec_of(settings)
    cache = ClipCache(settings.cache_uri, spec, settings.storage_options)
    progress.emit("stage", name="cache", total=len(examples))
    kept, cache_report = build_cache(cache, examples, threads=settings.decode_threads,
                                     on_video=cache_progress(len(examples)))
    report.corrupt = len(cache_report.corrupt)
    report.corrupt_examples = [f"{uri}: {why}" for uri, why in cache_report.corrupt[:5]]
    logger.info("clip cache %s: %d decoded now, %d already cached, %d unreadable (%.1fs)",
                settings.cache_uri, cache_report.decoded, cache_report.cached,
                len(cache_report.corrupt), cache_report.decode_s)
    if spec.audio is not None:
        kept = _without_sound(settings, cache, kept, report)
    split = split_by_actor(kept, settings.val_fraction, settings.seed)
    logger.info("split by actor (seed %d): train %d videos of %d actors %s, validation %d "
                "videos of %d actors %s", settings.seed, len(split.train),
                len(split.train_actors), class_counts(split.train), len(split.val),
                len(split.val_actors), class_counts(split.val))
    batch_size = settings.batch_size or default_batch_size(resolve_device(settings.device))
    train_clips = sum(cache.count(e) for e in split.train)
    for warning in check_split(split, train_clips=train_clips, batch_size=batch_size):
        logger.warning(warning)
    return PreparedData(split=split, report=report, cache=cache_report, spec=spec,
                        fingerprint=data_fingerprint(split.train))


def _without_sound(settings: RetrainSettings, cache: ClipCache, kept: list[Example],
                   report: DataReport) -> list[Example]:
    """Count (in ``report``) the cached videos with no sound in any clip; an audio-only model
    leaves them out (an audio-video one trains on their frames, with its no-audio embedding)."""
    logger = get_run_logger()
    silent = [e for e in kept if not cache.load_audio(e)["present"].any()]
    report.no_audio = len(silent)
    report.no_audio_examples = [e.uri for e in silent[:5]]
    if not silent:
        return kept
    if settings.modality == "audio":
        report.no_audio_left_out = len(silent)
        gone = set(silent)
        kept = [e for e in kept if e not in gone]
        if not kept:
            raise NoTrainingDataError(
                f"none of the {len(silent)} videos has sound: an audio model has nothing to "
                "learn from (RAVDESS: the audio-video files, modality 01, carry it; 02 do not)")
    logger.warning("%d of %d videos have no sound (e.g. %s): %s", len(silent),
                   len(kept) + report.no_audio_left_out, silent[0].uri,
                   "left out of the audio model's training and validation"
                   if settings.modality == "audio" else
                   "the audio-video model sees their frames and its no-audio embedding")
    return kept


@task(name="train-model", cache_policy=NO_CACHE)
def train_candidate(settings: RetrainSettings, data: PreparedData) -> TrainResult:
    """Train (or resume) with early stopping; returns the best epoch's model."""
    logger = get_run_logger()
    cache = ClipCache(settings.cache_uri, data.spec, settings.storage_options)
    progress.emit("stage", name="train", total=settings.epochs)

    def on_epoch(stats: Any, epochs: int) -> None:
        progress.emit("epoch", epoch=stats.epoch, epochs=epochs, train_loss=stats.train_loss,
                      val_accuracy=stats.val_accuracy, seconds=stats.train_s + stats.val_s)

    result = train(settings, data.split.train, data.split.val, cache, on_epoch=on_epoch)
    logger.info("trained %d epochs%s on %s; best validation accuracy %.4f at epoch %d",
                result.epochs_run, f" (resumed after epoch {result.resumed_from})"
                if result.resumed_from is not None else "", result.device,
                result.best_val_accuracy, result.best_epoch)
    return result


def _evaluate(model: Any, examples: list[Example], cache: ClipCache, num_frames: int,
              settings: RetrainSettings) -> tuple[dict[str, Any], np.ndarray]:
    device = resolve_device(settings.device)
    index = ClipIndex.build(examples, cache)
    probs, _ = evaluate_clips(model.to(device), index, cache, num_frames=num_frames,
                              batch_size=settings.batch_size or default_batch_size(device),
                              device=device)
    return compute_metrics(probs, examples), probs


@task(name="evaluate-model", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def evaluate_candidate(settings: RetrainSettings, data: PreparedData,
                       result: TrainResult) -> Evaluation:
    """The candidate's metrics on the held-out actors, and production's on the same videos."""
    logger = get_run_logger()
    cache = ClipCache(settings.cache_uri, data.spec, settings.storage_options)
    metrics, probs = _evaluate(result.model, data.split.val, cache, settings.num_frames,
                               settings)
    evaluation = Evaluation(metrics=metrics, probs=probs)
    champion = read_production(settings.registry, settings.storage_options)
    evaluation.champion = champion
    if champion is not None:
        evaluation.champion_metrics, evaluation.champion_problem, notes = champion_metrics(
            settings, data, champion)
        evaluation.notes.extend(notes)
    logger.info("candidate: validation accuracy %.4f, macro-F1 %.4f on %d videos of %d actors",
                metrics["val_accuracy"], metrics["val_macro_f1"], metrics["n_val"],
                len(data.split.val_actors))
    for note in evaluation.notes:
        logger.warning(note)
    return evaluation


def champion_metrics(settings: RetrainSettings, data: PreparedData, champion: dict[str, Any]
                     ) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """The metrics of the model a ``production.json`` names on the candidate's validation
    videos: ``(metrics, None, notes)``, or ``(None, problem, [])`` when it cannot be loaded or
    evaluated (an unreadable production model must not block a new one)."""
    logger = get_run_logger()
    try:
        model_uri = pointer_target(champion, pointer_uri(settings.registry))
        model_file = io.BytesIO(read_bytes(model_uri, settings.storage_options))
        model_file.name = model_uri  # errors name it
        model, meta = load_deployment(model_file)
        spec = dataclasses.replace(  # the clips and the sound that model reads
            spec_of(settings, int(meta["num_frames"]), int(meta["img_size"]),
                    CropSpec.from_metadata(meta)), audio=AudioSpec.from_metadata(meta["audio"]))
        champion_cache = ClipCache(settings.cache_uri, spec, settings.storage_options)
        kept, _ = build_cache(champion_cache, data.split.val, threads=settings.decode_threads)
        metrics, _ = _evaluate(model, kept, champion_cache, spec.num_frames, settings)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        logger.warning("production model %s could not be evaluated: %s",
                       champion.get("model_version"), problem)
        return None, problem, []
    seen = _champion_saw(settings, champion, data.split.val_actors)
    notes = [f"production was trained on {len(seen)} of the validation actors "
             f"({', '.join(seen[:5])}): its score is optimistic"] if seen else []
    return metrics, None, notes


def _champion_saw(settings: RetrainSettings, champion: dict[str, Any],
                  val_actors: list[str]) -> list[str]:
    version = champion.get("model_version")
    if not version:
        return []
    split = read_json(join(version_uri(settings.registry, version), "split.json"),
                      settings.storage_options) or {}
    return sorted(set(split.get("train_actors", [])) & set(val_actors))


@task(name="publish-model", retries=3, retry_delay_seconds=[1, 5, 15],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def publish_candidate(settings: RetrainSettings, data: PreparedData, result: TrainResult,
                      evaluation: Evaluation) -> dict[str, Any]:
    """Write ``<registry>/<model_version>/`` and, once it is complete, move ``production.json``
    when the candidate clears the floor and beats production on the same validation split (or
    ``force``). The pointer moves by a conditional write; when another retrain promoted in the
    meantime, its model is evaluated on this split and the decision taken again
    (``promote_candidate``)."""
    logger = get_run_logger()
    so = settings.storage_options
    metrics = evaluation.metrics
    buffer = _deployment_bytes(settings, data, result, metrics)
    model_version = buffer[1]["model_version"]
    folder = version_uri(settings.registry, model_version)
    model_uri = join(folder, MODEL_FILE)
    title = f"model {model_version}: validation accuracy {metrics['val_accuracy']:.3f}"
    files = {
        "split.json": json.dumps(data.split.as_dict(), indent=2).encode(),
        "confusion.parquet": confusion_parquet(metrics["confusion"]),
        "confusion.png": confusion_png(metrics["confusion"], title),
        "training_curves.png": curves_png(result.history, title),
        "val_predictions.parquet": predictions_parquet(evaluation.probs, data.split.val),
    }
    for name, content in files.items():
        atomic_write_bytes(join(folder, name), content, so)
    atomic_write_bytes(model_uri, buffer[0], so)

    # The decision against the production model evaluated so far; promote_candidate confirms it
    # against the pointer as it is when writing (metrics.json is rewritten if that changed it).
    decision = decide(metrics, evaluation.champion_metrics, force=settings.force,
                      floor=settings.min_val_accuracy,
                      champion_problem=evaluation.champion_problem)
    record = {
        "model_version": model_version,
        "model_uri": model_uri,
        **{k: metrics[k] for k in ("val_accuracy", "val_macro_f1", "per_class", "per_dataset",
                                   "confusion", "labels", "n_val")},
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        "history": result.history,
        "device": result.device,
        "batch_size": result.batch_size,
        **_decision_fields(evaluation.champion, evaluation.champion_metrics, decision),
        "notes": evaluation.notes,
        "data": data.report.as_dict(),
        "data_fingerprint": data.fingerprint,
        "train_videos": len(data.split.train),
        "val_videos": len(data.split.val),
        "train_actors": data.split.train_actors,
        "val_actors": data.split.val_actors,
        "cache": {"decoded": data.cache.decoded, "already_cached": data.cache.cached,
                  "decode_s": round(data.cache.decode_s, 3)},
        "settings": settings.public_dict(),
        "run_key": settings.run_key(),
    }
    write_json(join(folder, "metrics.json"), record, so)  # the folder is complete from here
    promotion = promote_candidate(
        settings.registry, Candidate(model_version, model_uri, metrics, settings.run_key()),
        champion=evaluation.champion, champion_metrics=evaluation.champion_metrics,
        champion_problem=evaluation.champion_problem,
        evaluate_champion=lambda pointer: champion_metrics(settings, data, pointer)[:2],
        force=settings.force, floor=settings.min_val_accuracy, storage_options=so)
    pointer = promotion.pointer
    moved = (promotion.champion or {}).get("model_version") != \
        (evaluation.champion or {}).get("model_version")
    if promotion.decision != decision or moved:
        decision = promotion.decision
        record.update(_decision_fields(promotion.champion, promotion.champion_metrics, decision),
                      promotion_conflicts=promotion.conflicts)
        write_json(join(folder, "metrics.json"), record, so)
    outcome = (f"production.json now points to it ({decision.reason})" if decision.promote
               else f"production unchanged ({decision.reason})")
    below_floor = metrics["val_accuracy"] < settings.min_val_accuracy
    notable = decision.forced or (below_floor and not decision.promote)  # forced, or floored
    logger.log(logging.WARNING if notable else logging.INFO, "published %s; %s", folder, outcome)
    create_table_artifact(table=metrics_table(metrics), key="retrain-metrics",
                          description=f"{title}; promoted: {decision.promote}")
    create_markdown_artifact(markdown=_confusion_markdown(metrics, decision),
                             key="retrain-confusion", description=title)
    return {"model_version": model_version, "version_uri": folder, "model_uri": model_uri,
            "promoted": decision.promote, "decision": decision.reason, "pointer": pointer,
            "metrics": {k: record[k] for k in ("val_accuracy", "val_macro_f1", "n_val",
                                               "epochs_run", "best_epoch")}}


def _decision_fields(champion: dict[str, Any] | None, champion_metrics: dict[str, Any] | None,
                     decision: Decision) -> dict[str, Any]:
    """The ``metrics.json`` fields that record production (as compared against) and the
    decision."""
    return {
        "production_metrics_same_split": champion_metrics and {
            k: champion_metrics[k] for k in ("val_accuracy", "val_macro_f1")},
        "production_model_version": (champion or {}).get("model_version"),
        "promoted": decision.promote,
        "decision": decision.reason,
    }


def _deployment_bytes(settings: RetrainSettings, data: PreparedData, result: TrainResult,
                      metrics: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    buffer = io.BytesIO()
    meta = save_deployment(
        result.model, buffer, num_frames=settings.num_frames, img_size=settings.img_size,
        crop=data.spec.crop.to_metadata(),
        metrics={k: metrics[k] for k in ("val_accuracy", "val_macro_f1", "n_val")},
        data_fingerprint=data.fingerprint, val_actors=data.split.val_actors,
        training={"preset": settings.preset, "epochs_run": result.epochs_run,
                  "best_epoch": result.best_epoch, "seed": settings.seed,
                  "run_key": settings.run_key()},
    )
    return buffer.getvalue(), meta


def _confusion_markdown(metrics: dict[str, Any], decision: Decision) -> str:
    head = "| true \\ predicted | " + " | ".join(EMOTION_LABELS) + " |"
    sep = "|---" * (len(EMOTION_LABELS) + 1) + "|"
    rows = [f"| {label} | " + " | ".join(str(v) for v in metrics["confusion"][i]) + " |"
            for i, label in enumerate(EMOTION_LABELS)]
    return "\n".join([
        f"**Validation accuracy** {metrics['val_accuracy']:.4f}, **macro-F1** "
        f"{metrics['val_macro_f1']:.4f} on {metrics['n_val']} videos of held-out actors.",
        "", f"Promotion: {decision.reason}.", "", head, sep, *rows,
    ])

