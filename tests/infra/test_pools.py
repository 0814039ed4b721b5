"""deployments/pools.py against a real Prefect server: pools created once, unchanged on a second
run, updated when the template changes; the ECS template filled from the moto stacks' outputs
renders into prefect-aws's ECS job configuration."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from infra_helpers import Stacks

from deployments.pools import (
    PoolError,
    PoolSpec,
    apply_pool,
    build_template,
    default_specs,
    ecs_defaults_from_outputs,
    parse_assignments,
    stack_outputs,
)

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")  # moto, see infra


@pytest.fixture
def client(prefect_server: None) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        yield c


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _ecs_values(stacks: Stacks) -> dict[str, Any]:
    outputs = stack_outputs([stacks.name("iam"), stacks.name("compute")],
                            endpoint_url=stacks.endpoint_url, region_name="us-east-1")
    return ecs_defaults_from_outputs(outputs)


def test_ecs_defaults_come_from_the_stack_outputs(aws_stacks: Stacks) -> None:
    values = _ecs_values(aws_stacks)
    compute, iam = aws_stacks.outputs["compute"], aws_stacks.outputs["iam"]
    assert values["cluster"] == compute["ClusterArn"]
    assert values["task_definition_arn"] == compute["FlowTaskDefinitionArn"]
    assert values["task_role_arn"] == iam["InferenceRoleArn"]
    assert values["execution_role_arn"] == iam["TaskExecutionRoleArn"]
    assert values["prefect_api_key_secret_arn"] == f"{iam['PrefectSecretArn']}:PREFECT_API_KEY::"
    # a capacity provider output (real CloudFormation; moto does not model it) becomes the strategy
    assert "capacity_provider_strategy" not in values
    assert ecs_defaults_from_outputs({"CapacityProviderName": "gpu-cp"}) == {
        "capacity_provider_strategy": [{"capacityProvider": "gpu-cp", "weight": 1, "base": 0}]}


def test_ecs_template_renders_for_the_ecs_worker(aws_stacks: Stacks) -> None:
    """The pool's defaults, rendered by prefect-aws, run the GPU task definition on EC2."""
    from prefect_aws.workers.ecs_worker import ECSJobConfiguration

    values = {**_ecs_values(aws_stacks),
              "capacity_provider_strategy": [{"capacityProvider": "gpu", "weight": 1, "base": 0}]}
    template = build_template("ecs", values)
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items()
                if "default" in v}
    config = asyncio.run(
        ECSJobConfiguration.from_template_and_values(template, defaults))
    request = config.task_run_request
    assert request["taskDefinition"] == aws_stacks.outputs["compute"]["FlowTaskDefinitionArn"]
    assert request["cluster"] == aws_stacks.outputs["compute"]["ClusterArn"]
    assert request["launchType"] == "EC2"
    assert request["capacityProviderStrategy"] == values["capacity_provider_strategy"]
    assert request["overrides"]["taskRoleArn"] == aws_stacks.outputs["iam"]["InferenceRoleArn"]
    assert config.container_name == "prefect"
    assert not config.task_definition  # nothing is registered: the ARN is used as it is


def test_set_defaults_refuses_an_unknown_variable() -> None:
    with pytest.raises(PoolError, match=r"unknown job variable\(s\) \['gpu_count'\]"):
        build_template("ecs", {"gpu_count": 1})
    assert parse_assignments(["cpu=4096", "cluster=gpu", 'env={"A": "1"}']) == {
        "cpu": 4096, "cluster": "gpu", "env": {"A": "1"}}
    with pytest.raises(PoolError, match="expected KEY=VALUE"):
        parse_assignments(["cluster"])


def test_apply_pool_is_idempotent_and_updates(client: Any, aws_stacks: Stacks) -> None:
    ecs_name, process_name = _unique("ecs"), _unique("process")
    specs = default_specs(ecs_values=_ecs_values(aws_stacks), ecs_name=ecs_name,
                          process_name=process_name, process_values={"working_dir": "/opt/ep"})
    assert [apply_pool(s, client) for s in specs] == ["created", "created"]
    assert [apply_pool(s, client) for s in specs] == ["unchanged", "unchanged"]

    pool = client.read_work_pool(ecs_name)
    assert pool.type == "ecs"
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["task_definition_arn"]["default"] == (
        aws_stacks.outputs["compute"]["FlowTaskDefinitionArn"])
    assert variables["launch_type"]["default"] == "EC2"
    process = client.read_work_pool(process_name)
    assert (process.type, process.concurrency_limit) == ("process", 1)
    process_variables = process.base_job_template["variables"]["properties"]
    assert process_variables["working_dir"]["default"] == "/opt/ep"

    # a new task definition revision: the template changes, the pool is updated in place
    changed = default_specs(
        ecs_values={**_ecs_values(aws_stacks), "task_definition_arn": "arn:aws:ecs:x:1:td/f:2"},
        ecs_name=ecs_name, ecs_concurrency=3, kinds=["ecs"])[0]
    assert apply_pool(changed, client) == "updated"
    pool = client.read_work_pool(ecs_name)
    assert pool.base_job_template["variables"]["properties"]["task_definition_arn"][
        "default"] == "arn:aws:ecs:x:1:td/f:2"
    assert pool.concurrency_limit == 3
    assert pool.id == client.read_work_pool(ecs_name).id  # the same pool, not a new one
    assert apply_pool(changed, client) == "unchanged"


def test_apply_pool_refuses_another_type(client: Any) -> None:
    name = _unique("typed")
    assert apply_pool(PoolSpec(name=name, type="process",
                               base_job_template=build_template("process")), client) == "created"
    with pytest.raises(PoolError, match=f"'{name}' exists with type 'process', not 'ecs'"):
        apply_pool(PoolSpec(name=name, type="ecs", base_job_template=build_template("ecs")), client)


def test_cli_pools_twice(prefect_server: None, aws_stacks: Stacks, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_stacks.endpoint_url)
    ecs_name, process_name = _unique("cli-ecs"), _unique("cli-process")
    argv = ["pools", "--ecs-pool", ecs_name, "--process-pool", process_name,
            "--stack", aws_stacks.name("iam"), "--stack", aws_stacks.name("compute"),
            "--region", "us-east-1", "--ecs-set", "cpu=4096"]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert first == [f"created  ecs work pool {ecs_name}",
                     f"created  process work pool {process_name}"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"unchanged  ecs work pool {ecs_name}", f"unchanged  process work pool {process_name}"]
