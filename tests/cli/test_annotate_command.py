"""``emotion-pipeline annotate``: writes the MP4 and says what it drew; bad input, model or
output is one error line with exit code 2 and leaves no file behind. In-process
(``cli.main.main``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import pytest
from video_fixtures import CREMA_D_CLIPS, CREMA_D_DIR

from cli.main import main

NAME = "1001_DFA_HAP_XX.flv"


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_annotate_writes_the_preview(face_model: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "previews" / "happy.mp4"  # its folder is made
    assert _run(["annotate", str(CREMA_D_DIR / NAME), "--model", str(face_model), "--output",
                 str(out), "--device", "cpu", "--clip-seconds", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    text = " ".join(captured.out.split())
    assert f"wrote {out}: {CREMA_D_CLIPS[NAME]} frames 480x360 H.264 (libx264)" in text
    assert "audio: mp3 copied" in text and "face 0: " in text and "video label: " in text
    assert "untrained" in captured.err
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == CREMA_D_CLIPS[NAME]
        assert len(container.streams.audio) == 1
    assert [p.name for p in out.parent.iterdir()] == ["happy.mp4"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_annotate_errors_are_one_line_and_leave_nothing(
        face_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(CREMA_D_DIR / NAME, "clip.flv")
    Path("notes.txt").write_text("this is not a video\n" * 20)
    Path("a-file").write_text("")
    model = str(face_model)
    cases = [
        (["missing.flv", "--model", model, "--output", "x.mp4"],
         "error: missing.flv: no such file"),
        (["notes.txt", "--model", model, "--output", "x.mp4"], "error: notes.txt: not a"),
        (["clip.flv", "--model", "absent.safetensors", "--output", "x.mp4"],
         "error: absent.safetensors: no such model file"),
        (["clip.flv", "--model", model, "--output", "a-file/x.mp4"],
         "error: a-file/x.mp4: cannot write it: a-file is not a folder"),
        (["clip.flv", "--model", model, "--output", "x.mkv"], "error: x.mkv: the annotated"),
        (["clip.flv", "--model", model, "--output", "x.mp4", "--max-faces", "0"],
         "error: invalid parameter 'max_faces'"),
    ]
    for argv, start in cases:
        assert _run(["annotate", *argv, "--device", "cpu"]) == 2, argv
        assert _one_error_line(capsys.readouterr().err).startswith(start), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "clip.flv", "notes.txt"]
