"""What both flows' settings share (tasks/common/settings.py): validation, URIs, secrets, docs."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import Field, ValidationError, field_validator

from tasks.batch.settings import BatchSettings
from tasks.common.settings import (
    FlowSettings,
    check_uri,
    document_parameters,
    mask_secrets,
)
from tasks.errors import InvalidSettingsError


class DemoSettings(FlowSettings):
    """A flow's settings as a subclass declares them: its own fields plus the shared ones."""

    target: str = Field(description="Where it goes.")
    sizes: list[int] = Field(default_factory=list, description="Some sizes.")
    count: int = Field(default=1, ge=1, le=10)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return check_uri(value)


# --- from_parameters -----------------------------------------------------------------------------
def test_valid_parameters_give_the_settings_with_shared_defaults() -> None:
    settings = DemoSettings.from_parameters(target="  s3://bucket/out ", sizes=[1, 2])
    assert settings.target == "s3://bucket/out"
    assert (settings.device, settings.decode_threads, settings.storage_options) == ("auto", 2,
                                                                                    None)
    assert settings.sizes == [1, 2] and settings.count == 1


@pytest.mark.parametrize(("given", "normalised"), [
    ("CPU", "cpu"), (" cuda ", "cuda"), ("Cuda:1", "cuda:1"), ("auto", "auto"),
])
def test_device_is_normalised(given: str, normalised: str) -> None:
    assert DemoSettings.from_parameters(target="/t", device=given).device == normalised


def test_one_line_names_each_bad_field() -> None:
    with pytest.raises(InvalidSettingsError, match=r"^invalid parameter 'device': ") as raised:
        DemoSettings.from_parameters(target="/t", device="tpu", decode_threads=0, count=11)
    message = str(raised.value)
    assert "\n" not in message
    parts = message.split("; ")
    assert [p.split(":")[0] for p in parts] == [
        "invalid parameter 'device'",
        "invalid parameter 'decode_threads'",
        "invalid parameter 'count'",
    ]
    assert "must be auto, cpu, cuda or cuda:N, got 'tpu'" in parts[0]
    assert "greater than or equal to 1" in parts[1]
    assert "less than or equal to 10" in parts[2]


def test_the_error_is_a_value_error_without_the_pydantic_chain() -> None:
    with pytest.raises(ValueError, match="invalid parameter 'target'") as raised:
        DemoSettings.from_parameters(target="   ")
    assert isinstance(raised.value, InvalidSettingsError)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert str(raised.value) == "invalid parameter 'target': Value error, must not be empty"


def test_missing_unknown_and_nested_fields_are_named() -> None:
    with pytest.raises(InvalidSettingsError, match="'target': Field required") as raised:
        DemoSettings.from_parameters(colour="red", sizes=[1, "x"])
    assert str(raised.value) == (
        "invalid parameter 'target': Field required; "
        "invalid parameter 'sizes.1': Input should be a valid integer, unable to parse string "
        "as an integer; "
        "invalid parameter 'colour': Extra inputs are not permitted"
    )


def test_settings_are_frozen() -> None:
    settings = DemoSettings.from_parameters(target="/t")
    with pytest.raises(ValidationError, match="frozen"):
        settings.count = 5  # type: ignore[misc]
    assert settings.count == 1


# --- check_uri -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("  /data/videos  ", "/data/videos"),
    ("relative/folder", "relative/folder"),
    ("s3://bucket/prefix/", "s3://bucket/prefix/"),
    ("file:///tmp/x", "file:///tmp/x"),
    ("s3a://bucket", "s3a://bucket"),
    ("git+https://host/repo", "git+https://host/repo"),
    ("weird name with spaces.mp4", "weird name with spaces.mp4"),
])
def test_check_uri_accepts_paths_and_uris(value: str, expected: str) -> None:
    assert check_uri(value) == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("", "must not be empty"),
    (" \t\n", "must not be empty"),
    ("not a scheme://bucket", "not a URI or path: 'not a scheme://bucket'"),
    ("://bucket", "not a URI or path: '://bucket'"),
    ("s3.amazon://bucket", "not a URI or path"),
])
def test_check_uri_refuses_blank_and_bad_schemes(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_uri(value)


# --- secrets -------------------------------------------------------------------------------------
OPTIONS: dict[str, Any] = {
    "key": "AKIAEXAMPLE",
    "secret": "hunter2",
    "token": "tok",
    "endpoint_url": "http://127.0.0.1:9000",
    "key_prefix": "videos/",
    "anon": False,
    "client_kwargs": {
        "region_name": "eu-west-1",
        "aws_session_token": "sess",
        "aws_secret_access_key": "sak",
        "config": {"retries": {"max_attempts": 5}, "Password": "pw"},
    },
    "session": {"whole": "dict"},
}


def test_mask_secrets_masks_secret_looking_keys_at_any_depth() -> None:
    original = copy.deepcopy(OPTIONS)
    masked = mask_secrets(OPTIONS)
    assert masked == {
        "key": "***",
        "secret": "***",
        "token": "***",
        "endpoint_url": "http://127.0.0.1:9000",
        "key_prefix": "videos/",  # a prefix, not a key: kept
        "anon": False,
        "client_kwargs": {
            "region_name": "eu-west-1",
            "aws_session_token": "***",
            "aws_secret_access_key": "***",
            "config": {"retries": {"max_attempts": 5}, "Password": "***"},
        },
        "session": "***",  # the whole value under a secret-looking key
    }
    assert original == OPTIONS  # a copy: the caller's options are untouched


def test_mask_secrets_looks_inside_lists() -> None:
    options = {"client_kwargs": {"proxies": [{"password": "pw", "host": "h"}, "plain"]}}
    assert mask_secrets(options) == {
        "client_kwargs": {"proxies": [{"password": "***", "host": "h"}, "plain"]}}


def test_mask_secrets_leaves_non_dicts_alone() -> None:
    assert mask_secrets(None) is None
    assert mask_secrets("secret") == "secret"
    assert mask_secrets({}) == {}
    assert mask_secrets({1: "one", "profile": "prod"}) == {1: "one", "profile": "prod"}


def test_public_dict_masks_storage_options_but_the_settings_keep_them() -> None:
    settings = BatchSettings.from_parameters(
        source="s3://b/in", model="m.safetensors", storage_options=copy.deepcopy(OPTIONS))
    public = settings.public_dict()
    assert public["storage_options"] == mask_secrets(OPTIONS)
    assert "hunter2" not in repr(public) and "AKIAEXAMPLE" not in repr(public)
    assert settings.storage_options == OPTIONS  # what the run itself uses
    assert {k: v for k, v in public.items() if k != "storage_options"} == {
        k: v for k, v in settings.model_dump().items() if k != "storage_options"}


@pytest.mark.parametrize("options", [None, {}])
def test_public_dict_without_storage_options(options: dict[str, Any] | None) -> None:
    settings = DemoSettings.from_parameters(target="/t", storage_options=options)
    assert settings.public_dict() == settings.model_dump()
    assert settings.public_dict()["storage_options"] == options


# --- document_parameters -------------------------------------------------------------------------
def test_document_parameters_appends_an_args_section_in_field_order() -> None:
    def run_it(target: str) -> str:
        """Run it.

        More words.
        """
        return target

    decorated = document_parameters(DemoSettings)(run_it)
    assert decorated is run_it and decorated("x") == "x"
    assert run_it.__doc__ == (
        "Run it.\n\n        More words.\n\nArgs:\n"
        "    device: auto (GPU when present), cpu, cuda or cuda:N.\n"
        "    decode_threads: Videos decoded at once (per shard in batch runs).\n"
        "    storage_options: fsspec/s3fs options (endpoint_url, profile, anon, ...).\n"
        "    target: Where it goes.\n"
        "    sizes: Some sizes.\n"
        "    count: \n"
    )


def test_document_parameters_on_a_function_without_docstring() -> None:
    def bare() -> None:
        return None

    document_parameters(DemoSettings)(bare)
    assert bare.__doc__ is not None and bare.__doc__.startswith("\n\nArgs:\n    device: ")


def test_batch_inference_documents_every_batch_setting() -> None:
    from flows.batch_inference import batch_inference

    doc = batch_inference.fn.__doc__ or ""
    args = doc.split("\nArgs:\n", 1)[1].splitlines()
    assert [line.split(":")[0].strip() for line in args] == list(BatchSettings.model_fields)
    assert "    source: Where the videos are: s3://bucket/prefix" in doc
