"""Create or update the Prefect work pools of emotion-pipeline, idempotently.

Two pools, each from a base job template in ``deployments/job_templates/``:

- ``ecs`` (prefect-aws's ECS worker type): flow runs as ECS tasks on EC2 GPU instances. The
  template references the GPU task definition of ``infra/compute.yaml`` by
  ``task_definition_arn`` (prefect-aws has no job variable for ``resourceRequirements``); the
  account-specific defaults (cluster, task definition, capacity provider, roles, Prefect secret)
  come from the CloudFormation stacks' outputs or ``--ecs-set KEY=VALUE``.
- ``process``: flow runs as processes on one always-on GPU host (a systemd worker).

Running it again with the same inputs changes nothing; a changed template updates the pool.

    template = build_template("ecs", stack_outputs(["emotion-iam", "emotion-compute"]))
    apply_pool(PoolSpec(name="emotion-gpu-ecs", type="ecs", base_job_template=template))
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TEMPLATES_DIR = Path(__file__).parent / "job_templates"
PoolKind = Literal["ecs", "process"]
TEMPLATE_FILES: dict[PoolKind, str] = {"ecs": "ecs-gpu.json", "process": "process.json"}
DEFAULT_POOL_NAMES: dict[PoolKind, str] = {
    "ecs": "emotion-gpu-ecs", "process": "emotion-gpu-process",
}

Action = Literal["created", "updated", "unchanged"]


class PoolError(ValueError):
    """A pool cannot be created or updated as asked (bad variable, other pool type)."""


@dataclass(frozen=True)
class PoolSpec:
    """A work pool as it should be: name, worker type, base job template, limits."""

    name: str
    type: str
    base_job_template: dict[str, Any]
    description: str | None = None
    concurrency_limit: int | None = None


def load_template(kind: PoolKind) -> dict[str, Any]:
    """The base job template of `kind` as shipped in ``deployments/job_templates/``."""
    return json.loads((TEMPLATES_DIR / TEMPLATE_FILES[kind]).read_text())


def set_defaults(template: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `template` whose job variables default to `values` (None leaves one as is).

    Raises:
        PoolError: a key is not a job variable of the template (the message lists them).
    """
    out = copy.deepcopy(dict(template))
    props = out["variables"]["properties"]
    unknown = sorted(set(values) - set(props))
    if unknown:
        raise PoolError(f"unknown job variable(s) {unknown}; the template has {sorted(props)}")
    for key, value in values.items():
        if value is not None:
            props[key]["default"] = value
    return out


# --- CloudFormation outputs -> ECS job variables -------------------------------------------------
def stack_outputs(stacks: Iterable[str], **client_kwargs: Any) -> dict[str, str]:
    """The outputs (key -> value) of the CloudFormation `stacks`, later stacks winning.

    `client_kwargs` go to ``boto3.client("cloudformation", ...)`` (``region_name``,
    ``endpoint_url``); credentials come from the standard AWS environment.
    """
    import boto3

    client = boto3.client("cloudformation", **client_kwargs)
    outputs: dict[str, str] = {}
    for name in stacks:
        (stack,) = client.describe_stacks(StackName=name)["Stacks"]
        outputs.update({o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])})
    return outputs


def ecs_defaults_from_outputs(outputs: Mapping[str, str]) -> dict[str, Any]:
    """ECS job-variable defaults from the outputs of ``infra/iam.yaml`` and ``infra/compute.yaml``.

    Outputs that are absent leave their variable alone.
    """
    values: dict[str, Any] = {}
    if outputs.get("ClusterArn") or outputs.get("ClusterName"):
        values["cluster"] = outputs.get("ClusterArn") or outputs["ClusterName"]
    if outputs.get("FlowTaskDefinitionArn"):
        values["task_definition_arn"] = outputs["FlowTaskDefinitionArn"]
    if outputs.get("CapacityProviderName"):
        values["capacity_provider_strategy"] = [
            {"capacityProvider": outputs["CapacityProviderName"], "weight": 1, "base": 0}
        ]
    if outputs.get("InferenceRoleArn"):
        values["task_role_arn"] = outputs["InferenceRoleArn"]
    if outputs.get("TaskExecutionRoleArn"):
        values["execution_role_arn"] = outputs["TaskExecutionRoleArn"]
    if outputs.get("PrefectSecretArn"):
        # ECS reads one JSON key of the secret: <arn>:<json-key>:<version-stage>:<version-id>
        values["prefect_api_key_secret_arn"] = f"{outputs['PrefectSecretArn']}:PREFECT_API_KEY::"
    return values


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict; a VALUE that parses as JSON is taken as JSON."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PoolError(f"expected KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def build_template(kind: PoolKind, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The shipped template of `kind` with `values` as job-variable defaults."""
    return set_defaults(load_template(kind), values or {})


# --- the Prefect API -----------------------------------------------------------------------------
def apply_pool(spec: PoolSpec, client: Any | None = None) -> Action:
    """Create the pool of `spec`, or update it when its template, description or limit differ.

    Args:
        spec: the pool as it should be.
        client: a ``SyncPrefectClient``; None opens one on the configured Prefect API.

    Returns:
        ``"created"``, ``"updated"`` or ``"unchanged"``.

    Raises:
        PoolError: a pool of that name exists with another worker type (Prefect cannot change
            a pool's type: delete it first).
    """
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            return apply_pool(spec, own)

    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        current = client.read_work_pool(spec.name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(
            name=spec.name, type=spec.type, base_job_template=spec.base_job_template,
            description=spec.description, concurrency_limit=spec.concurrency_limit,
        ))
        return "created"
    if current.type != spec.type:
        raise PoolError(
            f"work pool {spec.name!r} exists with type {current.type!r}, not {spec.type!r}; "
            f"delete it (prefect work-pool delete {spec.name}) or choose another name"
        )
    if (
        current.base_job_template == spec.base_job_template
        and current.description == spec.description
        and current.concurrency_limit == spec.concurrency_limit
    ):
        return "unchanged"
    client.update_work_pool(spec.name, WorkPoolUpdate(
        base_job_template=spec.base_job_template, description=spec.description,
        concurrency_limit=spec.concurrency_limit,
    ))
    return "updated"


def default_specs(
    *,
    ecs_values: Mapping[str, Any] | None = None,
    process_values: Mapping[str, Any] | None = None,
    ecs_name: str = DEFAULT_POOL_NAMES["ecs"],
    process_name: str = DEFAULT_POOL_NAMES["process"],
    ecs_concurrency: int | None = None,
    process_concurrency: int | None = 1,
    kinds: Iterable[PoolKind] = ("ecs", "process"),
) -> list[PoolSpec]:
    """The pool specs of emotion-pipeline (both by default), templates filled with the values."""
    specs: list[PoolSpec] = []
    for kind in kinds:
        if kind == "ecs":
            specs.append(PoolSpec(
                name=ecs_name, type="ecs", base_job_template=build_template("ecs", ecs_values),
                description="emotion-pipeline: flow runs as ECS tasks on EC2 GPU instances",
                concurrency_limit=ecs_concurrency,
            ))
        else:
            specs.append(PoolSpec(
                name=process_name, type="process",
                base_job_template=build_template("process", process_values),
                description="emotion-pipeline: flow runs as processes on one GPU host",
                concurrency_limit=process_concurrency,
            ))
    return specs
