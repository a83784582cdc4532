"""CPU thread defaults: physical cores of the affinity, capped by Slurm's --cpus-per-task."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from microparade.compute.backends import cpu_threads, physical_cores
from tests.helpers.paths import ROOT


def test_configured_threads_win():
    assert cpu_threads(3) == 3


def test_default_is_the_physical_cores_of_the_affinity(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cpus = os.sched_getaffinity(0)
    assert 1 <= cpu_threads(0) == physical_cores(cpus) <= len(cpus)


def test_smt_siblings_count_once(tmp_path, monkeypatch):
    # Two logical CPUs on one core (SMT siblings), one on another: 2 physical cores.
    topology = {0: ("0", "0"), 1: ("0", "0"), 2: ("0", "1")}
    real_open = open

    def fake_open(path, *args, **kwargs):
        parts = str(path).split("/")
        if str(path).startswith("/sys/devices/system/cpu/cpu") and parts[-2] == "topology":
            cpu = int(parts[-3][3:])
            value = topology[cpu][0 if parts[-1] == "physical_package_id" else 1]
            f = tmp_path / f"{cpu}-{parts[-1]}"
            f.write_text(value + "\n")
            return real_open(f, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert physical_cores({0, 1, 2}) == 2
    assert physical_cores({0, 1}) == 1


def test_slurm_cpus_per_task_caps_the_default(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpu_threads(0) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "512")
    assert cpu_threads(0) == physical_cores(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpu_threads(0) == physical_cores(os.sched_getaffinity(0)), "outside a job the variable is stale"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_entry_points_make_waiting_openmp_threads_sleep_unless_told_otherwise(given, expected):
    code = (
        "import os; from microparade.cli import main; main(['config', 'configs/demo.yaml', '--get', 'run_dir']); "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected
