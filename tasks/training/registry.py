"""The model registry: ``<registry>/<model_version>/`` per trained model and
``<registry>/production.json``, the pointer the batch flow reads, moved only by a better model.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.common.model_pointer import pointer_uri
from tasks.common.storage import atomic_write_bytes, join, read_bytes
from tasks.errors import RegistryError

MODEL_FILE = "model.safetensors"


def version_uri(registry: str, model_version: str) -> str:
    """``<registry>/<model_version>``: the folder of one published model."""
    return join(registry, model_version)


def read_json(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """A JSON object at ``uri``, or None when there is nothing there."""
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError:
        return None
    value = json.loads(data)
    if not isinstance(value, dict):
        raise RegistryError(uri, "expected a JSON object")
    return value


def write_json(uri: str, value: Mapping[str, Any],
               storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_bytes(uri, json.dumps(value, indent=2, sort_keys=True, default=str).encode(),
                       storage_options)


def read_production(registry: str, storage_options: Mapping[str, Any] | None = None
                    ) -> dict[str, Any] | None:
    """The current ``production.json``, or None when no model was promoted yet."""
    return read_json(pointer_uri(registry), storage_options)


@dataclass(frozen=True)
class Decision:
    """Whether the candidate replaces production, and why."""

    promote: bool
    reason: str
    forced: bool = False


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, *,
           force: bool = False) -> Decision:
    """Champion/challenger on the same validation split: higher accuracy wins, macro-F1 breaks
    a tie, a tie on both keeps production. ``force`` promotes regardless (and says so)."""
    if champion is None:
        return Decision(True, "no production model yet")
    c_acc, p_acc = candidate["val_accuracy"], champion["val_accuracy"]
    c_f1, p_f1 = candidate["val_macro_f1"], champion["val_macro_f1"]
    summary = (f"candidate accuracy {c_acc:.4f} / macro-F1 {c_f1:.4f} vs production "
               f"{p_acc:.4f} / {p_f1:.4f} on the same validation split")
    better = (c_acc, c_f1) > (p_acc, p_f1)
    if better:
        return Decision(True, f"{summary}: candidate is better")
    if force:
        return Decision(True, f"{summary}: not better, promoted because force=True", forced=True)
    return Decision(False, f"{summary}: production stays")


def promote(registry: str, *, model_version: str, model_uri: str, metrics: Mapping[str, Any],
            decision: Decision, previous: Mapping[str, Any] | None, run_key: str,
            storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Point ``production.json`` at the candidate (one atomic write); returns the pointer."""
    pointer = {
        "model_version": model_version,
        "uri": model_uri,
        "val_accuracy": metrics["val_accuracy"],
        "val_macro_f1": metrics["val_macro_f1"],
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reason": decision.reason,
        "forced": decision.forced,
        "previous_model_version": (previous or {}).get("model_version"),
        "run_key": run_key,
    }
    write_json(pointer_uri(registry), pointer, storage_options)
    return pointer
