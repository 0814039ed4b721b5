"""CLI flags derived from the settings models: every field has its flag, values reach the model
with the model's types and defaults, bad values fail with one line."""

from __future__ import annotations

import argparse

import pytest

from cli.main import build_parser
from cli.settings_args import add_settings_arguments, parameters_from_args, with_endpoint_url
from tasks.batch.settings import BatchSettings
from tasks.training.settings import RetrainSettings


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize(("command", "settings", "positional"), [
    ("run", BatchSettings, {"source"}),
    ("train", RetrainSettings, {"sources"}),
])
def test_every_field_is_a_flag(command: str, settings: type, positional: set[str]) -> None:
    parser = _subcommand(command)
    dests = {a.dest for a in parser._actions}
    assert set(settings.model_fields) <= dests
    for action in parser._actions:
        if action.dest in settings.model_fields and action.dest not in positional:
            assert action.option_strings == ["--" + action.dest.replace("_", "-")] or (
                action.dest == "preset")  # --preset, and --small as a shortcut
            assert action.help, action.dest  # described, from the field


def test_values_keep_their_types_and_absent_flags_keep_the_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, BatchSettings, positional=["source"])
    args = parser.parse_args([
        "videos/", "--model", "m.safetensors", "--batch-size", "4", "--clip-seconds", "2.5",
        "--reprocess", "--storage-options", '{"anon": true}', "--task-runner", "dask",
        "--dask-local-workers", "2",
    ])
    params = parameters_from_args(BatchSettings, args)
    assert params == {"source": "videos/", "model": "m.safetensors", "batch_size": 4,
                      "clip_seconds": 2.5, "reprocess": True, "storage_options": {"anon": True},
                      "task_runner": "dask", "dask_local_workers": 2}
    settings = BatchSettings.from_parameters(**params)
    assert settings.output == "./outputs" and settings.shard_size == 64  # the model's defaults


def test_list_field_and_preset_shortcut() -> None:
    args = _subcommand("train").parse_args(["a/", "b.csv", "--registry", "r/", "--small",
                                            "--epochs", "3"])
    params = parameters_from_args(RetrainSettings, args)
    assert params["sources"] == ["a/", "b.csv"] and params["preset"] == "small"
    assert RetrainSettings.from_parameters(**params).epochs == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["v/", "--model", "m", "--batch-size", "two"], "invalid int value"),
    (["v/", "--model", "m", "--task-runner", "spark"], "invalid choice"),
    (["v/", "--model", "m", "--storage-options", "{oops"], "not JSON"),
    (["v/", "--model", "m", "--storage-options", "[1]"], "must be a JSON object"),
    (["v/"], "the following arguments are required: --model"),
])
def test_bad_flags_fail_in_argparse(argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _subcommand("run").parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_only_restricts_both_ways() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, BatchSettings, only=("device", "batch_size"))
    args = parser.parse_args(["--device", "cpu"])
    assert parameters_from_args(BatchSettings, args, only=("device",)) == {"device": "cpu"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--shard-size", "3"])


def test_endpoint_url_joins_the_storage_options() -> None:
    params = {"source": "s3://b/v/", "storage_options": {"anon": True}}
    assert with_endpoint_url(params, None) is params
    merged = with_endpoint_url(params, "http://127.0.0.1:5000")
    assert merged["storage_options"] == {"anon": True, "endpoint_url": "http://127.0.0.1:5000"}
    assert params["storage_options"] == {"anon": True}  # the caller's dict is not changed
