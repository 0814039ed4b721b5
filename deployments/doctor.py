"""``emotion-pipeline doctor``: is this machine (or account) ready to run the pipeline?

Each check returns one `Check`: ok, or one line saying what is wrong. The checks:

- AWS credentials: STS ``GetCallerIdentity`` (prints the account and the caller ARN, never a key);
- S3 locations: a ``ListObjectsV2`` of one key under each prefix (what the least-privilege roles
  allow: they grant ``s3:ListBucket`` only under their prefixes, so no ``HeadBucket``);
- output locations: a probe object written and deleted (the flow's own preflight check);
- the model: a registry folder, its ``production.json`` pointer or a deployment file resolves,
  and the deployment file loads (weights hash checked);
- the Prefect API: ``PREFECT_API_URL`` is set and answers its health check;
- work pools: each exists, is not paused and has a worker polling it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from emotion_model.errors import one_line

_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2}}


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its subject, whether it passed, and one line of detail."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``ok    <name>: <detail>`` or ``FAIL  <name>: <detail>``, on one line."""
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {one_line(self.detail, 300)}"


def _without_prefix(message: str, uri: str) -> str:
    """`message` without a leading ``"<uri>: "`` (the check's name already says it)."""
    return message.removeprefix(f"{uri}: ")


def _client(service: str, endpoint_url: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {"config": Config(**_TIMEOUTS)}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return boto3.client(service, **kwargs)


def _aws_cause(exc: BaseException) -> BaseException | None:
    """The botocore error (one with a ``response``) in `exc`'s cause chain, if any."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None or isinstance(getattr(current, "response", None), dict):
            return current
        current = current.__cause__ or current.__context__
    return None


def _aws_error(exc: BaseException) -> str:
    """A short reason for an AWS client error: its code and message, or the exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        error = response["Error"]
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        known = {
            "NoSuchBucket": "no such bucket",
            "AccessDenied": "access denied",
            "AllAccessDisabled": "access denied",
            "InvalidAccessKeyId": "the access key is not valid",
            "SignatureDoesNotMatch": "the secret key does not match the access key",
            "ExpiredToken": "the session token has expired",
            "InvalidClientTokenId": "the access key is not valid",
        }
        if code in known:
            return f"{known[code]} ({code})"
        return f"{code}: {message}" if message else code
    return f"{type(exc).__name__}: {exc}"


# --- AWS -----------------------------------------------------------------------------------------
def check_aws_credentials(*, endpoint_url: str | None = None) -> Check:
    """Who the AWS credentials belong to (STS GetCallerIdentity)."""
    try:
        ident = _client("sts", endpoint_url).get_caller_identity()
    except Exception as exc:
        return Check("aws credentials", False, _aws_error(exc))
    return Check("aws credentials", True, f"account {ident['Account']}, {ident['Arn']}")


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith(("s3://", "s3a://")):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, prefix = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name")
    return bucket, prefix


def check_s3_readable(uri: str, *, endpoint_url: str | None = None) -> Check:
    """`uri` (``s3://bucket/prefix``) can be listed; says whether anything is under it."""
    try:
        bucket, prefix = _split_s3(uri)
    except ValueError as exc:
        return Check(uri, False, _without_prefix(str(exc), uri))
    try:
        page = _client("s3", endpoint_url).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:
        return Check(uri, False, _aws_error(exc))
    if page.get("KeyCount", 0):
        return Check(uri, True, "readable, objects present")
    return Check(uri, True, "readable, nothing under this prefix yet")


def check_writable(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> Check:
    """`uri` (an output folder or ``s3://`` prefix) takes a probe object, which is removed."""
    from tasks.common.storage import check_writable as probe
    from tasks.errors import OutputNotWritableError

    try:
        probe(uri, storage_options)
    except OutputNotWritableError as exc:
        aws = _aws_cause(exc)
        return Check(uri, False, _aws_error(aws) if aws else _without_prefix(str(exc), uri))
    return Check(uri, True, "writable (probe written and removed)")


def model_pointer_uri(model: str) -> str:
    """A registry folder (``.../`` or no file suffix) -> its ``production.json``; else `model`."""
    last = model.rstrip("/").rsplit("/", 1)[-1]
    if model.endswith("/") or "." not in last:
        return model.rstrip("/") + "/production.json"
    return model


def check_model(model: str, *, storage_options: Mapping[str, Any] | None = None) -> Check:
    """The model a deployment names resolves (registry -> pointer -> file) and loads."""
    from emotion_model.checkpoint import load_deployment
    from tasks.common.model_pointer import resolve_model_uri
    from tasks.common.storage import read_bytes

    pointer = model_pointer_uri(model)
    name = f"model {pointer}"
    try:
        uri = resolve_model_uri(pointer, storage_options)
    except Exception as exc:  # CheckpointError: "<pointer>: no such model pointer", ...
        return Check(name, False, _without_prefix(str(exc), pointer))
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError:
        where = f"{uri} (named by the pointer)" if uri != pointer else uri
        return Check(name, False, f"no such model file {where}")
    except Exception as exc:
        return Check(name, False, f"{uri}: {_aws_error(exc)}")
    try:
        _, meta = load_deployment(data)  # as inference loads it: the six labels, in order
    except Exception as exc:
        return Check(name, False, f"{uri} does not load: {type(exc).__name__}: {exc}")
    untrained = ", UNTRAINED" if meta.get("untrained") else ""
    via = f" -> {uri}" if uri != pointer else ""
    return Check(
        name, True,
        f"loads{via}: version {meta['model_version']}, {meta.get('num_frames')} frames of "
        f"{meta.get('img_size')} px{untrained}",
    )


# --- Prefect -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _prefect_client() -> Iterator[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client


def check_prefect_api() -> Check:
    """``PREFECT_API_URL`` is set (not a throwaway local server) and answers."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return Check("prefect api", False,
                     "PREFECT_API_URL is not set (runs would go to a temporary local server; "
                     "prefect cloud login, or prefect config set PREFECT_API_URL=...)")
    try:
        with _prefect_client() as client:
            error = client.api_healthcheck()
    except Exception as exc:
        error = exc
    if error is not None:
        reason = f"{type(error).__name__}: {error}"
        return Check("prefect api", False, f"{url} does not answer: {reason}")
    return Check("prefect api", True, f"{url} is healthy")


def check_work_pools(names: Iterable[str]) -> list[Check]:
    """Each pool exists, is not paused, and a worker has polled it lately (status READY)."""
    from prefect.exceptions import ObjectNotFound

    names = list(names)
    if not names:
        return []
    checks: list[Check] = []
    try:
        with _prefect_client() as client:
            for name in names:
                label = f"work pool {name}"
                try:
                    pool = client.read_work_pool(name)
                except ObjectNotFound:
                    checks.append(Check(label, False,
                                        "no such work pool (create it: emotion-pipeline pools)"))
                    continue
                status = getattr(pool.status, "value", pool.status)
                if pool.is_paused:
                    checks.append(Check(label, False, f"{pool.type} pool is paused "
                                        f"(prefect work-pool resume {name})"))
                elif status != "READY":
                    checks.append(Check(label, False, f"{pool.type} pool has no worker online "
                                        f"(status {status}); start one: prefect worker start "
                                        f"--pool {name}"))
                else:
                    checks.append(Check(label, True, f"{pool.type} pool, worker online"))
    except Exception as exc:  # the API itself failed: one line for the pools not yet checked
        done = {c.name for c in checks}
        checks += [Check(f"work pool {n}", False, f"cannot read: {type(exc).__name__}: {exc}")
                   for n in names if f"work pool {n}" not in done]
    return checks


# --- all together --------------------------------------------------------------------------------
def run_checks(
    *,
    aws: bool = True,
    read_uris: Iterable[str] = (),
    write_uris: Iterable[str] = (),
    model: str | None = None,
    prefect: bool = True,
    pools: Iterable[str] = (),
    endpoint_url: str | None = None,
    report: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run the checks asked for, in order; call `report` with each as it finishes."""
    storage_options = {"endpoint_url": endpoint_url} if endpoint_url else None
    steps: list[Callable[[], Check | list[Check]]] = []
    if aws:
        steps.append(check_aws_credentials)  # STS: AWS_ENDPOINT_URL, not the S3 endpoint
    for uri in read_uris:
        steps.append(lambda uri=uri: check_s3_readable(uri, endpoint_url=endpoint_url))
    for uri in write_uris:
        steps.append(lambda uri=uri: check_writable(uri, storage_options=storage_options))
    if model:
        steps.append(lambda: check_model(model, storage_options=storage_options))
    if prefect:
        steps.append(check_prefect_api)
    pools = list(pools)
    if pools:
        steps.append(lambda: check_work_pools(pools))
    results: list[Check] = []
    for step in steps:
        outcome = step()
        for check in outcome if isinstance(outcome, list) else [outcome]:
            results.append(check)
            if report is not None:
                report(check)
    return results
