"""Training pieces: augmentation, the resumable loop, metrics and the promotion rule."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from emotion_model.labels import EMOTION_LABELS
from tasks.evaluation import compute_metrics, confusion_parquet, confusion_png, curves_png
from tasks.registry import decide, read_production
from tasks.retrain_settings import RetrainSettings
from tasks.training import augment, eval_frames
from tasks.training_data import Example


def _clips(b: int = 3, frames: int = 16, size: int = 32) -> torch.Tensor:
    """uint8 clips whose frame t is filled with value 10 * t + 5 (so frames can be told apart)."""
    values = (torch.arange(frames) * 10 + 5).to(torch.uint8).view(1, frames, 1, 1, 1)
    return values.expand(b, frames, size, size, 3).contiguous()


def test_augment_is_seeded_and_keeps_shapes() -> None:
    clips = torch.randint(0, 256, (4, 16, 32, 32, 3), dtype=torch.uint8)
    a = augment(clips, 8, torch.Generator().manual_seed(1))
    b = augment(clips, 8, torch.Generator().manual_seed(1))
    c = augment(clips, 8, torch.Generator().manual_seed(2))
    assert a.shape == (4, 8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_temporal_jitter_keeps_order_and_most_of_the_clip() -> None:
    clips = _clips(frames=16)
    out = augment(clips, 8, torch.Generator().manual_seed(0), crop_scale=1.0)
    mean, std = 0.485, 0.229  # channel 0: undo the normalization
    picked = ((out[:, :, 0, 0, 0] * std + mean) * 255 - 5) / 10  # frame indices
    for row in picked.round().long():
        assert torch.all(row[1:] >= row[:-1])  # in time order
        assert row[-1] - row[0] >= 0.8 * 16 - 2  # a span of at least 80% of the clip
    full = eval_frames(clips, 8)
    first = ((full[0, :, 0, 0, 0] * std + mean) * 255 - 5) / 10
    assert first.round().long().tolist() == [0, 2, 4, 6, 9, 11, 13, 15]


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


def test_promotion_rule() -> None:
    champion = {"val_accuracy": 0.8, "val_macro_f1": 0.7}
    assert decide({"val_accuracy": 0.9, "val_macro_f1": 0.1}, champion).promote
    assert decide({"val_accuracy": 0.8, "val_macro_f1": 0.75}, champion).promote  # F1 breaks tie
    same = decide(dict(champion), champion)
    assert not same.promote and "production stays" in same.reason
    worse = decide({"val_accuracy": 0.5, "val_macro_f1": 0.5}, champion, force=True)
    assert worse.promote and worse.forced and "force=True" in worse.reason
    assert decide({"val_accuracy": 0.1, "val_macro_f1": 0.1}, None).promote


def test_no_production_yet(tmp_path: Path) -> None:
    assert read_production(str(tmp_path)) is None


def test_run_key_ignores_where_and_how_but_not_what() -> None:
    base = RetrainSettings(sources=["/d"], registry="/r", preset="small")
    assert base.run_key() == RetrainSettings(sources=["/d"], registry="/other", preset="small",
                                             resume=True, device="cpu").run_key()
    assert base.run_key() != RetrainSettings(sources=["/d"], registry="/r", preset="small",
                                             lr=2e-3).run_key()
    assert base.checkpoint_uri == f"/r/training/{base.run_key()}"
    assert base.cache_uri == "/r/cache"


def test_initial_model_from_init_and_from_kinetics(tmp_path: Path) -> None:
    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model
    from tasks.training import initial_model

    torch.manual_seed(5)
    donor = build_model("small")
    save_deployment(donor, tmp_path / "donor.safetensors", num_frames=16, img_size=64)
    tuned = initial_model(RetrainSettings(sources=["/d"], registry="/r", preset="small",
                                          init=str(tmp_path / "donor.safetensors")))
    assert tuned.training
    for name, value in donor.state_dict().items():
        assert torch.equal(tuned.state_dict()[name], value), name

    torch.manual_seed(6)
    kinetics = {k.removeprefix("backbone."): v for k, v in build_model("r50").state_dict().items()
                if k.startswith("backbone.") and ".act_b." not in k}
    torch.save({"model_state": kinetics}, tmp_path / "SLOWFAST_8x8_R50.pyth")
    model = initial_model(RetrainSettings(sources=["/d"], registry="/r",
                                          pretrained=str(tmp_path / "SLOWFAST_8x8_R50.pyth")))
    state = model.state_dict()
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in kinetics.items())
