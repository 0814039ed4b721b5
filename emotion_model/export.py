"""Export to ONNX (dynamic batch) and TorchScript, each checked against the eager model
before anything is written.

The inputs follow the model's modality: ``frames`` float32 [B, T, 3, H, W] (video),
``audio`` float32 [B, n_mels, frames] and ``audio_present`` bool [B] (audio), all three in
that order (audio-video); the output is ``logits`` [B, C].

An ONNX file carries the deployment metadata as JSON in its ``metadata_props`` entry
``emotion_pipeline`` (`ONNX_METADATA_KEY`), with one key added, ``onnx`` (`onnx_record`):
the source model's version, the precision (``float32``, or ``int8`` from
``emotion_model.quantize``), the opset and the sha256 of the graph, which
``emotion_model.onnx_runtime`` checks when it loads the file. ``model_version`` is the source
model's for a float file (its outputs are the model's, within 1e-4) and gains a suffix for an
int8 one (`onnx_model_version`), so rows written by each stay apart.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from emotion_model.audio import AudioSpec
from emotion_model.errors import ExportParityError
from emotion_model.files import atomic_write
from emotion_model.model import EmotionClassifier

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
PARITY_TOLERANCE = 1e-4
"""Largest allowed absolute difference between exported and eager probabilities."""
ONNX_OPSET = 17
ONNX_METADATA_KEY = "emotion_pipeline"
"""The ONNX ``metadata_props`` entry that holds the deployment metadata (JSON)."""
ONNX_RECORD_VERSION = 1
Precision = Literal["float32", "int8"]
Quantization = Literal["static", "dynamic"]


def input_names(model: EmotionClassifier) -> list[str]:
    """The exported model's inputs, in order, for its modality."""
    modality = getattr(model, "modality", "video")
    video = ["frames"] if modality != "audio" else []
    return video + (["audio", "audio_present"] if modality != "video" else [])


class _TensorInputs(torch.nn.Module):
    """An audio model with its exported inputs as positional tensors (no None to trace)."""

    def __init__(self, model: EmotionClassifier) -> None:
        super().__init__()
        self.model = model
        self.has_frames = model.modality != "audio"
        self.train(model.training)  # the exporter restores this mode on the wrapped model too

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        frames = inputs[0] if self.has_frames else None
        audio, present = inputs[-2:]
        return self.model(frames, audio, present)


def _exportable(model: EmotionClassifier) -> torch.nn.Module:
    """The module to trace: a video model as it is (its exports stay what they were)."""
    return model if getattr(model, "modality", "video") == "video" else _TensorInputs(model)


def _example(
    model: EmotionClassifier, metadata: Mapping[str, Any], batch: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """Random inputs for ``input_names(model)``; ``audio_present`` is False for every third
    clip, so the parity checks cover the no-audio embedding too."""
    t, s = int(metadata.get("num_frames", 48)), int(metadata.get("img_size", 112))
    gen = torch.Generator().manual_seed(seed)
    made: dict[str, torch.Tensor] = {"frames": torch.randn(batch, t, 3, s, s, generator=gen)}
    spec = getattr(model, "audio_spec", None) or AudioSpec()
    made["audio"] = torch.randn(batch, *spec.shape, generator=gen)
    made["audio_present"] = torch.arange(batch) % 3 != 2
    return tuple(made[name] for name in input_names(model))


def _eager_probs(model: EmotionClassifier, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(_exportable(model)(*inputs), -1).numpy()


def _check(name: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> float:
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:
        raise ExportParityError(
            name, f"max |probability difference| {diff:.2e} exceeds {tolerance:.0e}"
        )
    return diff


def export_onnx(
    model: EmotionClassifier,
    metadata: Mapping[str, Any],
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> tuple[bytes, float]:
    """ONNX bytes with a dynamic batch axis (inputs ``input_names(model)``, output ``logits``
    [B, C]), and the parity measured with onnxruntime on random input (batches of 1 and 3)."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    names = input_names(model)
    x = _example(model, metadata, 2, seed=0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _exportable(model),
            x,
            buffer,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "logits"]},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        probe = _example(model, metadata, batch, seed)
        feed = {name: t.numpy() for name, t in zip(names, probe, strict=True)}
        (logits,) = session.run(["logits"], feed)
        got = torch.softmax(torch.from_numpy(logits), -1).numpy()
        worst = max(worst, _check("onnx export", got, _eager_probs(model, probe), tolerance))
    record = onnx_record(proto, metadata, precision="float32", parity=worst)
    return stamp_onnx(proto, metadata, record), worst


def graph_sha256(proto: Any) -> str:
    """sha256 of an ONNX model's graph (nodes, weights, inputs and outputs; not the metadata),
    as protobuf serializes it."""
    import hashlib

    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def onnx_model_version(source_version: str, precision: Precision,
                       quantization: Quantization | None = None) -> str:
    """The ``model_version`` an ONNX file serves under: the source model's for float32, with
    ``-int8`` (static quantization) or ``-int8-dynamic`` appended for int8."""
    if precision == "float32":
        return source_version
    return f"{source_version}-int8" + ("-dynamic" if quantization == "dynamic" else "")


def onnx_record(proto: Any, metadata: Mapping[str, Any], *, precision: Precision,
                quantization: Quantization | None = None, **extra: Any) -> dict[str, Any]:
    """The ``onnx`` entry of an ONNX file's metadata: how it was made from the source model
    (``metadata``, a deployment file's), the sha256 of ``proto``'s graph, and ``extra``
    (``parity``; for int8, the calibration and agreement records)."""
    source = (metadata.get("onnx") or {}).get("source_version") or metadata.get(
        "model_version", "unversioned")
    return {
        "format_version": ONNX_RECORD_VERSION,
        "source_version": str(source),
        "precision": precision,
        "quantization": quantization,
        "opset": ONNX_OPSET,
        "graph_sha256": graph_sha256(proto),
        **extra,
    }


def stamp_onnx(proto: Any, metadata: Mapping[str, Any], record: Mapping[str, Any]) -> bytes:
    """``proto`` serialized with ``metadata`` (its ``model_version`` made
    `onnx_model_version`'s) and ``record`` as ``onnx`` in its `ONNX_METADATA_KEY` entry
    (replacing one already there)."""
    served = onnx_model_version(record["source_version"], record["precision"],
                                record.get("quantization"))
    stamped = {**dict(metadata), "model_version": served, "onnx": dict(record)}
    kept = [p for p in proto.metadata_props if p.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(stamped, default=str)
    return proto.SerializeToString()


def export_torchscript(
    model: EmotionClassifier,
    metadata: Mapping[str, Any],
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> tuple[bytes, float]:
    """TorchScript (traced) bytes, metadata in ``extra_files['metadata.json']``, and parity.
    The traced module takes ``input_names(model)`` as positional tensors."""
    model = model.eval()
    x = _example(model, metadata, 2, seed=0)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_exportable(model), x, check_trace=False)
    buffer = io.BytesIO()
    extra = {"metadata.json": json.dumps(dict(metadata), default=str)}
    with warnings.catch_warnings():  # torch.jit.save/load warn that TorchScript is deprecated
        warnings.simplefilter("ignore")
        torch.jit.save(traced, buffer, _extra_files=extra)
        buffer.seek(0)
        loaded = torch.jit.load(buffer, map_location="cpu")
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        probe = _example(model, metadata, batch, seed)
        with torch.no_grad():
            got = torch.softmax(loaded(*probe), -1).numpy()
        worst = max(worst, _check("torchscript export", got, _eager_probs(model, probe), tolerance))
    return buffer.getvalue(), worst


def export_model(
    model: EmotionClassifier,
    metadata: Mapping[str, Any],
    output: str | os.PathLike[str],
    *,
    format: ExportFormat,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Export, verify parity, then write ``output`` atomically; returns a small report."""
    if format == "onnx":
        data, diff = export_onnx(model, metadata, tolerance=tolerance)
    elif format == "torchscript":
        data, diff = export_torchscript(model, metadata, tolerance=tolerance)
    else:
        raise ValueError(f"format must be 'onnx' or 'torchscript', got {format!r}")
    path = atomic_write(Path(output), data)
    log.info("exported %s to %s (max prob diff %.2e)", format, path, diff)
    return {"format": format, "path": str(path), "bytes": len(data), "max_abs_diff": diff}
