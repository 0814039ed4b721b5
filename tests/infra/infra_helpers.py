"""Helpers of the infra, pools and doctor tests: templates as data, stacks deployed to moto."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parents[2] / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"


def load_template(name: str) -> dict[str, Any]:
    """A template as plain data (``!Ref x`` -> ``{"Ref": "x"}``), parsed by cfn-lint's decoder."""
    from cfnlint.decode import decode_str

    template, matches = decode_str((INFRA / name).read_text())
    assert not matches, matches
    return json.loads(json.dumps(template, default=str))


@dataclass
class Stacks:
    """The deployed stacks: names, outputs, parameters, and boto3 clients on the moto server."""

    endpoint_url: str
    prefix: str
    outputs: dict[str, dict[str, str]]
    params: dict[str, dict[str, str]]

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def name(self, stack: str) -> str:
        return f"{self.prefix}-{stack}"


def deploy(cfn: Any, stack_name: str, template: str, params: dict[str, str]) -> dict[str, str]:
    """Create `stack_name` from ``infra/<template>``; its outputs. Fails unless CREATE_COMPLETE."""
    with warnings.catch_warnings():  # moto warns for each resource type it does not model
        warnings.simplefilter("ignore", UserWarning)
        cfn.create_stack(
            StackName=stack_name, TemplateBody=(INFRA / template).read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
    (stack,) = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


