"""Fixtures of the infra, pools and doctor tests: the three CloudFormation stacks deployed once to
the session's moto server (it serves every AWS service on one port), with names of their own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from infra_helpers import ACCOUNT, REGION, Stacks, deploy


@pytest.fixture(scope="session")
def aws_stacks(s3_server: Any) -> Iterator[Stacks]:
    """storage -> iam -> compute deployed to moto, named with a unique prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    stacks = Stacks(endpoint_url=s3_server.endpoint_url, prefix=prefix, outputs={}, params={})
    cfn, ec2 = stacks.client("cloudformation"), stacks.client("ec2")
    secret_arn = stacks.client("secretsmanager").create_secret(
        Name=f"{prefix}/prefect",
        SecretString=json.dumps({"PREFECT_API_URL": "https://api.example/",
                                 "PREFECT_API_KEY": "x"}),
    )["ARN"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][:2]
    stacks.params = {
        "storage": {"NamePrefix": prefix, "CacheExpirationDays": "7"},
        "iam": {"StorageStack": stacks.name("storage"), "PrefectSecretArn": secret_arn,
                "ClusterName": f"{prefix}-gpu", "FlowTaskFamily": f"{prefix}-flow"},
        "compute": {"IamStack": stacks.name("iam"), "ClusterName": f"{prefix}-gpu",
                    "FlowTaskFamily": f"{prefix}-flow", "VpcId": vpc,
                    "SubnetIds": ",".join(subnets), "InstanceType": "g5.2xlarge",
                    "MaxInstances": "3", "WorkPoolName": f"{prefix}-ecs",
                    "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/emotion-pipeline:test"},
    }
    for stack in ("storage", "iam", "compute"):
        stacks.outputs[stack] = deploy(cfn, stacks.name(stack), f"{stack}.yaml",
                                       stacks.params[stack])
    yield stacks
