"""The local Slurm of tests/slurm/start.sh behaves like the clusters the pipeline targets.

Each test submits real batch jobs to the two emulated nodes and checks what the pipeline relies
on: multi-node steps, failure and dependency handling, requeue with appended output, and the
pre-timeout signal to the batch shell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.slurm_cluster import sbatch, wait_jobs

# The session fixture ``slurm`` (tests/conftest.py) calls tests.helpers.slurm_cluster.ensure_slurm().
pytestmark = pytest.mark.slurm


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path


def _wait_for_file_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            content = path.read_text() if path.exists() else "(no file)"
            raise TimeoutError(f"{text!r} not in {path} after {timeout} s: {content}")
        time.sleep(0.2)


def test_two_node_job_runs_a_step_on_each_node(slurm, tmp_path):
    # The last srun runs without SLURM_CONF: steps must also find the cluster through
    # /etc/slurm/slurm.conf (as in a developer's shell). The nodes run the project's Python.
    script = _script(
        tmp_path / "two_nodes.sh",
        'echo "batch on $SLURMD_NODENAME conf=$SLURM_CONF"\n'
        "srun --label bash -c 'echo \"step on $SLURMD_NODENAME\"'\n"
        f"srun {sys.executable} -c 'import microparade; print(\"python ok\")'\n"
        "env -u SLURM_CONF srun --nodes=1 --ntasks=1 true && echo 'srun without SLURM_CONF ok'\n",
    )
    out = tmp_path / "two_nodes.out"
    job = sbatch(
        ["--nodes=2", "--ntasks-per-node=1", "--time=2", f"--chdir={tmp_path}", f"--output={out}", str(script)]
    )
    assert wait_jobs([job], timeout=60, poll=0.5) == {job: "COMPLETED"}
    text = out.read_text()
    assert "step on node1" in text and "step on node2" in text, text
    assert f"conf={slurm['slurm_conf']}" in text, text
    assert text.count("python ok") == 2, text
    assert "srun without SLURM_CONF ok" in text, text

    bare_env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], env=bare_env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(set(nodes)) == slurm["nodes"]


def test_failed_job_cancels_its_afterok_dependent(slurm, tmp_path):
    # Hold the failing job until the dependent one is queued, so the dependency is pending when
    # it fails (the order the pipeline submits in).
    failing = sbatch(["--hold", f"--chdir={tmp_path}", "--output=fail.out", "--wrap", "exit 3"])
    dependent = sbatch(
        [f"--dependency=afterok:{failing}", f"--chdir={tmp_path}", "--output=dep.out", "--wrap", "touch dependent-ran"]
    )
    subprocess.run(["scontrol", "release", failing], check=True)
    states = wait_jobs([failing, dependent], timeout=30, poll=0.5)
    assert states == {failing: "FAILED", dependent: "CANCELLED"}
    assert not (tmp_path / "dependent-ran").exists()
    exit_code = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", failing, "-o", "ExitCode"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert exit_code == "3:0"


def test_requeued_job_runs_again_and_appends_output(slurm, tmp_path):
    script = _script(
        tmp_path / "requeue.sh",
        'echo "run restart_count=${SLURM_RESTART_COUNT:-0}"\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo finished; exit 0; fi\n'
        "sleep 300\n",
    )
    out = tmp_path / "requeue.out"
    job = sbatch(["--requeue", "--open-mode=append", f"--chdir={tmp_path}", f"--output={out}", str(script)])
    _wait_for_file_text(out, "run restart_count=0", timeout=30)
    subprocess.run(["scontrol", "requeue", job], check=True)
    # A requeued job becomes eligible again only once its old credential expired
    # (AuthInfo=cred_expire=10 in start.sh).
    assert wait_jobs([job], timeout=60, poll=0.5) == {job: "COMPLETED"}
    runs = [line for line in out.read_text().splitlines() if line.startswith("run ")]
    assert runs == ["run restart_count=0", "run restart_count=1"], out.read_text()
    assert out.read_text().rstrip().endswith("finished")


def test_batch_shell_gets_usr2_before_the_time_limit(slurm, tmp_path):
    # Slurm checks time limits every 30 s, so --signal=B:USR2@60 with --time=1 arrives within
    # about 30 s of the start; B: sends it to the batch shell (without B: only to steps).
    marker = tmp_path / "usr2"
    script = _script(
        tmp_path / "signal.sh",
        f"trap 'echo \"USR2 after $SECONDS s\" > {marker}; exit 0' USR2\n"
        # Wait on a background sleep: bash runs traps only between foreground commands.
        "sleep 120 & wait\n"
        "echo 'no signal'\n",
    )
    job = sbatch(["--time=1", "--signal=B:USR2@60", f"--chdir={tmp_path}", "--output=signal.out", str(script)])
    assert wait_jobs([job], timeout=90, poll=0.5) == {job: "COMPLETED"}
    assert marker.read_text().startswith("USR2 after"), (tmp_path / "signal.out").read_text()
