"""A sweep on the real local Slurm (tests/slurm/start.sh): shared stages once, job arrays of the
runs, a cancelled array task resubmitted alone, and a finished sweep that submits nothing.

- sbatch (``slurm/sweep.sh``): experiments/small.yaml (3 variants x 2 seeds); one task of the
  train array is cancelled right after submission: its run's evaluate and report tasks and the
  comparison report are cancelled by their dependencies, every other task completes. The next
  submit submits only that run's three tasks and the report; the one after submits nothing.
- submitit (``microparade sweep submit``): two variants x one seed through ``executor.batch()``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.helpers.slurm_cluster import sacct_states, wait_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

EXPERIMENT = ROOT / "experiments" / "small.yaml"
SWEEP_TIMEOUT_S = 900


def sweep_overrides(base: Path, *extra: str) -> list[str]:
    """The small experiment sized for the emulated nodes (4 CPUs, 8000 MB each), one thread per task."""
    return [
        f"experiment.sweep_dir={base / 'sweep'}",
        f"slurm.log_dir={base / 'logs'}",
        "cluster.n_workers=1",
        "cluster.memory_limit=1GiB",
        "train.num_threads=1",
        "slurm.default.mem=1500M",
        "slurm.default.cpus_per_task=1",
        "slurm.default.time=00:30:00",
        *extra,
    ]


def job_env() -> dict[str, str]:
    return {"MICROPARADE_PYTHON": sys.executable}


def sweep_sh(*args: str) -> str:
    proc = subprocess.run(
        ["bash", str(ROOT / "slurm" / "sweep.sh"), str(EXPERIMENT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **job_env()},
        timeout=300,
    )
    assert proc.returncode == 0, f"sweep.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def submitted(out: str) -> dict[str, str]:
    """``{what: job id}`` of the jobs a submission printed (``what<TAB>id ...``), new ones only."""
    jobs = {}
    for line in out.splitlines():
        m = re.match(r"^(.+?)\t(\d+)(.*)$", line)
        if m and "already queued" not in m.group(3):
            jobs[m.group(1)] = m.group(2)
    return jobs


def status(*args: str) -> dict:
    return json.loads(run_cli("sweep", "status", EXPERIMENT, *args, "--json").stdout)


def test_sbatch_sweep_arrays_resubmit_one_cancelled_task_alone(slurm, tmp_path):
    args = sweep_overrides(tmp_path)
    (tmp_path / "logs").mkdir()
    first = submitted(sweep_sh(*args))
    shared = [k for k in first if k.startswith("shared ")]
    assert len(shared) == 7, first  # generate, ingest, features, 2 x text, 2 x chunks
    arrays = {k.split()[1]: v for k, v in first.items() if k.startswith("array ")}
    assert list(arrays) == ["train", "evaluate", "report"]
    victim = 3  # h2/seed-1
    subprocess.run(["scancel", f"{arrays['train']}_{victim}"], check=True)
    # A task cancelled while pending never starts, and sacct may not list it: wait for the others.
    tasks = [f"{a}_{i}" for a in arrays.values() for i in range(6)]
    wait_jobs([first["comparison report"], *(t for t in tasks if t != f"{arrays['train']}_{victim}")], SWEEP_TIMEOUT_S)

    states = sacct_states(arrays.values())
    for stage, array in arrays.items():
        for i in range(6):
            if i != victim:
                assert states.get(f"{array}_{i}") == "COMPLETED", (stage, i, states)
            else:  # cancelled, or (the train task) never in accounting
                assert states.get(f"{array}_{i}", "CANCELLED") == "CANCELLED", (stage, i, states)
    assert sacct_states([first["comparison report"]])[first["comparison report"]] == "CANCELLED"
    doc = status(*args)
    assert [r["state"] for r in doc["runs"]].count("done") == 5
    assert doc["runs"][victim]["state"] == "train: missing"
    assert all(u["state"] == "done" for u in doc["shared"])

    again = submitted(sweep_sh(*args))
    assert sorted(again) == ["array evaluate", "array report", "array train", "comparison report"], again
    wait_jobs([again["comparison report"]], SWEEP_TIMEOUT_S)
    retried = sacct_states([again["array train"], again["array evaluate"], again["array report"]])
    assert {k: v for k, v in retried.items() if "_" in k} == {
        f"{again[f'array {s}']}_{victim}": "COMPLETED" for s in ("train", "evaluate", "report")
    }
    assert sacct_states([again["comparison report"]])[again["comparison report"]] == "COMPLETED"
    doc = status(*args)
    assert all(r["state"] == "done" for r in doc["runs"]) and doc["report"] == "done"
    assert doc["runs"][victim]["slurm_state"] == "COMPLETED"
    assert (tmp_path / "sweep" / "report" / "index.html").is_file()

    out = sweep_sh(*args)
    assert "nothing submitted" in out and not submitted(out), out


def test_submitit_sweep_uses_job_arrays(slurm, tmp_path):
    args = sweep_overrides(
        tmp_path,
        "experiment.variants={base: [], h2: [history.size=2]}",
        "experiment.comparisons={history: {variants: [base, h2]}}",
        "experiment.seeds=[0]",
    )
    (tmp_path / "logs").mkdir()
    out = run_cli("sweep", "submit", EXPERIMENT, *args, env=job_env()).stdout
    jobs = submitted(out)
    assert len([k for k in jobs if k.startswith("shared ")]) == 7, out
    wait_jobs([jobs["comparison report"]], SWEEP_TIMEOUT_S)
    arrays = [jobs[f"array {s}"] for s in ("train", "evaluate", "report")]
    states = sacct_states(arrays)
    assert {k: v for k, v in states.items() if "_" in k} == {f"{a}_{i}": "COMPLETED" for a in arrays for i in (0, 1)}
    assert sacct_states([jobs["comparison report"]])[jobs["comparison report"]] == "COMPLETED"
    again = run_cli("sweep", "submit", EXPERIMENT, *args, env=job_env()).stdout
    assert "nothing submitted" in again and not submitted(again), again
