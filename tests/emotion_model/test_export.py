"""ONNX and TorchScript export of the small model: parity with eager, dynamic batch, metadata."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_model.errors import ExportParityError
from emotion_model.export import PARITY_TOLERANCE, _check, export_model
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import EmotionClassifier

METADATA = {"labels": list(EMOTION_LABELS), "num_frames": 16, "img_size": 64,
            "model_version": "0123456789ab"}


def _frames(batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, 3, 64, 64, generator=gen)


def _eager(model: EmotionClassifier, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(x), -1).numpy()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, small_model: EmotionClassifier
            ) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("export")
    return {
        fmt: export_model(small_model, METADATA, out / f"model.{fmt}", format=fmt)
        for fmt in ("onnx", "torchscript")
    }


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_report(exports: dict[str, dict], fmt: str) -> None:
    report = exports[fmt]
    assert report["format"] == fmt
    assert 0.0 <= report["max_abs_diff"] <= PARITY_TOLERANCE == 1e-4
    path = Path(report["path"])
    assert path.is_file() and path.stat().st_size == report["bytes"] > 1_000_000
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_onnx_runs_with_dynamic_batch(exports: dict[str, dict],
                                      small_model: EmotionClassifier) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(exports["onnx"]["path"], providers=["CPUExecutionProvider"])
    (frames,) = session.get_inputs()
    assert frames.name == "frames"
    assert frames.shape[0] == "batch" and frames.shape[1:] == [16, 3, 64, 64]
    for batch in (1, 4):
        x = _frames(batch, seed=10 + batch)
        (logits,) = session.run(["logits"], {"frames": x.numpy()})
        assert logits.shape == (batch, 6)
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        np.testing.assert_allclose(probs, _eager(small_model, x), atol=1e-4, rtol=0)


def test_onnx_carries_the_metadata(exports: dict[str, dict]) -> None:
    import onnx

    from emotion_model.export import graph_sha256

    proto = onnx.load(exports["onnx"]["path"])
    props = {p.key: p.value for p in proto.metadata_props}
    stored = json.loads(props["emotion_pipeline"])
    record = stored.pop("onnx")
    assert stored == METADATA  # a float file serves under the source model's version
    assert record["source_version"] == METADATA["model_version"]
    assert (record["precision"], record["quantization"], record["opset"]) == ("float32", None, 17)
    assert record["graph_sha256"] == graph_sha256(proto)
    assert record["parity"] == exports["onnx"]["max_abs_diff"]


def test_torchscript_loads_and_agrees(exports: dict[str, dict],
                                      small_model: EmotionClassifier) -> None:
    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(exports["torchscript"]["path"], map_location="cpu",
                                  _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == METADATA
    for batch in (1, 4):
        x = _frames(batch, seed=20 + batch)
        with torch.no_grad():
            probs = torch.softmax(scripted(x), -1).numpy()
        assert probs.shape == (batch, 6)
        np.testing.assert_allclose(probs, _eager(small_model, x), atol=1e-4, rtol=0)


def test_parity_check_raises_beyond_the_tolerance() -> None:
    want = np.full((2, 6), 1 / 6, np.float32)
    got = want.copy()
    assert _check("onnx export", got, want, 0.0) == 0.0
    got[1, 3] += 2e-4
    assert _check("onnx export", got, want, 1e-3) == pytest.approx(2e-4, rel=1e-3)
    with pytest.raises(ExportParityError, match=r"^onnx export: max \|probability difference\|"):
        _check("onnx export", got, want, PARITY_TOLERANCE)
    got[0, 0] = np.nan  # NaN never passes
    with pytest.raises(ExportParityError, match="exceeds"):
        _check("onnx export", got, want, 1.0)


def test_a_failed_parity_check_writes_nothing(small_model: EmotionClassifier,
                                              tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with pytest.raises(ExportParityError, match="torchscript export"):
        # tolerance < 0: no export can pass, so the check must stop the write
        export_model(small_model, METADATA, target, format="torchscript", tolerance=-1.0)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_unknown_format(small_model: EmotionClassifier, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be 'onnx' or 'torchscript', got 'tflite'"):
        export_model(small_model, METADATA, tmp_path / "m.tflite", format="tflite")  # type: ignore[arg-type]
    assert not (tmp_path / "m.tflite").exists()
