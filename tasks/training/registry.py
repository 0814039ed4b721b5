"""The model registry: ``<registry>/<model_version>/`` per trained model and
``<registry>/production.json``, the pointer the batch flow reads, moved only by a better model.

Safe under concurrency: the pointer is moved by a conditional write (``If-Match`` on S3, a
locked read-compare-rename locally; ``tasks/common/storage.py``), only after the version folder
is complete. A retrain that loses the race re-reads the pointer and decides again against the
model now in production (re-evaluated on its own validation split), so no promotion is lost
and a worse model never replaces a better one that was promoted a moment earlier.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from emotion_model.labels import EMOTION_LABELS
from tasks.common.model_pointer import pointer_uri
from tasks.common.storage import (
    atomic_write_bytes,
    join,
    read_bytes,
    read_versioned,
    write_if_unchanged,
)
from tasks.errors import RegistryBusyError, RegistryError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CHANCE = 1 / len(EMOTION_LABELS)
"""Accuracy of guessing among the six classes (0.167): the floor must sit well above it."""
PROMOTE_ATTEMPTS = 20
"""Conditional writes of ``production.json`` tried before giving up (each loss re-decides)."""


def version_uri(registry: str, model_version: str) -> str:
    """``<registry>/<model_version>``: the folder of one published model."""
    return join(registry, model_version)


def read_json(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """A JSON object at ``uri``, or None when there is nothing there."""
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError:
        return None
    return _parse_object(uri, data)


def _parse_object(uri: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(uri, f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise RegistryError(uri, "expected a JSON object")
    return value


def write_json(uri: str, value: Mapping[str, Any],
               storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_bytes(uri, _encode(value), storage_options)


def _encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


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
           force: bool = False, floor: float = 0.0,
           champion_problem: str | None = None) -> Decision:
    """The promotion rule, in order:

    1. Floor: a candidate whose validation accuracy is below ``floor`` is never promoted (it
       is still published), whatever production is; ``force`` overrides and says so.
    2. Production unreadable (``champion_problem``): the candidate replaces it.
    3. No production yet: the candidate is promoted.
    4. Champion/challenger on the same validation split (``champion`` holds production's
       metrics there): higher accuracy wins, macro-F1 breaks a tie, a tie on both keeps
       production. ``force`` promotes regardless (and says so).
    """
    c_acc, c_f1 = candidate["val_accuracy"], candidate["val_macro_f1"]
    has_production = champion is not None or champion_problem is not None
    if c_acc < floor:
        why = (f"candidate accuracy {c_acc:.3f} is below the floor {floor:.2f} "
               f"(chance is {CHANCE:.3f})")
        if force:
            return Decision(True, f"{why}: promoted because force=True", forced=True)
        return Decision(False, f"{why}: published, not promoted"
                        + ("; production stays" if has_production else ""))
    if champion_problem is not None:
        return Decision(True, f"production model unreadable ({champion_problem}); replaced")
    if champion is None:
        return Decision(True, "no production model yet")
    p_acc, p_f1 = champion["val_accuracy"], champion["val_macro_f1"]
    summary = (f"candidate accuracy {c_acc:.4f} / macro-F1 {c_f1:.4f} vs production "
               f"{p_acc:.4f} / {p_f1:.4f} on the same validation split")
    better = (c_acc, c_f1) > (p_acc, p_f1)
    if better:
        return Decision(True, f"{summary}: candidate is better")
    if force:
        return Decision(True, f"{summary}: not better, promoted because force=True", forced=True)
    return Decision(False, f"{summary}: production stays")


@dataclass(frozen=True)
class Candidate:
    """A published model version that may be promoted (its folder is complete)."""

    model_version: str
    model_uri: str
    metrics: Mapping[str, Any]
    """At least ``val_accuracy`` and ``val_macro_f1`` on the candidate's validation split."""
    run_key: str


@dataclass(frozen=True)
class Promotion:
    """What ``promote_candidate`` decided, against which production, and what it wrote."""

    decision: Decision
    pointer: dict[str, Any] | None
    """The ``production.json`` written (or found already naming the candidate); None if not."""
    champion: dict[str, Any] | None
    """The production pointer the final decision compared against (None: there was none)."""
    champion_metrics: dict[str, Any] | None
    champion_problem: str | None
    conflicts: int = 0
    """Conditional writes lost to another writer (each one re-read and re-decided)."""


ChampionEvaluator = Callable[[dict[str, Any]], tuple[dict[str, Any] | None, str | None]]
"""``pointer -> (metrics on the candidate's validation split, None)`` or ``(None, problem)``
when that model cannot be evaluated."""


def _version(pointer: Mapping[str, Any] | None) -> str | None:
    return None if pointer is None else str(pointer.get("model_version"))


def pointer_relative(registry: str, model_uri: str) -> str:
    """The ``uri`` to write in ``production.json``: a relative local path (``--registry
    ./registry``) made relative to the registry, which is how a pointer's relative ``uri`` is
    read back (`pointer_target`); URIs and absolute paths unchanged."""
    if "://" in model_uri or os.path.isabs(model_uri) or "://" in registry:
        return model_uri
    return os.path.relpath(model_uri, registry).replace(os.sep, "/")


def promote_candidate(registry: str, candidate: Candidate, *,
                      champion: dict[str, Any] | None,
                      champion_metrics: dict[str, Any] | None,
                      champion_problem: str | None = None,
                      evaluate_champion: ChampionEvaluator,
                      force: bool = False, floor: float = 0.0,
                      storage_options: Mapping[str, Any] | None = None,
                      attempts: int = PROMOTE_ATTEMPTS) -> Promotion:
    """Decide (``decide``) and, when the candidate wins, move ``production.json`` to it with a
    conditional write; call only once the candidate's version folder is complete.

    ``champion``/``champion_metrics``/``champion_problem`` are what the candidate was evaluated
    against. The pointer is re-read first; when it names another model version by now (another
    retrain promoted meanwhile), that model is evaluated with ``evaluate_champion`` and the
    decision is taken again against it. A conditional write that loses to another writer starts
    over the same way, so every promotion builds on the one before it (``previous_model_version``
    chains them) and the final pointer is the best candidate by the rule.

    Raises:
        RegistryBusyError: ``attempts`` conditional writes in a row were lost.
        RegistryError: ``production.json`` is not a JSON object.
    """
    uri = pointer_uri(registry)
    if not force and candidate.metrics["val_accuracy"] < floor:  # no need to look at production
        decision = decide(candidate.metrics, champion_metrics, floor=floor,
                          champion_problem=champion_problem)
        return Promotion(decision, None, champion, champion_metrics, champion_problem)
    for attempt in range(1, attempts + 1):
        conflicts = attempt - 1  # conditional writes lost so far
        current = read_versioned(uri, storage_options)
        now = None if current is None else _parse_object(uri, current.data)
        if now is not None and _version(now) == candidate.model_version:
            # Already production: our own write whose answer was lost, or the same weights
            # promoted by another run; either way there is nothing left to do.
            decision = Decision(True, str(now.get("reason") or "already production"),
                                forced=bool(now.get("forced", False)))
            return Promotion(decision, now, champion, champion_metrics, champion_problem,
                             conflicts)
        if _version(now) != _version(champion):
            log.info("production.json names %s, not %s as when the candidate was evaluated: "
                     "comparing with it", _version(now), _version(champion))
            champion = now
            champion_metrics, champion_problem = (None, None) if now is None \
                else evaluate_champion(now)
        decision = decide(candidate.metrics, champion_metrics, force=force, floor=floor,
                          champion_problem=champion_problem)
        if not decision.promote:
            return Promotion(decision, None, champion, champion_metrics, champion_problem,
                             conflicts)
        pointer = {
            "model_version": candidate.model_version,
            "uri": pointer_relative(registry, candidate.model_uri),
            "val_accuracy": candidate.metrics["val_accuracy"],
            "val_macro_f1": candidate.metrics["val_macro_f1"],
            "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "reason": decision.reason,
            "forced": decision.forced,
            "previous_model_version": _version(now),
            "run_key": candidate.run_key,
        }
        token = None if current is None else current.token
        if write_if_unchanged(uri, _encode(pointer), token, storage_options) is not None:
            return Promotion(decision, pointer, champion, champion_metrics, champion_problem,
                             conflicts)
        log.warning("production.json changed while promoting %s (attempt %d/%d): re-reading it "
                    "and deciding again", candidate.model_version, attempt, attempts)
        time.sleep(random.uniform(0.0, 0.05 * attempt))
    raise RegistryBusyError(uri, f"changed {attempts} times in a row while promoting "
                                 f"{candidate.model_version} (other retrains promoting at "
                                 f"once); its version folder is published: run again")
