"""The split by actor: no actor on both sides, stable under order and new actors."""

from __future__ import annotations

import random

import pytest

from tasks.errors import NoTrainingDataError
from tasks.training.data import Example
from tasks.training.split import Split, check_split, split_by_actor


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


# --- check_split: can the recipe learn from this split? ------------------------------------------
def _split(train_actors: int, val_actors: int, drop: str | None = None) -> Split:
    examples = _fake_examples({"crema-d": train_actors + val_actors})
    val_names = {f"crema-d:{a}" for a in range(val_actors)}
    train = [e for e in examples if e.actor not in val_names and e.label != drop]
    val = [e for e in examples if e.actor in val_names]
    return Split(train=train, val=val, val_fraction=0.2, seed=0)


def test_a_split_the_recipe_can_judge_passes_without_warnings() -> None:
    assert check_split(_split(20, 5), train_clips=100, batch_size=16) == []


def test_a_class_without_training_videos_is_refused() -> None:
    with pytest.raises(NoTrainingDataError, match=r"^no training video of disgust \(training "
                       r"side: \{'angry': 4, 'disgust': 0, .*4 actors\): the model could never "
                       r"learn it"):
        check_split(_split(4, 2, drop="disgust"))


def test_fewer_training_clips_than_one_batch_is_refused() -> None:
    split = _split(4, 2)
    with pytest.raises(NoTrainingDataError, match=r"^7 training clips are fewer than one batch "
                                                  r"\(8\): an epoch would be one partial step"):
        check_split(split, train_clips=7, batch_size=8)
    assert check_split(split, train_clips=8, batch_size=8)  # one full batch: it runs (warns)


def test_an_empty_side_is_refused() -> None:
    split = _split(4, 2)
    with pytest.raises(NoTrainingDataError, match="both sides of the split; got 24 train and 0"):
        check_split(Split(train=split.train, val=[], val_fraction=0.2, seed=0))


def test_a_small_validation_side_is_a_warning_saying_how_small() -> None:
    [warning] = check_split(_split(4, 2))  # 2 actors x 6 classes: 2 videos per class
    assert warning == (
        "validation is too small to judge a model: 12 validation videos, fewer than 5 of "
        "angry (2), disgust (2), fearful (2), happy (2), neutral (2), sad (2); its accuracy "
        "moves in steps of 0.083 and the floor and the comparison with production rest on "
        "few videos")
    base = _split(4, 1)
    tiny_split = Split(train=base.train, val=base.val[:4], val_fraction=0.2, seed=0)
    [tiny] = check_split(tiny_split)  # 4 videos: two classes are never validated
    assert tiny.startswith("validation is too small to judge a model: only 4 validation "
                           "videos, fewer than the 6 classes, fewer than 5 of angry (1), ")
    assert "happy (1), neutral (0), sad (0);" in tiny and "steps of 0.250" in tiny
