"""Stage leases under the real local Slurm (tests/slurm/start.sh): two jobs on the two nodes running
the same stages of one run dir compute each stage once; a lease held by a job that Slurm still
runs is respected, and taken over once Slurm says the job has ended."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from microparade.config import load_config
from microparade.engine import compute_status
from microparade.engine.lease import read_lease
from microparade.storage import Store
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.helpers.slurm_cluster import sbatch, wait_jobs
from tests.test_lease import _config

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


def _running(job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if out.strip() == "RUNNING":
            return
        time.sleep(0.5)
    pytest.fail(f"Slurm job {job} never started")


def test_two_jobs_on_two_nodes_compute_each_stage_once(slurm, tmp_path):
    cfgp = _config(tmp_path, rows=20000)
    go = tmp_path / "go"
    run = f"{sys.executable} -m microparade.cli run {cfgp} --until ingest --wait"
    jobs = [
        sbatch(
            [
                f"--nodelist={node}",
                "--cpus-per-task=1",
                "--mem=1500M",
                "--time=10",
                f"--chdir={ROOT}",
                f"--output={tmp_path / f'{node}.log'}",
                # Both jobs start their runs together, once both are running.
                "--wrap",
                f"while [ ! -e {go} ]; do sleep 0.1; done; exec {run}",
            ]
        )
        for node in slurm["nodes"][:2]
    ]
    for job in jobs:
        _running(job)
    go.touch()
    assert wait_jobs(jobs, timeout=600) == {j: "COMPLETED" for j in jobs}
    logs = "".join((tmp_path / f"{node}.log").read_text() for node in slurm["nodes"][:2])
    for stage in ("generate", "ingest"):
        assert logs.count(f"[{stage}] running (fingerprint") == 1, logs
    assert "waiting: stage" in logs, f"the two jobs never met: the test proves nothing\n{logs}"
    states = {s.name: s.state for s in compute_status(load_config(cfgp), verify="sha256")}
    assert states["generate"] == states["ingest"] == "done"
    manifest = json.loads((tmp_path / "run" / "ingest" / "_MANIFEST.json").read_text())
    assert manifest["slurm"]["job_id"] in jobs


def test_a_lease_held_by_a_running_job_is_respected_until_slurm_says_it_ended(slurm, tmp_path):
    cfgp = _config(tmp_path, rows=3000)
    holder = sbatch(["--time=10", f"--chdir={tmp_path}", "--output=holder.out", "--wrap", "sleep 600"])
    _running(holder)
    lease = tmp_path / "run" / "generate" / "_lease" / "00000001.json"
    lease.parent.mkdir(parents=True)
    # A runner on another node, inside that job: its pid cannot be checked from here, its heartbeat
    # is recent, so only Slurm can tell whether it still runs.
    owner = {"state": "held", "host": "node-elsewhere", "pid": 4242, "slurm": {"job_id": holder, "restart_count": "0"}}
    lease.write_text(json.dumps({**owner, "heartbeat_unix": time.time() - 60}))
    try:
        refused = run_cli("run", cfgp, "--until", "generate", check=False)
        assert refused.returncode == 1, refused.stderr
        assert f"being computed by pid 4242 on node-elsewhere (Slurm job {holder})" in refused.stderr
        generate = json.loads(run_cli("status", cfgp, "--json").stdout)["stages"][0]
        assert generate["state"] == "running" and generate["slurm_job_id"] == holder
        assert generate["reason"].startswith(f"pid 4242 on node-elsewhere (Slurm job {holder}), heartbeat 6")
    finally:
        subprocess.run(["scancel", holder], check=True)
    assert wait_jobs([holder]) == {holder: "CANCELLED"}
    out = run_cli("run", cfgp, "--until", "generate")
    assert f"took over the lease of pid 4242 on node-elsewhere (Slurm job {holder}): Slurm job {holder} CANCELLED" in (
        out.stderr
    )
    taken = read_lease(Store(str(tmp_path / "run")), "generate")
    assert taken is not None and taken.epoch == 2 and taken.released
