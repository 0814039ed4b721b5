"""The Prefect tasks of the ``retrain`` flow: prepare data -> train -> evaluate -> publish."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from emotion_model.checkpoint import load_deployment, save_deployment
from emotion_model.labels import EMOTION_LABELS
from emotion_model.predict import resolve_device
from tasks.common import progress
from tasks.common.model_pointer import pointer_uri, resolve_model_uri
from tasks.common.storage import atomic_write_bytes, join, retry_transient
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
    Decision,
    decide,
    promote,
    read_json,
    read_production,
    version_uri,
    write_json,
)
from tasks.training.settings import RetrainSettings
from tasks.training.split import Split, class_counts, split_by_actor


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
            img_size: int | None = None) -> ClipSpec:
    """The clip spec of the settings (or of another model's frames and size)."""
    return ClipSpec(num_frames or settings.num_frames, img_size or settings.img_size,
                    settings.clip_seconds, settings.max_clips_per_video)


def data_fingerprint(examples: list[Example]) -> str:
    """sha256 (first 16 hex) of the training videos' ``(uri, etag, label)``."""
    digest = hashlib.sha256()
    for e in sorted(examples, key=lambda e: e.uri):
        digest.update(f"{e.uri}|{e.etag}|{e.label}\n".encode())
    return digest.hexdigest()[:16]


def _cache_progress(total: int) -> Any:
    done = 0

    def on_video(example: Example, ok: bool) -> None:
        nonlocal done
        done += 1
        progress.emit("cache", done=done, total=total, ok=ok)

    return on_video


@task(name="prepare-training-data", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def prepare_data(settings: RetrainSettings) -> PreparedData:
    """List and label the videos, split them by actor, and decode each into the clip cache."""
    logger = get_run_logger()
    examples, report = collect_examples(settings.sources, settings.storage_options)
    logger.info(
        "found %d labelled videos (%d listed; outside the six classes %s; %d names not "
        "parsed; %d duplicate RAVDESS copies dropped; %d manifest rows missing)",
        report.used, report.listed, report.outside_classes or "none", report.unparsed,
        report.duplicates_removed, report.missing,
    )
    if not examples:
        raise NoTrainingDataError(f"no labelled videos under {settings.sources} (names must follow "
                         "RAVDESS or CREMA-D, or give a manifest with uri, label, actor)")
    spec = spec_of(settings)
    cache = ClipCache(settings.cache_uri, spec, settings.storage_options)
    progress.emit("stage", name="cache", total=len(examples))
    kept, cache_report = build_cache(cache, examples, threads=settings.decode_threads,
                                     on_video=_cache_progress(len(examples)))
    report.corrupt = len(cache_report.corrupt)
    report.corrupt_examples = [f"{uri}: {why}" for uri, why in cache_report.corrupt[:5]]
    logger.info("clip cache %s: %d decoded now, %d already cached, %d unreadable (%.1fs)",
                settings.cache_uri, cache_report.decoded, cache_report.cached,
                len(cache_report.corrupt), cache_report.decode_s)
    split = split_by_actor(kept, settings.val_fraction, settings.seed)
    logger.info("split by actor (seed %d): train %d videos of %d actors %s, validation %d "
                "videos of %d actors %s", settings.seed, len(split.train),
                len(split.train_actors), class_counts(split.train), len(split.val),
                len(split.val_actors), class_counts(split.val))
    return PreparedData(split=split, report=report, cache=cache_report, spec=spec,
                        fingerprint=data_fingerprint(split.train))


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
        try:
            model_uri = resolve_model_uri(pointer_uri(settings.registry),
                                          settings.storage_options)
            model, meta = load_deployment(model_uri)
            spec = spec_of(settings, int(meta["num_frames"]), int(meta["img_size"]))
            champion_cache = ClipCache(settings.cache_uri, spec, settings.storage_options)
            kept, _ = build_cache(champion_cache, data.split.val,
                                  threads=settings.decode_threads)
            evaluation.champion_metrics, _ = _evaluate(model, kept, champion_cache,
                                                       spec.num_frames, settings)
            seen = _champion_saw(settings, champion, data.split.val_actors)
            if seen:
                evaluation.notes.append(
                    f"production was trained on {len(seen)} of the validation actors "
                    f"({', '.join(seen[:5])}): its score is optimistic")
        except Exception as exc:  # an unreadable production model must not block a new one
            evaluation.champion_problem = f"{type(exc).__name__}: {exc}"
            logger.warning("production model could not be evaluated: %s",
                           evaluation.champion_problem)
    logger.info("candidate: validation accuracy %.4f, macro-F1 %.4f on %d videos of %d actors",
                metrics["val_accuracy"], metrics["val_macro_f1"], metrics["n_val"],
                len(data.split.val_actors))
    for note in evaluation.notes:
        logger.warning(note)
    return evaluation


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
    """Write ``<registry>/<model_version>/`` and move ``production.json`` when the candidate
    beats production on the same validation split (or ``force``)."""
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

    if evaluation.champion is not None and evaluation.champion_metrics is None:
        decision = Decision(True, f"production model unreadable "
                                  f"({evaluation.champion_problem}); replaced")
    else:
        decision = decide(metrics, evaluation.champion_metrics, force=settings.force)
    if decision.forced:
        logger.warning("force=True: promoting %s although it does not beat production (%s)",
                       model_version, decision.reason)
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
        "production_metrics_same_split": evaluation.champion_metrics and {
            k: evaluation.champion_metrics[k] for k in ("val_accuracy", "val_macro_f1")},
        "production_model_version": (evaluation.champion or {}).get("model_version"),
        "promoted": decision.promote,
        "decision": decision.reason,
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
    write_json(join(folder, "metrics.json"), record, so)
    pointer = None
    if decision.promote:
        pointer = promote(settings.registry, model_version=model_version, model_uri=model_uri,
                          metrics=metrics, decision=decision, previous=evaluation.champion,
                          run_key=settings.run_key(), storage_options=so)
    logger.info("published %s; %s", folder,
                f"production.json now points to it ({decision.reason})" if decision.promote
                else f"production unchanged ({decision.reason})")
    create_table_artifact(table=metrics_table(metrics), key="retrain-metrics",
                          description=f"{title}; promoted: {decision.promote}")
    create_markdown_artifact(markdown=_confusion_markdown(metrics, decision),
                             key="retrain-confusion", description=title)
    return {"model_version": model_version, "version_uri": folder, "model_uri": model_uri,
            "promoted": decision.promote, "decision": decision.reason, "pointer": pointer,
            "metrics": {k: record[k] for k in ("val_accuracy", "val_macro_f1", "n_val",
                                               "epochs_run", "best_epoch")}}


def _deployment_bytes(settings: RetrainSettings, data: PreparedData, result: TrainResult,
                      metrics: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    buffer = io.BytesIO()
    meta = save_deployment(
        result.model, buffer, num_frames=settings.num_frames, img_size=settings.img_size,
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

