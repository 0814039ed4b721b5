"""OnnxPredictor: an exported .onnx file served by ONNX Runtime gives the torch Predictor's
probabilities and metadata (video, audio-video and audio models), ``open_predictor`` picks it by
the file's name, and every bad file is refused at load in one typed line naming it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from video_fixtures import make_test_pattern

from emotion_model.checkpoint import load_deployment, save_deployment
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    LabelMismatchError,
    TruncatedCheckpointError,
)
from emotion_model.export import export_model
from emotion_model.model import build_model
from emotion_model.onnx_runtime import OnnxPredictor, open_predictor
from emotion_model.predict import Predictor, predict_video
from emotion_model.video_writer import encode_video

MODALITIES = ("video", "audio-video", "audio")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """modality -> (deployment file, its float .onnx export): small, 16 frames of 64 px."""
    root = tmp_path_factory.mktemp("onnx-runtime")
    out = {}
    for modality in MODALITIES:
        torch.manual_seed(1)
        source = root / f"{modality}.safetensors"
        save_deployment(build_model("small", modality=modality).eval(), source, num_frames=16,
                        img_size=64, untrained=True)
        model, metadata = load_deployment(source)
        export_model(model, metadata, root / f"{modality}.onnx", format="onnx")
        out[modality] = (source, root / f"{modality}.onnx")
    return out


def _inputs(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (batch, 16, 64, 64, 3), dtype=np.uint8)
    return clips, rng.standard_normal((batch, 64, 400)).astype(np.float32)


@pytest.mark.parametrize("modality", MODALITIES)
def test_onnx_gives_the_torch_probabilities(models: dict[str, tuple[Path, Path]],
                                            modality: str) -> None:
    source, onnx_file = models[modality]
    torch_predictor, onnx_predictor = open_predictor(source), open_predictor(onnx_file)
    assert isinstance(torch_predictor, Predictor) and isinstance(onnx_predictor, OnnxPredictor)
    clips, audio = _inputs(3, seed=4)
    calls = [(clips,), (clips, audio), (clips, audio, [True, False, True]),
             (clips, None, [False, False, False])]
    if modality == "audio":
        calls.append((None, audio))
    for args in calls:
        want, got = torch_predictor.probabilities(*args), onnx_predictor.probabilities(*args)
        assert got.dtype == np.float32 and got.shape == (3, 6)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    if modality != "video":  # the same refusal as the torch model's
        with pytest.raises(ValueError, match="no audio given"):
            onnx_predictor.probabilities(clips, None, [True, False, False])


@pytest.mark.parametrize("modality", MODALITIES)
def test_onnx_predictor_has_the_predictors_interface(models: dict[str, tuple[Path, Path]],
                                                     modality: str) -> None:
    source, onnx_file = models[modality]
    want, got = Predictor.from_file(source, device="cpu"), OnnxPredictor.from_file(onnx_file)
    for name in ("labels", "num_frames", "img_size", "mean", "std", "model_version", "crop",
                 "modality", "audio_spec", "preferred_batch_size", "device"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.metadata["untrained"] is True
    assert got.precision == "float32" and got.metadata["onnx"]["source_version"] == (
        want.model_version)


def test_predict_video_serves_the_onnx_file(models: dict[str, tuple[Path, Path]],
                                            tmp_path: Path) -> None:
    video = encode_video(tmp_path / "v.mp4", make_test_pattern(90, 64, 80, seed=2), fps=10)
    source, onnx_file = models["video"]
    want = predict_video(open_predictor(source), video, clip_seconds=2.0)
    got = predict_video(open_predictor(onnx_file), video, clip_seconds=2.0)
    assert [c.label for c in got.clips] == [c.label for c in want.clips] and len(got.clips) == 5
    for a, b in zip(got.clips, want.clips, strict=True):
        assert (a.index, a.start_s, a.end_s) == (b.index, b.start_s, b.end_s)
        np.testing.assert_allclose(list(a.probabilities.values()),
                                   list(b.probabilities.values()), atol=1e-4)
    assert got.model_version == want.model_version  # float: the source model's version


def test_open_predictor_picks_by_the_name(models: dict[str, tuple[Path, Path]]) -> None:
    _, onnx_file = models["video"]
    named = io.BytesIO(onnx_file.read_bytes())
    named.name = "s3://bucket/models/model.ONNX"  # what the batch flow hands a remote file as
    assert isinstance(open_predictor(named), OnnxPredictor)
    with pytest.raises(CheckpointError, match=r"^s3://bucket/models/other.safetensors: "):
        other = io.BytesIO(onnx_file.read_bytes())  # an ONNX file under another name: torch's
        other.name = "s3://bucket/models/other.safetensors"
        open_predictor(other)


def test_a_file_exported_before_the_onnx_record_still_loads(
        models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """Files of the first ONNX export carry the deployment metadata alone: served as float."""
    source, onnx_file = models["video"]
    old = _edit_metadata(onnx_file, tmp_path / "old.onnx", lambda m: m.pop("onnx"))
    predictor = OnnxPredictor.from_file(old)
    assert (predictor.precision, predictor.model_version) == (
        "float32", Predictor.from_file(source).model_version)


# --- refusals ------------------------------------------------------------------------------------
def _edit_metadata(onnx_file: Path, target: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A copy of ``onnx_file`` whose ``emotion_pipeline`` JSON went through ``edit`` (the graph,
    and so its recorded sha256, unchanged)."""
    import onnx

    proto = onnx.load(onnx_file)
    (entry,) = [p for p in proto.metadata_props if p.key == "emotion_pipeline"]
    metadata = json.loads(entry.value)
    edit(metadata)
    entry.value = json.dumps(metadata)
    onnx.save(proto, target)
    return target


def _not_ours(target: Path) -> Path:
    """A valid ONNX model (one Relu) without our metadata."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["frames"], ["logits"])], "relu",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target)
    return target


def _bad_file(kind: str, onnx_file: Path, tmp_path: Path) -> Path:
    target = tmp_path / f"{kind}.onnx"
    data = onnx_file.read_bytes()
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "damaged_weights":  # still parses: the graph's sha256 tells
        middle = len(data) // 2
        target.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
                           + data[middle + 64:])
    elif kind == "garbage":
        target.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "not_ours":
        _not_ours(target)
    elif kind == "wrong_labels":
        _edit_metadata(onnx_file, target, lambda m: m.update(labels=[
            "calm", "disgust", "fearful", "happy", "neutral", "sad"]))
    elif kind == "wrong_frame_size":
        _edit_metadata(onnx_file, target, lambda m: m.update(img_size=112))
    elif kind == "wrong_frames":
        _edit_metadata(onnx_file, target, lambda m: m.update(num_frames=32))
    elif kind == "wrong_modality":
        _edit_metadata(onnx_file, target, lambda m: m.update(
            modality="audio-video", audio={"n_mels": 64}))
    elif kind == "seven_labels":
        _edit_metadata(onnx_file, target, lambda m: m.update(labels=[*m["labels"], "calm"]))
    return target


@pytest.mark.parametrize(("kind", "error", "match"), [
    ("empty", TruncatedCheckpointError, "empty file"),
    ("truncated", TruncatedCheckpointError, r"truncated or damaged"),
    ("damaged_weights", TruncatedCheckpointError, r"graph sha256 \w+ differs .* \(damaged\)"),
    ("garbage", TruncatedCheckpointError, r"truncated or damaged"),
    ("not_ours", CheckpointError, r"without emotion-pipeline metadata"),
    ("wrong_labels", LabelMismatchError, r"labels \['calm', .* differ from the expected"),
    ("wrong_frame_size", ArchitectureMismatchError,
     r"frames has shape \['batch', 16, 3, 64, 64\], the metadata .* says \['batch', 16, 3, 112, "),
    ("wrong_frames", ArchitectureMismatchError, r"frames has shape .* says \['batch', 32, 3, 64"),
    ("wrong_modality", ArchitectureMismatchError,
     r"inputs \['frames'\] differ from the \['audio', 'audio_present', 'frames'\]"),
    ("seven_labels", LabelMismatchError, r"differ from the expected"),
])
def test_a_bad_onnx_file_is_refused_in_one_line(
        models: dict[str, tuple[Path, Path]], tmp_path: Path, kind: str,
        error: type[CheckpointError], match: str) -> None:
    bad = _bad_file(kind, models["video"][1], tmp_path)
    with pytest.raises(error, match=match) as raised:
        open_predictor(bad)
    message = str(raised.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message and len(message) < 600


def test_seven_labels_load_when_any_labels_are_allowed(
        models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """Without the six-label check, the class count is still checked against the graph."""
    bad = _bad_file("seven_labels", models["video"][1], tmp_path)
    with pytest.raises(ArchitectureMismatchError, match=r"logits has shape \['batch', 6\], the "
                       r"metadata .* 7 labels\) says \['batch', 7\]"):
        OnnxPredictor.from_file(bad, expected_labels=None)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "CUDA"])
def test_cuda_is_refused_in_one_line_before_the_file_is_read(tmp_path: Path, device: str
                                                             ) -> None:
    with pytest.raises(ValueError, match=r"^device '(?i:cuda)(:1)?': an ONNX model runs on the "
                       r"CPU only") as raised:
        open_predictor(tmp_path / "not-there.onnx", device=device)
    assert "\n" not in str(raised.value)


def test_device_cpu_and_auto_and_a_missing_file(models: dict[str, tuple[Path, Path]],
                                                tmp_path: Path) -> None:
    for device in ("cpu", "auto"):
        assert open_predictor(models["video"][1], device=device).device == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        open_predictor(models["video"][1], device="tpu")
    with pytest.raises(CheckpointNotFoundError, match=r"not-there.onnx: no such model file"):
        open_predictor(tmp_path / "not-there.onnx")


def test_the_student_normalizes_only_the_frames_it_reads(
        models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """X3D-XS reads 4 of the clip's frames: only those are normalized (the others fed as
    zeros), found from the metadata and confirmed by a probe at load; the torch outputs."""
    torch.manual_seed(3)
    source = tmp_path / "student.safetensors"
    save_deployment(build_model("student").eval(), source, num_frames=16, img_size=64)
    model, metadata = load_deployment(source)
    export_model(model, metadata, tmp_path / "student.onnx", format="onnx")
    student = OnnxPredictor.from_file(tmp_path / "student.onnx")
    assert student.frames_read is not None and list(student.frames_read) == [2, 6, 10, 14]
    assert OnnxPredictor.from_file(models["video"][1]).frames_read is None  # SlowFast: all
    clips, _ = _inputs(3, seed=5)
    feed = student.feeds(clips)["frames"]
    assert not feed[:, [0, 1, 3, 15]].any() and feed[:, [2, 6, 10, 14]].any()
    np.testing.assert_allclose(student.probabilities(clips),
                               Predictor.from_file(source).probabilities(clips), atol=1e-4)
    # the probe refuses a rule the graph does not follow: then every frame is normalized
    edited = _edit_metadata(tmp_path / "student.onnx", tmp_path / "odd.onnx",
                            lambda m: m["architecture"].update(sampled_frames=8))
    assert OnnxPredictor.from_file(edited).frames_read is None
