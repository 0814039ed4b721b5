"""The split by actor: no actor is on both sides, so validation measures unseen faces."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from emotion_model.labels import EMOTION_LABELS
from tasks.errors import NoTrainingDataError
from tasks.training.data import Example


@dataclass(frozen=True)
class Split:
    """Train and validation examples; no actor is on both sides."""

    train: list[Example]
    val: list[Example]
    val_fraction: float
    seed: int

    @property
    def train_actors(self) -> list[str]:
        """Actors of the training side, sorted."""
        return sorted({e.actor for e in self.train})

    @property
    def val_actors(self) -> list[str]:
        """Actors of the validation side, sorted."""
        return sorted({e.actor for e in self.val})

    def as_dict(self) -> dict[str, Any]:
        """The split as written next to the model (``split.json``)."""
        return {
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "train_actors": self.train_actors,
            "val_actors": self.val_actors,
            "train": [{"uri": e.uri, "etag": e.etag, "label": e.label, "actor": e.actor}
                      for e in self.train],
            "val": [{"uri": e.uri, "etag": e.etag, "label": e.label, "actor": e.actor}
                    for e in self.val],
        }


def _actor_rank(seed: int, actor: str) -> str:
    return hashlib.sha256(f"{seed}:{actor}".encode()).hexdigest()


def split_by_actor(examples: Sequence[Example], val_fraction: float, seed: int) -> Split:
    """Hold out about ``val_fraction`` of the actors of each dataset for validation.

    Speaker-independent: every actor lands on one side only. Stratified by dataset (each
    dataset gives its share of validation actors), and each actor's side depends only on
    ``seed`` and its rank among its dataset's actors by a hash, not on listing order.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    actors_by_dataset: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        actors_by_dataset[e.dataset].add(e.actor)
    total_actors = sum(len(a) for a in actors_by_dataset.values())
    if total_actors < 2:
        raise NoTrainingDataError(f"a split by actor needs at least 2 actors, found {total_actors}")
    val_actors: set[str] = set()
    for actors in actors_by_dataset.values():
        ranked = sorted(actors, key=lambda a: _actor_rank(seed, a))
        k = round(len(ranked) * val_fraction)
        if len(ranked) >= 2:
            k = min(max(k, 1), len(ranked) - 1)
        val_actors.update(ranked[:k])
    if not val_actors:  # one actor per dataset everywhere: hold out the first-ranked one
        val_actors.add(min((e.actor for e in examples), key=lambda a: _actor_rank(seed, a)))
    train = [e for e in examples if e.actor not in val_actors]
    val = [e for e in examples if e.actor in val_actors]
    return Split(train=train, val=val, val_fraction=val_fraction, seed=seed)


def class_counts(examples: Iterable[Example]) -> dict[str, int]:
    """Examples per label, in label order."""
    counts = Counter(e.label for e in examples)
    return {label: counts.get(label, 0) for label in EMOTION_LABELS}


MIN_VAL_PER_CLASS = 5
"""Fewer validation videos of a class than this and one video moves its recall by 20% or more:
the split can still train, but its validation is too small to judge a model (a warning)."""


def check_split(split: Split, *, train_clips: int | None = None,
                batch_size: int | None = None) -> list[str]:
    """Whether the recipe can learn from ``split``, before any training.

    Returns:
        Warnings (validation too small to judge: fewer videos than classes, or fewer than
        ``MIN_VAL_PER_CLASS`` of some class), one line each.

    Raises:
        NoTrainingDataError: training cannot work at all: a side of the split is empty, a class
            has no training video (the model could never predict it), or fewer training clips
            than one batch (when ``train_clips`` and ``batch_size`` are given).
    """
    if not split.train or not split.val:
        raise NoTrainingDataError(f"training needs videos on both sides of the split; got "
                                  f"{len(split.train)} train and {len(split.val)} validation")
    train = class_counts(split.train)
    missing = [label for label, n in train.items() if n == 0]
    if missing:
        raise NoTrainingDataError(
            f"no training video of {', '.join(missing)} (training side: {train}, "
            f"{len(split.train_actors)} actors): the model could never learn "
            f"{'it' if len(missing) == 1 else 'them'}; add labelled videos of every class")
    if train_clips is not None and batch_size is not None and train_clips < batch_size:
        raise NoTrainingDataError(
            f"{train_clips} training clips are fewer than one batch ({batch_size}): an epoch "
            f"would be one partial step; add videos or lower batch_size")
    val = class_counts(split.val)
    small = {label: n for label, n in val.items() if n < MIN_VAL_PER_CLASS}
    if not small:
        return []
    total = len(split.val)
    head = (f"only {total} validation videos, fewer than the {len(EMOTION_LABELS)} classes"
            if total < len(EMOTION_LABELS) else f"{total} validation videos")
    return [f"validation is too small to judge a model: {head}, fewer than "
            f"{MIN_VAL_PER_CLASS} of {', '.join(f'{k} ({n})' for k, n in small.items())}; "
            f"its accuracy moves in steps of {1 / total:.3f} and the floor and the comparison "
            f"with production rest on few videos"]
