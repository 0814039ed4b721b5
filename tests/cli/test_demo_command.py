"""``emotion-pipeline demo`` as a newcomer runs it (the installed console script, its own Prefect
home): drawn faces -> retrain flow -> production.json -> batch flow on held-out actors -> the
table beside the true labels, with ``make demo``'s own recipe (about 80 s on 2 cores). (A second
demo reuses the model: ``cli/demo.py::_train``; not run here, to keep the suite short.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emotion_model.labels import parse_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _demo(root: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_ENDPOINT"))}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "COLUMNS": "200"})
    script = Path(sys.executable).with_name("emotion-pipeline")
    return subprocess.run([str(script), "demo", "--dir", str(root), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=540)


def test_trains_publishes_and_serves_the_held_out_actors(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    done = _demo(root, tmp_path / "prefect-home")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout
    assert "rendered 168 drawn-face videos" in first  # 6 x 6 x 4 training, 2 x 6 x 2 held out
    pointer = json.loads((root / "registry" / "production.json").read_text())
    version = pointer["model_version"]
    assert re.search(rf"trained model {version}: validation accuracy [0-9.]+ .* promoted", first)
    assert (root / "registry" / version / "confusion.png").stat().st_size > 0

    run_id = re.search(r"^run (\S+) completed", first, re.M).group(1)  # type: ignore[union-attr]
    videos = pd.read_parquet(root / "outputs" / "videos", filters=[("run_id", "==", run_id)])
    assert len(videos) == 24 and set(videos["model_version"]) == {version}
    # trained and served on face crops: the renderer's faces are found, one track each
    assert set(videos["crop"]) == {"face"} and (videos["faces"] == 1).all()
    faces = pd.read_parquet(root / "outputs" / "faces", filters=[("run_id", "==", run_id)])
    assert len(faces) == 24 and set(faces["face_id"]) == {0}
    served = {parse_name(u).actor for u in videos["video_uri"]}  # type: ignore[union-attr]
    split = json.loads((root / "registry" / version / "split.json").read_text())
    seen = {a.split(":")[1] for a in split["train_actors"] + split["val_actors"]}
    assert served == {"07", "08"} and seen == {"01", "02", "03", "04", "05", "06"}

    truth = [parse_name(u).label for u in videos["video_uri"]]  # type: ignore[union-attr]
    accuracy = float((videos["label"] == truth).mean())
    match = re.search(r"accuracy on 24 videos of 2 actors the model never saw: ([0-9.]+)", first)
    assert match and abs(float(match.group(1)) - accuracy) < 0.006
    assert accuracy > 0.5  # well above chance (0.17) on faces it never saw
    for name in (Path(u).name for u in videos["video_uri"]):
        assert name in first  # one table row per held-out video
    assert "drawn faces, not real data" in first
    summary = root / "outputs" / "runs" / f"{run_id}.json"
    assert json.loads(summary.read_text())["counts"]["succeeded"] == 24
    assert str(summary) in first
