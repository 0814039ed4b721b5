"""Which deployment file a ``model`` parameter means: a file itself, or the file that a
registry's ``production.json`` pointer names. The batch flow reads pointers, the retrain flow
writes them (``tasks/training/registry.py``) and reads the current one to compare against."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from emotion_model.errors import CheckpointError
from tasks.common.storage import join, read_bytes

POINTER_NAME = "production.json"
"""The pointer of a registry: ``<registry>/production.json``."""


def pointer_uri(registry: str) -> str:
    """``<registry>/production.json``."""
    return join(registry, POINTER_NAME)


def resolve_model_uri(model: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """A deployment-file URI from ``model``: itself, or the ``uri`` a ``production.json`` names.

    A relative ``uri`` in the pointer is resolved against the pointer's folder.

    Raises:
        CheckpointError: no such pointer, a pointer that is not JSON or names no ``uri``.
    """
    if not model.lower().endswith(".json"):
        return model
    try:
        pointer = json.loads(read_bytes(model, storage_options))
    except FileNotFoundError as exc:
        raise CheckpointError(model, "no such model pointer") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(model, f"model pointer is not JSON ({exc})") from exc
    if not isinstance(pointer, dict):
        raise CheckpointError(model, "model pointer has no 'uri'")
    return pointer_target(pointer, model)


def pointer_target(pointer: Mapping[str, Any], location: str) -> str:
    """The deployment-file URI a parsed pointer names; a relative ``uri`` is resolved against
    the folder of ``location`` (where the pointer was read from).

    Raises:
        CheckpointError: the pointer names no ``uri``.
    """
    uri = pointer.get("uri")
    if not isinstance(uri, str) or not uri:
        raise CheckpointError(location, "model pointer has no 'uri'")
    if "://" in uri or uri.startswith("/"):
        return uri
    base = location.rsplit("/", 1)[0] if "/" in location else "."
    return join(base, uri)
