"""The lease of a training checkpoint folder (``<registry>/training/<run key>/lease.json``): one
training at a time writes a run key's checkpoints. Written with the registry's conditional writes
(``tasks/common/storage.py``), renewed by a heartbeat and every epoch, taken over once expired,
released, or held by a process of this machine that is gone."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self

from tasks.common.storage import join, read_versioned, write_if_unchanged
from tasks.errors import CheckpointInUseError

log = logging.getLogger(__name__)


def _encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()

LEASE_NAME = "lease.json"
"""The lease of a checkpoint folder: ``<checkpoint folder>/lease.json``."""
LEASE_TTL_S = 300.0
"""A lease not renewed for this long has expired: another training may take the folder over."""
LEASE_HEARTBEAT_S = 60.0
"""How often a training renews its lease (a background thread; every epoch renews it too)."""


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def _machine_id() -> str | None:
    """This boot of this machine and this PID namespace (a pid means something only within
    both), or None where ``/proc`` does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _current_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        value = flow_run.id
    except Exception:  # outside Prefect, or its context is not readable here
        return None
    return str(value) if value else None


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds (or last held) a checkpoint folder, as its ``lease.json`` says."""

    owner: str
    """A random id per acquisition: the holder recognises its own writes by it."""
    host: str
    pid: int
    machine: str | None
    flow_run_id: str | None
    run_key: str | None
    acquired_at: str
    expires_at: float
    """Seconds since the epoch (UTC); ``expires`` holds the same instant in ISO 8601."""
    released: bool = False

    @classmethod
    def parse(cls, data: bytes) -> LeaseHolder | None:
        """The holder in ``data``, or None when it is not a lease."""
        try:
            value = json.loads(data)
            fields = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
            return cls(**fields)
        except (ValueError, TypeError, KeyError):
            return None

    def encode(self) -> bytes:
        """The ``lease.json`` bytes."""
        return _encode({**asdict(self), "expires": _utc(self.expires_at)})

    def describe(self) -> str:
        """``host H pid P (flow run F, lease L, since T)``."""
        run = f"flow run {self.flow_run_id}, " if self.flow_run_id else ""
        return f"host {self.host} pid {self.pid} ({run}lease {self.owner[:8]}, since " \
               f"{self.acquired_at})"


class CheckpointLease:
    """The lease that lets one training at a time write a checkpoint folder.

    ``acquire`` writes ``lease.json`` conditionally (absent, or still the version read); a
    background thread renews it every ``heartbeat_s`` and ``renew`` does at every epoch. A lease
    held by someone else is taken over only when it was released, has expired (``ttl_s`` after
    its last renewal), was held by a process of this machine that is gone, or by an earlier
    attempt of the same Prefect flow run; otherwise ``acquire`` refuses with one line naming the
    holder. A holder whose lease was taken over finds out at its next renewal and stops
    (``CheckpointInUseError``) before writing another checkpoint.
    """

    def __init__(self, folder: str, *, run_key: str | None = None, ttl_s: float = LEASE_TTL_S,
                 heartbeat_s: float | None = LEASE_HEARTBEAT_S,
                 flow_run_id: str | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = join(folder, LEASE_NAME)
        self.run_key = run_key
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.flow_run_id = flow_run_id if flow_run_id is not None else _current_flow_run_id()
        self.storage_options = storage_options
        self.owner = uuid.uuid4().hex
        self.acquired_at = ""
        self._token: str | None = None
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- records ---------------------------------------------------------------------------------
    def _record(self, *, released: bool = False) -> LeaseHolder:
        now = time.time()
        return LeaseHolder(owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
                           machine=_machine_id(), flow_run_id=self.flow_run_id,
                           run_key=self.run_key, acquired_at=self.acquired_at or _utc(now),
                           expires_at=now if released else now + self.ttl_s, released=released)

    def _takeover(self, holder: LeaseHolder, now: float) -> str | None:
        """Why ``holder``'s lease may be taken over now, or None when it may not."""
        if holder.owner == self.owner:
            return "our own lease"
        if holder.released:
            return f"released by {holder.describe()}"
        if holder.expires_at <= now:
            return f"the lease of {holder.describe()} expired {now - holder.expires_at:.0f} s ago"
        if holder.machine is not None and holder.machine == _machine_id() \
                and not _pid_alive(holder.pid):
            return f"{holder.describe()} is no longer running on this machine"
        if holder.flow_run_id is not None and holder.flow_run_id == self.flow_run_id:
            return f"held by an earlier attempt of the same flow run {holder.flow_run_id}"
        return None

    def _in_use(self, holder: LeaseHolder, now: float) -> CheckpointInUseError:
        return CheckpointInUseError(
            self.uri, f"checkpoint folder in use by {holder.describe()} until "
            f"{_utc(holder.expires_at)} (in {holder.expires_at - now:.0f} s): another training "
            f"with run key {holder.run_key} is writing it. Wait for it to finish, or resume once "
            f"its lease expires (a lost run's lease expires at most {self.ttl_s:.0f} s after its "
            f"last renewal)")

    # -- acquire, renew, release -----------------------------------------------------------------
    def acquire(self, attempts: int = 5) -> Self:
        """Take the folder, or raise ``CheckpointInUseError`` naming its holder."""
        for _ in range(attempts):
            current = read_versioned(self.uri, self.storage_options)
            now = time.time()
            if current is not None:
                holder = LeaseHolder.parse(current.data)
                if holder is None:
                    log.warning("%s is not a lease; taking the folder over", self.uri)
                else:
                    why = self._takeover(holder, now)
                    if why is None:
                        raise self._in_use(holder, now)
                    if not holder.released:
                        log.warning("taking over %s: %s", self.uri, why)
            self.acquired_at = _utc(now)
            token = write_if_unchanged(self.uri, self._record().encode(),
                                       None if current is None else current.token,
                                       self.storage_options)
            if token is not None:
                self._token = token
                log.info("leased %s (owner %s, expires %.0f s after each renewal)", self.uri,
                         self.owner[:8], self.ttl_s)
                self._start_heartbeat()
                return self
            # another training wrote the lease in between: read it again (and name it)
        raise CheckpointInUseError(self.uri, f"the lease kept changing during {attempts} "
                                             "attempts to take it; another training is starting")

    def renew(self) -> None:
        """Extend the lease by ``ttl_s`` from now.

        Raises:
            CheckpointInUseError: another training took the folder over; stop writing it.
        """
        with self._lock:
            if self._lost is not None:
                raise CheckpointInUseError(self.uri, self._lost)
            record = self._record().encode()
            token = write_if_unchanged(self.uri, record, self._token, self.storage_options)
            if token is None:  # taken over, or our own earlier write landed unanswered
                current = read_versioned(self.uri, self.storage_options)
                holder = None if current is None else LeaseHolder.parse(current.data)
                if current is not None and holder is not None and holder.owner == self.owner \
                        and not holder.released:
                    token = write_if_unchanged(self.uri, record, current.token,
                                               self.storage_options)
                if token is None:
                    other = holder.describe() if holder is not None else "nobody (it is gone)"
                    self._lost = (f"this training's lease was taken over by {other}; it stops "
                                  "so that two trainings never write one checkpoint")
                    self._stop.set()
                    raise CheckpointInUseError(self.uri, self._lost)
            self._token = token

    def check(self) -> None:
        """Raise ``CheckpointInUseError`` when the heartbeat found the lease taken over."""
        if self._lost is not None:
            raise CheckpointInUseError(self.uri, self._lost)

    def release(self) -> None:
        """Stop renewing and mark the lease released (the next training takes it at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self._lost is not None or self._token is None:
                return
            try:
                token = write_if_unchanged(self.uri, self._record(released=True).encode(),
                                           self._token, self.storage_options)
            except Exception as exc:  # the lease then expires by itself
                log.warning("could not release %s (%s: %s); it expires within %.0f s",
                            self.uri, type(exc).__name__, exc, self.ttl_s)
                return
            if token is None:
                log.warning("%s was taken over before this training released it", self.uri)
            self._token = None

    def _start_heartbeat(self) -> None:
        if not self.heartbeat_s:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.owner[:8]}",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        assert self.heartbeat_s
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except CheckpointInUseError as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # storage trouble: try again; the lease lasts ttl_s
                log.warning("renewing %s failed (%s: %s); retrying in %.0f s", self.uri,
                            type(exc).__name__, exc, self.heartbeat_s)

    def __enter__(self) -> Self:
        return self if self._token is not None else self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
