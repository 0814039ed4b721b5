"""Typed errors of emotion_model: one base class and a small tree of subclasses.

Every message is one line and starts with the URI (or path) of the object it is about;
the class name is what the batch flow writes to the `errors.error_type` column.
"""

from __future__ import annotations


def one_line(text: object, limit: int | None = 500) -> str:
    """``text`` as one line: whitespace runs (newlines too) become one space, and a line longer
    than ``limit`` characters is cut to end in ``...`` (None: no cut). An exception with no
    message gives its class name; None gives ``""``.

    The one cleaner of every message the project shows or stores (error rows, logs, the CLI).
    """
    line = " ".join(str(text if text is not None else "").split())
    if not line and isinstance(text, BaseException):
        line = type(text).__name__
    if limit is not None and len(line) > limit:
        line = line[: max(0, limit - 3)] + "..."
    return line


class EmotionModelError(Exception):
    """Base class for errors raised by emotion_model."""

    def __init__(self, uri: str, reason: str) -> None:
        reason = one_line(reason, None)
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason


# --- video -----------------------------------------------------------------------------------
class VideoError(EmotionModelError):
    """A video could not be turned into clips."""


class EmptyVideoError(VideoError):
    """The file has zero bytes."""


class CorruptVideoError(VideoError):
    """The data is not a readable container (corrupt, truncated or not a video at all)."""


class NoVideoStreamError(VideoError):
    """The container opened but holds no video stream (audio only, a still image, ...)."""


class NoDecodableFramesError(VideoError):
    """The video stream gave zero decodable frames."""


class NoAudioError(VideoError):
    """An audio-only model was given a video none of whose clips has usable sound (no audio
    stream, or all of it corrupt): nothing to predict from (the batch flow writes an ``errors``
    row of stage ``decode``)."""


class NoFaceError(VideoError):
    """Face crops were asked for and no face was found (training leaves such a video out;
    the batch flow records it as a video with ``faces = 0``)."""


# --- checkpoints -----------------------------------------------------------------------------
class CheckpointError(EmotionModelError):
    """A model file could not be loaded."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The model file does not exist."""


class TruncatedCheckpointError(CheckpointError):
    """The model file is truncated or its bytes are damaged."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs to unpickle arbitrary code to load; it is refused."""


class ArchitectureMismatchError(CheckpointError):
    """The weights do not fit the architecture named in the metadata."""


class LabelMismatchError(CheckpointError):
    """The file's labels differ from the ones the caller expects."""


class ExportParityError(EmotionModelError):
    """An exported model disagrees with the eager model beyond the tolerance."""
