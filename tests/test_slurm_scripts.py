"""slurm/<stage>.sbatch and jobs/<stage>.py are the registry rendered: current on disk, one per
registered stage, valid bash, and asking for the resources submitit gets (no Slurm needed)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from microparade.config import SlurmConfig, SlurmStageConfig
from microparade.engine.registry import SIGNAL_WARNING_S, STAGE_NAMES, STAGES, by_name
from microparade.slurm.resources import sbatch_flags
from microparade.slurm.scripts import REGENERATE, check, rendered, sbatch_script, write
from tests.helpers.paths import ROOT


def _sbatch_options(text: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)$", text, flags=re.MULTILINE)


def test_files_on_disk_are_the_rendering():
    problems = check(ROOT)
    assert not problems, f"stage files differ from the registry; regenerate with `{REGENERATE}`: {problems}"


def test_one_script_and_one_job_file_per_registered_stage():
    assert sorted(p.stem for p in (ROOT / "slurm").glob("*.sbatch")) == sorted(STAGE_NAMES)
    assert sorted(p.stem for p in (ROOT / "jobs").glob("*.py")) == sorted(STAGE_NAMES)
    for stage in STAGE_NAMES:
        for path in (ROOT / "slurm" / f"{stage}.sbatch", ROOT / "jobs" / f"{stage}.py"):
            assert os.access(path, os.X_OK), f"{path} is not executable"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_scripts_parse_as_bash(stage):
    proc = subprocess.run(["bash", "-n", str(ROOT / "slurm" / f"{stage}.sbatch")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("spec", STAGES, ids=STAGE_NAMES)
def test_sbatch_resource_lines_are_the_registry_defaults(spec):
    """The #SBATCH defaults are what submitit gets with no slurm.* config (sbatch_flags of the registry)."""
    options = _sbatch_options((ROOT / "slurm" / f"{spec.name}.sbatch").read_text())
    fixed = [f"--job-name=mp-{spec.name}", "--ntasks-per-node=1"]
    if spec.requeue:
        fixed += [f"--signal=B:USR2@{SIGNAL_WARNING_S}", "--requeue", "--open-mode=append"]
    assert Counter(options) - Counter(fixed) == Counter(sbatch_flags(spec.resources, spec))
    assert not Counter(fixed) - Counter(options), f"missing fixed lines in {spec.name}.sbatch"


def test_every_registered_stage_has_its_slurm_config_section():
    """Adding a stage needs its ``slurm.<stage>`` section (docs/slurm.md, "To add a stage")."""
    assert set(STAGE_NAMES) <= set(SlurmConfig.model_fields)


def test_script_body_follows_the_registry():
    bodies = {s.name: sbatch_script(s).splitlines()[-1] for s in STAGES}
    assert bodies["ingest"] == 'mp_dask_stage ingest "$@"'
    assert bodies["train"] == 'mp_requeueing train "$@"'
    assert bodies["report"] == 'mp_stage report "$@"'


def test_gpu_defaults_set_the_tasks_instead_of_one_per_node():
    train = dataclasses.replace(by_name("train"), resources=SlurmStageConfig(nodes=2, gpus_per_node=4, time="10"))
    assert _sbatch_options(sbatch_script(train))[:5] == [
        "--job-name=mp-train",
        "--nodes=2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--time=10",
    ]


def test_check_reports_stale_missing_and_extra_files(tmp_path: Path):
    write(tmp_path)
    assert check(tmp_path) == []
    (tmp_path / "slurm" / "ingest.sbatch").write_text("#!/bin/bash\n")
    (tmp_path / "jobs" / "train.py").chmod(0o644)
    (tmp_path / "jobs" / "report.py").unlink()
    (tmp_path / "slurm" / "old.sbatch").write_text("")
    assert check(tmp_path) == [
        "stale: slurm/ingest.sbatch",
        "stale: jobs/train.py",
        "missing: jobs/report.py",
        "extra (no registered stage): slurm/old.sbatch",
    ]
    assert sorted(write(tmp_path)) == ["jobs/report.py", "jobs/train.py", "slurm/ingest.sbatch"]
    assert check(tmp_path) == ["extra (no registered stage): slurm/old.sbatch"]
    assert len(rendered()) == 2 * len(STAGES)


def test_check_command_exits_1_naming_the_problem(tmp_path: Path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "common.sh").write_text("")
    env = {**os.environ, "MICROPARADE_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "microparade.slurm.scripts", "--check"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "missing: slurm/ingest.sbatch" in proc.stdout and REGENERATE in proc.stderr
    assert subprocess.run(cmd[:-1], env=env, capture_output=True, text=True).returncode == 0
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 0


def test_job_file_runs():
    proc = subprocess.run([sys.executable, "jobs/ingest.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Run the ingest stage alone" in proc.stdout
