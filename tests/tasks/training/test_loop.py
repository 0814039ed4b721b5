"""The training loop's pieces: augmentation and the model training starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from emotion_model.audio import AudioSpec
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
    fused = initial_model(RetrainSettings(sources=["/d"], registry="/r", modality="audio-video",
                                          pretrained=str(tmp_path / "SLOWFAST_8x8_R50.pyth")))
    state = fused.state_dict()
    assert fused.modality == "audio-video"
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in kinetics.items())


def test_early_stopping_waits_for_the_warm_up() -> None:
    """Patience counts from the epoch after the one-cycle warm-up (30% of the epochs, up)."""
    assert [warmup_epochs(n) for n in (1, 2, 4, 10, 20, 60)] == [1, 1, 2, 3, 6, 18]


def _donor(tmp_path: Path, modality: str, seconds: float = 4.0) -> tuple[str, dict[str, Any]]:
    """A small deployment file of ``modality`` (log-mel of ``seconds``) and its weights."""
    from emotion_model.audio import AudioSpec
    from emotion_model.checkpoint import save_deployment
    from emotion_model.model import build_model

    torch.manual_seed(7)
    donor = build_model("small", modality=modality,  # type: ignore[arg-type]
                        audio_spec=None if modality == "video" else AudioSpec(seconds=seconds))
    path = tmp_path / f"{modality}-{seconds}.safetensors"
    save_deployment(donor, path, num_frames=16, img_size=64)
    return str(path), donor.state_dict()


def test_init_fine_tunes_its_modality_or_gives_a_fused_model_one_branch(tmp_path: Path) -> None:
    from tasks.training.loop import initial_model

    def run(modality: str, init: str, **extra: Any) -> RetrainSettings:
        return RetrainSettings(sources=["/d"], registry="/r", preset="small", modality=modality,
                               init=init, **extra)

    fused_path, fused_state = _donor(tmp_path, "audio-video")
    same = initial_model(run("audio-video", fused_path))
    assert same.training and same.modality == "audio-video"
    assert all(torch.equal(same.state_dict()[k], v) for k, v in fused_state.items())

    for branch, kept in (("video", ("backbone.",)), ("audio", ("audio_encoder.", "no_audio"))):
        path, state = _donor(tmp_path, branch)
        model = initial_model(run("audio-video", path))
        new = model.state_dict()
        assert model.modality == "audio-video" and model.audio_spec == AudioSpec()
        carried = [k for k in state if k.startswith(kept)]
        assert carried and all(torch.equal(new[k], state[k]) for k in carried), branch
        assert new["head.1.weight"].shape != state["head.1.weight"].shape  # a new head


@pytest.mark.parametrize(("modality", "init", "seconds", "message"), [
    ("video", "audio-video", 4.0, r"init is an audio-video model; a video run fine-tunes a "
                                  r"video model \(an audio-video run may also start from"),
    ("audio", "video", 4.0, r"init is a video model; an audio run fine-tunes an audio model"),
    ("audio-video", "audio", 2.0, r"init reads the log-mel .*'seconds': 2.0.*, this run "
                                  r".*'seconds': 4.0.* \(seconds follow clip_seconds\)"),
], ids=["fused-init-video-run", "video-init-audio-run", "another-log-mel"])
def test_an_init_it_cannot_start_from_is_refused_in_one_line(
    tmp_path: Path, modality: str, init: str, seconds: float, message: str
) -> None:
    from emotion_model.errors import ArchitectureMismatchError
    from tasks.training.loop import initial_model

    path, _ = _donor(tmp_path, init, seconds)
    settings = RetrainSettings(sources=["/d"], registry="/r", preset="small", modality=modality,
                               init=path)
    with pytest.raises(ArchitectureMismatchError, match=message) as refused:
        initial_model(settings)
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)
