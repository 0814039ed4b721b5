"""Every invalid parameter of the ``batch-inference`` flow, and every kind of bad model file, is
refused by the real flow (Prefect test server) with one line naming the field or the file,
before any video is read and without running anything from the file.

The Dask runner's parameters (task_runner, dask_address, dask_local_workers) are covered by
tests/flows/test_dask.py; the retrain flow's by tests/flows/test_retrain.py.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from video_fixtures import make_test_pattern

from emotion_model.checkpoint import save_deployment
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    LabelMismatchError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from emotion_model.model import build_model
from emotion_model.video_writer import encode_video
from flows.batch_inference import batch_inference
from tasks.batch.settings import BatchSettings

BAD_VALUES: list[tuple[str, Any]] = [
    ("source", ""),
    ("source", "   "),
    ("source", "not a scheme://bucket"),
    ("output", ""),
    ("model", ""),
    ("clip_seconds", 0),
    ("clip_seconds", -1.0),
    ("clip_seconds", 601),
    ("clip_seconds", "four"),
    ("stride_seconds", 0),
    ("stride_seconds", 50.0),  # more than 10 x clip_seconds (4 s)
    ("detect_fps", 0),
    ("detect_fps", -5.0),
    ("detect_fps", 1000),
    ("max_faces", 0),
    ("max_faces", 65),
    ("batch_size", 0),
    ("batch_size", 5000),
    ("shard_size", 0),
    ("device", "tpu"),
    ("device", "cuda:x"),
    ("max_videos", 0),
    ("reprocess", "perhaps"),
    ("storage_options", "endpoint=http://x"),
    ("decode_threads", 0),
    ("decode_threads", 65),
    ("queue_depth", 0),
    ("queue_depth", 5000),
    ("shard_concurrency", 0),
    ("drift_threshold", 0),
    ("drift_threshold", 1.5),
    ("drift_window", 0),
]
COVERED_ELSEWHERE = {"task_runner", "dask_address", "dask_local_workers"}
"""Parameters whose bad values tests/flows/test_dask.py refuses."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("param-videos")
    encode_video(root / "a.mp4", make_test_pattern(10, 64, 64), fps=10)
    return root


def test_every_parameter_has_a_bad_value_case() -> None:
    names = set(inspect.signature(batch_inference.fn).parameters)
    assert names - COVERED_ELSEWHERE == {name for name, _ in BAD_VALUES}


@pytest.mark.parametrize(("field", "value"), BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_parameter_is_refused_naming_the_field(field: str, value: Any) -> None:
    """``BatchSettings.from_parameters`` is the flow's first step: every bad value, one line,
    the field named."""
    params: dict[str, Any] = {"source": "videos/", "model": "model.safetensors", field: value}
    with pytest.raises(ValueError, match=rf"^invalid parameter '{field}': ") as raised:
        BatchSettings.from_parameters(**params)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("stride_seconds", 50.0),
                                              ("device", "tpu"), ("storage_options", "x")])
def test_the_flow_refuses_a_bad_parameter_before_anything(
    prefect_server: None, videos: Path, model_path: Path, tmp_path: Path, field: str, value: Any
) -> None:
    """Through the real flow: the run fails at once, nothing is written, not even the probe."""
    output = tmp_path / "out"
    params: dict[str, Any] = {"source": str(videos), "model": str(model_path),
                              "output": str(output), "device": "cpu", field: value}
    with pytest.raises(ValueError, match=rf"^invalid parameter '{field}': ") as raised:
        batch_inference(**params)
    assert "\n" not in str(raised.value)
    assert not output.exists()


# --- bad model files ---------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _bad_model(kind: str, model_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        data = model_path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "wrong_labels":
        labels = ("calm", "disgust", "fearful", "happy", "neutral", "sad")
        save_deployment(build_model("small"), path, labels=labels, num_frames=16, img_size=64)
    elif kind == "wrong_architecture":  # R50-width metadata over small weights
        torch.manual_seed(0)
        save_deployment(build_model("small"), path, num_frames=16, img_size=64,
                        architecture={"width": 64})
    else:
        path = tmp_path / "model.pt"
        torch.save({"state_dict": _Payload(tmp_path / "pwned")}, path)
    return path


@pytest.mark.parametrize(("kind", "error", "match"), [
    ("truncated", TruncatedCheckpointError, "truncated"),
    ("wrong_labels", LabelMismatchError, "labels"),
    ("wrong_architecture", ArchitectureMismatchError, "architecture"),
    ("pickle_that_runs_code", UnsafeCheckpointError, "refused"),
])
def test_bad_model_file_is_refused_before_any_video(
    prefect_server: None, videos: Path, model_path: Path, tmp_path: Path, kind: str,
    error: type[CheckpointError], match: str
) -> None:
    bad = _bad_model(kind, model_path, tmp_path)
    output = tmp_path / "out"
    with pytest.raises(error, match=match) as raised:
        batch_inference(source=str(videos), model=str(bad), output=str(output), device="cpu")
    message = str(raised.value)
    assert message.startswith(str(bad)) and "\n" not in message
    assert not output.exists()
    assert not (tmp_path / "pwned").exists()  # nothing was executed
    if kind == "pickle_that_runs_code":  # the payload is really there, calling os.system
        assert b"system" in bad.read_bytes()
