"""In-process progress events of a run, for the CLI's progress bar.

Tasks call ``emit``; whoever runs a flow in this process may ``subscribe``. Runs on remote
workers report progress through the Prefect run logs instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]
_LISTENERS: list[Listener] = []
_LOCK = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event, data)`` for each event; returns the function that unsubscribes.

    Events: ``planned`` (``total`` videos to process), ``video`` (``uri``, ``ok``).
    """
    with _LOCK:
        _LISTENERS.append(listener)

    def unsubscribe() -> None:
        with _LOCK:
            if listener in _LISTENERS:
                _LISTENERS.remove(listener)

    return unsubscribe


def emit(event: str, **data: Any) -> None:
    """Send an event to every listener (a failing listener never breaks the run)."""
    with _LOCK:
        listeners = list(_LISTENERS)
    for listener in listeners:
        try:
            listener(event, data)
        except Exception:  # noqa: BLE001, S112 - progress display is best effort
            continue
