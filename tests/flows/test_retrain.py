"""The ``retrain`` flow end to end on sample data with the small model on the CPU: it learns
(held-out actors), publishes, promotes only a better model (or a forced one), the batch flow
runs with the pointer, and a training process killed after an epoch resumes to the same model.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from retrain_recipe import RETRAIN_RECIPE

from cli.main import main
from flows.batch_inference import batch_inference
from flows.retrain import retrain
from tasks.training.settings import RetrainSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

RECIPE = RETRAIN_RECIPE


@pytest.fixture(scope="module")
def sample_data(retrained: dict[str, Any]) -> Path:
    """6 actors x 6 emotions x 4 takes of drawn faces in the RAVDESS layout (144 videos)."""
    return retrained["data"]


@pytest.fixture(scope="module")
def trained(retrained: dict[str, Any]) -> dict[str, Any]:
    """One full retrain into a fresh registry (the session's, shared with the distill tests):
    its summary and the registry's path."""
    return retrained


def test_learns_on_held_out_actors_and_publishes(trained: dict[str, Any]) -> None:
    summary, registry = trained["summary"], trained["registry"]
    # 0.79-0.81 measured with this seed (38 or 39 of 48: one video flips between runs of the
    # full suite, not yet explained); chance is 0.17
    assert summary["metrics"]["val_accuracy"] >= 0.75, summary["metrics"]
    assert summary["promoted"] and summary["decision"] == "no production model yet"
    folder = registry / summary["model_version"]
    for name in ("model.safetensors", "metrics.json", "split.json", "confusion.png",
                 "training_curves.png", "confusion.parquet", "val_predictions.parquet"):
        assert (folder / name).stat().st_size > 0, name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["val_accuracy"] == summary["metrics"]["val_accuracy"]
    assert {"val_accuracy", "val_macro_f1", "per_class", "epochs_run"} <= set(metrics)
    assert set(metrics["per_class"]) == {"angry", "disgust", "fearful", "happy", "neutral",
                                         "sad"}
    assert metrics["epochs_run"] == len(metrics["history"]) == 20
    split = json.loads((folder / "split.json").read_text())
    assert len(split["val_actors"]) == 2 and len(split["train_actors"]) == 4
    assert not set(split["val_actors"]) & set(split["train_actors"])
    assert {v["actor"] for v in split["val"]} == set(split["val_actors"])
    pointer = json.loads((registry / "production.json").read_text())
    assert pointer["model_version"] == summary["model_version"]
    assert pointer["uri"] == str(folder / "model.safetensors")
    confusion = pd.read_parquet(folder / "confusion.parquet")
    assert confusion["count"].sum() == metrics["n_val"] == 48
    assert summary["timings"]["decoded"] == 144 and len(summary["timings"]["epoch_s"]) == 20


def test_batch_flow_runs_with_the_pointer(trained: dict[str, Any], sample_data: Path,
                                          tmp_path: Path, two_threads: None) -> None:
    """Inference (PyAV windows, Predictor) agrees with training's evaluation on held-out actors."""
    registry, version = trained["registry"], trained["summary"]["model_version"]
    val_actors = trained["summary"]["val_actors"]
    held_out = [sample_data / f"Actor_{a.split(':')[1]}" for a in val_actors]
    out = tmp_path / "out"
    for folder in held_out:
        batch_inference(source=str(folder), model=str(registry / "production.json"),
                        output=str(out))
    videos = pd.read_parquet(out / "videos")
    assert len(videos) == 48 and set(videos["model_version"]) == {version}
    code_to_label = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry",
                     "06": "fearful", "07": "disgust"}
    truth = videos["video_uri"].map(lambda u: code_to_label[Path(u).name.split("-")[2]])
    assert (videos["label"] == truth).mean() >= 0.75


def test_worse_candidate_stays_out_unless_forced(trained: dict[str, Any], sample_data: Path,
                                                 two_threads: None) -> None:
    registry = trained["registry"]
    champion = json.loads((registry / "production.json").read_text())
    worse = retrain(sources=[str(sample_data)], registry=str(registry), epochs=1,
                    **RECIPE)
    assert worse["timings"]["decoded"] == 0  # the clip cache already holds every video
    assert not worse["promoted"] and "production stays" in worse["decision"]
    assert json.loads((registry / "production.json").read_text()) == champion
    assert (registry / worse["model_version"] / "model.safetensors").exists()
    metrics = json.loads((registry / worse["model_version"] / "metrics.json").read_text())
    assert metrics["production_model_version"] == champion["model_version"]
    assert metrics["production_metrics_same_split"]["val_accuracy"] == champion["val_accuracy"]

    forced = retrain(sources=[str(sample_data)], registry=str(registry), epochs=1,
                     force=True, **RECIPE)
    assert forced["promoted"] and "force=True" in forced["decision"]
    pointer = json.loads((registry / "production.json").read_text())
    assert pointer["model_version"] == forced["model_version"] == worse["model_version"]
    assert pointer["forced"] is True
    assert pointer["previous_model_version"] == champion["model_version"]


@pytest.fixture(scope="module")
def small_data(face_videos: Any) -> Path:
    """6 actors x 6 emotions x 1 take, in the CREMA-D layout (36 videos)."""
    return face_videos("crema-d", takes=1, seconds=1.5)


def _cli_args(data: Path, registry: Path, epochs: int) -> list[str]:
    return ["train", str(data), "--registry", str(registry), "--small", "--epochs",
            str(epochs), "--num-frames", "16", "--img-size", "64", "--batch-size", "8",
            "--lr", "3e-3", "--crop-scale", "0.8", "--val-fraction", "0.34",
            "--device", "cpu", "--no-progress"]


def test_killed_training_resumes_to_the_same_model(small_data: Path, tmp_path: Path) -> None:
    """SIGKILL after the first epoch's checkpoint; resume=True ends where an uninterrupted run
    with the same seed ends: the same weights (model_version) and the same metrics."""
    from prefect.settings import PREFECT_API_URL

    epochs = 5
    args = _cli_args(small_data, tmp_path / "whole", epochs)
    assert main([*args, "--json", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())

    registry = tmp_path / "killed"
    settings = RetrainSettings(sources=[str(small_data)], registry=str(registry),
                               epochs=epochs, **{**RECIPE, "crop_scale": 0.8})
    checkpoint = Path(settings.checkpoint_uri) / "last.pt"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen([sys.executable, "-m", "cli.main", *_cli_args(small_data,
                              registry, epochs)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not (registry / "production.json").exists()  # it never got to publish

    assert main([*_cli_args(small_data, registry, epochs), "--resume",
                 "--json", str(tmp_path / "resumed.json")]) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert 1 <= resumed["resumed_from_epoch"] < epochs
    assert resumed["timings"]["decoded"] == 0  # the killed run had cached every clip
    assert resumed["model_version"] == whole["model_version"]
    assert resumed["metrics"] == whole["metrics"]
    history = [json.loads((tmp_path / r / v / "metrics.json").read_text())["history"]
               for r, v in (("whole", whole["model_version"]),
                            ("killed", resumed["model_version"]))]
    strip = [[{k: h[k] for k in ("train_loss", "val_loss", "val_accuracy")} for h in run]
             for run in history]
    assert strip[0] == strip[1]


def test_a_model_that_learned_nothing_is_published_not_promoted(small_data: Path,
                                                               tmp_path: Path) -> None:
    """The observed failure, cheaply: a learning rate too small to learn anything ends near
    chance (1/6); the floor keeps it out of an empty registry. Early stopping (patience 1)
    could not stop it before the warm-up (ceil(0.3 x 4) = 2 epochs) plus patience."""
    registry = tmp_path / "registry"
    summary = retrain(sources=[str(small_data)], registry=str(registry),
                      **{**RECIPE, "lr": 1e-7, "epochs": 4, "patience": 1})
    accuracy = summary["metrics"]["val_accuracy"]
    assert accuracy < 0.4 and not summary["promoted"] and summary["pointer"] is None
    assert summary["decision"] == (f"candidate accuracy {accuracy:.3f} is below the floor 0.40 "
                                   "(chance is 0.167): published, not promoted")
    assert not (registry / "production.json").exists()
    metrics = json.loads((registry / summary["model_version"] / "metrics.json").read_text())
    assert metrics["promoted"] is False and metrics["decision"] == summary["decision"]
    assert (registry / summary["model_version"] / "model.safetensors").stat().st_size > 0
    assert summary["metrics"]["epochs_run"] >= 3  # never before warm-up (2) + patience (1)


# --- parameters ----------------------------------------------------------------------------------
BAD_VALUES: list[tuple[str, Any]] = [
    ("sources", []),
    ("sources", [""]),
    ("sources", "not a list"),
    ("registry", ""),
    ("cache", "  "),
    ("checkpoint_dir", "bad scheme://x"),
    ("preset", "r101"),
    ("modality", "sound"),
    ("num_frames", 10),
    ("img_size", 8),
    ("clip_seconds", 0),
    ("crop", "faces"),
    ("detect_fps", 0),
    ("max_clips_per_video", 0),
    ("epochs", 0),
    ("patience", 0),
    ("batch_size", 0),
    ("lr", 0),
    ("weight_decay", -0.1),
    ("label_smoothing", 1.0),
    ("crop_scale", 0.1),
    ("grad_clip", 0),
    ("val_fraction", 1.0),
    ("seed", -1),
    ("init", ""),
    ("pretrained", ""),
    ("resume", "perhaps"),
    ("force", "perhaps"),
    ("min_val_accuracy", 1.5),
    ("device", "tpu"),
    ("decode_threads", 0),
    ("storage_options", "endpoint=http://x"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_parameter_is_refused_naming_it(field: str, value: Any) -> None:
    params = {"sources": ["/data"], "registry": "/registry", field: value}
    with pytest.raises(ValueError, match=rf"invalid parameter '{field}'"):
        RetrainSettings.from_parameters(**params)


def test_every_flow_parameter_has_a_bad_value() -> None:
    assert set(inspect.signature(retrain.fn).parameters) == {f for f, _ in BAD_VALUES}


def test_conflicting_parameters() -> None:
    with pytest.raises(ValueError, match="init .* or pretrained"):
        RetrainSettings.from_parameters(sources=["/d"], registry="/r", init="/a", pretrained="/b")
    with pytest.raises(ValueError, match="r50 preset only"):
        RetrainSettings.from_parameters(sources=["/d"], registry="/r", preset="small",
                                        pretrained="/b")


def test_flow_refuses_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid parameter 'epochs'"):
        retrain(sources=[str(tmp_path)], registry=str(tmp_path / "reg"), epochs=0)
    assert not (tmp_path / "reg").exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "nowhere"), "--registry", str(tmp_path)]) == 2
    assert "source not found" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--registry", str(tmp_path), "--num-frames", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid parameter 'num_frames'") and "\n" not in err
