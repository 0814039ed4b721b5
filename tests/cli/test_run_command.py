"""``emotion-pipeline run`` as a user runs it: the installed console script in a subprocess,
on Prefect's ephemeral server (its own PREFECT_HOME), on a small local folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from video_fixtures import make_test_pattern

from emotion_model.checkpoint import save_deployment
from emotion_model.model import build_model
from emotion_model.video_writer import encode_video


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    output: Path

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def _console_script() -> str:
    script = Path(sys.executable).with_name("emotion-pipeline")
    found = str(script) if script.exists() else shutil.which("emotion-pipeline")
    if not found:
        pytest.fail("the emotion-pipeline console script is not installed (pip install -e .)")
    return found


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "AWS_ENDPOINT")) and k != "COLUMNS"}
    env.update({
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "OMP_NUM_THREADS": "1",  # the tiny model; two threads thrash on a small machine
    })
    return env


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CliResult]]:
    """Three invocations, started together (each is mostly interpreter and Prefect start-up):
    a good run on a folder with one bad video, ``--batch-size 0``, and a missing source."""
    root = tmp_path_factory.mktemp("cli")
    videos = root / "videos"
    encode_video(videos / "one.mp4", make_test_pattern(10, 64, 96, seed=1), fps=10,
                 options={"preset": "ultrafast"})
    encode_video(videos / "two.avi", make_test_pattern(15, 48, 64, seed=2), fps=15,
                 codec="mpeg4")
    good = (videos / "one.mp4").read_bytes()
    (videos / "broken.mp4").write_bytes(good[: len(good) // 2])
    model = root / "small.safetensors"
    torch.manual_seed(0)
    save_deployment(build_model("small").eval(), model, num_frames=16, img_size=64,
                    untrained=True)

    common = ["--model", str(model), "--device", "cpu", "--no-progress"]
    cases = {
        "ok": [str(videos), "--output", str(root / "out-ok"), *common],
        "batch_size_zero": [str(videos), "--output", str(root / "out-bs0"), "--batch-size", "0",
                            *common],
        "missing_source": [str(root / "no-such-folder"), "--output", str(root / "out-missing"),
                           *common],
    }
    outputs = {"ok": "out-ok", "batch_size_zero": "out-bs0", "missing_source": "out-missing"}
    script = _console_script()
    procs = {
        name: subprocess.Popen(
            [script, "run", *args], env=_env(root / f"prefect-{name}"), cwd=root,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, args in cases.items()
    }
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            results[name] = CliResult(proc.returncode, stdout, stderr, root / outputs[name])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield results


@pytest.mark.slow
def test_run_completes_with_a_bad_video_and_says_where_the_errors_are(
    cli_runs: dict[str, CliResult],
) -> None:
    result = cli_runs["ok"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 videos predicted" in out and "1 failed" in out, out
    assert f"{result.output}/errors/" in out, out
    assert "Traceback" not in result.stderr, result.stderr
    assert result.error_lines == []

    predictions = pd.read_parquet(result.output / "predictions")
    errors = pd.read_parquet(result.output / "errors")
    assert {Path(u).name for u in predictions["video_uri"]} == {"one.mp4", "two.avi"}
    assert [Path(u).name for u in errors["video_uri"]] == ["broken.mp4"]
    assert errors["stage"].tolist() == ["decode"]
    (summary_file,) = (result.output / "runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["run_id"] in out
    c = summary["counts"]
    assert (c["listed"], c["succeeded"], c["failed"]) == (3, 2, 1)
    report = result.output / "reports" / f"{summary['run_id']}.html"
    assert f"report: {report}" in out and report.is_file()
    assert "label drift: first run on this output" in out


def test_bad_parameter_exits_2_with_one_error_line(cli_runs: dict[str, CliResult]) -> None:
    result = cli_runs["batch_size_zero"]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.error_lines) == 1, result.stderr
    assert "batch_size" in result.error_lines[0]
    assert result.stderr.strip() == result.error_lines[0]  # nothing else: no traceback
    assert not result.output.exists()


def test_missing_source_exits_nonzero_with_one_error_line(cli_runs: dict[str, CliResult]
                                                          ) -> None:
    result = cli_runs["missing_source"]
    assert result.returncode != 0
    assert len(result.error_lines) == 1, result.stderr
    assert "no-such-folder" in result.error_lines[0]
    assert "not found" in result.error_lines[0]
    assert "Traceback" not in result.stderr, result.stderr
    assert not result.output.exists()
