"""The ``batch-inference`` flow with a face model (real Prefect, local folder, an untrained small
model whose file says ``crop: face``): one set of clips per face track, the ``faces`` table,
videos with no face, ``max_faces``; the detector's licence is named in the README."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from face_fixtures import faceless, two_faces
from video_fixtures import CREMA_D_DIR, needs_encoder

from flows.batch_inference import batch_inference

CREMA = "1001_DFA_HAP_XX.flv"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real clip (one face), two composed faces, a faceless video and a corrupt file."""
    needs_encoder("libx264")
    root = tmp_path_factory.mktemp("mixed")
    shutil.copy(CREMA_D_DIR / CREMA, root / CREMA)
    two_faces(root / "two.mp4", seconds=2.0, fps=25.0)
    faceless(root / "none.mp4", seconds=2.0, fps=25.0)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    return root


def _run(source: Path, model: Path, output: Path, **extra: Any) -> dict[str, Any]:
    return batch_inference(source=str(source), model=str(model), output=str(output),
                           clip_seconds=1.0, batch_size=4, device="cpu", **extra)


def _rows(output: Path, table: str, run_id: str) -> pd.DataFrame:
    frame = pd.read_parquet(output / table)
    return frame[frame["run_id"] == run_id].reset_index(drop=True)


def test_face_model_predicts_per_face(
    prefect_server: None, face_model: Path, mixed: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    summary = _run(mixed, face_model, output)
    run_id, counts = summary["run_id"], summary["counts"]
    assert (counts["succeeded"], counts["failed"], counts["no_face"], counts["faces"]) == (
        3, 1, 1, 3)
    assert summary["model"]["crop"] == "face" and summary["timings"]["detect_s"] > 0
    assert sum(summary["label_distribution"].values()) == 2  # the faceless video has no label

    videos = _rows(output, "videos", run_id)
    by_name = videos.set_index(videos["video_uri"].map(lambda u: Path(u).name))
    assert by_name.loc[CREMA, "faces"] == 1 and by_name.loc["two.mp4", "faces"] == 2
    assert by_name.loc["none.mp4", "faces"] == 0 and pd.isna(by_name.loc["none.mp4", "label"])
    assert by_name.loc["none.mp4", "num_clips"] == 0 and set(videos["crop"]) == {"face"}

    faces = _rows(output, "faces", run_id)
    assert sorted(faces.groupby("video_uri").size().tolist()) == [1, 2]
    assert ((faces["face_w"] > 0) & (faces["face_w"] < 1)).all()
    assert (faces["last_s"] > faces["first_s"]).all()

    predictions = _rows(output, "predictions", run_id)
    assert (predictions["face_id"] >= 0).all() and predictions["face_x"].notna().all()
    assert predictions["face_score"].between(0.5, 1.0).all()
    per_face = predictions.groupby(["video_uri", "face_id"]).size()
    merged = faces.set_index(["video_uri", "face_id"])["num_clips"]
    assert per_face.sort_index().tolist() == merged.sort_index().tolist()
    # the video's label is its longest-seen face's
    two = faces[faces["video_uri"].str.endswith("two.mp4")]
    longest = two.loc[(two["last_s"] - two["first_s"]).idxmax()]
    assert by_name.loc["two.mp4", "label"] == longest["label"]

    errors = _rows(output, "errors", run_id)
    assert errors["video_uri"].str.endswith("broken.mp4").all() and len(errors) == 1


def test_max_faces_and_detect_fps_parameters(
    prefect_server: None, face_model: Path, mixed: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    summary = _run(mixed, face_model, output, max_faces=1, detect_fps=2.0)
    assert summary["counts"]["faces"] == 2  # one per video with a face
    assert summary["parameters"]["detect_fps"] == 2.0
    faces = _rows(output, "faces", summary["run_id"])
    assert faces.groupby("video_uri").size().tolist() == [1, 1]


def test_the_readme_names_the_detector_and_its_licence() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "BlazeFace" in readme and "Apache" in readme and "face_models/LICENSE" in readme
