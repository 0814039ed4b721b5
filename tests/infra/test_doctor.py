"""deployments/doctor.py: each check against the moto server (S3, STS) and a real Prefect server;
one line per check, exit code 1 when any fails, no secret printed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from deployments.doctor import (
    Check,
    check_aws_credentials,
    check_model,
    check_prefect_api,
    check_s3_readable,
    check_work_pools,
    check_writable,
    model_pointer_uri,
)
from deployments.pools import apply_pool, default_specs


@pytest.fixture
def aws_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every boto3/s3fs client of the test talks to the moto server (as AWS_ENDPOINT_URL says)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    return s3_server


@pytest.fixture
def registry(aws_env: Any, s3_bucket: str, model_path: Path) -> str:
    """``s3://<bucket>/registry/`` holding a deployment file and a production.json naming it."""
    s3 = aws_env.client()
    s3.put_object(Bucket=s3_bucket, Key="registry/models/small-v1.safetensors",
                  Body=model_path.read_bytes())
    s3.put_object(Bucket=s3_bucket, Key="registry/production.json",
                  Body=json.dumps({"uri": "models/small-v1.safetensors"}).encode())
    return f"s3://{s3_bucket}/registry/"


def test_check_line_is_one_line() -> None:
    assert Check("x", True, "fine").line() == "ok    x: fine"
    assert Check("y", False, "bad\n  and worse").line() == "FAIL  y: bad and worse"


def test_aws_credentials_ok(aws_env: Any) -> None:
    check = check_aws_credentials()
    assert check.ok, check.line()
    assert check.detail.startswith("account 123456789012, arn:aws:")
    assert "testing" not in check.line()  # the fake access key and secret never appear


def test_aws_credentials_unreachable_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                s3_server: Any) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    check = check_aws_credentials()
    assert not check.ok
    assert "EndpointConnectionError" in check.detail and "\n" not in check.line()


def test_bucket_reachable_and_missing(aws_env: Any, s3_bucket: str) -> None:
    aws_env.client().put_object(Bucket=s3_bucket, Key="videos/a.mp4", Body=b"x")
    present = check_s3_readable(f"s3://{s3_bucket}/videos/")
    assert present.ok and present.detail == "readable, objects present"
    empty = check_s3_readable(f"s3://{s3_bucket}/nothing-here/")
    assert empty.ok and "nothing under this prefix" in empty.detail
    missing = check_s3_readable(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/videos/")
    assert not missing.ok
    assert missing.line().startswith("FAIL  s3://no-such-bucket-")
    assert missing.detail == "no such bucket (NoSuchBucket)"
    assert not check_s3_readable("/local/path").ok


def test_output_writable_and_not(aws_env: Any, s3_bucket: str) -> None:
    good = check_writable(f"s3://{s3_bucket}/emotions/")
    assert good.ok, good.line()
    listed = aws_env.client().list_objects_v2(Bucket=s3_bucket, Prefix="emotions/")
    assert listed["KeyCount"] == 0  # the probe is gone
    bad = check_writable(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/emotions/")
    assert not bad.ok and "NoSuchBucket" in bad.detail and "\n" not in bad.line()


def test_model_registry_resolves_and_loads(registry: str) -> None:
    assert model_pointer_uri(registry) == registry + "production.json"
    check = check_model(registry)
    assert check.ok, check.line()
    assert check.name == f"model {registry}production.json"
    assert "-> " + registry + "models/small-v1.safetensors" in check.detail
    assert "16 frames of 64 px, UNTRAINED" in check.detail
    direct = check_model(registry + "models/small-v1.safetensors")
    assert direct.ok and "version " in direct.detail


def test_model_registry_without_pointer(aws_env: Any, s3_bucket: str) -> None:
    check = check_model(f"s3://{s3_bucket}/empty-registry")
    assert not check.ok
    assert check.line() == (f"FAIL  model s3://{s3_bucket}/empty-registry/production.json: "
                            "no such model pointer")


def test_model_pointer_to_a_missing_file(aws_env: Any, s3_bucket: str) -> None:
    aws_env.client().put_object(Bucket=s3_bucket, Key="reg/production.json",
                                Body=b'{"uri": "gone.safetensors"}')
    check = check_model(f"s3://{s3_bucket}/reg/production.json")
    assert not check.ok
    assert check.detail == (f"no such model file s3://{s3_bucket}/reg/gone.safetensors "
                            "(named by the pointer)")


def test_prefect_api_and_pools(prefect_server: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = check_prefect_api()
    assert api.ok and api.detail.endswith("is healthy")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        unset = check_prefect_api()
    assert not unset.ok and "PREFECT_API_URL is not set" in unset.detail

    name, missing = f"doc-{uuid.uuid4().hex[:6]}", f"absent-{uuid.uuid4().hex[:6]}"
    apply_pool(default_specs(process_name=name, kinds=["process"])[0])
    idle, absent = check_work_pools([name, missing])
    assert not idle.ok and "no worker online" in idle.detail
    assert not absent.ok and absent.detail.startswith("no such work pool")
    with get_client(sync_client=True) as client:  # what a worker does when it polls
        client.send_worker_heartbeat(name, "test-worker")
    (ready,) = check_work_pools([name])
    assert ready.ok and ready.detail == "process pool, worker online"


def test_cli_doctor_exit_codes(aws_env: Any, registry: str, s3_bucket: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    ok_args = ["doctor", "--no-prefect", "--s3", f"s3://{s3_bucket}/registry/",
               "--output", f"s3://{s3_bucket}/out/", "--model", registry]
    assert main(ok_args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["ok"] * 4
    assert lines[-1] == "4 ok, 0 failed"

    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/videos/"
    assert main([*ok_args, "--s3", missing]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  {missing}: no such bucket (NoSuchBucket)" in out.splitlines()
    assert out.splitlines()[-1] == "4 ok, 1 failed"
    assert "testing" not in out
