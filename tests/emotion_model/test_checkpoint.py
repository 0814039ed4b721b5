"""Deployment files and training checkpoints: round trips, resume exactness, and one typed error
per kind of bad file (nothing is ever unpickled from a file)."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn import functional as F  # noqa: N812

from emotion_model.checkpoint import (
    load_deployment,
    load_training_checkpoint,
    save_deployment,
    save_training_checkpoint,
    weights_sha256,
)
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    LabelMismatchError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import EmotionClassifier, build_model
from emotion_model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from emotion_model.weights import read_state_dict

METADATA_KEY = "emotion_pipeline"


def _probe(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _outputs(model: EmotionClassifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, small_model: EmotionClassifier
               ) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("deploy") / "model.safetensors"
    meta = save_deployment(
        small_model, path, num_frames=16, img_size=112, metrics={"val_f1": 0.42, "epoch": 3},
        untrained=True, data_fingerprint="sha256:abc",
    )
    return path, meta


def _rewrite(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """Re-save a deployment file's tensors with its metadata record changed by ``edit``."""
    state = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    record = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"][METADATA_KEY])
    state = edit(record, state) or state
    return st_save(state, metadata={METADATA_KEY: json.dumps(record)})


# --- deployment round trip -----------------------------------------------------------------------
def test_save_load_gives_identical_outputs(
    deployment: tuple[Path, dict], small_model: EmotionClassifier
) -> None:
    path, _ = deployment
    loaded, _ = load_deployment(path)
    assert not loaded.training
    x = _probe()
    assert torch.equal(_outputs(loaded, x), _outputs(small_model, x))
    got = loaded.state_dict()
    for key, value in small_model.state_dict().items():
        assert torch.equal(got[key], value), key


def test_model_version(deployment: tuple[Path, dict], small_model: EmotionClassifier,
                       tmp_path: Path) -> None:
    path, meta = deployment
    version = meta["model_version"]
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    assert version == meta["weights_sha256"][:12] == weights_sha256(small_model.state_dict())[:12]
    _, loaded_meta = load_deployment(path)
    assert loaded_meta["model_version"] == version
    # Deterministic: the same weights saved again give the same version.
    again = save_deployment(small_model, tmp_path / "again.safetensors", num_frames=16)
    assert again["model_version"] == version
    # Any weight change gives another version.
    changed = build_model("small")
    changed.load_state_dict(small_model.state_dict())
    with torch.no_grad():
        changed.head[4].bias[0] += 1e-3
    other = save_deployment(changed, tmp_path / "changed.safetensors", num_frames=16)
    assert other["model_version"] != version


def test_metadata_round_trip(deployment: tuple[Path, dict]) -> None:
    path, saved = deployment
    _, meta = load_deployment(path)
    assert meta["labels"] == list(EMOTION_LABELS)
    assert (meta["num_frames"], meta["img_size"]) == (16, 112)
    assert meta["mean"] == pytest.approx(IMAGENET_MEAN)
    assert meta["std"] == pytest.approx(IMAGENET_STD)
    assert meta["architecture"] == {"num_classes": 6, "hidden_size": 256, "dropout": 0.5,
                                    "use_se": True, "width": 16}
    assert meta["metrics"] == {"val_f1": 0.42, "epoch": 3}
    assert meta["untrained"] is True
    assert meta["data_fingerprint"] == "sha256:abc"
    assert meta["format"] == "emotion-pipeline/deployment"
    assert meta["created_at"] == saved["created_at"]


def test_custom_preprocessing_and_labels_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model("small", num_classes=3, hidden_size=32, use_se=False)
    path = tmp_path / "three.safetensors"
    save_deployment(model, path, labels=["neg", "neu", "pos"], num_frames=32, img_size=160,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    loaded, meta = load_deployment(path, expected_labels=["neg", "neu", "pos"])
    assert meta["labels"] == ["neg", "neu", "pos"]
    assert (meta["num_frames"], meta["img_size"]) == (32, 160)
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
    assert loaded.config == model.config
    assert torch.equal(_outputs(loaded, _probe(1, 1)), _outputs(model, _probe(1, 1)))


def test_load_from_bytes_file_object_and_file_uri(deployment: tuple[Path, dict]) -> None:
    path, meta = deployment
    x = _probe(2, 1)
    want = _outputs(load_deployment(path)[0], x)
    with open(path, "rb") as fh:
        from_file, file_meta = load_deployment(fh)
    from_bytes, bytes_meta = load_deployment(path.read_bytes())
    from_uri, uri_meta = load_deployment(f"file://{path}")
    for model, got in ((from_file, file_meta), (from_bytes, bytes_meta), (from_uri, uri_meta)):
        assert got["model_version"] == meta["model_version"]
        assert torch.equal(_outputs(model, x), want)


def test_save_to_a_file_object(small_model: EmotionClassifier, deployment: tuple[Path, dict],
                               tmp_path: Path) -> None:
    path = tmp_path / "via_handle.safetensors"
    with open(path, "wb") as fh:
        meta = save_deployment(small_model, fh, num_frames=16)
    assert meta["model_version"] == deployment[1]["model_version"]
    assert load_deployment(path)[1]["model_version"] == meta["model_version"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"labels": ["a", "b"]}, "2 labels for a model with 6 outputs"),
     ({"num_frames": 18}, "multiple of 4")],
)
def test_save_checks_its_arguments(small_model: EmotionClassifier, tmp_path: Path,
                                   kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        save_deployment(small_model, tmp_path / "x.safetensors", **kwargs)
    assert not (tmp_path / "x.safetensors").exists()


# --- plain state dicts ---------------------------------------------------------------------------
def test_plain_state_dict_file(small_model: EmotionClassifier, deployment: tuple[Path, dict],
                               tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(small_model.state_dict(), path)
    loaded, meta = load_deployment(path)
    assert meta["architecture"]["width"] == 16 and meta["architecture"]["use_se"] is True
    assert meta["model_version"] == deployment[1]["model_version"]
    x = _probe(3, 1)
    assert torch.equal(_outputs(loaded, x), _outputs(small_model, x))
    # The model card's own pattern keeps working; torch.load is weights_only by default,
    # spelled out here as the project always does.
    fresh = build_model("small")
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(_outputs(fresh, x), _outputs(small_model, x))
    assert read_state_dict(path).keys() == small_model.state_dict().keys()


def test_plain_state_dict_missing_a_key(small_model: EmotionClassifier, tmp_path: Path) -> None:
    state = small_model.state_dict()
    del state["head.4.bias"]
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(ArchitectureMismatchError, match="missing head.4.bias"):
        load_deployment(path)


def test_a_state_dict_of_another_model(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(ArchitectureMismatchError, match="not an EmotionClassifier state dict"):
        load_deployment(path)


# --- training checkpoints ------------------------------------------------------------------------
def _trainer(seed: int) -> tuple[EmotionClassifier, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = build_model("small", dropout=0.5).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    return model, optimizer, scheduler


_X = torch.randn(2, 8, 3, 48, 48, generator=torch.Generator().manual_seed(11))
_Y = torch.tensor([0, 3])


def _step(model: EmotionClassifier, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(_X), _Y).backward()  # dropout draws from the torch RNG
    optimizer.step()
    scheduler.step()  # type: ignore[attr-defined]


def test_training_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    path = tmp_path / "train.pt"
    model, optimizer, scheduler = _trainer(0)
    _step(model, optimizer, scheduler)
    _step(model, optimizer, scheduler)
    save_training_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                             epoch=2, best_metric=0.25, extra={"history": [0.1, 0.25]})
    _step(model, optimizer, scheduler)  # the uninterrupted run
    want_np, want_py = np.random.random(), random.random()

    torch.manual_seed(1234)  # an unrelated RNG state, as in a fresh process
    np.random.seed(1234)
    random.seed(1234)
    resumed, optimizer2, scheduler2 = _trainer(1)
    state = load_training_checkpoint(path, model=resumed, optimizer=optimizer2,
                                     scheduler=scheduler2)
    assert (state.epoch, state.best_metric, state.extra) == (2, 0.25, {"history": [0.1, 0.25]})
    assert state.architecture == resumed.config
    assert scheduler2.state_dict()["last_epoch"] == 2  # type: ignore[attr-defined]
    assert optimizer2.state_dict()["state"][0]["step"].item() == 2
    _step(resumed, optimizer2, scheduler2)

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert scheduler.get_last_lr() == scheduler2.get_last_lr()  # type: ignore[attr-defined]
    assert (np.random.random(), random.random()) == (want_np, want_py)

    # The RNG state matters: the same resume without it takes another dropout mask.
    torch.manual_seed(1234)
    other, optimizer3, scheduler3 = _trainer(2)
    load_training_checkpoint(path, model=other, optimizer=optimizer3, scheduler=scheduler3,
                             restore_rng=False)
    _step(other, optimizer3, scheduler3)
    assert not torch.equal(other.state_dict()["head.4.weight"], model.state_dict()["head.4.weight"])


def test_training_checkpoint_weights_load_as_a_deployment(tmp_path: Path) -> None:
    model, optimizer, scheduler = _trainer(4)
    path = tmp_path / "train.pt"
    save_training_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                             epoch=0)
    loaded, meta = load_deployment(path)
    assert meta["model_version"] == weights_sha256(model.state_dict())[:12]
    x = _probe(5, 1)
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))


def test_training_checkpoint_into_another_architecture(tmp_path: Path) -> None:
    model, optimizer, _ = _trainer(5)
    path = tmp_path / "train.pt"
    save_training_checkpoint(path, model=model, optimizer=optimizer, epoch=0)
    with pytest.raises(ArchitectureMismatchError, match="weights do not fit the model"):
        load_training_checkpoint(path, model=build_model("small", use_se=False))


def test_truncated_training_checkpoint(tmp_path: Path) -> None:
    model, optimizer, scheduler = _trainer(6)
    path = tmp_path / "train.pt"
    save_training_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                             epoch=0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedCheckpointError, match=r"^.*train\.pt: unreadable torch file"):
        load_training_checkpoint(path, model=model, optimizer=optimizer)


# --- bad deployment files ------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointNotFoundError, match="no such model file") as caught:
        load_deployment(path)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(caught.value).startswith(str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(TruncatedCheckpointError, match="empty file"):
        load_deployment(path)


@pytest.mark.parametrize(
    ("cut", "match"),
    [(0.5, "truncated or damaged weights"), (20, "truncated: header says"), (5, "truncated")],
)
def test_truncated_file(deployment: tuple[Path, dict], tmp_path: Path, cut: float,
                        match: str) -> None:
    data = deployment[0].read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else cut
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:size])
    with pytest.raises(TruncatedCheckpointError, match=match) as caught:
        load_deployment(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_flipped_bytes_in_the_weights(deployment: tuple[Path, dict], tmp_path: Path) -> None:
    data = bytearray(deployment[0].read_bytes())
    for offset in (len(data) - 100, len(data) // 2):  # tensor bytes, past the JSON header
        data[offset] ^= 0xFF
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(TruncatedCheckpointError, match="differs from the recorded"):
        load_deployment(path)


def test_metadata_names_another_width(deployment: tuple[Path, dict], tmp_path: Path) -> None:
    def wider(record: dict, state: dict) -> None:
        record["architecture"]["width"] = 32

    path = tmp_path / "wider.safetensors"
    path.write_bytes(_rewrite(deployment[0].read_bytes(), wider))
    with safe_open(str(path), "pt") as f:  # the edit really is in the header
        assert json.loads(f.metadata()[METADATA_KEY])["architecture"]["width"] == 32
    with pytest.raises(ArchitectureMismatchError, match="size mismatch") as caught:
        load_deployment(path)
    assert "\n" not in str(caught.value)


def test_metadata_names_an_unknown_architecture_key(deployment: tuple[Path, dict],
                                                    tmp_path: Path) -> None:
    def deeper(record: dict, state: dict) -> None:
        record["architecture"]["depth"] = 101

    path = tmp_path / "deeper.safetensors"
    path.write_bytes(_rewrite(deployment[0].read_bytes(), deeper))
    with pytest.raises(ArchitectureMismatchError, match="unknown architecture keys"):
        load_deployment(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [("drop", "missing head.4.bias"), ("add", "unexpected extra.weight")],
)
def test_weights_missing_or_extra_keys(deployment: tuple[Path, dict], tmp_path: Path,
                                       change: str, match: str) -> None:
    def edit(record: dict, state: dict) -> dict:
        state = dict(state)
        if change == "drop":
            del state["head.4.bias"]
        else:
            state["extra.weight"] = torch.zeros(3)
        record["weights_sha256"] = weights_sha256(state)  # consistent, only the keys differ
        return state

    path = tmp_path / f"{change}.safetensors"
    path.write_bytes(_rewrite(deployment[0].read_bytes(), edit))
    with pytest.raises(ArchitectureMismatchError, match=match):
        load_deployment(path)


def test_labels_differ(small_model: EmotionClassifier, tmp_path: Path) -> None:
    path = tmp_path / "other_labels.safetensors"
    other = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    save_deployment(small_model, path, labels=other, num_frames=16)
    with pytest.raises(LabelMismatchError, match="differ from the expected"):
        load_deployment(path)
    _, meta = load_deployment(path, expected_labels=None)
    assert meta["labels"] == other
    load_deployment(path, expected_labels=other)


def test_labels_do_not_name_the_outputs(deployment: tuple[Path, dict], tmp_path: Path) -> None:
    def five(record: dict, state: dict) -> None:
        record["labels"] = record["labels"][:5]

    path = tmp_path / "five.safetensors"
    path.write_bytes(_rewrite(deployment[0].read_bytes(), five))
    with pytest.raises(LabelMismatchError, match="do not name the model's 6 outputs"):
        load_deployment(path, expected_labels=None)


# --- pickles are refused -------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    if how == "torch.save":
        torch.save({"state_dict": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))

    with pytest.raises(UnsafeCheckpointError, match="needs arbitrary unpickling"):
        load_deployment(path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_state_dict(path.read_bytes())
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_training_checkpoint(path, model=build_model("small"))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        EmotionClassifier(width=16, pretrained=path)
    assert not marker.exists()

    if how == "pickle":  # control: the payload is live when unpickled without restrictions
        pickle.loads(path.read_bytes())  # noqa: S301
        assert marker.exists()


def test_a_header_length_that_looks_like_a_pickle(small_model: EmotionClassifier,
                                                  tmp_path: Path) -> None:
    """A safetensors file whose header length is 128 mod 256 starts with 0x80, as a pickle does."""
    probe = tmp_path / "probe.safetensors"
    save_deployment(small_model, probe, num_frames=16, notes="")
    n0 = int.from_bytes(probe.read_bytes()[:8], "little")  # padded to a multiple of 8
    target = n0 + (128 - n0) % 256
    path = tmp_path / "x80.safetensors"
    meta = save_deployment(small_model, path, num_frames=16, notes="x" * (target - n0))
    assert path.read_bytes()[0] == 0x80
    _, loaded = load_deployment(path)
    assert loaded["model_version"] == meta["model_version"]
