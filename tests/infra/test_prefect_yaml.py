"""``prefect.yaml``: it parses, each deployment names a flow that takes its parameters, every
setting comes from the README's Prefect variables, and the pull step finds the project folder
the way the worker image and the systemd host set it."""

from __future__ import annotations

import asyncio
import configparser
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.steps.utility import run_shell_script
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import get_current_settings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"^\{\{ prefect\.variables\.(\w+) \}\}$")
EXPECTED = {  # deployment name -> (flow name, entrypoint)
    "nightly": ("batch-inference", "flows/batch_inference.py:batch_inference"),
    "adhoc": ("batch-inference", "flows/batch_inference.py:batch_inference"),
    "weekly": ("retrain", "flows/retrain.py:retrain"),
    "monthly": ("distill", "flows/distill.py:distill"),
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in config["deployments"]}


def _strings(node: Any) -> list[str]:
    """Every string value under `node`."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _readme_variables() -> set[str]:
    """The variables the README's operator section tells operators to set."""
    return set(re.findall(r"^prefect variable set (\w+)", (ROOT / "README.md").read_text(),
                          flags=re.MULTILINE))


def test_four_deployments_of_the_three_flows(deployments: dict[str, dict[str, Any]]) -> None:
    assert set(deployments) == set(EXPECTED)
    for name, (flow_name, entrypoint) in EXPECTED.items():
        assert deployments[name]["entrypoint"] == entrypoint
        flow = load_flow_from_entrypoint(entrypoint)
        assert isinstance(flow, Flow) and flow.name == flow_name, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_are_the_flows(deployments: dict[str, dict[str, Any]], name: str) -> None:
    """Every parameter is one the flow takes; a required one the deployment leaves out is
    named in its description as given at run time (``--param <name>=``)."""
    deployment = deployments[name]
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    given = set(deployment.get("parameters") or {})
    assert given <= set(signature.parameters), given - set(signature.parameters)
    required = {p.name for p in signature.parameters.values() if p.default is p.empty}
    for missing in required - given:
        assert f"--param {missing}=" in deployment["description"], (name, missing)
    if name == "adhoc":
        assert required - given == {"source"}  # as the design says: `--param source=...`
    else:
        assert required <= given  # scheduled runs have no one to give them


def test_settings_come_from_the_readme_variables(config: dict[str, Any],
                                                 deployments: dict[str, dict[str, Any]]) -> None:
    documented = _readme_variables()
    assert len(documented) == 9, documented
    used: set[str] = set()
    for deployment in deployments.values():
        settings = [deployment.get("parameters"), deployment.get("work_pool"),
                    [s.get("timezone") for s in deployment.get("schedules") or []]]
        for value in _strings(settings):
            match = VARIABLE.match(value)
            assert match, f"{deployment['name']}: {value!r} is a literal, not a variable"
            used.add(match.group(1))
    assert used == documented
    # no bucket, account or role written anywhere but in the descriptions' examples
    for value in _strings({k: v for k, v in config.items() if k != "deployments"}):
        assert not re.search(r"s3://|arn:aws", value), value


def test_schedules_pools_and_roles(deployments: dict[str, dict[str, Any]]) -> None:
    nightly, adhoc, weekly = (deployments[n] for n in ("nightly", "adhoc", "weekly"))
    assert [s["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert adhoc["schedules"] == []
    (weekly_schedule,) = weekly["schedules"]
    cron = CronSchedule(cron=weekly_schedule["cron"], timezone="UTC")
    minute, hour, day, month, weekday = cron.cron.split()
    assert day == month == "*" and weekday.isdigit() and minute.isdigit() and hour.isdigit()
    monthly = deployments["monthly"]
    assert [s["cron"] for s in monthly["schedules"]] == ["0 5 1 * *"]
    assert monthly["parameters"]["teacher"] == nightly["parameters"]["model"]  # production
    assert monthly["parameters"]["registry"] == weekly["parameters"]["registry"]
    assert monthly["work_pool"]["job_variables"] == weekly["work_pool"]["job_variables"]
    for deployment in (nightly, weekly, monthly):
        assert deployment["schedules"][0]["timezone"] == "{{ prefect.variables.emotion_timezone }}"
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == "{{ prefect.variables.emotion_gpu_pool }}"
    assert weekly["work_pool"]["job_variables"] == {
        "task_role_arn": "{{ prefect.variables.emotion_training_role_arn }}"}
    assert {"source", "model", "output"} <= set(nightly["parameters"])
    assert nightly["parameters"]["model"] == "{{ prefect.variables.emotion_model }}"


def test_one_nightly_and_one_retrain_at_a_time(deployments: dict[str, dict[str, Any]]) -> None:
    """nightly: a run that finds the slot taken is cancelled (the next night catches up);
    weekly: it waits for the slot; adhoc: no limit (runs over different prefixes overlap)."""
    limits = {name: d.get("concurrency_limit") for name, d in deployments.items()}
    assert limits == {
        "nightly": {"limit": 1, "collision_strategy": "CANCEL_NEW", "grace_period_seconds": 1800},
        "adhoc": None,
        "weekly": {"limit": 1, "collision_strategy": "ENQUEUE", "grace_period_seconds": 1800},
        "monthly": {"limit": 1, "collision_strategy": "ENQUEUE", "grace_period_seconds": 1800},
    }
    # Prefect's own model of the setting accepts both (strategy names, grace period bounds),
    # and the grace period outlasts the server's default lease, shorter than a cold ECS start
    default_lease = get_current_settings().server.concurrency.initial_deployment_lease_duration
    for name in ("nightly", "weekly", "monthly"):
        config = ConcurrencyLimitConfig.model_validate(limits[name])
        assert config.limit == 1 and config.grace_period_seconds > default_lease, name
    assert ConcurrencyLimitConfig.model_validate(limits["nightly"]).collision_strategy == (
        ConcurrencyLimitStrategy.CANCEL_NEW)


# --- the pull step: the project folder from EMOTION_PIPELINE_HOME, default /opt/emotion-pipeline --
def _project_home_step(config: dict[str, Any]) -> dict[str, Any]:
    first, second = config["pull"]
    step = first["prefect.deployments.steps.run_shell_script"]
    assert second == {"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ " + step["id"] + ".stdout }}"}}
    return step


def _run_project_home(config: dict[str, Any], env: dict[str, str],
                      monkeypatch: pytest.MonkeyPatch) -> str:
    """Prefect's own step function on the yaml's script, as a flow run's pull step calls it."""
    step = {k: v for k, v in _project_home_step(config).items() if k != "id"}
    monkeypatch.delenv("EMOTION_PIPELINE_HOME", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return asyncio.run(run_shell_script(**step))["stdout"]


def test_pull_step_goes_to_the_checkout_named_by_the_environment(
        config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # a worker's temporary folder: not the checkout
    assert _run_project_home(config, {"EMOTION_PIPELINE_HOME": str(ROOT)}, monkeypatch) == str(ROOT)


@pytest.mark.parametrize("home", ["", "empty"])
def test_pull_step_refuses_a_folder_without_the_flows(
        config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        home: str) -> None:
    """Unset: the default /opt/emotion-pipeline; set: a folder with no flows/. On a machine
    whose /opt/emotion-pipeline is a checkout (the worker image), the default is accepted."""
    env = {"EMOTION_PIPELINE_HOME": str(tmp_path)} if home else {}
    expected = str(tmp_path) if home else "/opt/emotion-pipeline"
    if not home and Path(expected, "flows/batch_inference.py").is_file():
        assert _run_project_home(config, env, monkeypatch) == expected
        return
    with pytest.raises(RuntimeError, match=re.escape(
            f"EMOTION_PIPELINE_HOME={expected} is not an emotion-pipeline checkout")):
        _run_project_home(config, env, monkeypatch)


def test_image_and_systemd_unit_agree_with_the_pull_step(config: dict[str, Any]) -> None:
    script = _project_home_step(config)["script"]
    default = re.search(r"\$\{EMOTION_PIPELINE_HOME:-([^}]+)\}", script).group(1)
    dockerfile = (ROOT / "deployments/Dockerfile").read_text()
    env = dict(re.findall(r"^ENV (EMOTION_PIPELINE_HOME)=(\S+)$", dockerfile, re.MULTILINE))
    assert env == {"EMOTION_PIPELINE_HOME": default}
    workdirs = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)
    assert workdirs[-1] in (default, "${EMOTION_PIPELINE_HOME}")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deployments/systemd/emotion-pipeline-worker.service")
    service = unit["Service"]  # repeated keys (Environment=) keep only the last: read the text
    text = (ROOT / "deployments/systemd/emotion-pipeline-worker.service").read_text()
    assert re.findall(r"^Environment=EMOTION_PIPELINE_HOME=(\S+)$", text, re.MULTILINE) == [default]
    assert service["WorkingDirectory"] == default
    assert service["ExecStart"].startswith(f"{default}/.venv/bin/prefect ")
