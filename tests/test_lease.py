"""Stage leases: one runner computes a stage at a time; dead owners are taken over; live ones are
respected (refused, or waited for); an overtaken owner does not publish."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from microparade.compute.backends import launch_id
from microparade.config import RunnerConfig, load_config
from microparade.engine import compute_status
from microparade.engine.lease import follow_lease, read_lease, take_lease
from microparade.engine.runner import begin_publication
from microparade.errors import StageError
from microparade.storage import Store
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

HOST = socket.gethostname()


def _config(tmp_path: Path, rows: int = 3000) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(
        f"""
run_dir: {tmp_path / "run"}
data:
  generate: {{rows: {rows}, seed: 3, rows_per_file: 1000}}
cluster: {{n_workers: 1, threads_per_worker: 2, processes: false, dashboard: false}}
ingest: {{blocksize: 64KiB}}
"""
    )
    return p


def _lease_file(run: Path, stage: str, epoch: int = 1) -> Path:
    return run / stage / "_lease" / f"{epoch:08d}.json"


def _write_lease(path: Path, **owner: object) -> None:
    record = {"state": "held", "host": "node-elsewhere", "pid": 4242, "heartbeat_unix": time.time(), **owner}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _finished_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_create_json_has_exactly_one_winner_among_racing_processes(tmp_path):
    code = (
        "import sys; from microparade.storage import Store\n"
        "print(Store(sys.argv[1]).create_json('s/lease.json', {'me': sys.argv[2]}))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    won = [p.communicate()[0].strip() == "True" for p in procs]
    assert won.count(True) == 1
    winner = won.index(True)
    assert json.loads((tmp_path / "s" / "lease.json").read_text()) == {"me": str(winner)}
    assert sorted(os.listdir(tmp_path / "s")) == ["lease.json"], "no temporary is left behind"


def test_a_live_owner_is_refused_with_its_name_then_the_released_lease_is_taken(tmp_path):
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    held, waited = take_lease(Store(cfg.run_dir), "generate", cfg.runner)
    assert not waited
    try:
        proc = run_cli("run", cfgp, "--until", "generate", check=False)
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert f"stage generate is being computed by pid {os.getpid()} on {HOST}" in last
        assert "--wait" in last
        assert not (tmp_path / "run" / "generate" / "_MANIFEST.json").exists()
    finally:
        held.release()
    assert read_lease(Store(cfg.run_dir), "generate").released  # type: ignore[union-attr]
    out = run_cli("run", cfgp, "--until", "generate")
    assert "ran generate" in out.stdout
    lease = read_lease(Store(cfg.run_dir), "generate")
    assert lease is not None and lease.epoch == 2 and lease.released and lease.record["took_over"] is None
    assert not _lease_file(tmp_path / "run", "generate", 1).exists(), "older epochs are removed"


#: Rank 1 of a two-process torchrun launch.
RANK1 = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29531",
    "TORCHELASTIC_RUN_ID": "r7",
}


def test_launch_id_names_what_the_processes_of_one_launch_share():
    assert launch_id({}) is None
    assert launch_id({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert launch_id({**RANK1, "RANK": "0"}) == launch_id(RANK1) == "torchrun r7"
    assert launch_id({**RANK1, "TORCHELASTIC_RUN_ID": "none"}) == "rendezvous 127.0.0.1:29531"
    srun = {"SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_JOB_ID": "17"}
    assert launch_id({**srun, "SLURM_JOB_NODELIST": "n[1-2]"}) == "Slurm job 17 step 0"


def test_a_follower_rank_computes_under_the_lease_of_its_own_rank_0(tmp_path, monkeypatch):
    for key, value in RANK1.items():
        monkeypatch.setenv(key, value)
    runner = RunnerConfig(lease_heartbeat_s=1, lease_expiry_s=30)
    store = Store(str(tmp_path))
    # an earlier run of a launch with the same id (a requeued job, torchrun on the same port) left its
    # released lease: it is not this run's rank 0
    earlier = {"state": "released", "launch": "torchrun r7", "acquired_unix": time.time() - 3600}
    _write_lease(_lease_file(tmp_path, "train"), **earlier)
    held: list = []
    # rank 0 takes the lease a moment after this rank starts waiting for it
    threading.Timer(1.0, lambda: held.append(take_lease(store, "train", runner)[0])).start()
    started = time.monotonic()
    lease = follow_lease(store, "train", runner)
    assert lease.record["launch"] == "torchrun r7" and lease.epoch == 2 and not lease.released
    assert 0.5 < time.monotonic() - started < 10
    held[0].release()


def test_a_follower_rank_stops_when_its_rank_0_never_takes_the_lease(tmp_path):
    """Rank 0 is refused (a live runner of another launch holds the stage): rank 1 must not compute the
    stage alone, which would leave it waiting at its first collective until the job's time limit."""
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    other, _ = take_lease(Store(cfg.run_dir), "generate", cfg.runner)  # a live owner, not of the launch
    try:
        overrides = ("runner.lease_heartbeat_s=1", "runner.lease_expiry_s=3")
        started = time.monotonic()
        proc = run_cli("run", cfgp, "--only", "generate", *overrides, env=RANK1, check=False)
        assert proc.returncode == 1, proc.stderr
        assert time.monotonic() - started < 60
        last = proc.stderr.strip().splitlines()[-1]
        assert "stage generate: rank 0 of this launch (torchrun r7) has not taken its lease in 3 s" in last
        assert f"it is held by pid {os.getpid()} on {HOST}" in last
        generated = [p for p in (tmp_path / "run" / "generate").rglob("*") if p.is_file() and "_lease" not in p.parts]
        assert generated == [], "rank 1 computed the stage on its own"
    finally:
        other.release()


def test_two_runs_started_together_compute_each_stage_once(tmp_path):
    cfgp = _config(tmp_path, rows=20000)
    cmd = [sys.executable, "-m", "microparade.cli", "run", str(cfgp), "--until", "ingest", "--wait"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = "".join(err for _, err in outs)
    for stage in ("generate", "ingest"):
        assert logs.count(f"[{stage}] running (fingerprint") == 1, logs
    assert "waiting: stage" in logs, "the two runs never met: the test proves nothing"
    states = {s.name: s.state for s in compute_status(load_config(cfgp), verify="sha256")}
    assert states["generate"] == states["ingest"] == "done"


def test_a_lease_of_another_host_is_respected_until_its_heartbeat_expires(tmp_path):
    cfgp = _config(tmp_path)
    run = tmp_path / "run"
    _write_lease(_lease_file(run, "generate"), heartbeat_unix=time.time() - 100)
    refused = run_cli("run", cfgp, "--until", "generate", "runner.lease_expiry_s=300", check=False)
    assert refused.returncode == 1
    assert re.search(
        r"being computed by pid 4242 on node-elsewhere \(lease epoch 1, heartbeat 10\d s ago\)", refused.stderr
    )

    out = run_cli("run", cfgp, "--until", "generate", "runner.lease_expiry_s=60", "runner.lease_heartbeat_s=5")
    assert re.search(
        r"took over the lease of pid 4242 on node-elsewhere: heartbeat 10\d s old \(expiry 60 s\)", out.stderr
    )
    lease = read_lease(Store(str(run)), "generate")
    assert lease is not None and lease.epoch == 2
    assert lease.record["took_over"]["owner"] == "pid 4242 on node-elsewhere"


def test_a_run_waits_for_a_live_owner_then_skips_what_it_published(tmp_path):
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    run_cli("run", cfgp, "--until", "generate")
    held, _ = take_lease(Store(cfg.run_dir), "generate", cfg.runner)
    threading.Timer(3.0, held.release).start()
    started = time.monotonic()
    out = run_cli("run", cfgp, "--until", "generate", "--force", "--wait", "60")
    assert time.monotonic() - started > 3.0
    assert "[generate] waiting: stage generate is being computed by" in out.stderr
    assert "[generate] running (fingerprint" in out.stderr, "--force reruns even what the owner published"
    gave_up = _config(tmp_path)
    held, _ = take_lease(Store(cfg.run_dir), "generate", cfg.runner)
    try:
        proc = run_cli("run", gave_up, "--until", "generate", "--force", "--wait", "2.5", check=False)
    finally:
        held.release()
    assert proc.returncode == 1 and "waited too long" in proc.stderr


def test_an_overtaken_owner_does_not_publish(tmp_path):
    store = Store(str(tmp_path))
    runner = RunnerConfig(lease_heartbeat_s=0.2, lease_expiry_s=1.0)
    held, _ = take_lease(store, "s", runner)
    first = read_lease(store, "s")
    assert first is not None
    time.sleep(0.7)
    beat = read_lease(store, "s")
    assert beat is not None and beat.record["heartbeat_unix"] > first.record["heartbeat_unix"], "heartbeat refreshed"
    # The owner stalls; a runner elsewhere judges it dead and takes epoch 2.
    _write_lease(_lease_file(tmp_path, "s", 2))
    with pytest.raises(
        StageError, match=r"stage s: its lease was taken over by pid 4242 on node-elsewhere \(epoch 2\)"
    ):
        held.check()
    held.release()
    current = read_lease(store, "s")
    assert current is not None and current.epoch == 2 and not current.released, "the new owner's lease is untouched"


def test_status_tells_running_from_killed(tmp_path):
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    run_cli("run", cfgp, "--until", "generate")
    store = Store(cfg.run_dir)
    held, _ = take_lease(store, "ingest", cfg.runner)
    try:
        begin_publication(store, "ingest", "f" * 64, held)
        ingest = {s.name: s for s in compute_status(cfg)}["ingest"]
        assert ingest.state == "running"
        assert ingest.reason.startswith(f"pid {os.getpid()} on {HOST}, heartbeat ")
        shown = run_cli("status", cfgp).stdout
        assert "running" in shown and f"pid {os.getpid()} on {HOST}" in shown
    finally:
        held.release()
    # Epoch 3 stands for a runner SIGKILLed mid-stage: held, with a pid that is gone.
    dead = _finished_pid()
    _write_lease(_lease_file(tmp_path / "run", "ingest", 3), host=HOST, pid=dead, pid_start="1")
    ingest = {s.name: s for s in compute_status(cfg)}["ingest"]
    assert ingest.state == "incomplete"
    assert ingest.reason == f"pid {dead} on {HOST} stopped (process {dead} on {HOST} is gone); rerun to resume"
    out = run_cli("run", cfgp, "--until", "ingest")
    assert f"took over the lease of pid {dead} on {HOST}: process {dead} on {HOST} is gone" in out.stderr
    assert {s.name: s.state for s in compute_status(cfg)}["ingest"] == "done"


def test_lease_settings_are_checked():
    with pytest.raises(ValueError, match=r"lease_expiry_s \(60\) must be at least 3 x runner.lease_heartbeat_s \(30\)"):
        RunnerConfig(lease_expiry_s=60)


@pytest.mark.cloud
@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_leases_on_object_stores_have_exactly_one_taker(scheme, request):
    server = request.getfixturevalue("gcs_server" if scheme == "gs" else "s3_server")
    bucket = server.make_bucket(f"lease-{scheme}")
    runner = RunnerConfig(lease_heartbeat_s=30, lease_expiry_s=120)
    results: list[str] = []

    def take() -> None:
        store = Store(f"{bucket}/run", server.storage_options)
        try:
            held, _ = take_lease(store, "text", runner)
        except StageError as exc:
            results.append(str(exc))
        else:
            results.append("held")
            time.sleep(1.0)  # hold it while the others look
            held.release()

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("held") == 1, results
    assert all("stage text is being computed by pid" in r for r in results if r != "held")
    store = Store(f"{bucket}/run", server.storage_options)
    lease = read_lease(store, "text")
    assert lease is not None and lease.epoch == 1 and lease.released
    # A dead owner's lease (its heartbeat expired) is taken over with the next epoch, atomically too.
    store.write_json_atomic(
        "text/_lease/00000001.json", {"state": "held", "host": "gone", "pid": 1, "heartbeat_unix": 0}
    )
    held, _ = take_lease(store, "text", runner)
    held.release()
    lease = read_lease(store, "text")
    assert lease is not None and lease.epoch == 2 and lease.record["took_over"]["owner"] == "pid 1 on gone"
    assert store.walk_files("text/_lease") == ["00000002.json"]
