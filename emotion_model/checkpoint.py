"""Model files: the small deployment file (safetensors + metadata) and the full training
checkpoint (model, optimizer, scheduler, epoch, best metric, RNG states) for resuming.

Nothing is ever unpickled from a file: deployment files are safetensors; torch files (training
checkpoints, plain state dicts) load with ``torch.load(..., weights_only=True)``, which refuses
any pickle that would construct arbitrary objects or run code.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import Tensor, nn

from emotion_model.audio import AudioSpec
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    LabelMismatchError,
    TruncatedCheckpointError,
)
from emotion_model.files import Source, bytes_io, read_source_bytes, write_target
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import (
    MODALITIES,
    R50_WIDTH,
    EmotionClassifier,
    Modality,
    modality_of_state,
)
from emotion_model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from emotion_model.weights import (
    METADATA_KEY,
    is_torch_file,
    load_safetensors,
    torch_load_weights_only,
)

DEFAULT_NUM_FRAMES = 48
DEFAULT_IMG_SIZE = 112
DEPLOYMENT_FORMAT = "emotion-pipeline/deployment"
TRAINING_FORMAT = "emotion-pipeline/training"
FORMAT_VERSION = 1
_ARCH_KEYS = ("num_classes", "hidden_size", "dropout", "use_se", "width", "modality_dropout",
              "backbone", "sampled_frames")
_RESERVED = ("modality", "audio")
"""Metadata keys that come from the model, never from ``save_deployment``'s extra keywords."""


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_version_of(state: Mapping[str, Tensor]) -> str:
    """The model version: the first 12 hex digits of ``weights_sha256``."""
    return weights_sha256(state)[:12]


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_deployment(
    model: EmotionClassifier,
    path: str | os.PathLike[str] | IO[bytes],
    *,
    labels: Sequence[str] = EMOTION_LABELS,
    num_frames: int = DEFAULT_NUM_FRAMES,
    img_size: int = DEFAULT_IMG_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    metrics: Mapping[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """Write a deployment file (safetensors weights + JSON metadata); return the metadata.

    ``path`` is a local path (written atomically), an fsspec URI (one PUT) or a binary file.
    Extra keyword arguments (``data_fingerprint``, ``untrained``, ``notes``...) are stored as
    metadata; they must be JSON-serialisable. ``modality`` and ``audio`` (the model's
    ``AudioSpec``, None for a video model) come from the model.
    """
    reserved = sorted(set(metadata) & set(_RESERVED))
    if reserved:
        raise ValueError(f"{reserved} come from the model, not from keyword arguments")
    labels = list(labels)
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {model.num_classes} outputs")
    if num_frames % 4 or num_frames < 4:
        raise ValueError(f"num_frames must be a positive multiple of 4, got {num_frames}")
    state = _cpu_state(model)
    sha = weights_sha256(state)
    record: dict[str, Any] = {
        "format": DEPLOYMENT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": sha[:12],
        "weights_sha256": sha,
        "labels": labels,
        "num_frames": int(num_frames),
        "img_size": int(img_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "architecture": dict(model.config),
        **_modality_record(model),
        "metrics": dict(metrics or {}),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    record.update(metadata)
    data = st_save(state, metadata={METADATA_KEY: json.dumps(record, default=str)})
    write_target(path, data)
    return record


def _modality_record(model: EmotionClassifier) -> dict[str, Any]:
    """``modality`` and ``audio`` (the AudioSpec as a dict, None for a video model)."""
    spec = model.audio_spec
    return {"modality": model.modality, "audio": spec.to_metadata() if spec else None}


def _default_metadata(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Metadata for a plain state dict: architecture and modality inferred from the tensors
    (an audio model's log-mel as ``AudioSpec`` with the weights' number of mel bands)."""
    modality = modality_of_state(state)
    try:
        if modality is None:
            raise KeyError("backbone.* or audio_encoder.*")
        width = R50_WIDTH
        if modality != "audio":
            width = int(state["backbone.blocks.0.multipathway_blocks.0.conv.weight"].shape[0])
        audio = None
        if modality != "video":
            audio = AudioSpec(n_mels=int(state["audio_encoder.input_norm.weight"].shape[0]))
        hidden, _ = state["head.1.weight"].shape
        num_classes = int(state["head.4.weight"].shape[0])
    except KeyError as exc:
        raise KeyError(f"not an EmotionClassifier state dict (no {exc.args[0]!r})") from exc
    sha = weights_sha256(state)
    return {
        "format": "state_dict",
        "model_version": sha[:12],
        "weights_sha256": sha,
        "labels": list(EMOTION_LABELS)[:num_classes],
        "num_frames": DEFAULT_NUM_FRAMES,
        "img_size": DEFAULT_IMG_SIZE,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "architecture": {
            "num_classes": num_classes,
            "hidden_size": int(hidden),
            "dropout": 0.5,
            "use_se": any(".act_b." in k for k in state),
            "width": width,
        },
        "modality": modality,
        "audio": audio.to_metadata() if audio else None,
        "metrics": {},
    }


@dataclass
class _Loaded:
    state: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_deployment(source: Source) -> tuple[str, _Loaded]:
    name, data = read_source_bytes(source)
    if not data:
        raise TruncatedCheckpointError(name, "empty file (0 bytes)")
    if is_torch_file(data):
        obj = torch_load_weights_only(name, data)
        recorded: dict[str, Any] = {}
        if isinstance(obj, dict) and obj.get("format") == TRAINING_FORMAT:
            recorded = {k: obj[k] for k in _RESERVED if k in obj}
            obj = obj["model"]
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(name, "the torch file holds no state dict of tensors")
        try:
            return name, _Loaded(dict(obj), {**_default_metadata(obj), **recorded})
        except KeyError as exc:
            raise ArchitectureMismatchError(name, exc.args[0]) from exc
    state, metadata = load_safetensors(name, data)
    if metadata.get("format") != DEPLOYMENT_FORMAT:
        try:
            metadata = {**_default_metadata(state), **metadata}
        except KeyError as exc:
            raise ArchitectureMismatchError(name, exc.args[0]) from exc
    return name, _Loaded(state, metadata)


def load_deployment(
    source: Source,
    *,
    expected_labels: Sequence[str] | None = EMOTION_LABELS,
    device: str | torch.device = "cpu",
) -> tuple[EmotionClassifier, dict[str, Any]]:
    """Load a deployment file (or a plain state dict) -> ``(model in eval mode, metadata)``.

    ``source``: local path, ``file://`` or fsspec URI (``s3://...``), bytes or a binary file.
    Checks, each with its own error: empty or truncated file, damaged weights (sha256 differs
    from the recorded one), a pickle that needs arbitrary code (refused), weights that do not
    fit the recorded architecture or modality, labels other than ``expected_labels`` (None:
    any). A file without ``modality`` is a video model; the returned metadata always has
    ``modality`` and ``audio`` (None for a video model).
    """
    name, loaded = _read_deployment(source)
    state, metadata = loaded.state, loaded.metadata
    sha = weights_sha256(state)
    recorded = metadata.get("weights_sha256")
    if recorded and recorded != sha:
        raise TruncatedCheckpointError(
            name, f"weights sha256 {sha[:12]} differs from the recorded {recorded[:12]} (damaged)"
        )
    metadata["model_version"] = sha[:12]
    metadata["weights_sha256"] = sha
    arch = dict(metadata.get("architecture") or {})
    unknown = set(arch) - set(_ARCH_KEYS)
    if unknown:
        raise ArchitectureMismatchError(name, f"unknown architecture keys {sorted(unknown)}")
    labels = metadata.get("labels")
    num_classes = int(arch.get("num_classes", len(EMOTION_LABELS)))
    if (
        not isinstance(labels, list)
        or not all(isinstance(x, str) for x in labels)
        or len(labels) != num_classes
    ):
        raise LabelMismatchError(
            name, f"labels {labels!r} do not name the model's {num_classes} outputs"
        )
    if expected_labels is not None and tuple(labels) != tuple(expected_labels):
        raise LabelMismatchError(
            name, f"labels {labels} differ from the expected {list(expected_labels)}"
        )
    modality, audio = _modality_of(name, metadata, state)
    metadata["modality"] = modality
    metadata["audio"] = audio.to_metadata() if audio else None
    try:
        model = EmotionClassifier(**arch, modality=modality, audio_spec=audio)
    except (TypeError, ValueError) as exc:
        raise ArchitectureMismatchError(name, f"bad architecture {arch}: {exc}") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # strict=False still refuses tensors of another shape
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln),
                     str(exc).splitlines()[0])
        raise ArchitectureMismatchError(
            name, f"weights do not fit the architecture {arch}: {first}"
        ) from exc
    problems = [f"missing {k}" for k in result.missing_keys]
    problems += [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise ArchitectureMismatchError(
            name, f"weights do not fit the architecture {arch}: {len(problems)} keys differ, "
            f"e.g. {problems[0]}"
        )
    return model.to(device).eval(), metadata


_HELD = {
    None: "neither a SlowFast backbone nor an audio encoder",
    "video": "a video model's (a SlowFast backbone, no audio encoder)",
    "audio": "an audio model's (an audio encoder, no SlowFast backbone)",
    "audio-video": "an audio-video model's (a SlowFast backbone and an audio encoder)",
}


def _modality_of(
    name: str, metadata: Mapping[str, Any], state: Mapping[str, Tensor]
) -> tuple[Modality, AudioSpec | None]:
    """The recorded modality and audio spec, checked against each other and the weights."""
    modality, audio = recorded_modality(name, metadata)
    held = modality_of_state(state)
    if held != modality:
        raise ArchitectureMismatchError(
            name, f"the metadata says modality {modality!r} but the weights are "
            f"{_HELD[held]}"
        )
    return modality, audio


def recorded_modality(name: str, metadata: Mapping[str, Any]
                      ) -> tuple[Modality, AudioSpec | None]:
    """The modality and audio spec a model file records (none: a video model), checked against
    each other; ``ArchitectureMismatchError`` naming ``name`` otherwise."""
    modality = metadata.get("modality") or "video"
    if modality not in MODALITIES:
        raise ArchitectureMismatchError(
            name, f"unknown modality {modality!r} (known: {', '.join(MODALITIES)})"
        )
    try:
        audio = AudioSpec.from_metadata(metadata.get("audio"))
    except (TypeError, ValueError) as exc:
        raise ArchitectureMismatchError(name, f"bad audio settings: {exc}") from exc
    if (audio is None) != (modality == "video"):
        raise ArchitectureMismatchError(
            name, f"modality {modality!r} with audio settings {metadata.get('audio')!r}: "
            "an audio model records its log-mel (audio), a video model none"
        )
    return modality, audio


def _load_state_checked(name: str, model: nn.Module, state: Mapping[str, Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ArchitectureMismatchError(name, f"weights do not fit the model: {first}") from exc


# --- full training checkpoints -----------------------------------------------------------------
@dataclass
class TrainingState:
    """What a training checkpoint restores besides the weights and optimizer."""

    epoch: int
    best_metric: float | None
    extra: dict[str, Any]
    architecture: dict[str, Any]


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_checkpoint(
    path: str | os.PathLike[str] | IO[bytes],
    *,
    model: EmotionClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    epoch: int,
    best_metric: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a full training checkpoint, atomically, that ``load_training_checkpoint`` resumes.

    ``extra`` holds JSON-like values (history, early-stopping counters, the split...).
    """
    payload = {
        "format": TRAINING_FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": dict(model.config),
        **_modality_record(model),
        "model": _cpu_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "best_metric": None if best_metric is None else float(best_metric),
        "extra": json.loads(json.dumps(dict(extra or {}), default=str)),
        "rng": _rng_state(),
    }
    buffer = bytes_io(b"")
    torch.save(payload, buffer)
    write_target(path, buffer.getvalue())


def load_training_checkpoint(
    source: Source,
    *,
    model: EmotionClassifier,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    restore_rng: bool = True,
) -> TrainingState:
    """Restore a training checkpoint into ``model`` (and optimizer, scheduler, scaler, RNGs)."""
    name, data = read_source_bytes(source)
    if not data:
        raise TruncatedCheckpointError(name, "empty file (0 bytes)")
    payload = torch_load_weights_only(name, data)
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_FORMAT:
        raise CheckpointError(name, "not an emotion-pipeline training checkpoint")
    _load_state_checked(name, model, payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        _set_rng_state(payload["rng"])
    return TrainingState(
        epoch=int(payload["epoch"]),
        best_metric=payload.get("best_metric"),
        extra=dict(payload.get("extra") or {}),
        architecture=dict(payload.get("architecture") or {}),
    )
