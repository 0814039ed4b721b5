"""infra/*.yaml: cfn-lint clean; deployed to moto's CloudFormation, the resources moto models exist
with the right properties; what moto does not model (bucket versioning, public access block,
lifecycle, capacity providers) is checked in the template itself."""

from __future__ import annotations

import ast
import base64
import fnmatch
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from infra_helpers import ACCOUNT, REGION, TEMPLATES, Stacks, deploy, load_template

# moto warns once per resource type it does not model (see MOTO_UNMODELLED)
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")


# --- cfn-lint ------------------------------------------------------------------------------------
def test_cfn_lint_passes_on_every_template() -> None:
    assert {p.name for p in TEMPLATES} >= {"storage.yaml", "iam.yaml", "compute.yaml"}
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run([str(cfn_lint), *map(str, TEMPLATES)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- storage -------------------------------------------------------------------------------------
BUCKETS = ("archive", "outputs", "models", "cache")
GPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id"


def _bucket(stacks: Stacks, role: str) -> str:
    return stacks.outputs["storage"][f"{role.capitalize()}BucketName"]


def test_storage_buckets_exist_encrypted(aws_stacks: Stacks) -> None:
    s3 = aws_stacks.client("s3")
    names = {role: _bucket(aws_stacks, role) for role in BUCKETS}
    assert names["archive"] == f"{aws_stacks.prefix}-archive-{ACCOUNT}-{REGION}"
    existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for name in names.values():
        assert name in existing
        conf = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]
        rule = conf["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_storage_image_repository(aws_stacks: Stacks) -> None:
    uri = aws_stacks.outputs["storage"]["ImageRepositoryUri"]
    name = f"{aws_stacks.prefix}-pipeline"
    assert uri == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}"
    (repo,) = aws_stacks.client("ecr").describe_repositories(repositoryNames=[name])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    # moto's CloudFormation drops the scan setting: the template says it
    props = load_template("storage.yaml")["Resources"]["ImageRepository"]["Properties"]
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    rules = json.loads(props["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert rules[0]["selection"]["countNumber"] == 30


def test_storage_with_existing_archive_and_kms(aws_stacks: Stacks) -> None:
    """An existing archive is not created (nor managed); a KMS key switches every bucket to it."""
    s3, cfn = aws_stacks.client("s3"), aws_stacks.client("cloudformation")
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0f1e2d3c-aaaa-bbbb-cccc-000000000000"
    prefix = f"{aws_stacks.prefix}k"
    outputs = deploy(cfn, f"{prefix}-storage", "storage.yaml", {
        "NamePrefix": prefix, "ExistingArchiveBucket": "my-old-archive", "KmsKeyArn": key})
    assert outputs["ArchiveBucketName"] == "my-old-archive"
    resources = {r["LogicalResourceId"] for r in cfn.list_stack_resources(
        StackName=f"{prefix}-storage")["StackResourceSummaries"]}
    assert "ArchiveBucket" not in resources and "OutputsBucket" in resources
    for role in ("outputs", "models", "cache"):
        conf = s3.get_bucket_encryption(Bucket=outputs[f"{role.capitalize()}BucketName"])
        default = conf["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert default["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}


def test_storage_template_versioning_public_access_lifecycle() -> None:
    """moto 5.2.5's CloudFormation applies only encryption and tags to a bucket: the rest is
    checked in the template."""
    resources = load_template("storage.yaml")["Resources"]
    buckets = {k: v for k, v in resources.items() if v["Type"] == "AWS::S3::Bucket"}
    assert set(buckets) == {"ArchiveBucket", "OutputsBucket", "ModelsBucket", "CacheBucket"}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
            ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"),
            True), name
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert "ServerSideEncryptionConfiguration" in props["BucketEncryption"]
    assert buckets["ModelsBucket"]["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    for keep in ("ArchiveBucket", "OutputsBucket", "ModelsBucket"):
        assert buckets[keep]["DeletionPolicy"] == "Retain"
    cache_rules = buckets["CacheBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expire = [r for r in cache_rules if "ExpirationInDays" in r]
    assert expire == [{"Id": "expire-cache", "Status": "Enabled",
                       "ExpirationInDays": {"Ref": "CacheExpirationDays"}}]
    # every bucket refuses plain HTTP
    policies = [v["Properties"] for v in resources.values() if v["Type"] == "AWS::S3::BucketPolicy"]
    assert sorted(p["Bucket"]["Ref"] for p in policies) == sorted(buckets)
    for policy in policies:
        (statement,) = policy["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Deny"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# --- IAM -----------------------------------------------------------------------------------------
def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _role_statements(iam: Any, role_name: str) -> list[dict[str, Any]]:
    """Every statement of the role's attached (customer-managed) and inline policies."""
    statements: list[dict[str, Any]] = []
    for attached in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        doc = iam.get_policy_version(PolicyArn=attached["PolicyArn"],
                                     VersionId=policy["DefaultVersionId"])["PolicyVersion"]
        statements += _as_list(doc["Document"]["Statement"])
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        statements += _as_list(_document(doc)["Statement"])
    return statements


def _document(doc: Any) -> dict[str, Any]:
    """A policy document as a dict: boto3 decodes JSON; moto's CloudFormation stores inline
    role policies as the repr of a Python dict, which is read back as such."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(unquote(doc))
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def _allowed(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether an Allow statement names `action` (wildcards expanded) on `resource`."""
    for st in statements:
        if st["Effect"] != "Allow":
            continue
        if any(fnmatch.fnmatchcase(action, a) for a in _as_list(st["Action"])) and any(
                fnmatch.fnmatchcase(resource, r) for r in _as_list(st["Resource"])):
            return True
    return False


def _roles(stacks: Stacks) -> dict[str, str]:
    """Logical id -> role name of the IAM stack's roles."""
    cfn = stacks.client("cloudformation")
    summaries = cfn.list_stack_resources(StackName=stacks.name("iam"))["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries
            if r["ResourceType"] == "AWS::IAM::Role"}


def test_iam_roles_least_privilege(aws_stacks: Stacks) -> None:
    iam = aws_stacks.client("iam")
    roles = _roles(aws_stacks)
    assert set(roles) == {"InferenceRole", "TrainingRole", "TaskExecutionRole", "WorkerRole",
                          "GpuInstanceRole", "ProcessHostRole"}
    archive, outputs, models, cache = (f"arn:aws:s3:::{_bucket(aws_stacks, r)}" for r in BUCKETS)
    inference = _role_statements(iam, roles["InferenceRole"])
    training = _role_statements(iam, roles["TrainingRole"])

    assert _allowed(inference, "s3:GetObject", f"{archive}/videos/2024/a.mp4")
    assert not _allowed(inference, "s3:GetObject", f"{archive}/secret/a.mp4")  # other prefixes
    assert _allowed(inference, "s3:PutObject", f"{outputs}/emotions/predictions/x.parquet")
    assert _allowed(inference, "s3:GetObject", f"{models}/registry/production.json")
    assert not _allowed(inference, "s3:PutObject", f"{models}/registry/production.json")
    assert not _allowed(inference, "s3:GetObject", f"{cache}/clips/x.npy")

    assert _allowed(training, "s3:GetObject", f"{archive}/labelled/Actor_01/a.mp4")
    assert _allowed(training, "s3:PutObject", f"{cache}/clips/x.npy")
    assert _allowed(training, "s3:GetObject", f"{cache}/clips/x.npy")
    assert _allowed(training, "s3:PutObject", f"{models}/registry/production.json")
    assert not _allowed(training, "s3:PutObject", f"{outputs}/emotions/x.parquet")

    for logical, name in roles.items():
        statements = _role_statements(iam, name)
        for action in ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObject",
                       "s3:DeleteBucket", "s3:PutBucketPolicy", "s3:PutLifecycleConfiguration"):
            assert not _allowed(statements, action, f"{archive}/videos/a.mp4"), (logical, action)
            assert not _allowed(statements, action, archive), (logical, action)
        for st in statements:  # no wildcard resource but where AWS allows nothing else
            for resource in _as_list(st["Resource"]):
                if resource == "*":
                    assert _as_list(st["Action"]) == ["ecs:DescribeTaskDefinition"], st
                elif resource.startswith("arn:aws:s3:::"):
                    bucket = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
                    assert "*" not in bucket, st
                assert not any(a in ("*", "s3:*", "iam:*", "ecs:*") for a in _as_list(st["Action"]))


def test_iam_worker_may_run_only_the_flow_task(aws_stacks: Stacks) -> None:
    iam = aws_stacks.client("iam")
    roles = _roles(aws_stacks)
    worker = _role_statements(iam, roles["WorkerRole"])
    family = aws_stacks.params["iam"]["FlowTaskFamily"]
    prefix = f"arn:aws:ecs:{REGION}:{ACCOUNT}"
    assert _allowed(worker, "ecs:RunTask", f"{prefix}:task-definition/{family}:3")
    assert not _allowed(worker, "ecs:RunTask", f"{prefix}:task-definition/other:1")
    assert not _allowed(worker, "ecs:RegisterTaskDefinition", "*")
    passable = {r for st in worker if "iam:PassRole" in _as_list(st["Action"])
                for r in _as_list(st["Resource"])}
    iam_out = aws_stacks.outputs["iam"]
    assert passable == {iam_out["InferenceRoleArn"], iam_out["TrainingRoleArn"],
                        iam_out["TaskExecutionRoleArn"]}
    execution = _role_statements(iam, roles["TaskExecutionRole"])
    secret = aws_stacks.params["iam"]["PrefectSecretArn"]
    assert _allowed(execution, "secretsmanager:GetSecretValue", secret)
    assert not _allowed(execution, "secretsmanager:GetSecretValue", secret + "-other")
    trust = iam.get_role(RoleName=roles["InferenceRole"])["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    # AWS-managed policies are attached by ARN, which moto's CloudFormation skips: the template
    template = load_template("iam.yaml")["Resources"]
    assert "AmazonECSTaskExecutionRolePolicy" in str(
        template["TaskExecutionRole"]["Properties"]["ManagedPolicyArns"])
    assert "AmazonEC2ContainerServiceforEC2Role" in str(
        template["GpuInstanceRole"]["Properties"]["ManagedPolicyArns"])


# --- compute -------------------------------------------------------------------------------------
def test_compute_gpu_task_definition(aws_stacks: Stacks) -> None:
    ecs = aws_stacks.client("ecs")
    out, params = aws_stacks.outputs["compute"], aws_stacks.params["compute"]
    assert out["ClusterArn"] == f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{params['ClusterName']}"
    assert ecs.describe_clusters(clusters=[out["ClusterArn"]])["clusters"][0]["status"] == "ACTIVE"
    task = ecs.describe_task_definition(taskDefinition=out["FlowTaskDefinitionArn"])
    task = task["taskDefinition"]
    assert task["family"] == params["FlowTaskFamily"]
    assert task["networkMode"] == "bridge"
    (container,) = task["containerDefinitions"]
    assert container["name"] == "prefect"  # the container the ECS worker overrides
    assert container["image"] == params["ImageUri"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert container["linuxParameters"]["sharedMemorySize"] == 4096
    assert container["logConfiguration"]["options"]["awslogs-group"] == out["LogGroupName"]
    props = load_template("compute.yaml")["Resources"]["FlowTaskDefinition"]["Properties"]
    assert props["RequiresCompatibilities"] == ["EC2"]  # moto reports EC2 for every definition


def test_compute_autoscaling_group_of_gpu_instances(aws_stacks: Stacks) -> None:
    asg_client, ec2 = aws_stacks.client("autoscaling"), aws_stacks.client("ec2")
    out, params = aws_stacks.outputs["compute"], aws_stacks.params["compute"]
    (group,) = asg_client.describe_auto_scaling_groups(
        AutoScalingGroupNames=[out["AutoScalingGroupName"]])["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 3, 0)
    assert group["NewInstancesProtectedFromScaleIn"] is True
    policy = group["MixedInstancesPolicy"]
    assert policy["LaunchTemplate"]["Overrides"] == [{"InstanceType": "g5.2xlarge"}]
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0  # spot
    template_id = policy["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"]
    data = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    # the AMI comes from the ECS GPU-optimised SSM parameter (moto ships its values)
    gpu_ami = aws_stacks.client("ssm").get_parameter(
        Name=GPU_AMI_PARAMETER)
    assert data["ImageId"] == gpu_ami["Parameter"]["Value"]
    assert data["InstanceType"] == "g5.2xlarge"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1  # not from containers
    user_data = base64.b64decode(data["UserData"]).decode()
    assert f"ECS_CLUSTER={params['ClusterName']}" in user_data
    assert "ECS_ENABLE_GPU_SUPPORT=true" in user_data


def test_compute_on_demand_when_spot_is_off(aws_stacks: Stacks) -> None:
    cfn = aws_stacks.client("cloudformation")
    name = f"{aws_stacks.prefix}-ondemand"
    params = {**aws_stacks.params["compute"], "UseSpot": "false",
              "ClusterName": f"{aws_stacks.prefix}-od", "WorkPoolName": "od"}
    outputs = deploy(cfn, name, "compute.yaml", params)
    (group,) = aws_stacks.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["AutoScalingGroupName"]])["AutoScalingGroups"]
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 100


def test_compute_prefect_worker_service(aws_stacks: Stacks) -> None:
    ecs = aws_stacks.client("ecs")
    out, params = aws_stacks.outputs["compute"], aws_stacks.params["compute"]
    (service,) = ecs.describe_services(cluster=out["ClusterArn"],
                                       services=["prefect-worker"])["services"]
    assert service["desiredCount"] == 1
    # moto's CloudFormation drops a service's LaunchType and a task's Fargate settings
    template = load_template("compute.yaml")["Resources"]
    assert template["WorkerService"]["Properties"]["LaunchType"] == "FARGATE"
    assert template["WorkerTaskDefinition"]["Properties"]["RequiresCompatibilities"] == ["FARGATE"]
    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    (container,) = task["containerDefinitions"]
    assert container["command"] == ["prefect", "worker", "start", "--pool",
                                    params["WorkPoolName"], "--type", "ecs"]
    secret = aws_stacks.params["iam"]["PrefectSecretArn"]
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == {
        "PREFECT_API_URL": f"{secret}:PREFECT_API_URL::",
        "PREFECT_API_KEY": f"{secret}:PREFECT_API_KEY::",
    }
    assert not any(e["name"].startswith("PREFECT_API") for e in container.get("environment", []))


MOTO_UNMODELLED = {"AWS::ECS::CapacityProvider", "AWS::ECS::ClusterCapacityProviderAssociations",
                   "AWS::S3::BucketPolicy"}


@pytest.mark.parametrize("stack", ["storage", "iam", "compute"])
def test_moto_models_every_resource_but_the_known_few(aws_stacks: Stacks, stack: str) -> None:
    """What this suite can check in moto: every resource but capacity providers and bucket
    policies (moto 5.2.5 skips those types; the template tests cover them)."""
    template = load_template(f"{stack}.yaml")["Resources"]
    created = {r["LogicalResourceId"] for r in aws_stacks.client("cloudformation")
               .list_stack_resources(StackName=aws_stacks.name(stack))["StackResourceSummaries"]}
    expected = {k for k, v in template.items()
                if v["Type"] not in MOTO_UNMODELLED and v.get("Condition") not in ("UseKms",)}
    assert created - {""} == expected


def test_compute_capacity_provider_scales_the_group_from_zero() -> None:
    """Capacity provider and cluster association: not modelled by moto, checked in the template."""
    resources = load_template("compute.yaml")["Resources"]
    provider = resources["GpuCapacityProvider"]["Properties"]["AutoScalingGroupProvider"]
    assert provider["AutoScalingGroupArn"] == {"Ref": "GpuAutoScalingGroup"}
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedTerminationProtection"] == "ENABLED"
    association = resources["ClusterCapacityProviders"]["Properties"]
    assert association["DefaultCapacityProviderStrategy"] == [
        {"CapacityProvider": {"Ref": "GpuCapacityProvider"}, "Weight": 1, "Base": 0}]
    asg = resources["GpuAutoScalingGroup"]["Properties"]
    assert asg["MinSize"] == "0"
    ami = load_template("compute.yaml")["Parameters"]["GpuAmiId"]
    assert ami["Default"] == GPU_AMI_PARAMETER
