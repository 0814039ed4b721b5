"""In-process progress events (tasks/common/progress.py): subscribe, emit, unsubscribe, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tasks.common import progress

Event = tuple[str, dict[str, Any]]


@pytest.fixture
def subscribed() -> Iterator[Callable[[progress.Listener], Callable[[], None]]]:
    """``subscribe`` that unsubscribes every listener of the test when it ends."""
    undo: list[Callable[[], None]] = []

    def subscribe(listener: progress.Listener) -> Callable[[], None]:
        unsubscribe = progress.subscribe(listener)
        undo.append(unsubscribe)
        return unsubscribe

    yield subscribe
    for unsubscribe in undo:
        unsubscribe()


def test_a_listener_gets_each_event_with_its_data(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    seen: list[Event] = []
    subscribed(lambda event, data: seen.append((event, data)))
    progress.emit("planned", total=12)
    progress.emit("video", uri="s3://b/a.mp4", ok=True)
    progress.emit("stage")
    assert seen == [("planned", {"total": 12}), ("video", {"uri": "s3://b/a.mp4", "ok": True}),
                    ("stage", {})]


def test_every_listener_gets_the_event_in_subscription_order(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    order: list[str] = []
    subscribed(lambda event, data: order.append(f"first:{event}"))
    subscribed(lambda event, data: order.append(f"second:{event}"))
    progress.emit("planned", total=1)
    assert order == ["first:planned", "second:planned"]


def test_unsubscribe_stops_events_and_is_idempotent(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    seen: list[str] = []
    unsubscribe = subscribed(lambda event, data: seen.append(event))
    progress.emit("one")
    unsubscribe()
    progress.emit("two")
    unsubscribe()  # a second call is harmless
    progress.emit("three")
    assert seen == ["one"]


def test_the_same_listener_twice_gets_each_event_twice_until_both_unsubscribe(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    seen: list[str] = []

    def listener(event: str, data: dict[str, Any]) -> None:
        seen.append(event)

    first = subscribed(listener)
    subscribed(listener)
    progress.emit("a")
    first()
    progress.emit("b")
    assert seen == ["a", "a", "b"]


def test_a_failing_listener_never_breaks_emit_nor_the_others(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    seen: list[Event] = []

    def broken(event: str, data: dict[str, Any]) -> None:
        raise RuntimeError(f"display crashed on {event}")

    def wrong_signature() -> None:  # called with two arguments: a TypeError inside emit
        raise AssertionError("never reached")

    subscribed(broken)
    subscribed(wrong_signature)  # type: ignore[arg-type]
    subscribed(lambda event, data: seen.append((event, data)))
    for i in range(3):
        progress.emit("video", uri=f"v{i}.mp4", ok=i != 1)
    assert seen == [("video", {"uri": f"v{i}.mp4", "ok": i != 1}) for i in range(3)]


def test_a_listener_may_unsubscribe_itself_while_the_event_is_sent(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    seen: list[str] = []
    handle: list[Callable[[], None]] = []

    def once(event: str, data: dict[str, Any]) -> None:
        seen.append(f"once:{event}")
        handle[0]()

    handle.append(subscribed(once))
    subscribed(lambda event, data: seen.append(f"always:{event}"))
    progress.emit("a")
    progress.emit("b")
    assert seen == ["once:a", "always:a", "always:b"]


def test_emit_from_many_threads_while_listeners_come_and_go(
    subscribed: Callable[[progress.Listener], Callable[[], None]],
) -> None:
    threads, per_thread = 8, 300
    lock = threading.Lock()
    counts: dict[int, int] = {}
    data_ok = [True]

    def counting(event: str, data: dict[str, Any]) -> None:
        with lock:
            counts[data["thread"]] = counts.get(data["thread"], 0) + 1
            data_ok[0] &= event == "video" and data["ok"] is True

    subscribed(counting)
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def emitter(index: int) -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                progress.emit("video", thread=index, ok=True)
        except BaseException as exc:  # collected: a thread's exception would go unseen
            errors.append(exc)

    workers = [threading.Thread(target=emitter, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    churned = 0
    while any(w.is_alive() for w in workers):  # subscribe and unsubscribe meanwhile
        unsubscribe = progress.subscribe(lambda event, data: None)
        unsubscribe()
        churned += 1
    for worker in workers:
        worker.join()

    assert errors == []
    assert counts == dict.fromkeys(range(threads), per_thread)
    assert data_ok == [True]
    assert churned > 0
