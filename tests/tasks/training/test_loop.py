"""The training loop's pieces: augmentation and the model training starts from."""

from __future__ import annotations

from pathlib import Path

import torch

from tasks.training.loop import augment, eval_frames, warmup_epochs
from tasks.training.settings import RetrainSettings


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


def test_initial_model_from_init_and_from_kinetics(tmp_path: Path) -> None:
    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model
    from tasks.training.loop import initial_model

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


def test_early_stopping_waits_for_the_warm_up() -> None:
    """Patience counts from the epoch after the one-cycle warm-up (30% of the epochs, up)."""
    assert [warmup_epochs(n) for n in (1, 2, 4, 10, 20, 60)] == [1, 1, 2, 3, 6, 18]
