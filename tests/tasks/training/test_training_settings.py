"""RetrainSettings: the run key, and what validation refuses."""

from __future__ import annotations

import hashlib
import json

import pytest

from tasks.training.settings import RetrainSettings


def test_run_key_ignores_where_and_how_but_not_what() -> None:
    base = RetrainSettings(sources=["/d"], registry="/r", preset="small")
    assert base.run_key() == RetrainSettings(sources=["/d"], registry="/other", preset="small",
                                             resume=True, device="cpu").run_key()
    assert base.run_key() != RetrainSettings(sources=["/d"], registry="/r", preset="small",
                                             lr=2e-3).run_key()
    assert base.checkpoint_uri == f"/r/training/{base.run_key()}"
    assert base.cache_uri == "/r/cache"


def test_the_floor_does_not_change_the_run_key() -> None:
    base = RetrainSettings(sources=["/d"], registry="/r")
    assert base.min_val_accuracy == 0.4
    assert RetrainSettings(sources=["/d"], registry="/r", min_val_accuracy=0.0,
                           force=True).run_key() == base.run_key()


def test_modality_keys_the_run_and_a_video_key_is_as_before() -> None:
    """A video run's key is the one it had before ``modality`` existed (its checkpoints still
    resume); an audio model's key differs, and so does its log-mel's clip length."""
    base = RetrainSettings(sources=["/d"], registry="/r")
    fields = base.model_dump(exclude={"resume", "force", "min_val_accuracy", "device",
                                      "decode_threads", "storage_options", "cache",
                                      "checkpoint_dir", "registry", "modality"})
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    assert base.modality == "video" and base.run_key() == before and base.audio_spec() is None
    keys = {RetrainSettings(sources=["/d"], registry="/r", modality=m).run_key()
            for m in ("video", "audio", "audio-video")}
    assert len(keys) == 3
    fused = RetrainSettings(sources=["/d"], registry="/r", modality="audio-video",
                            clip_seconds=2.5)
    spec = fused.audio_spec()
    assert spec is not None and spec.seconds == 2.5 and spec.shape == (64, 250)


def test_modality_refusals_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"^invalid parameter 'modality': ") as bad:
        RetrainSettings.from_parameters(sources=["/d"], registry="/r", modality="sound")
    assert "\n" not in str(bad.value)
    with pytest.raises(ValueError, match="an audio model does not have"):
        RetrainSettings.from_parameters(sources=["/d"], registry="/r", modality="audio",
                                        pretrained="/k.pyth")
    with pytest.raises(ValueError, match=r"an audio-video model needs clip_seconds >= 0.16"):
        RetrainSettings.from_parameters(sources=["/d"], registry="/r", modality="audio-video",
                                        clip_seconds=0.1)
    assert RetrainSettings(sources=["/d"], registry="/r", modality="audio-video",
                           pretrained="/k.pyth").pretrained == "/k.pyth"  # its backbone
