"""Distillation's objective and measures: the student copies the teacher's temperature-softened
probabilities (KL divergence), labelled clips add a cross-entropy term, and validation counts
how often the student's top label is the teacher's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from emotion_model.labels import EMOTION_LABELS
from tasks.training.evaluation import compute_metrics
from tasks.training.loop import UNLABELLED, ClipIndex


@dataclass(frozen=True)
class Distillation:
    """``kd_weight * T^2 * KL(teacher_T || student_T) + label_weight * CE(labels)``.

    ``T`` (``temperature``) softens both distributions so the student also learns how the
    teacher ranks the wrong classes; the ``T^2`` keeps the KL term's gradients the size of the
    cross-entropy's (Hinton et al., 2015). The cross-entropy counts only labelled clips and is
    divided by the whole batch, so each labelled clip weighs the same whatever the mix.
    """

    temperature: float = 4.0
    kd_weight: float = 1.0
    label_weight: float = 0.5
    score_name: str = "agreement"

    def loss(self, logits: Tensor, index: ClipIndex, positions: Sequence[int]) -> Tensor:
        t = self.temperature
        teacher = index.teacher_logits(positions).to(logits.device)
        kd = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                      log_target=True, reduction="batchmean") * (t * t)
        total = self.kd_weight * kd
        labels = index.labels(positions).to(logits.device)
        if self.label_weight and bool((labels != UNLABELLED).any()):
            ce = F.cross_entropy(logits, labels, ignore_index=UNLABELLED, reduction="sum")
            total = total + self.label_weight * ce / len(labels)
        return total

    def hits(self, logits: Tensor, index: ClipIndex, positions: Sequence[int]) -> int:
        teacher = index.teacher_logits(positions)
        return int((logits.argmax(1).cpu() == teacher.argmax(1)).sum())

    def score(self, probs: np.ndarray, index: ClipIndex) -> float:
        """Top-1 agreement per video with the teacher (its mean clip probabilities)."""
        teacher = per_example(index, softmax(teacher_of(index)))
        return float((probs.argmax(1) == teacher.argmax(1)).mean()) if len(probs) else 0.0


def teacher_of(index: ClipIndex) -> np.ndarray:
    """The teacher's logits of every item of ``index``."""
    if index.teacher is None:
        raise ValueError("this clip index holds no teacher outputs")
    return index.teacher


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, float64 for the sums that follow."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_example(index: ClipIndex, item_probs: np.ndarray) -> np.ndarray:
    """``[len(index.examples), C]``: the mean of each example's clip probabilities (as serving
    labels a video)."""
    sums = np.zeros((len(index.examples), item_probs.shape[1]), np.float64)
    counts = np.zeros(len(index.examples), np.int64)
    for (e, _), row in zip(index.items, item_probs, strict=True):
        sums[e] += row
        counts[e] += 1
    return sums / np.maximum(counts, 1)[:, None]


def agreement_metrics(index: ClipIndex, student_logits: np.ndarray) -> dict[str, Any]:
    """How closely the student follows the teacher on ``index`` (held-out videos): top-1
    agreement per video (``agreement``: the label serving gives a video) and per clip, the mean
    KL divergence ``KL(teacher || student)`` per clip in nats (temperature 1), and the
    teacher-label x student-label counts."""
    teacher_p, student_p = softmax(teacher_of(index)), softmax(student_logits)
    kl = (teacher_p * (np.log(np.clip(teacher_p, 1e-12, None))
                       - np.log(np.clip(student_p, 1e-12, None)))).sum(axis=1)
    t_video = per_example(index, teacher_p).argmax(1)
    s_video = per_example(index, student_p).argmax(1)
    n = len(EMOTION_LABELS)
    table = np.zeros((n, n), np.int64)
    np.add.at(table, (t_video, s_video), 1)
    return {
        "agreement": float((t_video == s_video).mean()) if len(t_video) else 0.0,
        "clip_agreement": float((teacher_p.argmax(1) == student_p.argmax(1)).mean())
        if len(kl) else 0.0,
        "mean_kl": float(kl.mean()) if len(kl) else 0.0,
        "n_videos": len(index.examples),
        "n_clips": len(index.items),
        "agreement_confusion": table.tolist(),
        "labels": list(EMOTION_LABELS),
    }


def labelled_comparison(index: ClipIndex, student_logits: np.ndarray) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of student and teacher on the labelled videos of ``index`` (the
    held-out actors of the labelled sources); None when none is labelled."""
    labelled = [i for i, e in enumerate(index.examples) if e.label in EMOTION_LABELS]
    if not labelled:
        return None
    examples = [index.examples[i] for i in labelled]
    out: dict[str, Any] = {"n_videos": len(examples)}
    for name, logits in (("student", student_logits), ("teacher", teacher_of(index))):
        probs = per_example(index, softmax(logits))[labelled]
        metrics = compute_metrics(probs.astype(np.float32), examples)
        out[name] = {"accuracy": metrics["val_accuracy"], "macro_f1": metrics["val_macro_f1"]}
    return out


def student_summary(metrics: dict[str, Any]) -> str:
    """One line: agreement, KL and (when labelled) accuracy beside the teacher's."""
    text = (f"agreement {metrics['agreement']:.3f} with the teacher on {metrics['n_videos']} "
            f"held-out videos (clips {metrics['clip_agreement']:.3f}), mean KL "
            f"{metrics['mean_kl']:.4f}")
    labelled = metrics.get("labelled")
    if labelled:
        text += (f"; labelled accuracy {labelled['student']['accuracy']:.3f} vs teacher "
                 f"{labelled['teacher']['accuracy']:.3f} on {labelled['n_videos']} videos")
    return text

