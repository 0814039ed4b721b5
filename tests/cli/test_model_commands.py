"""The ``emotion-pipeline`` command line: help for every subcommand, new-model -> predict,
export, and one-line errors with exit code 2. Runs ``cli.main.main`` in-process, plus one
subprocess call of the installed console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli.main import build_parser, main

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
LABELS = ("angry", "disgust", "fearful", "happy", "neutral", "sad")



def _run(argv: list[str]) -> int:
    """``main(argv)``'s exit code, whether it returns or exits (argparse's --help exits)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def model_file(workdir: Path) -> Path:
    """A whole-frame model: the test pattern has no face."""
    path = workdir / "small.safetensors"
    assert _run(["new-model", str(path), "--small", "--seed", "3", "--num-frames", "16",
                 "--img-size", "64", "--crop", "frame"]) == 0
    return path


@pytest.fixture(scope="module")
def face_model_file(workdir: Path) -> Path:
    """new-model's default: face crops."""
    path = workdir / "small-face.safetensors"
    assert _run(["new-model", str(path), "--small", "--num-frames", "16", "--img-size", "64"]) == 0
    return path


@pytest.fixture(scope="module")
def video_file(workdir: Path) -> Path:
    from video_fixtures import make_test_pattern

    from emotion_model.video_writer import encode_video

    return encode_video(workdir / "clip.mp4", make_test_pattern(80, 72, 96, seed=1), fps=10)


# --- help ------------------------------------------------------------------------------------
def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("predict", "export", "new-model"):
        assert name in out
    assert {"predict", "export", "new-model"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: emotion-pipeline {command}")


def test_new_model_help_says_untrained(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["new-model", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "random weights" in out and "smoke tests" in out and "untrained=true" in out
    assert _run(["--help"]) == 0
    assert "write an UNTRAINED model file" in " ".join(capsys.readouterr().out.split())


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([]) == 2
    assert "usage: emotion-pipeline" in capsys.readouterr().err


def test_console_script_entry_point() -> None:
    script = Path(sys.executable).parent / "emotion-pipeline"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: emotion-pipeline")
    assert "new-model" in done.stdout


# --- new-model -> predict ----------------------------------------------------------------------
def test_new_model_writes_an_untrained_deployment(model_file: Path) -> None:
    from emotion_model.checkpoint import load_deployment

    model, meta = load_deployment(model_file)
    assert meta["untrained"] is True and "UNTRAINED" in meta["notes"]
    assert meta["architecture"]["width"] == 16
    assert (meta["num_frames"], meta["img_size"]) == (16, 64)
    assert not model.training


def test_new_model_is_seeded(model_file: Path, workdir: Path) -> None:
    from emotion_model.checkpoint import load_deployment

    again = workdir / "again.safetensors"
    assert _run(["new-model", str(again), "--small", "--seed", "3", "--num-frames", "16",
                 "--img-size", "64", "--crop", "frame"]) == 0
    assert load_deployment(again)[1]["model_version"] == \
        load_deployment(model_file)[1]["model_version"]


def test_predict_prints_a_table(model_file: Path, video_file: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from emotion_model.checkpoint import load_deployment

    version = load_deployment(model_file)[1]["model_version"]
    assert _run(["predict", str(video_file), "--model", str(model_file), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    for label in LABELS:
        assert label in out
    assert version in out
    assert "video" in out
    rows = [line for line in out.splitlines() if re.match(r"^[│|]\s+\d+\s+[│|]", line)]
    assert len(rows) == 2  # 8 s of video: two 4 s clips
    assert re.search(r"[│|]\s+video\s+[│|]\s+0\.00\s+[│|]\s+8\.00\s+[│|]", out)
    assert "untrained" in captured.err


def test_predict_with_a_fused_model_shows_each_clips_sound(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An audio-video model: an ``audio`` column (yes / no per clip) and a line that counts
    the clips with sound; here the first second's audio packets are garbage."""
    from video_fixtures import make_test_pattern, tone, write_av

    model = workdir / "small-fused.safetensors"
    assert _run(["new-model", str(model), "--small", "--num-frames", "16", "--img-size", "64",
                 "--crop", "frame", "--modality", "audio-video"]) == 0
    video = write_av(workdir / "garbled.mkv", make_test_pattern(20, 64, 64), audio=tone(2.0, 440),
                     audio_codec="aac", garble=lambda t: 0.2 <= t < 0.6)
    capsys.readouterr()
    assert _run(["predict", str(video), "--model", str(model), "--device", "cpu",
                 "--clip-seconds", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "confidence" in line)
    assert re.search(r"end s\s+[┃|│]\s+audio\s+[┃|│]\s+label", header)
    rows = [line for line in out.splitlines() if re.match(r"^[│|]\s+\d+\s+[│|]", line)]
    assert [re.split(r"\s*[│|]\s*", r)[4] for r in rows] == ["no", "yes"]
    assert ("audio (audio-video model): 1 of 2 clips had sound; the 1 without were predicted "
            "from the frames alone") in out


def test_new_model_crops_faces_by_default(face_model_file: Path, model_file: Path) -> None:
    from emotion_model.checkpoint import load_deployment

    crop = load_deployment(face_model_file)[1]["crop"]
    assert crop["mode"] == "face" and crop["detector"] == "blazeface-full-range"
    assert crop["margin"] == 1.0 and crop["detect_fps"] == 5.0
    assert load_deployment(model_file)[1]["crop"] == {"mode": "frame"}


def test_predict_prints_a_table_per_face(face_model_file: Path, workdir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from face_fixtures import two_faces
    from video_fixtures import needs_encoder

    needs_encoder("libx264")
    video, _ = two_faces(workdir / "two.mp4", seconds=2.0, fps=25.0)
    assert _run(["predict", str(video), "--model", str(face_model_file), "--device", "cpu",
                 "--clip-seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"face \d: seen \d\.\d\d-\d\.\d\d s", out)) == 2
    assert re.search(r"[│|]\s+face 0\s+[│|]", out) and re.search(r"[│|]\s+face 1\s+[│|]", out)
    assert "video label (the longest-seen face)" in out
    assert _run(["predict", str(video), "--model", str(face_model_file), "--device", "cpu",
                 "--clip-seconds", "1", "--max-faces", "1"]) == 0
    assert len(re.findall(r"face \d: seen", capsys.readouterr().out)) == 1


def test_predict_says_when_no_face_is_found(face_model_file: Path, video_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["predict", str(video_file), "--model", str(face_model_file),
                 "--device", "cpu"]) == 0
    assert "no face found in 8.00 s" in capsys.readouterr().out


def test_predict_overlapping_windows(model_file: Path, video_file: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["predict", str(video_file), "--model", str(model_file), "--device", "cpu",
                 "--stride-seconds", "2", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "6.00" in out  # the window [2, 6) exists only with stride 2


# --- errors: one line, exit code 2 ---------------------------------------------------------------
def _error_message(err: str) -> str:
    """The CLI's error message, whitespace-normalised.

    The one-line check itself lives in test_a_long_error_stays_on_one_line.
    """
    assert err.startswith("error: "), err
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    return " ".join(err.split())


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_predict_missing_video(model_file: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run(["predict", "missing.mp4", "--model", str(model_file)]) == 2
    captured = capsys.readouterr()
    assert _one_error_line(captured.err) == "error: missing.mp4: no such file"
    assert "Traceback" not in captured.err


def test_predict_not_a_video(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("this is not a video\n" * 20)
    Path("broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    assert _run(["predict", "notes.txt", "--model", str(model_file)]) == 2
    assert _error_message(capsys.readouterr().err).startswith("error: notes.txt: not a")
    assert _run(["predict", "broken.mp4", "--model", str(model_file)]) == 2
    assert _error_message(capsys.readouterr().err).startswith("error: broken.mp4: ")


def test_predict_missing_model(video_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run(["predict", str(video_file), "--model", "absent.safetensors"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == "error: absent.safetensors: no such model file"


def test_predict_bad_device(model_file: Path, video_file: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["predict", str(video_file), "--model", str(model_file), "--device", "tpu"]) == 2
    line = _one_error_line(capsys.readouterr().err)  # the batch flow's own validation
    assert line.startswith("error: invalid parameter 'device': ") and "cuda:N" in line


def test_a_long_error_stays_on_one_line(model_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / ("a-rather-long-folder-name-" * 3) / "missing-video-file.mp4"
    assert _run(["predict", str(missing), "--model", str(model_file)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: {missing}: no such file"


# --- export --------------------------------------------------------------------------------------
def test_export_onnx(model_file: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "model.onnx"
    assert _run(["export", str(model_file), "--format", "onnx", "--output", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 1_000_000
    printed = " ".join(capsys.readouterr().out.split())
    assert f"wrote {out}" in printed and "max |probability difference|" in printed

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (frames,) = session.get_inputs()
    assert frames.shape[1:] == [16, 3, 64, 64]


def test_export_bad_format(model_file: Path, workdir: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["export", str(model_file), "--format", "tflite", "--output",
                 str(workdir / "m.tflite")]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


# --- make-sample-data ----------------------------------------------------------------------------
def test_make_sample_data_with_voices_and_ambiguous_faces(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import av
    from video_fixtures import decode_frames

    out = tmp_path / "sample"
    assert _run(["make-sample-data", str(out), "--actors", "1",
                 "--ambiguous-faces", "angry,disgust"]) == 0
    assert "with synthetic voices (prosody, not speech)" in capsys.readouterr().out
    paths = sorted(out.glob("Actor_01/*.mp4"))
    assert [p.name[:6] for p in paths] == ["01-01-"] * 6  # audio-video, by default
    for path in paths:
        with av.open(str(path)) as container:
            assert container.streams.audio[0].codec_context.name == "aac"
    frames = {p.stem.split("-")[2]: np.stack(decode_frames(p)[0]).astype(np.float32)
              for p in paths}

    def differ(code: str) -> float:  # mean absolute pixel difference from the neutral take
        return float(np.abs(frames[code] - frames["01"]).mean())

    # angry and disgust drawn as neutral (the same drawing; H.264 may round a few pixels
    # differently), happy is not
    assert differ("05") < 0.2 and differ("07") < 0.2 and differ("03") > 5 * max(
        differ("05"), differ("07"), 0.2)


def test_make_sample_data_bad_ambiguous_faces(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "sample")
    assert _run(["make-sample-data", out, "--no-audio", "--ambiguous-faces", "angry"]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(
        "error: ambiguous faces need the audio track")
    assert _run(["make-sample-data", out, "--ambiguous-faces", "angry,calm"]) == 2
    assert "unknown emotions ['calm']" in capsys.readouterr().err
    assert not (tmp_path / "sample").exists()
