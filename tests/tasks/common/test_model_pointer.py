"""Which deployment file a ``model`` parameter means (tasks/common/model_pointer.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from emotion_model.errors import CheckpointError
from tasks.common.model_pointer import POINTER_NAME, pointer_uri, resolve_model_uri


def write_pointer(folder: Path, content: object | bytes) -> Path:
    """``<folder>/production.json`` holding ``content`` (JSON, or raw bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / POINTER_NAME
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


@pytest.mark.parametrize("registry", ["/models/reg", "/models/reg/", "s3://b/reg",
                                      "s3://b/reg/", "file:///srv/reg"])
def test_pointer_uri_is_production_json_under_the_registry(registry: str) -> None:
    assert pointer_uri(registry) == registry.rstrip("/") + "/production.json"


@pytest.mark.parametrize("model", [
    "/no/such/dir/model.safetensors",
    "s3://no-such-bucket/model.safetensors",
    "relative/model.safetensors",
    "model.pt",
])
def test_a_model_file_is_itself_without_reading_anything(model: str) -> None:
    assert resolve_model_uri(model) == model


def test_a_relative_uri_resolves_against_the_pointers_folder(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    pointer = write_pointer(registry, {"uri": "a1b2c3d4e5f6/model.safetensors",
                                       "model_version": "a1b2c3d4e5f6"})
    assert resolve_model_uri(str(pointer)) == f"{registry}/a1b2c3d4e5f6/model.safetensors"
    upper = pointer.rename(registry / "PRODUCTION.JSON")  # the extension is matched in any case
    assert resolve_model_uri(str(upper)) == f"{registry}/a1b2c3d4e5f6/model.safetensors"


def test_a_pointer_given_by_bare_name_resolves_against_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pointer(tmp_path, {"uri": "v1/model.safetensors"})
    monkeypatch.chdir(tmp_path)
    assert resolve_model_uri("production.json") == "./v1/model.safetensors"


@pytest.mark.parametrize("target", [
    "/srv/models/v7/model.safetensors",
    "s3://prod-models/v7/model.safetensors",
    "file:///srv/models/v7/model.safetensors",
])
def test_absolute_and_remote_uris_are_kept(tmp_path: Path, target: str) -> None:
    pointer = write_pointer(tmp_path / "registry", {"uri": target})
    assert resolve_model_uri(str(pointer)) == target


def test_a_missing_pointer_is_a_checkpoint_error(tmp_path: Path) -> None:
    missing = tmp_path / "registry" / POINTER_NAME
    with pytest.raises(CheckpointError, match="no such model pointer$") as raised:
        resolve_model_uri(str(missing))
    assert str(raised.value) == f"{missing}: no such model pointer"
    assert raised.value.uri == str(missing)
    assert isinstance(raised.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\x80\x81\x82 binary"],
                         ids=["broken", "empty", "not-utf8"])
def test_a_pointer_that_is_not_json_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    pointer = write_pointer(tmp_path, content)
    with pytest.raises(CheckpointError, match=r"model pointer is not JSON \(") as raised:
        resolve_model_uri(str(pointer))
    message = str(raised.value)
    assert message.startswith(f"{pointer}: model pointer is not JSON (") and "\n" not in message


@pytest.mark.parametrize("content", [
    {"model_uri": "v1/model.safetensors"}, {"uri": ""}, {"uri": 7}, {"uri": None},
    ["v1/model.safetensors"], "v1/model.safetensors", None,
], ids=["other-key", "empty", "number", "null", "list", "string", "json-null"])
def test_a_pointer_without_a_uri_is_a_checkpoint_error(tmp_path: Path, content: object) -> None:
    pointer = write_pointer(tmp_path, content)
    with pytest.raises(CheckpointError, match="model pointer has no 'uri'$") as raised:
        resolve_model_uri(str(pointer))
    assert str(raised.value) == f"{pointer}: model pointer has no 'uri'"


def test_a_pointer_on_s3(s3_server: Any, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="registry/production.json",
                      Body=json.dumps({"uri": "c0ffee123456/model.safetensors"}).encode())
    client.put_object(Bucket=s3_bucket, Key="pinned/production.json",
                      Body=json.dumps({"uri": "/mnt/models/model.safetensors"}).encode())
    client.put_object(Bucket=s3_bucket, Key="broken/production.json", Body=b"<html>")
    so = s3_server.storage_options
    base = f"s3://{s3_bucket}"

    assert resolve_model_uri(f"{base}/registry/production.json", so) == (
        f"{base}/registry/c0ffee123456/model.safetensors")
    assert resolve_model_uri(f"{base}/pinned/production.json", so) == (
        "/mnt/models/model.safetensors")
    with pytest.raises(CheckpointError, match="no such model pointer$"):
        resolve_model_uri(f"{base}/nowhere/production.json", so)
    with pytest.raises(CheckpointError, match=f"^{base}/broken/production.json: model pointer "
                                              "is not JSON"):
        resolve_model_uri(f"{base}/broken/production.json", so)
