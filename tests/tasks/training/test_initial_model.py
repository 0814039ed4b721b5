"""`initial_model` reads ``init`` and ``pretrained`` through the run's storage options: s3://
URIs on an endpoint only `storage_options` names (the moto server; no AWS_ENDPOINT_URL is set),
with retries, and errors that name the URI."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from emotion_model.checkpoint import save_deployment
from emotion_model.errors import CheckpointNotFoundError, TruncatedCheckpointError
from emotion_model.model import build_model
from tasks.training.loop import initial_model, read_model_file
from tasks.training.settings import RetrainSettings


def _upload(s3_server: Any, bucket: str, key: str, data: bytes) -> str:
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def _deployment_bytes(tmp_path: Path, seed: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A small deployment file's bytes and its weights."""
    torch.manual_seed(seed)
    donor = build_model("small")
    path = tmp_path / "donor.safetensors"
    save_deployment(donor, path, num_frames=16, img_size=64)
    return path.read_bytes(), donor.state_dict()


def test_init_from_s3_with_the_runs_storage_options(
    s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    data, weights = _deployment_bytes(tmp_path, seed=5)
    uri = _upload(s3_server, s3_bucket, "models/donor.safetensors", data)
    settings = RetrainSettings(sources=["/d"], registry="/r", preset="small", init=uri,
                               storage_options=s3_server.storage_options)
    model = initial_model(settings)
    assert model.training
    state = model.state_dict()
    assert state.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(state[name], value), name


def test_pretrained_kinetics_from_s3_with_the_runs_storage_options(
    s3_server: Any, s3_bucket: str
) -> None:
    torch.manual_seed(6)
    kinetics = {k.removeprefix("backbone."): v for k, v in build_model("r50").state_dict().items()
                if k.startswith("backbone.") and ".act_b." not in k}
    buffer = io.BytesIO()
    torch.save({"model_state": kinetics}, buffer)  # pytorchvideo's checkpoint layout
    uri = _upload(s3_server, s3_bucket, "kinetics/SLOWFAST_8x8_R50.pyth", buffer.getvalue())
    settings = RetrainSettings(sources=["/d"], registry="/r", pretrained=uri,
                               storage_options=s3_server.storage_options)
    model = initial_model(settings)
    state = model.state_dict()
    assert len(kinetics) > 100
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in kinetics.items())


def test_init_read_is_retried_on_a_transient_error(
    s3_server: Any, s3_bucket: str, fault_proxy: Any, tmp_path: Path
) -> None:
    data, weights = _deployment_bytes(tmp_path, seed=7)
    uri = _upload(s3_server, s3_bucket, "models/donor.safetensors", data)
    rule = fault_proxy.fail(status=503, method="GET", path=r"/models/donor\.safetensors",
                            times=1)
    settings = RetrainSettings(sources=["/d"], registry="/r", preset="small", init=uri,
                               storage_options=fault_proxy.storage_options)
    model = initial_model(settings)
    assert rule.injected == 1
    assert [r.outcome for r in fault_proxy.requests("GET", r"/models/donor")][0] == "503"
    assert torch.equal(model.state_dict()["head.1.weight"], weights["head.1.weight"])


@pytest.mark.parametrize("field", ["init", "pretrained"])
def test_a_missing_file_is_one_line_naming_the_uri(
    s3_server: Any, s3_bucket: str, field: str
) -> None:
    uri = f"s3://{s3_bucket}/models/nothing-here.safetensors"
    settings = RetrainSettings(sources=["/d"], registry="/r",
                               storage_options=s3_server.storage_options, **{field: uri})
    with pytest.raises(CheckpointNotFoundError,
                       match=r"nothing-here\.safetensors: no such model file") as caught:
        initial_model(settings)
    message = str(caught.value)
    assert message == f"{uri}: no such model file"
    assert caught.value.uri == uri
    assert isinstance(caught.value, FileNotFoundError)


def test_a_damaged_init_on_s3_is_named_by_its_uri(s3_server: Any, s3_bucket: str,
                                                  tmp_path: Path) -> None:
    data, _ = _deployment_bytes(tmp_path, seed=8)
    uri = _upload(s3_server, s3_bucket, "models/cut.safetensors", data[: len(data) // 2])
    settings = RetrainSettings(sources=["/d"], registry="/r", preset="small", init=uri,
                               storage_options=s3_server.storage_options)
    with pytest.raises(TruncatedCheckpointError, match=r"truncated") as caught:
        initial_model(settings)
    assert str(caught.value).startswith(f"{uri}: ")
    assert "\n" not in str(caught.value)


def test_read_model_file_reads_local_paths_too(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00\x01model")
    buffer = read_model_file(str(path), None)
    assert (buffer.name, buffer.read()) == (str(path), b"\x00\x01model")
    with pytest.raises(CheckpointNotFoundError, match="no such model file"):
        read_model_file(str(tmp_path / "absent.bin"), None)
