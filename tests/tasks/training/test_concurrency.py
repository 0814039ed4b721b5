"""The registry under real concurrency, on a local folder and on S3 (the moto server): child
processes promote at once and take the checkpoint lease at once. No training: the registry
and lease functions are called directly on small real files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.common.storage import join, read_bytes, read_versioned, write_if_unchanged
from tasks.errors import CheckpointInUseError
from tasks.training.lease import LEASE_NAME, CheckpointLease, LeaseHolder
from tasks.training.registry import Candidate, promote_candidate

ROOT = Path(__file__).resolve().parents[3]

_PROMOTER = """
import hashlib, json, os, sys, time
from pathlib import Path
from tasks.common.storage import atomic_write_bytes, join
from tasks.training.registry import Candidate, promote_candidate, read_production, write_json

args = json.loads(sys.argv[1])
registry, so, name, sync = args["registry"], args["so"], args["name"], Path(args["sync"])
KEYS = ("val_accuracy", "val_macro_f1")
out = []
for rnd, acc in enumerate(args["accuracies"]):
    version = f"{name}{rnd:02d}"
    folder = join(registry, version)
    model = os.urandom(4096)
    atomic_write_bytes(join(folder, "model.safetensors"), model, so)
    metrics = {"val_accuracy": acc, "val_macro_f1": acc}
    write_json(join(folder, "metrics.json"),
               {**metrics, "sha256": hashlib.sha256(model).hexdigest()}, so)
    (sync / f"{rnd}-{name}").touch()  # lockstep: both processes promote round r together
    while not all((sync / f"{rnd}-{other}").exists() for other in args["names"]):
        time.sleep(0.001)
    champion = read_production(registry, so)
    promotion = promote_candidate(
        registry, Candidate(version, join(folder, "model.safetensors"), metrics, name),
        champion=champion,
        champion_metrics=None if champion is None else {k: champion[k] for k in KEYS},
        evaluate_champion=lambda pointer: ({k: pointer[k] for k in KEYS}, None),
        storage_options=so)
    out.append({"version": version, "accuracy": acc, "promoted": promotion.decision.promote,
                "pointer": promotion.pointer, "conflicts": promotion.conflicts,
                "reason": promotion.decision.reason})
print(json.dumps(out))
"""

_LEASE_HOLDER = """
import json, sys
from tasks.errors import CheckpointInUseError
from tasks.training.lease import CheckpointLease

args = json.loads(sys.argv[1])
lease = CheckpointLease(args["folder"], run_key="same-key", ttl_s=args["ttl_s"],
                        heartbeat_s=args["heartbeat_s"], flow_run_id=args["flow_run_id"],
                        storage_options=args["so"])
go = args.get("go")
if go:
    import os, time
    while not os.path.exists(go):
        time.sleep(0.001)
try:
    lease.acquire()
    print(json.dumps({"acquired": True, "owner": lease.owner}), flush=True)
except CheckpointInUseError as exc:
    print(json.dumps({"acquired": False, "error": str(exc)}), flush=True)
    sys.exit(0)
for line in sys.stdin:
    try:
        if line.strip() == "renew":
            lease.renew()
            print(json.dumps({"renewed": True}), flush=True)
        elif line.strip() == "release":
            lease.release()
            print(json.dumps({"released": True}), flush=True)
    except CheckpointInUseError as exc:
        print(json.dumps({"renewed": False, "error": str(exc)}), flush=True)
"""


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """``(base URI, storage options)``: a local folder, or a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "registry"), None
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/registry", dict(s3.storage_options)


def _child(script: str, args: dict[str, Any], *, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _line(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, child.stderr.read() if child.stderr else "no output"
    return json.loads(line)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by a test; any left running are killed at its end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)


# --- two promoters at once ---------------------------------------------------------------------
def test_two_promoters_at_once_lose_no_update(
    place: tuple[str, dict[str, Any] | None], tmp_path: Path,
    children: list[subprocess.Popen[str]],
) -> None:
    """Round r: A and B each publish a version (a random model file, metrics.json with its
    sha256) and promote it at the same moment; both beat the production of round r-1. A
    reader polls production.json meanwhile. Every promotion must build on the one before it
    (no two share a previous version), accuracy must rise along that chain (a loser that was
    worse did not promote), the last pointer is the best candidate, and every pointer read was
    whole JSON naming a complete model."""
    registry, so = place
    sync = tmp_path / "sync"
    sync.mkdir()
    rounds = 10
    accuracies = {  # both beat every earlier round; which of the two wins a round alternates
        "A": [0.30 + 0.05 * r + (0.01 if r % 2 else 0.02) for r in range(rounds)],
        "B": [0.30 + 0.05 * r + (0.02 if r % 2 else 0.01) for r in range(rounds)],
    }
    reads: list[str] = []
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        pointer_uri = join(registry, "production.json")
        while not stop.is_set():
            seen = read_versioned(pointer_uri, so)
            if seen is None:
                continue
            try:
                pointer = json.loads(seen.data)
                model = read_bytes(pointer["uri"], so)
                folder = pointer["uri"].rsplit("/", 1)[0]
                metrics = json.loads(read_bytes(join(folder, "metrics.json"), so))
                if hashlib.sha256(model).hexdigest() != metrics["sha256"]:
                    problems.append(f"{pointer['model_version']}: model file not complete")
            except Exception as exc:  # collected, asserted below
                problems.append(f"{type(exc).__name__}: {exc}")
            reads.append(pointer["model_version"])

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    for name in ("A", "B"):
        children.append(_child(_PROMOTER, {"registry": registry, "so": so, "name": name,
                                           "names": ["A", "B"], "sync": str(sync),
                                           "accuracies": accuracies[name]}))
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=240)
        assert child.returncode == 0, stderr[-3000:]
        results.extend(json.loads(stdout))
    stop.set()
    watcher.join(timeout=30)

    assert problems == [] and len(reads) > 0
    final = json.loads(read_bytes(join(registry, "production.json"), so))
    best = max(results, key=lambda r: r["accuracy"])
    assert final["model_version"] == best["version"] and best["promoted"]
    written = {r["version"]: r["pointer"] for r in results if r["pointer"] is not None}
    previous = [p["previous_model_version"] for p in written.values()]
    assert len(previous) == len(set(previous)), "two promotions built on the same pointer"
    chain, version = [], final["model_version"]  # walk back from the last pointer
    while version is not None:
        chain.append(version)
        version = written[version]["previous_model_version"]
    assert set(chain) == set(written), "a promotion was overwritten without being built on"
    accuracy = {r["version"]: r["accuracy"] for r in results}
    along = [accuracy[v] for v in reversed(chain)]
    assert along == sorted(along) and len(set(along)) == len(along)
    assert sum(r["conflicts"] for r in results) >= 1, "the two never raced: the test proves nothing"
    for r in results:
        if not r["promoted"]:
            assert "production stays" in r["reason"], r


def test_a_pointer_moved_since_evaluation_is_compared_again(tmp_path: Path) -> None:
    """A candidate evaluated against production P0 finds production moved to a better model
    by the time it writes: it compares with that one (evaluate_champion) and stays out."""
    registry = str(tmp_path / "registry")
    keys = ("val_accuracy", "val_macro_f1")

    def candidate(version: str, accuracy: float) -> Candidate:
        model = tmp_path / "registry" / version / "model.safetensors"
        model.parent.mkdir(parents=True)
        model.write_bytes(os.urandom(1024))
        return Candidate(version, str(model), {"val_accuracy": accuracy,
                                               "val_macro_f1": accuracy}, "key")

    def metrics_of(pointer: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        evaluated.append(pointer["model_version"])
        return {k: pointer[k] for k in keys}, None

    evaluated: list[str] = []
    first = promote_candidate(registry, candidate("p0", 0.5), champion=None,
                              champion_metrics=None, evaluate_champion=metrics_of)
    assert first.decision.promote and first.decision.reason == "no production model yet"
    p0 = first.pointer
    assert p0 is not None
    better = promote_candidate(registry, candidate("p1", 0.9), champion=p0,
                               champion_metrics={k: p0[k] for k in keys},
                               evaluate_champion=metrics_of)
    assert better.pointer is not None and better.pointer["previous_model_version"] == "p0"
    assert evaluated == []  # production had not moved: nothing re-evaluated

    late = promote_candidate(registry, candidate("p2", 0.7), champion=p0,
                             champion_metrics={k: p0[k] for k in keys},
                             evaluate_champion=metrics_of)
    assert evaluated == ["p1"]
    assert not late.decision.promote and late.pointer is None
    assert late.decision.reason.startswith("candidate accuracy 0.7000 / macro-F1 0.7000 vs "
                                           "production 0.9000")
    assert late.champion is not None and late.champion["model_version"] == "p1"
    pointer = json.loads((tmp_path / "registry" / "production.json").read_text())
    assert pointer["model_version"] == "p1"


def test_promoting_again_after_a_lost_answer_is_a_no_op(tmp_path: Path) -> None:
    """A retried publish finds production already naming its version: nothing is written."""
    registry = str(tmp_path / "registry")
    cand = Candidate("v1", str(tmp_path / "m"), {"val_accuracy": 0.8, "val_macro_f1": 0.7}, "k")
    first = promote_candidate(registry, cand, champion=None, champion_metrics=None,
                              evaluate_champion=lambda p: (None, "unused"))
    before = (tmp_path / "registry" / "production.json").read_bytes()
    again = promote_candidate(registry, cand, champion=None, champion_metrics=None,
                              evaluate_champion=lambda p: (None, "unused"))
    assert again.decision.promote and again.pointer == first.pointer
    assert again.decision.reason == "no production model yet"
    assert (tmp_path / "registry" / "production.json").read_bytes() == before


# --- the checkpoint lease ----------------------------------------------------------------------
def _holder_args(folder: str, so: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {"folder": folder, "so": so, "ttl_s": 60.0, "heartbeat_s": None,
            "flow_run_id": None, **extra}


def test_two_trainings_take_the_lease_at_once_one_wins(
    place: tuple[str, dict[str, Any] | None], tmp_path: Path,
    children: list[subprocess.Popen[str]],
) -> None:
    base, so = place
    folder = join(base, "training", "same-key")
    go = tmp_path / "go"
    for _ in range(2):
        children.append(_child(_LEASE_HOLDER, _holder_args(folder, so, go=str(go)), stdin=True))
    time.sleep(1.0)  # both children are up and polling
    go.touch()
    answers = [_line(child) for child in children]
    won = [a for a in answers if a["acquired"]]
    lost = [(a, c) for a, c in zip(answers, children, strict=True) if not a["acquired"]]
    assert len(won) == 1 and len(lost) == 1
    winner = next(c for a, c in zip(answers, children, strict=True) if a["acquired"])
    error = lost[0][0]["error"]
    assert "\n" not in error
    assert error.startswith(f"{join(folder, LEASE_NAME)}: checkpoint folder in use by host ")
    assert f"pid {winner.pid} " in error and "with run key same-key" in error
    assert f"lease {won[0]['owner'][:8]}" in error


def test_a_live_holder_refuses_a_second_training_and_a_killed_one_frees_it_at_once(
    place: tuple[str, dict[str, Any] | None], children: list[subprocess.Popen[str]],
) -> None:
    """Same machine: while the holder runs, a second training of the run key is refused
    (CheckpointInUseError naming it); once the holder is SIGKILLed (a crash, not a release),
    its pid is gone and the folder is taken over without waiting for the lease to expire."""
    base, so = place
    folder = join(base, "training", "k1")
    holder = _child(_LEASE_HOLDER, _holder_args(folder, so, ttl_s=600.0), stdin=True)
    children.append(holder)
    assert _line(holder)["acquired"] is True

    second = CheckpointLease(folder, run_key="same-key", storage_options=so, heartbeat_s=None)
    with pytest.raises(CheckpointInUseError, match=rf"in use by host \S+ pid {holder.pid} "
                                                   r".*until .* \(in (59\d|600) s\)"):
        second.acquire()

    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    with second:  # taken over: the killed process is no longer running on this machine
        lease = LeaseHolder.parse(read_bytes(join(folder, LEASE_NAME), so))
        assert lease is not None and lease.owner == second.owner and lease.pid == os.getpid()
    released = LeaseHolder.parse(read_bytes(join(folder, LEASE_NAME), so))
    assert released is not None and released.released and released.owner == second.owner


def test_an_expired_lease_is_taken_over_and_its_holder_stops(
    place: tuple[str, dict[str, Any] | None], children: list[subprocess.Popen[str]],
) -> None:
    """A holder that stopped renewing (alive, but stuck) loses the folder after ttl_s; its
    next renewal fails with CheckpointInUseError naming the new holder, so it writes nothing
    more."""
    base, so = place
    folder = join(base, "training", "k2")
    holder = _child(_LEASE_HOLDER, _holder_args(folder, so, ttl_s=3.0), stdin=True)
    children.append(holder)
    assert _line(holder)["acquired"] is True
    newcomer = CheckpointLease(folder, run_key="same-key", storage_options=so, heartbeat_s=None)
    with pytest.raises(CheckpointInUseError, match=rf"pid {holder.pid} "):
        newcomer.acquire()
    time.sleep(3.1)
    newcomer.acquire()  # expired: taken over
    assert holder.stdin is not None
    holder.stdin.write("renew\n")
    holder.stdin.flush()
    answer = _line(holder)
    assert answer["renewed"] is False
    assert f"taken over by host {os.uname().nodename} pid {os.getpid()} " in answer["error"]
    newcomer.renew()  # the newcomer keeps it
    newcomer.release()


def test_the_same_flow_run_resumes_at_once_and_a_released_lease_is_free(
    place: tuple[str, dict[str, Any] | None], children: list[subprocess.Popen[str]],
) -> None:
    base, so = place
    folder = join(base, "training", "k3")
    holder = _child(_LEASE_HOLDER, _holder_args(folder, so, ttl_s=600.0, flow_run_id="run-1"),
                    stdin=True)
    children.append(holder)
    assert _line(holder)["acquired"] is True
    retry = CheckpointLease(folder, run_key="same-key", storage_options=so, heartbeat_s=None,
                            flow_run_id="run-1")
    retry.acquire()  # an earlier attempt of the same flow run: taken over at once
    retry.release()
    after = CheckpointLease(folder, storage_options=so, heartbeat_s=None, flow_run_id="run-2")
    after.acquire()  # released: free for anyone
    after.release()


def test_the_heartbeat_keeps_a_lease_alive_past_its_ttl(
    place: tuple[str, dict[str, Any] | None],
) -> None:
    base, so = place
    folder = join(base, "training", "k4")
    with CheckpointLease(folder, storage_options=so, ttl_s=1.0, heartbeat_s=0.2) as lease:
        time.sleep(1.5)
        rival = CheckpointLease(folder, storage_options=so, heartbeat_s=None)
        with pytest.raises(CheckpointInUseError, match=rf"pid {os.getpid()} "):
            rival.acquire()
        lease.check()


def test_train_refuses_a_checkpoint_folder_another_training_holds(
    place: tuple[str, dict[str, Any] | None], children: list[subprocess.Popen[str]],
) -> None:
    """tasks/training/loop.py's train() takes the lease before it reads or writes anything."""
    from tasks.training.clip_cache import ClipCache, ClipSpec
    from tasks.training.data import Example
    from tasks.training.loop import train
    from tasks.training.settings import RetrainSettings

    base, so = place
    settings = RetrainSettings(sources=["/d"], registry=base, preset="small", device="cpu",
                               storage_options=so, resume=True)
    holder = _child(_LEASE_HOLDER, _holder_args(settings.checkpoint_uri, so), stdin=True)
    children.append(holder)
    assert _line(holder)["acquired"] is True
    example = Example("/d/1001_DFA_ANG_XX.mp4", "e", 1, "angry", "crema-d:1001", "crema-d")
    cache = ClipCache(settings.cache_uri, ClipSpec(16, 64, 4.0, 1), so)
    with pytest.raises(CheckpointInUseError, match=rf"/lease\.json: checkpoint folder in use "
                                                   rf"by host \S+ pid {holder.pid} "):
        train(settings, [example], [example], cache)


def test_a_lease_that_is_not_json_is_taken_over(tmp_path: Path) -> None:
    folder = str(tmp_path / "ckpt")
    write_if_unchanged(join(folder, LEASE_NAME), b"garbage", None)
    with CheckpointLease(folder, heartbeat_s=None) as lease:
        assert LeaseHolder.parse((tmp_path / "ckpt" / LEASE_NAME).read_bytes()).owner \
            == lease.owner  # type: ignore[union-attr]
