"""The pipeline's typed errors (tasks/errors.py): one-line messages, URI first, builtin bases."""

from __future__ import annotations

import inspect

import pytest

import tasks.errors as errors_module
from tasks.errors import (
    CheckpointInUseError,
    InvalidSettingsError,
    ManifestError,
    NoDaskWorkersError,
    NoTrainingDataError,
    OutputNotWritableError,
    PipelineError,
    RegistryBusyError,
    RegistryError,
    RunFailedError,
    SourceNotFoundError,
    error_line,
)

ABOUT_OBJECT: list[type[PipelineError]] = [
    SourceNotFoundError, OutputNotWritableError, ManifestError, RegistryError,
    RegistryBusyError, CheckpointInUseError,
]
"""Errors about one object: built from ``(uri, reason)``, the message starts with the URI."""

PLAIN: list[type[PipelineError]] = [
    InvalidSettingsError, NoTrainingDataError, NoDaskWorkersError, RunFailedError,
]
"""Errors built from one message."""

BUILTIN: dict[type[PipelineError], type[Exception]] = {
    InvalidSettingsError: ValueError,
    SourceNotFoundError: ValueError,
    OutputNotWritableError: ValueError,
    ManifestError: ValueError,
    NoTrainingDataError: ValueError,
    RegistryError: ValueError,
    NoDaskWorkersError: RuntimeError,
    RunFailedError: RuntimeError,
    RegistryBusyError: RuntimeError,
    CheckpointInUseError: RuntimeError,
}
"""The builtin each class promises (the CLI exits 2 for a ValueError, 1 for anything else)."""


def _public_error_classes() -> set[type[PipelineError]]:
    return {
        obj for name, obj in vars(errors_module).items()
        if inspect.isclass(obj) and issubclass(obj, PipelineError)
        and obj is not PipelineError and not name.startswith("_")
    }


def test_every_public_error_class_is_covered_here() -> None:
    assert _public_error_classes() == set(BUILTIN) == set(ABOUT_OBJECT) | set(PLAIN)


@pytest.mark.parametrize("cls", ABOUT_OBJECT, ids=lambda c: c.__name__)
def test_object_errors_start_with_the_uri_on_one_line(cls: type[PipelineError]) -> None:
    uri = "s3://bucket/some prefix/é.mp4"
    exc = cls(uri, "first line\n  second\tline  ")  # type: ignore[call-arg]
    assert str(exc) == "s3://bucket/some prefix/é.mp4: first line second line"
    assert exc.uri == uri  # type: ignore[attr-defined]
    assert exc.reason == "first line second line"  # type: ignore[attr-defined]
    assert isinstance(exc, PipelineError)


@pytest.mark.parametrize("cls", PLAIN, ids=lambda c: c.__name__)
def test_plain_errors_keep_one_line(cls: type[PipelineError]) -> None:
    exc = cls("invalid parameter 'a': bad;\ninvalid parameter 'b':\n\n worse")
    assert str(exc) == "invalid parameter 'a': bad; invalid parameter 'b': worse"
    assert exc.args == (str(exc),)


def test_a_long_message_is_not_cut() -> None:
    reason = "x" * 2000
    assert str(SourceNotFoundError("/data", reason)) == "/data: " + reason
    assert len(str(RunFailedError("y " * 1500))) == 2999


@pytest.mark.parametrize(("cls", "builtin"), list(BUILTIN.items()),
                         ids=[c.__name__ for c in BUILTIN])
def test_each_class_is_the_builtin_it_promises(
    cls: type[PipelineError], builtin: type[Exception]
) -> None:
    args = ("s3://b/k", "gone") if cls in ABOUT_OBJECT else ("gone",)
    other = RuntimeError if builtin is ValueError else ValueError
    assert issubclass(cls, builtin) and not issubclass(cls, other)
    with pytest.raises(builtin, match="gone$") as raised:
        raise cls(*args)
    assert isinstance(raised.value, PipelineError)


def test_except_value_error_catches_a_missing_source() -> None:
    """Callers that caught ``ValueError`` before the typed errors still catch them."""
    try:
        raise SourceNotFoundError("/no/such/folder", "source not found (no such file or folder)")
    except ValueError as exc:
        caught = exc
    assert type(caught) is SourceNotFoundError
    assert str(caught) == "/no/such/folder: source not found (no such file or folder)"


def test_error_line_is_class_and_one_line_message() -> None:
    exc = OutputNotWritableError("s3://out", "AccessDenied\nwhen calling PutObject")
    assert error_line(exc) == (
        "OutputNotWritableError: s3://out: AccessDenied when calling PutObject")
    assert error_line(KeyError("k")) == "KeyError: 'k'"
    assert error_line(OSError("disk\n\nfull")) == "OSError: disk full"


def test_error_line_cuts_at_the_limit_unless_none() -> None:
    exc = RuntimeError("a" * 400)
    assert error_line(exc) == "RuntimeError: " + "a" * 297 + "..."  # default limit 300
    assert error_line(exc, 20) == "RuntimeError: " + "a" * 17 + "..."
    assert error_line(exc, None) == "RuntimeError: " + "a" * 400


def test_error_line_of_an_exception_without_message_names_its_class() -> None:
    assert error_line(TimeoutError()) == "TimeoutError: TimeoutError"
