"""int8 ONNX: the X3D student quantized (static, calibrated on rendered drawn faces) agrees with
its float export at the bar on clips neither saw; dynamic mode; the bar refuses before writing;
calibration from a folder of videos or a clip cache; what the file records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from emotion_model.checkpoint import load_deployment, save_deployment
from emotion_model.errors import ExportParityError
from emotion_model.export import export_onnx
from emotion_model.model import build_model
from emotion_model.onnx_runtime import OnnxPredictor, open_predictor
from emotion_model.predict import Predictor
from emotion_model.quantize import (
    AGREEMENT_BAR,
    NEAR_TIE,
    ClipSet,
    agreement,
    calibration_sets,
    compare_probabilities,
    export_int8,
    quantize_file,
    quantize_model,
    video_clips,
)
from emotion_model.sample_data import make_sample_dataset


def _deployment(path: Path, preset: str, modality: str = "video", **meta: Any) -> Path:
    torch.manual_seed(2)
    save_deployment(build_model(preset, modality=modality).eval(), path, num_frames=16,
                    img_size=64, untrained=True, **meta)
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The X3D-XS student (16 frames of 64 px, whole frames), exported to int8 as `export
    --int8` does with no other argument: calibration rendered and decoded by itself."""
    root = tmp_path_factory.mktemp("student-int8")
    source = _deployment(root / "student.safetensors", "student")
    model, metadata = load_deployment(source)
    report = export_int8(model, metadata, root / "student-int8.onnx")
    float_file = root / "student.onnx"
    float_file.write_bytes(export_onnx(model, metadata)[0])
    return {"root": root, "source": source, "float": float_file, "report": report,
            "int8": Path(report["path"]), "version": metadata["model_version"]}


@pytest.fixture(scope="module")
def unseen_clips(student: dict[str, Any]) -> ClipSet:
    """Clips of actors neither the calibration (1-2) nor the check (3-4) saw."""
    predictor = open_predictor(student["float"])
    paths = make_sample_dataset(student["root"] / "unseen", actors=2, first_actor=5,
                                layout="ravdess", seconds=4.0, fps=12, size=(96, 96), seed=1)
    return ClipSet.of_clips(predictor, video_clips(predictor, paths), "actors 5-6")


def test_the_student_quantizes_and_records_how(student: dict[str, Any]) -> None:
    report, version = student["report"], student["version"]
    assert report["agreement"].passed and report["agreement"].top1 >= AGREEMENT_BAR
    assert report["model_version"] == f"{version}-int8" and report["source_version"] == version
    int8 = OnnxPredictor.from_file(student["int8"])
    assert int8.model_version == f"{version}-int8" and int8.precision == "int8"
    record = int8.metadata["onnx"]
    assert (record["quantization"], record["source_version"]) == ("static", version)
    calibration, check = record["calibration"], record["check"]
    assert (calibration["format"], calibration["weights"], calibration["activations"]) == (
        "QDQ", "int8", "uint8")
    assert calibration["clips"] == 24 and "actors 1-2" in calibration["source"]
    assert check["clips"] == 24 and "actors 3-4" in check["source"]  # not the calibration's
    assert check["top1"] == report["agreement"].top1 and check["bar"] == AGREEMENT_BAR
    assert 0 <= check["max_abs_diff"] < 0.1 and check["mean_abs_diff"] <= check["max_abs_diff"]
    assert record["parity"] <= 1e-4  # the float export it came from, against torch
    # smaller than the float file: int8 weights
    assert student["int8"].stat().st_size < 0.5 * student["float"].stat().st_size
    assert report["bytes"] == student["int8"].stat().st_size
    assert set(report["clips_per_s"]) == {"float32", "int8"}


def test_the_int8_graph_is_qdq_with_a_free_batch(student: dict[str, Any]) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(student["int8"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = OnnxPredictor.from_file(student["int8"])
    for batch in (1, 3):
        clips = np.random.default_rng(batch).integers(0, 256, (batch, 16, 64, 64, 3), np.uint8)
        probs = int8.probabilities(clips)
        assert probs.shape == (batch, 6)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_int8_agrees_with_float_at_the_bar_on_unseen_clips(
        student: dict[str, Any], unseen_clips: ClipSet) -> None:
    int8 = OnnxPredictor.from_file(student["int8"])
    measured, speed = agreement(OnnxPredictor.from_file(student["float"]), int8, unseen_clips)
    assert measured.clips == len(unseen_clips) >= 12
    assert measured.passed, measured.describe()
    assert speed["reference"] > 0 and speed["candidate"] > 0
    # and against the torch model itself (the float export is within 1e-4 of it)
    torch_model = Predictor.from_file(student["source"], device="cpu")
    want = np.concatenate([torch_model.probabilities(*b) for b in unseen_clips.batches(4)])
    got = np.concatenate([int8.probabilities(*b) for b in unseen_clips.batches(4)])
    assert compare_probabilities(want, got).passed


def test_dynamic_quantization(tmp_path: Path) -> None:
    source = _deployment(tmp_path / "small.safetensors", "small")
    model, metadata = load_deployment(source)
    float_data, _ = export_onnx(model, metadata)
    data, report = quantize_model(float_data, quantization="dynamic")
    assert report["calibration"]["clips"] == 0 and report["calibration"]["source"] is None
    assert report["check"]["clips"] == 24 and report["agreement"].passed
    assert report["model_version"] == f"{metadata['model_version']}-int8-dynamic"
    (tmp_path / "dyn.onnx").write_bytes(data)
    int8 = OnnxPredictor.from_file(tmp_path / "dyn.onnx")
    assert int8.metadata["onnx"]["quantization"] == "dynamic"
    import onnx

    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load_from_string(data).graph.node}


def test_a_face_crop_audio_video_model_calibrates_with_its_sound(tmp_path: Path) -> None:
    from emotion_model.face_clips import CropSpec

    source = _deployment(tmp_path / "fused.safetensors", "small", modality="audio-video",
                         crop=CropSpec.face().to_metadata())
    model, metadata = load_deployment(source)
    float_data, _ = export_onnx(model, metadata)
    reference = OnnxPredictor.from_file(float_data)
    calibration, check = calibration_sets(reference, workdir=tmp_path / "clips")
    assert calibration is not None and len(calibration) == len(check) == 24
    for clips in (calibration, check):
        assert clips.frames.shape[1:] == (16, 64, 64, 3)
        assert clips.audio is not None and clips.audio.shape[1:] == (64, 400)
        assert clips.audio_present is not None and clips.audio_present.all()
    data, report = quantize_model(float_data, clips=(calibration, check))
    assert report["agreement"].passed and report["model_version"].endswith("-int8")
    assert OnnxPredictor.from_file(data).crop.mode == "face"


# --- the bar --------------------------------------------------------------------------------------
def _noise(n: int, seed: int) -> ClipSet:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 16, 64, 64, 3), np.uint8)
    return ClipSet(frames, None, None, f"noise {seed}")


def test_under_the_bar_nothing_is_written(tmp_path: Path) -> None:
    source = _deployment(tmp_path / "small.safetensors", "small")
    model, metadata = load_deployment(source)
    float_data, _ = export_onnx(model, metadata)
    with pytest.raises(ExportParityError, match=r"^onnx int8 \(static\): top-1 agreement "
                       r"[\d.]+ on 6 clips \(bar 1.01; .* on noise 2$") as raised:
        quantize_model(float_data, clips=(_noise(6, 1), _noise(6, 2)), bar=1.01)
    assert "\n" not in str(raised.value)
    target = tmp_path / "out" / "never.onnx"
    with pytest.raises(ExportParityError):
        export_int8(model, metadata, target, clips=(_noise(6, 1), _noise(6, 2)), bar=1.01)
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_agreement_counts_near_ties_and_refuses_nan() -> None:
    ref = np.array([[0.5, 0.3, 0.2], [0.340, 0.335, 0.325], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    got = np.array([[0.5, 0.3, 0.2], [0.330, 0.345, 0.325], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]])
    measured = compare_probabilities(ref, got)
    # clip 1 flips inside a near tie (0.005 < NEAR_TIE): agreeing; clip 2 flips for real
    assert (measured.top1, measured.exact_top1) == (0.75, 0.5) and not measured.passed
    assert measured.max_abs_diff == pytest.approx(0.3) and NEAR_TIE == 0.01
    assert compare_probabilities(ref[[0, 1, 3]], got[[0, 1, 3]]).passed
    got[0, 0] = np.nan
    assert not compare_probabilities(ref, got).passed
    with pytest.raises(ValueError, match="same shape"):
        compare_probabilities(ref, got[:2])


# --- calibration sources --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_float(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("small-float")
    model, metadata = load_deployment(_deployment(root / "small.safetensors", "small"))
    return export_onnx(model, metadata)[0]


def test_calibration_from_a_folder_of_videos(small_float: bytes, tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "videos", actors=2, layout="ravdess", seconds=2.0, fps=10,
                        size=(96, 96), seed=3)
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video either")  # skipped
    predictor = OnnxPredictor.from_file(small_float)
    calibration, check = calibration_sets(predictor, tmp_path / "videos")
    assert calibration is not None and len(calibration) == len(check) == 6
    assert "every other one" in calibration.source and "other videos" in check.source
    data, report = quantize_model(small_float, calibration=tmp_path / "videos")
    assert report["calibration"]["clips"] == 6 and report["agreement"].passed


def test_calibration_from_a_clip_cache(small_float: bytes, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    cache.mkdir()
    for i in range(8):  # the retrain flow's files: [clips, 2 x num_frames, S, S, 3] uint8
        np.save(cache / f"{i:032x}.npy", rng.integers(0, 256, (3, 32, 64, 64, 3), np.uint8))
    np.save(cache / "other-size.npy", np.zeros((2, 32, 112, 112, 3), np.uint8))  # left out
    predictor = OnnxPredictor.from_file(small_float)
    calibration, check = calibration_sets(predictor, cache)
    assert calibration is not None and calibration.frames.shape == (8, 16, 64, 64, 3)
    assert len(check) == 8 and "clip cache" in check.source
    with pytest.raises(ValueError, match=r"no cached clips of 16 frames \(or a multiple\) of "
                       r"64 px$"):
        calibration_sets(predictor, _one_file(tmp_path / "wrong", (2, 32, 112, 112, 3)))


def _one_file(folder: Path, shape: tuple[int, ...]) -> Path:
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"{i}.npy", np.zeros(shape, np.uint8))
    return folder


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p / "missing", r"must be a folder of videos or a clip cache folder"),
    (lambda p: p, r"calibration needs at least 2 videos, found 0"),
])
def test_a_bad_calibration_source_is_one_line(small_float: bytes, tmp_path: Path, make: Any,
                                              match: str) -> None:
    with pytest.raises(ValueError, match=match) as raised:
        calibration_sets(OnnxPredictor.from_file(small_float), make(tmp_path))
    assert "\n" not in str(raised.value)


def test_an_int8_file_is_not_quantized_again(student: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"already int8 \(\w+-int8\): quantize its float export"):
        quantize_file(student["int8"], tmp_path / "twice.onnx")
    assert not (tmp_path / "twice.onnx").exists()
