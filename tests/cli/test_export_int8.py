"""``emotion-pipeline export MODEL --format onnx --int8 --output PATH`` with no other argument
(the calibration clips are rendered and decoded by the command itself) on the small face model
and the X3D student, then ``predict`` serving the .onnx file; the flags' one-line refusals;
``new-model --preset``. Runs ``cli.main.main`` in-process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.main import main


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-int8")


@pytest.fixture(scope="module")
def models(workdir: Path) -> dict[str, Path]:
    """new-model's defaults (face crops), small sizes: the small SlowFast and the student."""
    out = {}
    for preset in ("small", "student"):
        path = workdir / f"{preset}.safetensors"
        assert _run(["new-model", str(path), "--preset", preset, "--num-frames", "16",
                     "--img-size", "64"]) == 0
        out[preset] = path
    return out


@pytest.fixture(scope="module")
def face_video(workdir: Path) -> Path:
    from emotion_model.sample_data import make_sample_dataset

    (path,) = make_sample_dataset(workdir / "video", actors=1, emotions=("happy",),
                                  layout="ravdess", seconds=3.0, fps=10, size=(96, 96), seed=7)
    return path


@pytest.mark.parametrize("preset", ["small", "student"])
def test_export_int8_with_no_other_argument_then_predict(
        preset: str, models: dict[str, Path], workdir: Path, face_video: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from emotion_model.checkpoint import load_deployment

    version = load_deployment(models[preset])[1]["model_version"]
    out = workdir / f"{preset}-int8.onnx"
    capsys.readouterr()
    assert _run(["export", str(models[preset]), "--format", "onnx", "--int8", "--output",
                 str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"wrote {re.escape(str(out))} \([\d.]+ MB, onnx int8 static, "
                     rf"model_version {version}-int8\); the float export: [\d.]+ MB, max "
                     r"\|probability difference\| vs eager [\d.e+-]+", printed), printed
    assert "calibration: 24 clips, sample data: 24 drawn-face videos of actors 1-2" in printed
    match = re.search(r"int8 vs float: top-1 agreement ([\d.]+) on 24 clips \(bar 0.95; exact "
                      r"[\d.]+\), max \|probability difference\| [\d.e+-]+, mean [\d.e+-]+; "
                      r"sample data: 24 drawn-face videos of actors 3-4", printed)
    assert match and float(match.group(1)) >= 0.95, printed
    assert re.search(r"on this CPU \(the check clips, batch 2\): int8 [\d.]+ clips/s, float "
                     r"[\d.]+ clips/s", printed)
    assert out.is_file() and not list(workdir.glob(".*.tmp"))

    assert _run(["predict", str(face_video), "--model", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"(model {version}-int8)" in table and "face 0" in table
    if preset == "student":  # annotate serves it too
        annotated = workdir / "annotated.mp4"
        assert _run(["annotate", str(face_video), "--model", str(out), "--output",
                     str(annotated), "--no-progress"]) == 0
        assert annotated.stat().st_size > 0
        assert f"(model {version}-int8, face crops)" in " ".join(capsys.readouterr().out.split())


def test_export_int8_dynamic(models: dict[str, Path], workdir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "small-dynamic.onnx"
    capsys.readouterr()
    assert _run(["export", str(models["small"]), "--format", "onnx", "--int8",
                 "--quantization", "dynamic", "--output", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "onnx int8 dynamic" in printed and "-int8-dynamic)" in printed
    assert "calibration:" not in printed  # dynamic: no calibration clips


def test_predict_refuses_cuda_for_an_onnx_file(
        models: dict[str, Path], workdir: Path, face_video: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = workdir / "student-float.onnx"
    assert _run(["export", str(models["student"]), "--format", "onnx", "--output",
                 str(onnx_file)]) == 0
    capsys.readouterr()
    assert _run(["predict", str(face_video), "--model", str(onnx_file), "--device", "cuda"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == ("error: device 'cuda': an ONNX model runs on the CPU only (ONNX Runtime's "
                    "CPU provider); use device 'cpu' or 'auto', or serve the .safetensors file "
                    "on the GPU")


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "torchscript", "--int8"],
     "--int8 goes with --format onnx (TorchScript has no int8 export)"),
    (["--format", "onnx", "--quantization", "dynamic"],
     "--quantization and --calibration go with --int8"),
    (["--format", "onnx", "--calibration", "videos/"],
     "--quantization and --calibration go with --int8"),
    (["--format", "onnx", "--int8", "--calibration", "{missing}"],
     "{missing}: calibration source must be a folder of videos or a clip cache folder"),
])
def test_export_flags_are_refused_in_one_line(
        args: list[str], message: str, models: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-such-folder")
    args = [a.replace("{missing}", missing) for a in args]
    out = tmp_path / "never.onnx"
    assert _run(["export", str(models["small"]), *args, "--output", str(out)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: " + message.replace("{missing}", missing))
    assert not out.exists()


def test_exporting_an_onnx_file_needs_int8(workdir: Path, models: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = workdir / "small-float.onnx"
    assert _run(["export", str(models["small"]), "--format", "onnx", "--output",
                 str(onnx_file)]) == 0
    capsys.readouterr()
    assert _run(["export", str(onnx_file), "--format", "onnx", "--output",
                 str(workdir / "x.onnx")]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {onnx_file}: already an ONNX file: export a deployment file, or add --int8 "
        "to quantize this one")


def test_help_names_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--int8", "--quantization {static,dynamic}", "--calibration FOLDER",
                 "at least 95 %", "'<model_version>-int8'"):
        assert flag in text, flag
    assert _run(["new-model", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset {r50,small,student}" in text and "the same as --preset small" in text


def test_new_model_preset(models: dict[str, Path], workdir: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from emotion_model.checkpoint import load_deployment

    meta = load_deployment(models["student"])[1]
    assert meta["architecture"]["backbone"] == "x3d-xs" and meta["untrained"] is True
    alias = workdir / "alias.safetensors"
    assert _run(["new-model", str(alias), "--small", "--num-frames", "16", "--img-size",
                 "64"]) == 0
    assert load_deployment(alias)[1]["model_version"] == load_deployment(
        models["small"])[1]["model_version"]  # --small is --preset small
    capsys.readouterr()
    assert _run(["new-model", str(workdir / "x.safetensors"), "--small", "--preset",
                 "r50"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: --small is --preset small: it conflicts with --preset r50")
