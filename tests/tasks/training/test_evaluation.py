"""Validation metrics, the confusion matrix and the training curves."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from emotion_model.labels import EMOTION_LABELS
from tasks.training.data import Example
from tasks.training.evaluation import compute_metrics, confusion_parquet, confusion_png, curves_png


def _examples(labels: list[str], dataset: str = "ravdess") -> list[Example]:
    return [Example(f"/v{i}.mp4", "e", 1, lab, "a", dataset) for i, lab in enumerate(labels)]


def test_metrics_by_hand() -> None:
    truth = ["angry", "angry", "happy", "sad"]
    predicted = ["angry", "happy", "happy", "sad"]
    probs = np.zeros((4, 6), np.float32)
    for i, lab in enumerate(predicted):
        probs[i, EMOTION_LABELS.index(lab)] = 1
    examples = _examples(truth[:2]) + _examples(truth[2:], "crema-d")
    m = compute_metrics(probs, examples)
    assert m["val_accuracy"] == 0.75
    assert m["per_class"]["angry"] == {"precision": 1.0, "recall": 0.5, "f1": 0.666667,
                                       "support": 2}
    assert m["per_class"]["happy"]["precision"] == 0.5
    assert m["val_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3, abs=1e-6)
    assert m["per_dataset"] == {"crema-d": {"accuracy": 1.0, "n": 2},
                                "ravdess": {"accuracy": 0.5, "n": 2}}
    assert m["confusion"][0][0] == 1 and m["confusion"][0][3] == 1
    table = pq.read_table(io.BytesIO(confusion_parquet(m["confusion"])))
    assert table.num_rows == 36 and sum(table.column("count").to_pylist()) == 4
    assert confusion_png(m["confusion"], "t")[:8] == b"\x89PNG\r\n\x1a\n"
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_accuracy": 0.3,
                "val_accuracy": 0.2}]
    assert curves_png(history, "t")[:4] == b"\x89PNG"
