"""Stage leases: at most one runner computes a stage directory at a time, on one host or many.

A runner that computes stage ``S`` first takes its lease, a file ``{S}/_lease/{epoch}.json`` (epoch
``00000001``, ``00000002``...). The lease in force is the highest epoch. It names its owner (host,
pid and the pid's start time, Slurm job, step and restart count) and carries a heartbeat that a
thread of the owner rewrites every ``runner.lease_heartbeat_s``; the owner marks it ``released``
when the stage ends (published, failed or preempted).

Taking a lease means *creating* the next epoch's file, which :meth:`Store.create_json` makes atomic
(``link(2)`` locally and on NFS, generation/If-None-Match preconditions on gs:// and s3://): of
several runners only one creates epoch ``n + 1``, the others then see a live owner. A runner takes
the next epoch only when the lease in force is released or its owner is provably dead:

- same host, and its pid is gone (or is another process now);
- its Slurm job has ended, is queued again after a requeue, or its job step has ended;
- its heartbeat is older than ``runner.lease_expiry_s`` (the rule for any other host; clocks of
  the hosts must agree to well within the expiry).

A live owner makes the runner refuse, naming the owner, or wait (``runner.lease_wait_s``,
``microparade run --wait``). An owner that stalls past the expiry may be overtaken; it then finds a
higher epoch at its next heartbeat or before it publishes, and fails instead of publishing (fencing).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..compute.backends import launch_id
from ..config import RunnerConfig
from ..errors import StageError
from ..slurm.query import job_ended
from ..storage import Store
from .manifest import LEASE_DIR, now_iso
from .markers import slurm_info

log = logging.getLogger("microparade")

LEASE_SCHEMA = "microparade.lease/1"
#: Seconds between two looks at a lease held by a live owner, while waiting for it.
POLL_S = 2.0
#: When this process started (near enough: when it imported this module), and how much earlier
#: rank 0 of the same launch may have taken a lease (launch jitter, clocks of the hosts).
STARTED_UNIX = time.time()
LAUNCH_SKEW_S = 60.0


def pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def slurm_owner() -> dict[str, str] | None:
    """This process's Slurm job, job step (when in an ``srun`` step) and restart count (the job's
    part of :func:`~.markers.slurm_info`)."""
    info = slurm_info()
    if info is None:
        return None
    owner = {"job_id": info["job_id"], "restart_count": info.get("restart_count", "0")}
    step = os.environ.get("SLURM_STEP_ID", "")
    if step.isdigit() and int(step) < 0xFFFFFFF0:  # not the batch or extern step's pseudo ids
        owner["step_id"] = step
    return owner


@dataclass(frozen=True)
class Lease:
    """The lease in force of one stage directory: its epoch and record."""

    epoch: int
    record: dict[str, Any]

    @property
    def released(self) -> bool:
        return self.record.get("state") == "released"

    def heartbeat_age(self, now: float | None = None) -> float:
        beat = self.record.get("heartbeat_unix")
        return (now or time.time()) - beat if isinstance(beat, (int, float)) else math.inf

    def owner(self) -> str:
        """``pid 12 on node3 (Slurm job 45)``."""
        r = self.record
        text = f"pid {r.get('pid', '?')} on {r.get('host', '?')}"
        job = (r.get("slurm") or {}).get("job_id")
        return f"{text} (Slurm job {job})" if job else text


def read_lease(store: Store, stage: str) -> Lease | None:
    """The lease in force of ``stage`` (the highest epoch), None if it was never leased."""
    epochs = _epochs(store, stage)
    if not epochs:
        return None
    rel = _lease_rel(stage, epochs[-1])
    try:
        record = store.read_json(rel)
    except (ValueError, OSError) as exc:  # written atomically, so this is damage: judged by its age
        log.warning("[%s] unreadable lease %s: %s", stage, store.url(rel), exc)
        record = {}
    return Lease(epochs[-1], record if isinstance(record, dict) else {})


def _epochs(store: Store, stage: str) -> list[int]:
    names = store.walk_files(stage, LEASE_DIR)
    return sorted(int(p[:-5]) for p in names if p.endswith(".json") and p[:-5].isdigit())


def dead_reason(lease: Lease, expiry_s: float) -> str | None:
    """Why the owner of ``lease`` has provably stopped, None while it may still run."""
    r = lease.record
    if r.get("host") == socket.gethostname() and isinstance(r.get("pid"), int):
        if pid_start(r["pid"]) != r.get("pid_start"):
            return f"process {r['pid']} on {r['host']} is gone"
        return None
    slurm, mine = r.get("slurm") or {}, slurm_owner() or {}
    earlier_self = slurm.get("job_id") == mine.get("job_id") and slurm.get("restart_count") != mine.get("restart_count")
    if slurm.get("job_id") and not earlier_self:
        ended = job_ended(slurm["job_id"], slurm.get("step_id"))
        if ended:
            return ended
    age = lease.heartbeat_age()
    if age > expiry_s:
        return "no heartbeat ever written" if math.isinf(age) else f"heartbeat {age:.0f} s old (expiry {expiry_s:g} s)"
    return None


def lease_state(store: Store, stage: str, expiry_s: float) -> tuple[str, Lease | None, str]:
    """``("free" | "live" | "dead", lease, why)`` for the lease of ``stage``."""
    lease = read_lease(store, stage)
    if lease is None or lease.released:
        return "free", lease, ""
    why = dead_reason(lease, expiry_s)
    return ("dead", lease, why) if why else ("live", lease, "")


class StageLease:
    """A lease this process holds: its heartbeat thread, the fencing check, the release."""

    def __init__(self, store: Store, stage: str, lease: Lease, heartbeat_s: float):
        self.store, self.stage, self.epoch, self.record = store, stage, lease.epoch, dict(lease.record)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name=f"lease-{stage}", daemon=True)
        self._thread.start()

    def _superseded(self) -> str | None:
        current = read_lease(self.store, self.stage)
        if current is not None and current.epoch != self.epoch:
            return f"its lease was taken over by {current.owner()} (epoch {current.epoch})"
        return None

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.lost = self._superseded()
                if self.lost:
                    log.error("[%s] %s: this run will not publish it", self.stage, self.lost)
                    return
                self.record.update(heartbeat=now_iso(), heartbeat_unix=time.time())
                self.store.write_json_atomic(_lease_rel(self.stage, self.epoch), self.record)
            except Exception as exc:  # storage trouble: keep trying until the expiry says otherwise
                log.warning("[%s] lease heartbeat failed: %s", self.stage, exc)

    def check(self) -> None:
        """Raise :class:`StageError` unless this process still holds the lease (call before publishing)."""
        lost = self.lost or self._superseded()
        if lost:
            raise StageError(f"stage {self.stage}: {lost}; not publishing")

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (unless it was taken over meanwhile)."""
        self._stop.set()
        self._thread.join()
        try:
            if self.lost or self._superseded():
                return
            self.record.update(state="released", released=now_iso(), heartbeat_unix=time.time())
            self.store.write_json_atomic(_lease_rel(self.stage, self.epoch), self.record)
        except Exception as exc:  # the next runner judges the lease by its owner and heartbeat
            log.warning("[%s] could not release the lease: %s", self.stage, exc)


def _lease_rel(stage: str, epoch: int) -> str:
    return f"{stage}/{LEASE_DIR}/{epoch:08d}.json"


def _new_record(stage: str, epoch: int, expiry_s: float, took_over: dict[str, Any] | None) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "schema": LEASE_SCHEMA,
        "stage": stage,
        "epoch": epoch,
        "token": uuid.uuid4().hex,
        "state": "held",
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": pid_start(pid),
        "slurm": slurm_owner(),
        "launch": launch_id(),
        "argv": sys.argv,
        "acquired": now_iso(),
        "acquired_unix": time.time(),
        "heartbeat": now_iso(),
        "heartbeat_unix": time.time(),
        "expiry_s": expiry_s,
        "took_over": took_over,
    }


def _refuse_or_wait(stage: str, lease: Lease, runner: RunnerConfig, deadline: float, waited: bool) -> None:
    """Raise for a live owner unless waiting is allowed; log the first wait."""
    age = lease.heartbeat_age()
    what = f"stage {stage} is being computed by {lease.owner()} (lease epoch {lease.epoch}, heartbeat {age:.0f} s ago)"
    if time.monotonic() >= deadline:
        hint = "waited too long" if waited else "wait for it (--wait) or stop it first"
        raise StageError(f"{what}; {hint}")
    if not waited:
        log.info("[%s] waiting: %s", stage, what)


def take_lease(store: Store, stage: str, runner: RunnerConfig) -> tuple[StageLease, bool]:
    """Take the lease of ``stage`` (refusing or waiting while a live owner holds it); returns the
    held lease and whether this call had to wait for another owner."""
    deadline = time.monotonic() + runner.lease_wait_s
    waited = False
    while True:
        state, current, why = lease_state(store, stage, runner.lease_expiry_s)
        if state == "live" and current is not None:
            _refuse_or_wait(stage, current, runner, deadline, waited)
            waited = True
            time.sleep(POLL_S)
            continue
        took_over = None
        if state == "dead" and current is not None:
            took_over = {"epoch": current.epoch, "owner": current.owner(), "why": why}
        epoch = current.epoch + 1 if current else 1
        record = _new_record(stage, epoch, runner.lease_expiry_s, took_over)
        if store.create_json(_lease_rel(stage, epoch), record):
            break
    if took_over:
        log.warning("[%s] took over the lease of %s: %s", stage, took_over["owner"], why)
    for old in _epochs(store, stage):  # older epochs are history; only the highest one is in force
        if old < epoch:
            store.rm_file(_lease_rel(stage, old))
    return StageLease(store, stage, Lease(epoch, record), runner.lease_heartbeat_s), waited


def follow_lease(store: Store, stage: str, runner: RunnerConfig) -> Lease:
    """In a non-zero rank of a multi-process launch (torchrun, srun with several tasks): wait until
    rank 0 of the same launch holds the lease of ``stage`` (or has released it), and return it.

    Rank 0 takes the lease for all ranks; the others compute only under it (a lease of their launch
    taken since they started, :func:`_of_this_launch`). When rank 0 is refused
    (a live owner holds the stage) the launcher may not stop the other ranks (srun without
    ``--kill-on-bad-exit``), and a rank computing alone would wait at its first collective until
    the job's time limit: this raises :class:`StageError` instead, once rank 0 has had
    ``runner.lease_wait_s + runner.lease_expiry_s`` to take the lease.
    """
    mine = launch_id()
    allowed = runner.lease_wait_s + runner.lease_expiry_s
    deadline = time.monotonic() + allowed
    while True:
        lease = read_lease(store, stage)
        if lease is not None and _of_this_launch(lease, mine):
            return lease
        if time.monotonic() >= deadline:
            held = f"; it is held by {lease.owner()}" if lease is not None and not lease.released else ""
            raise StageError(
                f"stage {stage}: rank 0 of this launch ({mine}) has not taken its lease in {allowed:g} s{held}; "
                "this rank does not compute without it"
            )
        time.sleep(POLL_S)


def _of_this_launch(lease: Lease, launch: str | None) -> bool:
    """Whether ``lease`` was taken by rank 0 of ``launch`` in this run of it: a launch id can recur (a
    requeued Slurm job numbers its steps from 0 again; torchrun without a run id is known by its
    rendezvous address), so a lease taken before this process started belongs to an earlier run."""
    acquired = lease.record.get("acquired_unix")
    recent = isinstance(acquired, (int, float)) and acquired >= STARTED_UNIX - LAUNCH_SKEW_S
    return recent and lease.record.get("launch") == launch


@contextmanager
def stage_lease(store: Store, stage: str, runner: RunnerConfig) -> Iterator[tuple[StageLease, bool]]:
    """Hold the lease of ``stage`` for the block (see :func:`take_lease`); released on any exit."""
    held, waited = take_lease(store, stage, runner)
    try:
        yield held, waited
    finally:
        held.release()
