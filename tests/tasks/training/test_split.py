"""The split by actor: no actor on both sides, stable under order and new actors."""

from __future__ import annotations

import random

import pytest

from tasks.training.data import Example
from tasks.training.split import split_by_actor


def _fake_examples(actors_per_dataset: dict[str, int], per_actor: int = 6) -> list[Example]:
    labels = ["angry", "disgust", "fearful", "happy", "neutral", "sad"]
    return [
        Example(f"/{d}/{a}/{k}.mp4", "e", 1, labels[k % 6], f"{d}:{a}", d)
        for d, n in actors_per_dataset.items() for a in range(n) for k in range(per_actor)
    ]


@pytest.mark.parametrize("seed", range(25))
def test_split_never_puts_an_actor_on_both_sides(seed: int) -> None:
    rng = random.Random(seed)
    sizes = {"ravdess": rng.randint(1, 24), "crema-d": rng.randint(1, 91)}
    fraction = rng.choice([0.1, 0.2, 0.34, 0.5, 0.8])
    examples = _fake_examples(sizes, per_actor=rng.randint(1, 8))
    split = split_by_actor(examples, fraction, seed)
    assert not set(split.train_actors) & set(split.val_actors)
    assert len(split.train) + len(split.val) == len(examples)
    assert split.train and split.val
    for dataset, n in sizes.items():  # stratified: each dataset gives its share
        held = [a for a in split.val_actors if a.startswith(dataset)]
        if n >= 2:
            assert 1 <= len(held) <= n - 1
            assert abs(len(held) - n * fraction) <= 1


def test_split_is_stable_under_listing_order_and_new_actors() -> None:
    examples = _fake_examples({"ravdess": 20})
    split = split_by_actor(examples, 0.25, seed=7)
    shuffled = list(reversed(examples))
    assert split_by_actor(shuffled, 0.25, seed=7).val_actors == split.val_actors
    assert split_by_actor(examples, 0.25, seed=8).val_actors != split.val_actors
    assert split.as_dict()["val_actors"] == split.val_actors


def test_split_needs_two_actors() -> None:
    with pytest.raises(ValueError, match="at least 2 actors"):
        split_by_actor(_fake_examples({"ravdess": 1}), 0.2, 0)
