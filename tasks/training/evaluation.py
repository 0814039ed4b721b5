"""Validation metrics of a model on held-out actors: accuracy, macro-F1, per-class precision
and recall, per-dataset accuracy, the confusion matrix (Parquet and PNG), training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emotion_model.labels import EMOTION_LABELS
from tasks.training.data import Example


def compute_metrics(probs: np.ndarray, examples: Sequence[Example]) -> dict[str, Any]:
    """Metrics of per-video probabilities ``[N, 6]`` against the examples' labels.

    Returns ``val_accuracy``, ``val_macro_f1``, ``per_class`` (precision, recall, f1, support),
    ``per_dataset`` (accuracy, n), ``confusion`` (rows: true label, columns: predicted) and
    ``n_val``.
    """
    if len(examples) != len(probs):
        raise ValueError(f"{len(probs)} predictions for {len(examples)} examples")
    k = len(EMOTION_LABELS)
    truth = np.array([EMOTION_LABELS.index(e.label) for e in examples], np.int64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for i, label in enumerate(EMOTION_LABELS):
        tp = int(confusion[i, i])
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 6), "recall": round(recall, 6),
                            "f1": round(f1, 6), "support": actual}
        if actual:
            f1s.append(f1)
    per_dataset: dict[str, dict[str, float | int]] = {}
    for dataset in sorted({e.dataset for e in examples}):
        mask = np.array([e.dataset == dataset for e in examples])
        per_dataset[dataset] = {"accuracy": round(float((pred[mask] == truth[mask]).mean()), 6),
                                "n": int(mask.sum())}
    accuracy = float((pred == truth).mean()) if len(truth) else 0.0
    return {
        "val_accuracy": round(accuracy, 6),
        "val_macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 6),
        "per_class": per_class,
        "per_dataset": per_dataset,
        "confusion": confusion.tolist(),
        "labels": list(EMOTION_LABELS),
        "n_val": len(examples),
    }


def confusion_parquet(confusion: Sequence[Sequence[int]]) -> bytes:
    """The confusion matrix as Parquet, one row per (true, predicted) pair with its count."""
    rows = [(t, p, int(confusion[i][j])) for i, t in enumerate(EMOTION_LABELS)
            for j, p in enumerate(EMOTION_LABELS)]
    table = pa.table({
        "true_label": pa.array([r[0] for r in rows], pa.string()),
        "predicted_label": pa.array([r[1] for r in rows], pa.string()),
        "count": pa.array([r[2] for r in rows], pa.int64()),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def predictions_parquet(probs: np.ndarray, examples: Sequence[Example]) -> bytes:
    """Per-video validation predictions as Parquet (uri, actor, dataset, label, predicted,
    confidence and one ``prob_*`` column per label)."""
    pred = probs.argmax(1)
    columns: dict[str, pa.Array] = {
        "video_uri": pa.array([e.uri for e in examples], pa.string()),
        "actor": pa.array([e.actor for e in examples], pa.string()),
        "dataset": pa.array([e.dataset for e in examples], pa.string()),
        "label": pa.array([e.label for e in examples], pa.string()),
        "predicted": pa.array([EMOTION_LABELS[i] for i in pred], pa.string()),
        "confidence": pa.array(probs.max(1).astype(np.float32), pa.float32()),
    }
    for i, label in enumerate(EMOTION_LABELS):
        columns[f"prob_{label}"] = pa.array(probs[:, i].astype(np.float32), pa.float32())
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def confusion_png(confusion: Sequence[Sequence[int]], title: str) -> bytes:
    """The confusion matrix as a PNG (counts, rows normalised for colour)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion, dtype=np.float64)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTION_LABELS)), EMOTION_LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTION_LABELS)), EMOTION_LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(EMOTION_LABELS)):
        for j in range(len(EMOTION_LABELS)):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    return _figure_png(fig)


def curves_png(history: Sequence[dict[str, Any]], title: str) -> bytes:
    """Training curves (loss and accuracy, train and validation, per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], label="train")
    left.plot(epochs, [h["val_loss"] for h in history], label="validation")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    right.plot(epochs, [h["train_accuracy"] for h in history], label="train (augmented)")
    right.plot(epochs, [h["val_accuracy"] for h in history], label="validation")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.set_ylim(0, 1)
    right.legend()
    fig.suptitle(title)
    return _figure_png(fig)


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact: the headline numbers, then one row per class."""
    rows: list[dict[str, Any]] = [
        {"metric": "val_accuracy", "value": metrics["val_accuracy"]},
        {"metric": "val_macro_f1", "value": metrics["val_macro_f1"]},
        {"metric": "n_val", "value": metrics["n_val"]},
    ]
    for label, m in metrics["per_class"].items():
        rows.append({"metric": f"{label} precision / recall",
                     "value": f"{m['precision']:.3f} / {m['recall']:.3f} (n={m['support']})"})
    for dataset, m in metrics["per_dataset"].items():
        rows.append({"metric": f"{dataset} accuracy", "value": f"{m['accuracy']:.3f} "
                     f"(n={m['n']})"})
    return rows
