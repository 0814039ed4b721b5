"""``prefect.yaml`` end to end on loopback: a real ``prefect server start`` (SQLite in a temporary
PREFECT_HOME), the project's process pool, the Prefect variables pointing at moto S3 buckets,
``prefect deploy`` from the repository root, a real ``prefect worker start``, and
``prefect deployment run`` for ``batch-inference/adhoc`` and ``retrain/weekly``.

The worker starts in a temporary folder and only its environment names the checkout
(``EMOTION_PIPELINE_HOME``): a run completes only when the pull step found the project. The
deploying process has a wrong ``EMOTION_PIPELINE_HOME``, so a deploy-time value would break it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import s3fs
from prefect.client.schemas.objects import (
    ConcurrencyLimitStrategy,
    ConcurrencyOptions,
    FlowRun,
    StateType,
)

from emotion_model.checkpoint import load_deployment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
UUID_RE = re.compile(r"UUID:\s*([0-9a-f-]{36})")
NIGHTLY_OPTIONS = ConcurrencyOptions(  # prefect.yaml: one run at a time, a second one cancelled
    collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW, grace_period_seconds=1800)
WEEKLY_OPTIONS = ConcurrencyOptions(  # one at a time, a second one waits for the slot
    collision_strategy=ConcurrencyLimitStrategy.ENQUEUE, grace_period_seconds=1800)
RETRAIN_RECIPE: dict[str, Any] = {  # tests/flows/test_retrain.py's small recipe, two epochs
    "preset": "small", "num_frames": 16, "img_size": 64, "batch_size": 8, "lr": 3e-3,
    "crop_scale": 1.0, "val_fraction": 0.34, "seed": 0, "device": "cpu", "epochs": 2,
    "patience": 2, "max_clips_per_video": 1, "decode_threads": 1,
    "min_val_accuracy": 0.0,  # two epochs may not clear the 0.4 promotion floor; promote anyway
}


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with_env(marker: str) -> list[int]:
    """Processes of this user whose environment holds `marker` (our unique PREFECT_HOME)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
    return pids


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (start_new_session), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _ended(flow_run: FlowRun) -> bool:
    return flow_run.state is not None and flow_run.state.is_final()


@dataclass
class Loopback:
    """The running server and worker, their environment and the test's buckets."""

    api_url: str
    home: Path
    env: dict[str, str]
    pool: str
    idle_pool: str
    buckets: dict[str, str]
    variables: dict[str, str]
    worker_log: Path
    fs: s3fs.S3FileSystem
    storage_options: dict[str, Any]

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """A project-venv CLI command in the repository root; fails the test on error."""
        done = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)
        output = f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        assert done.returncode == 0, f"{' '.join(args)}:\n{output}"
        return done

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url)

    def deploy(self, *args: str) -> None:
        """``prefect deploy`` from the repository root with a misleading EMOTION_PIPELINE_HOME."""
        env = {**self.env, "EMOTION_PIPELINE_HOME": "/nonexistent/deploying-machine"}
        self.cli("prefect", "--no-prompt", "deploy", *args, env=env)

    def start_run(self, deployment: str, *args: str) -> uuid.UUID:
        """``prefect deployment run``; returns the new flow run's id."""
        out = self.cli("prefect", "deployment", "run", deployment, *args).stdout
        match = UUID_RE.search(out)
        assert match, out
        return uuid.UUID(match.group(1))

    def wait_for(self, flow_run_id: uuid.UUID, until: Callable[[FlowRun], bool], what: str,
                 timeout: float = 420, poll: float = 2) -> FlowRun:
        """Reads the flow run every `poll` seconds until `until` holds; returns it."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                if until(flow_run):
                    return flow_run
                assert time.monotonic() < deadline, (
                    f"{what}: still {flow_run.state_name}\n{_tail(self.worker_log)}")
                time.sleep(poll)

    def run_and_wait(self, deployment: str, *args: str, timeout: float = 420) -> Any:
        """``prefect deployment run``; waits for the flow run to end and returns it."""
        flow_run = self.wait_for(self.start_run(deployment, *args), _ended, deployment,
                                 timeout=timeout)
        assert flow_run.state.is_completed(), (
            f"{deployment}: {flow_run.state_name}: {flow_run.state.message}\n"
            f"{_tail(self.worker_log)}")
        return flow_run


@pytest.fixture(scope="module")
def sample_data(face_videos: Any) -> Path:
    """6 actors x 6 emotions x 1 take of drawn faces, RAVDESS layout (36 videos)."""
    return face_videos("ravdess", takes=1)


@pytest.fixture(scope="module")
def loopback(s3_server: Any, model_path: Path, sample_data: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    """Server, pools, variables, S3 data and a worker; every process stopped at the end."""
    tmp = tmp_path_factory.mktemp("loopback")
    home = tmp / "prefect-home"
    home.mkdir()
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "EMOTION_PIPELINE_HOME"}
    env.update({
        "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_CLI_COLORS": "false", "MPLCONFIGDIR": str(tmp / "mpl"), "COLUMNS": "200",
    })
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server_log = tmp / "server.log"
        with server_log.open("wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                 str(port)], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.monotonic() + 180
        while True:
            assert procs[0].poll() is None, f"prefect server exited:\n{_tail(server_log)}"
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
            assert time.monotonic() < deadline, f"no /api/health:\n{_tail(server_log)}"
            time.sleep(1)

        # buckets of the test and what an operator would upload
        suffix = uuid.uuid4().hex[:8]
        buckets = {role: f"{role}-{suffix}" for role in ("archive", "outputs", "models", "cache")}
        s3 = s3_server.client()
        for name in buckets.values():
            s3.create_bucket(Bucket=name)
        fs = s3fs.S3FileSystem(**s3_server.storage_options)
        fs.put(str(sample_data) + "/", f"{buckets['archive']}/labelled/", recursive=True)
        fs.put(str(sample_data / "Actor_01") + "/", f"{buckets['archive']}/videos/2024-05/",
               recursive=True)
        fs.put(str(model_path), f"{buckets['models']}/serving/models/model.safetensors")
        fs.pipe(f"{buckets['models']}/serving/production.json",
                b'{"uri": "models/model.safetensors"}')

        pool, idle_pool = f"test-process-{suffix}", f"test-idle-{suffix}"
        variables = {
            "emotion_archive": f"s3://{buckets['archive']}/videos/",
            "emotion_outputs": f"s3://{buckets['outputs']}/emotions/",
            "emotion_model": f"s3://{buckets['models']}/serving/production.json",
            "emotion_training_data": f"s3://{buckets['archive']}/labelled/",
            "emotion_registry": f"s3://{buckets['models']}/registry/",
            "emotion_cache": f"s3://{buckets['cache']}/clips/",
            "emotion_gpu_pool": "emotion-gpu-ecs",  # overridden with --pool, as an operator would
            "emotion_training_role_arn": "arn:aws:iam::123456789012:role/emotion-training",
            "emotion_timezone": "Europe/London",
        }
        lb = Loopback(api_url=api_url, home=home, env=env, pool=pool, idle_pool=idle_pool,
                      buckets=buckets, variables=variables, worker_log=tmp / "worker.log", fs=fs,
                      storage_options=s3_server.storage_options)
        from prefect.client.schemas.actions import VariableCreate

        with lb.client() as client:
            for name, value in variables.items():
                client.create_variable(VariableCreate(name=name, value=value))
        for name in (pool, idle_pool):  # the project's process pool, as the README makes it
            lb.cli("emotion-pipeline", "pools", "--only", "process", "--process-pool", name)

        # the worker: started away from the checkout; S3 is the moto server; no ~/.prefect
        worker_env = {**env, "EMOTION_PIPELINE_HOME": str(ROOT),
                      "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url}
        worker_dir = tmp / "worker"
        worker_dir.mkdir()
        with lb.worker_log.open("wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                 "--name", f"test-worker-{suffix}"], cwd=worker_dir, env=worker_env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield lb
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for pid in _pids_with_env(str(home)):  # anything a stopped process left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not _pids_with_env(str(home))


def _read_parquet(lb: Loopback, uri: str) -> pd.DataFrame:
    return pd.read_parquet(uri, storage_options=lb.storage_options)


def test_adhoc_runs_on_a_prefix_from_the_cli(loopback: Loopback,
                                             model_path: Path) -> None:
    lb = loopback
    lb.deploy("--name", "adhoc", "--pool", lb.pool)
    with lb.client() as client:
        deployment = client.read_deployment_by_name("batch-inference/adhoc")
    assert deployment.work_pool_name == lb.pool and not deployment.schedules
    assert deployment.parameters == {"model": lb.variables["emotion_model"],
                                     "output": lb.variables["emotion_outputs"]}

    source = f"s3://{lb.buckets['archive']}/videos/2024-05/"
    flow_run = lb.run_and_wait("batch-inference/adhoc", "--param", f"source={source}")

    assert flow_run.parameters["source"] == source
    outputs = lb.variables["emotion_outputs"]
    (summary_key,) = lb.fs.glob(f"{outputs}runs/*.json")
    summary = json.loads(lb.fs.cat(summary_key))
    assert summary["counts"]["listed"] == summary["counts"]["succeeded"] == 6, summary["counts"]
    videos = _read_parquet(lb, f"{outputs}videos")
    clips = _read_parquet(lb, f"{outputs}predictions")
    assert len(videos) == 6 and set(videos["video_uri"].str.rsplit("/", n=1).str[0]) == {
        source.rstrip("/")}
    _, metadata = load_deployment(model_path)  # the file production.json points at
    assert set(videos["model_version"]) == set(clips["model_version"]) == {
        metadata["model_version"]}
    assert len(clips) >= 6 and clips["label"].notna().all()


def test_nightly_runs_never_overlap(loopback: Loopback) -> None:
    """Two runs of ``batch-inference/nightly`` back to back, the second created while the first
    holds the deployment's one slot: the server cancels the second when the worker asks to
    start it (CANCEL_NEW), and the first completes the archive alone.

    For this test the pool lets two runs through, as the ECS pool does (no limit of its own);
    at its default of one run at a time the process pool would hold the second back itself (the
    second turns Late and the same deployment limit cancels it then)."""
    lb = loopback
    lb.deploy("--name", "nightly", "--pool", lb.pool)
    with lb.client() as client:
        deployment = client.read_deployment_by_name("batch-inference/nightly")
    assert deployment.work_pool_name == lb.pool
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options == NIGHTLY_OPTIONS

    # the deployment's source and model; an output of this test's own, whatever ran before
    output = f"s3://{lb.buckets['outputs']}/overlap/"
    pools = ("emotion-pipeline", "pools", "--only", "process", "--process-pool", lb.pool)
    lb.cli(*pools, "--process-concurrency", "2")
    try:
        with lb.client() as client:
            assert client.read_work_pool(lb.pool).concurrency_limit == 2
        first_id = lb.start_run("batch-inference/nightly", "--param", f"output={output}")
        lb.wait_for(first_id, lambda fr: fr.state_type != StateType.SCHEDULED,
                    "first nightly run", timeout=120, poll=0.2)  # Pending: it holds the slot
        second_id = lb.start_run("batch-inference/nightly", "--param", f"output={output}")
        second = lb.wait_for(second_id, _ended, "second nightly run", timeout=120, poll=0.5)
        with lb.client() as client:
            first = client.read_flow_run(first_id)
            limit = client.read_deployment(deployment.id).global_concurrency_limit
        assert first.state_type in (StateType.PENDING, StateType.RUNNING), (
            f"the first run was {first.state_name} when the second ended "
            f"({second.state_name}: {second.state.message})\n{_tail(lb.worker_log)}")
        assert limit.active_slots == 1
        first = lb.wait_for(first_id, _ended, "first nightly run", timeout=300)
    finally:
        lb.cli(*pools)  # back to the project's default, one run at a time

    assert (second.state_type, second.state_name, second.state.message) == (
        StateType.CANCELLED, "Cancelled", "Deployment concurrency limit reached.")
    assert second.run_count == 0 and not second.total_run_time  # it never ran
    assert second.parameters["source"] == lb.variables["emotion_archive"]
    assert first.state_type == StateType.COMPLETED, (
        f"{first.state_name}: {first.state.message}\n{_tail(lb.worker_log)}")
    assert first.parameters == second.parameters
    assert second.state.timestamp < first.end_time
    (summary_key,) = lb.fs.glob(f"{output}runs/*.json")  # one run wrote, once
    summary = json.loads(lb.fs.cat(summary_key))
    assert summary["counts"]["listed"] == summary["counts"]["succeeded"] == 6, summary["counts"]
    assert len(_read_parquet(lb, f"{output}videos")) == 6

    # what an operator sees: the slot free again; in the cancelled run's logs, the worker's line
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    inspect = json.loads(lb.cli("prefect", "deployment", "inspect", "batch-inference/nightly",
                                "--output", "json").stdout)
    assert {k: inspect["global_concurrency_limit"][k] for k in ("limit", "active_slots")} == {
        "limit": 1, "active_slots": 0}
    assert inspect["concurrency_options"] == NIGHTLY_OPTIONS.model_dump(mode="json")
    expected = (f"Aborted submission of flow run '{second_id}': Server returned a non-pending "
                "state 'CANCELLED'")
    deadline = time.monotonic() + 30
    with lb.client() as client:
        while True:  # the worker sends run logs to the server in batches
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[second_id])))
            messages = [log.message for log in logs]
            if expected in messages or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert expected in messages, messages
    assert not any("submitted to infrastructure" in m for m in messages), messages


def test_retrain_weekly_publishes_a_production_model(loopback: Loopback) -> None:
    lb = loopback
    lb.deploy("--name", "weekly", "--pool", lb.pool)
    with lb.client() as client:
        deployment = client.read_deployment_by_name("retrain/weekly")
    assert deployment.parameters == {"sources": [lb.variables["emotion_training_data"]],
                                     "registry": lb.variables["emotion_registry"],
                                     "cache": lb.variables["emotion_cache"]}
    assert deployment.job_variables == {
        "task_role_arn": lb.variables["emotion_training_role_arn"]}

    registry = lb.variables["emotion_registry"]
    assert not lb.fs.exists(f"{registry}production.json")
    flow_run = lb.run_and_wait("retrain/weekly", "--params", json.dumps(RETRAIN_RECIPE))

    assert flow_run.parameters["epochs"] == 2 and flow_run.parameters["preset"] == "small"
    pointer = json.loads(lb.fs.cat(f"{registry}production.json"))
    version = pointer["model_version"]
    assert lb.fs.exists(pointer["uri"]) and version in pointer["uri"]
    metrics = json.loads(lb.fs.cat(f"{registry}{version}/metrics.json"))
    assert metrics["epochs_run"] == 2 and metrics["n_val"] == 12  # 2 of 6 actors held out
    assert lb.fs.ls(lb.variables["emotion_cache"])  # the clip cache is where the variable says


def test_deploy_all_resolves_every_variable(loopback: Loopback) -> None:
    """``prefect deploy --all`` as the README says. It ignores ``--pool`` (Prefect applies CLI
    options to one deployment only): the pool comes from emotion_gpu_pool, here one that no
    worker polls, so the schedules start nothing."""
    lb = loopback
    lb.cli("prefect", "variable", "set", "emotion_gpu_pool", lb.idle_pool, "--overwrite")
    lb.deploy("--all")
    v = lb.variables
    with lb.client() as client:
        found = {name: client.read_deployment_by_name(name) for name in
                 ("batch-inference/nightly", "batch-inference/adhoc", "retrain/weekly")}
    for deployment in found.values():
        assert deployment.work_pool_name == lb.idle_pool
        step = deployment.pull_steps[0]["prefect.deployments.steps.run_shell_script"]
        assert "${EMOTION_PIPELINE_HOME:-/opt/emotion-pipeline}" in step["script"]
    nightly = found["batch-inference/nightly"]
    assert nightly.parameters == {"source": v["emotion_archive"], "model": v["emotion_model"],
                                  "output": v["emotion_outputs"]}
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/London")
    assert schedule.active
    weekly = found["retrain/weekly"]
    assert [(s.schedule.cron.split()[2:], s.schedule.timezone) for s in weekly.schedules] == [
        (["*", "*", "0"], "Europe/London")]
    assert not found["batch-inference/adhoc"].schedules
    limits = {name: (d.global_concurrency_limit and d.global_concurrency_limit.limit,
                     d.concurrency_options) for name, d in found.items()}
    assert limits == {"batch-inference/nightly": (1, NIGHTLY_OPTIONS),
                      "batch-inference/adhoc": (None, None),
                      "retrain/weekly": (1, WEEKLY_OPTIONS)}
