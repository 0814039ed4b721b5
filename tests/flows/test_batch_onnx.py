"""The ``batch-inference`` flow serving ``.onnx`` files with ONNX Runtime on the CPU (real
Prefect, local folders and the moto S3 server): the X3D student's int8 file, as ``export --int8``
writes it, gives the torch model's tables, schemas and rows, its labels agreeing at the export's
bar and its model_version marked ``-int8``; the float file gives the torch probabilities within
1e-4 under the same version; a corrupt or mismatched ``.onnx`` file is refused in preflight with
one line, before any video is read."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emotion_model.checkpoint import load_deployment, save_deployment
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    LabelMismatchError,
    TruncatedCheckpointError,
)
from emotion_model.export import export_model
from emotion_model.face_clips import CropSpec
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import build_model
from emotion_model.quantize import AGREEMENT_BAR, compare_probabilities, export_int8
from emotion_model.sample_data import make_sample_dataset
from flows.batch_inference import batch_inference

pytestmark = [pytest.mark.slow]

PROBS = [f"prob_{label}" for label in EMOTION_LABELS]
TABLES = ("predictions", "faces", "videos", "errors")
KEYS = {"predictions": ["video_uri", "clip_index", "face_id"], "faces": ["video_uri", "face_id"],
        "videos": ["video_uri"], "errors": ["video_uri"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Twelve drawn-face videos and a broken file; the untrained student (face crops, 16
    frames of 64 px) as a deployment file, its float .onnx and its int8 .onnx."""
    root = tmp_path_factory.mktemp("batch-onnx")
    videos = root / "videos"
    make_sample_dataset(videos, actors=2, layout="ravdess", seconds=3.0, fps=10,
                        size=(96, 96), seed=5, first_actor=9)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    import torch

    torch.manual_seed(4)
    source = root / "student.safetensors"
    save_deployment(build_model("student").eval(), source, num_frames=16, img_size=64,
                    crop=CropSpec.face().to_metadata(), untrained=True)
    model, metadata = load_deployment(source)
    export_model(model, metadata, root / "student.onnx", format="onnx")
    export_int8(model, metadata, root / "student-int8.onnx")  # the sample-data calibration
    return {"videos": videos, "torch": source, "float": root / "student.onnx",
            "int8": root / "student-int8.onnx", "root": root}


def _run(served: dict[str, Path], model: str, output: Path) -> dict[str, Any]:
    return batch_inference(source=str(served["videos"]), model=str(served[model]),
                           output=str(output), clip_seconds=1.5, batch_size=4, device="cpu")


def _tables(output: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table in TABLES:
        frame = pd.read_parquet(output / table)
        out[table] = frame.sort_values(KEYS[table]).reset_index(drop=True)
    return out


def _schemas(output: Path) -> dict[str, Any]:
    return {t: pq.read_schema(next((output / t).rglob("*.parquet"))) for t in TABLES}


@pytest.fixture(scope="module")
def runs(prefect_server: None, served: dict[str, Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for model in ("torch", "float", "int8"):
        output = served["root"] / f"out-{model}"
        out[model] = {"summary": _run(served, model, output), "output": output}
    return out


def _model(run: dict[str, Any], *left_out: str) -> dict[str, Any]:
    """The run summary's ``model`` record but its ``uri`` (and ``left_out``)."""
    return {k: v for k, v in run["summary"]["model"].items() if k not in ("uri", *left_out)}


def test_int8_onnx_writes_the_torch_models_tables(runs: dict[str, dict[str, Any]]) -> None:
    want, got = runs["torch"], runs["int8"]
    version = want["summary"]["model"]["model_version"]
    assert got["summary"]["model"]["model_version"] == f"{version}-int8"
    assert _model(got, "model_version") == _model(want, "model_version")
    counts = {k: v for k, v in want["summary"]["counts"].items() if k != "label_distribution"}
    assert {k: got["summary"]["counts"][k] for k in counts} == counts
    assert counts["succeeded"] == 12 and counts["failed"] == 1  # the broken file, both times
    # the same tables, schemas (names, types, order) and rows, bar the predictions themselves
    assert _schemas(got["output"]) == _schemas(want["output"])
    a, b = _tables(want["output"]), _tables(got["output"])
    for table in TABLES:
        assert list(b[table].columns) == list(a[table].columns)
        assert b[table][KEYS[table]].equals(a[table][KEYS[table]]), table
    for table in ("predictions", "faces"):
        for column in ("face_x", "face_y", "face_w", "face_h"):  # the same crops were read
            np.testing.assert_allclose(b[table][column], a[table][column], atol=1e-6)
    assert set(b["predictions"]["model_version"]) == {f"{version}-int8"}
    assert list(b["errors"]["error_type"]) == list(a["errors"]["error_type"])
    # the predictions agree at the export's bar, clips and videos alike
    for table in ("predictions", "videos"):
        labelled = a[table]["label"].notna()
        measured = compare_probabilities(a[table].loc[labelled, PROBS].to_numpy(),
                                         b[table].loc[labelled, PROBS].to_numpy())
        assert measured.bar == AGREEMENT_BAR and measured.passed, (table, measured.describe())
        assert measured.clips >= 12


def test_float_onnx_is_the_torch_model_within_1e_4(runs: dict[str, dict[str, Any]]) -> None:
    want, got = runs["torch"], runs["float"]
    assert _model(got) == _model(want)  # the same model_version
    assert _schemas(got["output"]) == _schemas(want["output"])
    a, b = _tables(want["output"]), _tables(got["output"])
    for table in ("predictions", "faces", "videos"):
        assert b[table][KEYS[table]].equals(a[table][KEYS[table]])
        labelled = a[table]["label"].notna()
        np.testing.assert_allclose(b[table].loc[labelled, PROBS].to_numpy(np.float64),
                                   a[table].loc[labelled, PROBS].to_numpy(np.float64), atol=1e-4)
    summary = json.loads(next((got["output"] / "runs").glob("*.json")).read_text())
    assert summary["model"]["uri"].endswith("student.onnx")


# --- refused in preflight ------------------------------------------------------------------------
def _bad_onnx(kind: str, served: dict[str, Path], tmp_path: Path) -> Path:
    import onnx

    target = tmp_path / f"{kind}.onnx"
    if kind == "truncated":
        data = served["int8"].read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif kind == "not_ours":
        proto = onnx.load(served["float"])
        del proto.metadata_props[:]
        onnx.save(proto, target)
    else:
        proto = onnx.load(served["int8"])
        (entry,) = [p for p in proto.metadata_props if p.key == "emotion_pipeline"]
        metadata = json.loads(entry.value)
        if kind == "wrong_labels":
            metadata["labels"] = ["calm", *metadata["labels"][1:]]
        else:  # wrong_size: the metadata of a 112 px model over a 64 px graph
            metadata["img_size"] = 112
        entry.value = json.dumps(metadata)
        onnx.save(proto, target)
    return target


@pytest.mark.parametrize(("kind", "error", "match"), [
    ("truncated", TruncatedCheckpointError, "truncated or damaged"),
    ("not_ours", CheckpointError, "without emotion-pipeline metadata"),
    ("wrong_labels", LabelMismatchError, "differ from the expected"),
    ("wrong_size", ArchitectureMismatchError, r"frames has shape .* says \['batch', 16, 3, 112"),
])
def test_a_bad_onnx_model_is_refused_before_any_video(
        prefect_server: None, served: dict[str, Path], tmp_path: Path, kind: str,
        error: type[Exception], match: str) -> None:
    bad = _bad_onnx(kind, served, tmp_path)
    output = tmp_path / "out"
    with pytest.raises(error, match=match) as raised:
        batch_inference(source=str(served["videos"]), model=str(bad), output=str(output),
                        device="cpu")
    message = str(raised.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert not output.exists()  # preflight fails before the output probe and the listing


def test_cuda_is_refused_for_an_onnx_model(prefect_server: None, served: dict[str, Path],
                                           tmp_path: Path) -> None:
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^device 'cuda': an ONNX model runs on the CPU only"
                       ) as raised:
        batch_inference(source=str(served["videos"]), model=str(served["int8"]),
                        output=str(output), device="cuda")
    assert "\n" not in str(raised.value) and not output.exists()


def test_a_corrupt_onnx_model_on_s3_is_refused_without_listing_a_video(
        prefect_server: None, served: dict[str, Path], s3_server: Any, fault_proxy: Any) -> None:
    bucket = f"onnx-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    for path in sorted(served["videos"].rglob("*.mp4"))[:3]:
        client.upload_file(str(path), bucket, f"videos/{path.name}")
    data = served["int8"].read_bytes()
    client.put_object(Bucket=bucket, Key="models/student-int8.onnx", Body=data[: len(data) // 3])
    model = f"s3://{bucket}/models/student-int8.onnx"
    with pytest.raises(TruncatedCheckpointError, match=r"^s3://.*student-int8.onnx: not a "
                       r"readable ONNX model \(truncated or damaged\)") as raised:
        batch_inference(source=f"s3://{bucket}/videos/", model=model,
                        output=f"s3://{bucket}/out", device="cpu",
                        storage_options=fault_proxy.storage_options)
    assert "\n" not in str(raised.value)
    assert fault_proxy.requests(path=r"/models/student-int8.onnx") != []  # the model was read
    assert fault_proxy.requests(path=r"/videos/") == []  # not even listed
    assert fault_proxy.requests(path=r"/out") == []
