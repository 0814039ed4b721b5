"""Export to ONNX (dynamic batch) and TorchScript, each checked against the eager model
before anything is written."""

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

from emotion_model.errors import ExportParityError
from emotion_model.files import atomic_write
from emotion_model.model import EmotionClassifier

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
PARITY_TOLERANCE = 1e-4
"""Largest allowed absolute difference between exported and eager probabilities."""


def _example(metadata: Mapping[str, Any], batch: int, seed: int) -> torch.Tensor:
    t, s = int(metadata.get("num_frames", 48)), int(metadata.get("img_size", 112))
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, t, 3, s, s, generator=gen)


def _eager_probs(model: EmotionClassifier, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(x), -1).numpy()


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
    """ONNX bytes with a dynamic batch axis (input ``frames`` float32 [B, T, 3, H, W], output
    ``logits`` [B, C]), and the parity measured with onnxruntime on random input (batches of 1
    and 3)."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    x = _example(metadata, 2, seed=0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buffer,
            input_names=["frames"],
            output_names=["logits"],
            dynamic_axes={"frames": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (("emotion_pipeline", json.dumps(dict(metadata), default=str)),):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        probe = _example(metadata, batch, seed)
        (logits,) = session.run(["logits"], {"frames": probe.numpy()})
        got = torch.softmax(torch.from_numpy(logits), -1).numpy()
        worst = max(worst, _check("onnx export", got, _eager_probs(model, probe), tolerance))
    return data, worst


def export_torchscript(
    model: EmotionClassifier,
    metadata: Mapping[str, Any],
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> tuple[bytes, float]:
    """TorchScript (traced) bytes, metadata in ``extra_files['metadata.json']``, and parity."""
    model = model.eval()
    x = _example(metadata, 2, seed=0)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    buffer = io.BytesIO()
    extra = {"metadata.json": json.dumps(dict(metadata), default=str)}
    with warnings.catch_warnings():  # torch.jit.save/load warn that TorchScript is deprecated
        warnings.simplefilter("ignore")
        torch.jit.save(traced, buffer, _extra_files=extra)
        buffer.seek(0)
        loaded = torch.jit.load(buffer, map_location="cpu")
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        probe = _example(metadata, batch, seed)
        with torch.no_grad():
            got = torch.softmax(loaded(probe), -1).numpy()
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
