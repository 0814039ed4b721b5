"""Typed errors of the pipeline (``tasks/`` and the flows): one base class and a few subclasses.

Like ``emotion_model/errors.py``: every message is one line, and an error about one object
(a source, an output, a manifest, a registry file) starts with its URI. Where a caller used to
catch a builtin, the class still inherits it (a bad parameter or input is a ``ValueError``, a
failed run a ``RuntimeError``), so ``except ValueError`` keeps working. The CLI exits 2 for a
``ValueError`` (the input is wrong) and 1 for anything else (the run failed).
"""

from __future__ import annotations

from emotion_model.errors import one_line


def error_line(exc: BaseException, limit: int | None = 300) -> str:
    """``"<ExceptionClass>: <message on one line>"``: how a failure is recorded where its type
    is not a column of its own (failed shards in a run summary, the CLI's last line)."""
    return f"{type(exc).__name__}: {one_line(exc, limit)}"


class PipelineError(Exception):
    """Base class of the pipeline's own errors; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, None))


class _AboutObject(PipelineError):
    """An error about one object; the message starts with its URI."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = one_line(reason, None)


# --- parameters and inputs (ValueError: the caller's input is wrong) ---------------------------
class InvalidSettingsError(PipelineError, ValueError):
    """A flow parameter failed validation; the message names each bad field."""


class SourceNotFoundError(_AboutObject, ValueError):
    """The source to list does not exist (no such local folder, no such bucket)."""


class OutputNotWritableError(_AboutObject, ValueError):
    """The output location cannot be written (missing bucket, no permission, not a folder)."""


class ManifestError(_AboutObject, ValueError):
    """A training manifest cannot be read or lacks the columns ``uri, label, actor``."""


class NoTrainingDataError(PipelineError, ValueError):
    """Too little labelled data to train: no videos, or fewer than two actors to split."""


class RegistryError(_AboutObject, ValueError):
    """A file of the model registry is not what it should be (e.g. not a JSON object)."""


# --- runs (RuntimeError: the run itself failed) --------------------------------------------------
class NoDaskWorkersError(PipelineError, RuntimeError):
    """The Dask scheduler has no workers to run shards on."""


class RunFailedError(PipelineError, RuntimeError):
    """Some shards of a batch run could not write their outputs; the run summary lists them."""


class RegistryBusyError(_AboutObject, RuntimeError):
    """``production.json`` kept changing under a promotion (other retrains promoting at once)."""


class CheckpointInUseError(_AboutObject, RuntimeError):
    """Another training holds the lease of this checkpoint folder (same run key), or took it
    over from this one; the message names the holder and when its lease expires."""
