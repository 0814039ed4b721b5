"""Timelines from the Parquet a real batch run wrote (a face model over a real CREMA-D clip, two
composed faces, a faceless video and a corrupt file): one panel per face track, the clip windows
drawn, ``emotion-pipeline timeline`` and its one-line refusals. No model runs for a timeline."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from face_fixtures import faceless, two_faces
from matplotlib.image import imread
from video_fixtures import CREMA_D_DIR, needs_encoder

from cli.main import main
from emotion_model.labels import EMOTION_LABELS
from flows.batch_inference import batch_inference
from tasks.batch.timeline import draw_timeline, find_video, read_video_predictions

CREMA = "1001_DFA_ANG_XX.flv"


@pytest.fixture(scope="module")
def face_run(prefect_server: None, face_model: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A face model's run (1 s clips every 0.5 s) over four files: (output, summary)."""
    needs_encoder("libx264")
    root = tmp_path_factory.mktemp("timeline-src")
    shutil.copy(CREMA_D_DIR / CREMA, root / CREMA)
    two_faces(root / "two.mp4", seconds=2.0, fps=25.0)
    faceless(root / "none.mp4", seconds=1.0, fps=25.0)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    output = tmp_path_factory.mktemp("timeline-out")
    summary = batch_inference(source=str(root), model=str(face_model), output=str(output),
                              clip_seconds=1.0, stride_seconds=0.5, batch_size=8, device="cpu")
    return output, summary


def _png_size(path: Path) -> tuple[int, int]:
    pixels = imread(io.BytesIO(path.read_bytes()), format="png")
    assert pixels[..., :3].std() > 0.05  # drawn, not blank
    return pixels.shape[1], pixels.shape[0]


def test_timeline_of_a_real_clip_and_of_two_faces(
    face_run: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, summary = face_run
    one, two = tmp_path / "crema.png", tmp_path / "two.png"

    assert main(["timeline", CREMA, "--output", str(output), "--png", str(one)]) == 0
    out = capsys.readouterr().out
    assert f"run {summary['run_id']}" in out and "1 panel" in out
    assert main(["timeline", "two.mp4", "--output", str(output), "--png", str(two)]) == 0
    assert "2 panels" in capsys.readouterr().out

    (w1, h1), (w2, h2) = _png_size(one), _png_size(two)
    assert w1 == w2 == 800 and h2 > h1 * 1.5  # a panel per face track

    uri, run_id = find_video(str(output), CREMA)
    rows = read_video_predictions(str(output), uri, run_id)
    clips = rows.rows.num_rows
    assert run_id == summary["run_id"] and clips >= 3  # 1 s windows every 0.5 s
    fig = draw_timeline(rows)
    (ax,) = fig.axes
    assert sorted(line.get_label() for line in ax.lines
                  if not line.get_label().startswith("_")) == sorted(EMOTION_LABELS)
    windows = [c for c in ax.collections if type(c).__name__ == "PolyCollection"]
    assert len(windows) == clips  # every clip window drawn as a bar
    assert ax.get_title(loc="left").startswith("face 0: ")


def test_timeline_refuses_with_one_line(
    face_run: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, _ = face_run
    png = tmp_path / "x.png"
    cases = {
        "broken.mp4": "failed in run",  # its errors row says why
        "none.mp4": "no face was found",
        "missing.mp4": "is not among the 3 videos",  # broken.mp4 is in errors only
    }
    for video, message in cases.items():
        assert main(["timeline", video, "--output", str(output), "--png", str(png)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (video, err)
    assert main(["timeline", CREMA, "--output", str(tmp_path / "nowhere"), "--png", str(png)]) == 2
    assert not png.exists()
