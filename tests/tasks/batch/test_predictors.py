"""The per-process predictor cache (tasks/batch/predictors.py): hits, reloads, devices, size."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from emotion_model.checkpoint import save_deployment
from emotion_model.model import build_model
from emotion_model.predict import Predictor
from tasks.batch.predictors import MAX_PREDICTORS, load_predictor, predictor_cache_info


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second small deployment file: other weights, so another model version."""
    path = tmp_path_factory.mktemp("other-model") / "other.safetensors"
    torch.manual_seed(7)
    save_deployment(build_model("small").eval(), path, num_frames=16, img_size=64)
    return path


def copy_model(source: Path, folder: Path, name: str = "model.safetensors") -> Path:
    """A copy of ``source`` at a path no other test loads (the cache is per process)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(source, folder / name))


def loads() -> int:
    return predictor_cache_info()["loads"]


def test_the_second_load_is_a_cache_hit(model_path: Path, tmp_path: Path) -> None:
    path = copy_model(model_path, tmp_path)
    before = loads()
    first = load_predictor(str(path), "cpu")
    assert loads() == before + 1
    second = load_predictor(str(path), "cpu")
    assert second is first and loads() == before + 1
    assert isinstance(first, Predictor) and first.device.type == "cpu"
    assert (first.num_frames, first.img_size) == (16, 64)
    assert predictor_cache_info()["cached"] >= 1


def test_a_replaced_file_is_loaded_again(
    model_path: Path, other_model: Path, tmp_path: Path
) -> None:
    path = copy_model(model_path, tmp_path)
    first = load_predictor(str(path), "cpu")
    before = loads()
    shutil.copyfile(other_model, path)  # new weights under the same name
    later = time.time() + 5
    os.utime(path, (later, later))  # a new mtime even on a coarse-clocked file system
    replaced = load_predictor(str(path), "cpu")
    assert loads() == before + 1
    assert replaced is not first and replaced.model_version != first.model_version
    assert load_predictor(str(path), "cpu") is replaced and loads() == before + 1


def test_a_touched_file_with_the_same_bytes_is_loaded_again(
    model_path: Path, tmp_path: Path
) -> None:
    path = copy_model(model_path, tmp_path)
    first = load_predictor(str(path), "cpu")
    before = loads()
    later = time.time() + 5
    os.utime(path, (later, later))
    again = load_predictor(str(path), "cpu")
    assert again is not first and again.model_version == first.model_version
    assert loads() == before + 1


def test_each_device_name_has_its_own_entry(model_path: Path, tmp_path: Path) -> None:
    path = copy_model(model_path, tmp_path)
    on_cpu = load_predictor(str(path), "cpu")
    before = loads()
    on_auto = load_predictor(str(path), "auto")
    assert on_auto is not on_cpu and loads() == before + 1
    assert on_auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert load_predictor(str(path), "cpu") is on_cpu  # both held (MAX_PREDICTORS >= 2)
    assert loads() == before + 1


def test_the_cache_holds_at_most_max_predictors_dropping_the_oldest(
    model_path: Path, tmp_path: Path
) -> None:
    paths = [copy_model(model_path, tmp_path / f"m{i}") for i in range(MAX_PREDICTORS + 1)]
    before = loads()
    held = [load_predictor(str(p), "cpu") for p in paths]
    assert loads() == before + len(paths)
    assert predictor_cache_info()["cached"] == MAX_PREDICTORS
    assert load_predictor(str(paths[-1]), "cpu") is held[-1]  # the newest is still there
    assert loads() == before + len(paths)
    reloaded = load_predictor(str(paths[0]), "cpu")  # the oldest was dropped: loaded again
    assert reloaded is not held[0] and loads() == before + len(paths) + 1
    assert predictor_cache_info()["cached"] == MAX_PREDICTORS


def test_threads_loading_the_same_file_share_one_load(model_path: Path, tmp_path: Path) -> None:
    """Shard tasks start together on the thread runner: the model is loaded once."""
    path = copy_model(model_path, tmp_path)
    before = loads()
    start = threading.Barrier(4)
    got: list[Predictor] = []

    def load() -> None:
        start.wait()
        got.append(load_predictor(str(path), "cpu"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(p is got[0] for p in got)
    assert loads() == before + 1


def test_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "gone.safetensors"
    before = loads()
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_predictor(str(missing), "cpu")
    assert loads() == before


def test_an_s3_object_is_cached_by_its_etag(
    model_path: Path, other_model: Path, s3_server: Any, s3_bucket: str
) -> None:
    so = s3_server.storage_options
    uri = f"s3://{s3_bucket}/models/model.safetensors"
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="models/model.safetensors",
                      Body=model_path.read_bytes())
    local = load_predictor(str(model_path), "cpu")
    before = loads()
    first = load_predictor(uri, "cpu", so)
    assert first.model_version == local.model_version and loads() == before + 1
    assert load_predictor(uri, "cpu", so) is first and loads() == before + 1

    client.put_object(Bucket=s3_bucket, Key="models/model.safetensors",
                      Body=other_model.read_bytes())  # a new ETag
    replaced = load_predictor(uri, "cpu", so)
    assert replaced is not first and replaced.model_version != first.model_version
    assert loads() == before + 2
