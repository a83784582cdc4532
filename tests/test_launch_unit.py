"""Slurm launcher pieces that need no Slurm: resources, sbatch/submitit options, time limits, the
Dask commands slurm/dask-cluster.sh runs, dask-jobqueue arguments, and the ``plan`` output that
slurm/pipeline.sh parses."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from microparade.compute.cluster import expected_workers, jobqueue_kwargs
from microparade.config import build_config
from microparade.slurm.dask_allocation import (
    ShellVar,
    dask_environment,
    dask_scheduler_command,
    dask_worker_command,
    shell_join,
)
from microparade.slurm.resources import parse_time_minutes, sbatch_args, stage_resources
from microparade.slurm.resources import submitit_params as _submitit_params
from microparade.slurm.submit import check_submittable
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

PY = "/opt/venv/bin/python"


def cfg(*overrides: str):
    return build_config({}, list(overrides))


# ----------------------------------------------------------------------------------------------
# resources
# ----------------------------------------------------------------------------------------------
def test_stage_resources_take_the_stage_value_over_the_default():
    c = cfg(
        "slurm.default.partition=cpu",
        "slurm.default.time=02:00:00",
        "slurm.default.mem=16G",
        "slurm.default.cpus_per_task=8",
        "slurm.default.account=proj",
        "slurm.train.partition=gpu",
        "slurm.train.gpus_per_node=4",
        "slurm.train.nodes=2",
        "slurm.train.time=1-00:00:00",
    )
    train = stage_resources(c, "train")
    assert train.model_dump() == {
        "partition": "gpu",
        "time": "1-00:00:00",
        "nodes": 2,
        "gpus_per_node": 4,
        "cpus_per_task": 8,
        "mem": "16G",
        "account": "proj",
        "qos": None,
    }
    # A stage without its own section is the default exactly; the default is not modified.
    assert stage_resources(c, "ingest") == c.slurm.default
    assert c.slurm.default.partition == "cpu" and c.slurm.default.nodes is None


def test_sbatch_args_cpu_stage_and_multi_node_gpu_training():
    c = cfg(
        "slurm.default.mem=4G",
        "slurm.default.qos=short",
        "slurm.ingest.nodes=4",
        "slurm.ingest.cpus_per_task=16",
        "slurm.train.nodes=2",
        "slurm.train.gpus_per_node=4",
        "slurm.train.partition=gpu",
    )
    assert sbatch_args(c, "ingest") == ["--nodes=4", "--cpus-per-task=16", "--mem=4G", "--qos=short"]
    # One task per GPU for training (DDP ranks); Dask stages keep one task per node.
    assert sbatch_args(c, "train") == [
        "--partition=gpu",
        "--nodes=2",
        "--mem=4G",
        "--qos=short",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
    ]
    c = cfg("slurm.text.gpus_per_node=2")
    assert sbatch_args(c, "text") == ["--gpus-per-node=2"]
    assert sbatch_args(cfg(), "report") == []


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("45", 45),
        ("5:00", 5),
        ("5:01", 6),
        ("02:00:00", 120),
        ("01:30:30", 91),
        ("1-0", 1440),
        ("2-03", 2 * 1440 + 180),
        ("1-02:03", 1440 + 123),
        ("1-00:00:01", 1441),
        ("0:30", 1),
        ("0", 1),
    ],
)
def test_parse_time_minutes_reads_every_slurm_format(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "UNLIMITED", "1:2:3:4", "1-2:3:4:5", "-5", "1--2"])
def test_parse_time_minutes_rejects_what_slurm_would(text):
    with pytest.raises(ValueError, match="is not a Slurm time limit"):
        parse_time_minutes(text)


def test_submitit_parameters_render_to_the_expected_sbatch_script(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    c = cfg(
        "slurm.default.time=1-00:30",
        "slurm.default.mem=32G",
        "slurm.default.cpus_per_task=8",
        "slurm.train.nodes=2",
        "slurm.train.gpus_per_node=4",
        "slurm.train.account=proj",
    )
    params = _submitit_params(c, "train")
    assert params["slurm_time"] == 1470
    kwargs = {k.removeprefix("slurm_"): v for k, v in params.items()}
    script = _make_sbatch_string(command="python -m x", folder=tmp_path, **kwargs)
    for line in (
        "--job-name=mp-train",
        "--time=1470",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=32G",
        "--account=proj",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {line}\n" in script, line
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"' in script
    # Only training gets the pre-timeout signal delay and one task per GPU.
    ingest = _submitit_params(c, "ingest")
    assert "slurm_signal_delay_s" not in ingest and "slurm_ntasks_per_node" not in ingest
    assert ingest["slurm_job_name"] == "mp-ingest" and ingest["nodes"] == 1


def test_submitit_jobs_get_the_registry_defaults_that_the_sbatch_scripts_have():
    """With no slurm.* config, a submitit job asks for what slurm/<stage>.sbatch asks for."""
    report = _submitit_params(cfg(), "report")
    assert (report["nodes"], report["slurm_cpus_per_task"], report["slurm_mem"], report["slurm_time"]) == (
        1,
        2,
        "4G",
        30,
    )
    train = _submitit_params(cfg(), "train")
    assert (train["slurm_time"], train["slurm_signal_delay_s"]) == (1440, 90)
    # The config still wins over the registry's defaults.
    assert _submitit_params(cfg("slurm.report.mem=1G"), "report")["slurm_mem"] == "1G"


def test_submit_refuses_scheduler_file_without_a_scheduler(monkeypatch):
    monkeypatch.delenv("MICROPARADE_SCHEDULER_FILE", raising=False)
    with pytest.raises(RuntimeError, match="use slurm/pipeline.sh"):
        check_submittable(cfg("cluster.kind=scheduler_file"))


# ----------------------------------------------------------------------------------------------
# Dask inside an allocation
# ----------------------------------------------------------------------------------------------
def test_cpu_dask_commands():
    c = cfg("cluster.memory_limit=6GiB")
    assert dask_scheduler_command(c, "/shared/s.json", PY) == [
        PY,
        "-m",
        "dask",
        "scheduler",
        "--scheduler-file",
        "/shared/s.json",
        "--port",
        "0",
        "--dashboard-address",
        ":0",
    ]
    assert dask_worker_command(c, "/shared/s.json", 4, "/local/tmp", PY) == [
        PY,
        "-m",
        "dask",
        "worker",
        "--scheduler-file",
        "/shared/s.json",
        "--nworkers",
        "1",
        "--nthreads",
        "4",
        "--memory-limit",
        "6GiB",
        "--local-directory",
        "/local/tmp",
        "--name",
        "SLURMD_NODENAME",
    ]
    assert dask_environment(c) == {}


def test_gpu_ucx_dask_commands_over_infiniband():
    c = cfg(
        "cluster.gpu=true",
        "cluster.protocol=ucx",
        "cluster.enable_infiniband=true",
        "cluster.interface=ib0",
        "cluster.rmm_pool_size=30GB",
        "cluster.enable_nvlink=false",
    )
    assert dask_scheduler_command(c, "/shared/s.json", PY)[-4:] == ["--protocol", "ucx", "--interface", "ib0"]
    assert dask_worker_command(c, "/shared/s.json", 8, "/local/tmp", PY) == [
        PY,
        "-m",
        "dask",
        "cuda",
        "worker",
        "--scheduler-file",
        "/shared/s.json",
        "--local-directory",
        "/local/tmp",
        "--protocol",
        "ucx",
        "--enable-tcp-over-ucx",
        "--enable-infiniband",
        "--disable-nvlink",
        "--interface",
        "ib0",
        "--rmm-pool-size",
        "30GB",
        "--name",
        "SLURMD_NODENAME",
    ]
    env = dask_environment(c)
    assert env["DASK_DATAFRAME__BACKEND"] == "cudf"
    for prefix in ("DASK_DISTRIBUTED_UCXX__", "DASK_DISTRIBUTED__COMM__UCX__"):
        assert {k.removeprefix(prefix): v for k, v in env.items() if k.startswith(prefix)} == {
            "CREATE_CUDA_CONTEXT": "True",
            "CUDA_COPY": "True",
            "TCP": "True",
            "INFINIBAND": "True",
            "NVLINK": "False",
        }
    # CPU workers over UCX: TCP only, never CUDA, NVLink or (unless enabled) InfiniBand.
    c = cfg("cluster.protocol=ucx")
    cmd = dask_worker_command(c, "/s.json", 1, "/tmp", PY)
    assert cmd[cmd.index("--protocol") + 1] == "ucx" and not [f for f in cmd if "nvlink" in f or "infiniband" in f]
    env = dask_environment(c)
    assert {k.removeprefix("DASK_DISTRIBUTED_UCXX__"): v for k, v in env.items() if "UCXX" in k} == {
        "CREATE_CUDA_CONTEXT": "False",
        "CUDA_COPY": "False",
        "TCP": "True",
        "INFINIBAND": "False",
        "NVLINK": "False",
    }
    assert env["DASK_DISTRIBUTED__COMM__UCX__NVLINK"] == "False" and "DASK_DATAFRAME__BACKEND" not in env
    assert (
        dask_environment(cfg("cluster.protocol=ucx", "cluster.enable_infiniband=true"))[
            "DASK_DISTRIBUTED_UCXX__INFINIBAND"
        ]
        == "True"
    )
    # GPU workers over TCP: cuDF backend, no UCX settings; no RMM pool when it is unset.
    c = cfg("cluster.gpu=true", "cluster.rmm_pool_size=null")
    cmd = dask_worker_command(c, "/s.json", 1, "/tmp", PY)
    assert "--protocol" not in cmd and "--rmm-pool-size" not in cmd
    assert dask_environment(c) == {"DASK_DATAFRAME__BACKEND": "cudf"}


def test_shell_join_expands_only_the_node_name_where_the_worker_runs(tmp_path):
    weird = str(tmp_path / "dir with space" / "it's $HOME")
    line = shell_join(["printf", "%s\\n", weird, "--name", ShellVar("SLURMD_NODENAME"), "$NOT_EXPANDED"])
    out = subprocess.run(
        ["bash", "-c", f"exec {line}"],
        env={"SLURMD_NODENAME": "node7", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == [weird, "--name", "node7", "$NOT_EXPANDED"]
    with pytest.raises(ValueError):
        ShellVar("X; rm -rf /")


def test_dask_commands_cli_output_evaluates_in_bash(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("cluster: {gpu: true, protocol: ucx, interface: ib0, enable_infiniband: true}\n")
    proc = run_cli(
        "dask-commands",
        config,
        "--scheduler-file",
        tmp_path / "s.json",
        "--nthreads",
        "3",
        "--local-directory",
        "/scratch",
        "--python",
        PY,
    )
    script = proc.stdout + 'printf "%s\\n" "$MP_DASK_WORKER_CMD" "$MP_DASK_SCHEDULER_CMD" "$MP_DASK_ENV"'
    worker, scheduler, env = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert shlex.split(worker)[:5] == [PY, "-m", "dask", "cuda", "worker"]
    assert worker.endswith('--name "${SLURMD_NODENAME}"')
    assert shlex.split(scheduler) == [
        PY,
        "-m",
        "dask",
        "scheduler",
        "--scheduler-file",
        str(tmp_path / "s.json"),
        "--port",
        "0",
        "--dashboard-address",
        ":0",
        "--protocol",
        "ucx",
        "--interface",
        "ib0",
    ]
    assert "DASK_DATAFRAME__BACKEND=cudf" in env.split() and "DASK_DISTRIBUTED_UCXX__INFINIBAND=True" in env.split()


def test_expected_workers_is_at_least_one_per_node_started(monkeypatch):
    monkeypatch.delenv("MICROPARADE_DASK_WORKERS", raising=False)
    assert expected_workers(cfg("cluster.min_workers=3")) == 3
    monkeypatch.setenv("MICROPARADE_DASK_WORKERS", "8")
    assert expected_workers(cfg("cluster.min_workers=3")) == 8
    assert expected_workers(cfg("cluster.min_workers=12")) == 12


def test_jobqueue_kwargs():
    c = cfg(
        "cluster.kind=jobqueue",
        "cluster.jobqueue.cores=2",
        "cluster.jobqueue.memory=3GiB",
        "cluster.jobqueue.walltime=00:20:00",
        "cluster.jobqueue.scheduler_host=127.0.0.1",
        f"cluster.jobqueue.python={PY}",
        "cluster.jobqueue.queue=debug",
        "cluster.jobqueue.log_directory=/logs",
        "cluster.jobqueue.job_extra_directives=[--qos=short]",
        "cluster.jobqueue.job_script_prologue=[module load cuda]",
    )
    assert jobqueue_kwargs(c) == {
        "cores": 2,
        "processes": 1,
        "memory": "3GiB",
        "walltime": "00:20:00",
        "job_extra_directives": ["--qos=short"],
        "job_script_prologue": ["module load cuda"],
        "queue": "debug",
        "log_directory": "/logs",
        "python": PY,
        "scheduler_options": {"host": "127.0.0.1"},
    }
    assert jobqueue_kwargs(cfg("cluster.protocol=ucx"))["protocol"] == "ucx"
    # The kwargs build a real SLURMCluster job script (nothing is submitted until scale()).
    from dask_jobqueue.slurm import SLURMJob

    kw = {k: v for k, v in jobqueue_kwargs(c).items() if k != "scheduler_options"}
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kw).job_script()
    for line in (
        "#SBATCH -J dask-worker",
        "#SBATCH -p debug",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=3G",
        "#SBATCH -t 00:20:00",
        "#SBATCH --qos=short",
        "module load cuda",
    ):
        assert line in script, (line, script)
    assert f"{PY} -m distributed.cli.dask_worker tcp://127.0.0.1:8786" in script


# ----------------------------------------------------------------------------------------------
# plan: what slurm/pipeline.sh reads
# ----------------------------------------------------------------------------------------------
def test_plan_prints_every_field_without_empty_ones(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {{generate: {{rows: 1000}}}}\n")
    proc = run_cli("plan", config, "slurm.default.mem=2G", "slurm.train.gpus_per_node=2")
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["generate", "ingest", "text", "features", "chunks", "train", "evaluate", "report"]
    assert all(len(r) == 5 and all(r) for r in rows), rows
    assert rows[0] == ["generate", "-", "missing", "-", "--mem=2G"]
    assert rows[4][:2] == ["chunks", "ingest,text,features"]
    assert rows[5][4] == "--mem=2G --gpus-per-node=2 --ntasks-per-node=2"
    # bash's `read` with IFS=tab (as in pipeline.sh) gets the same fields back.
    script = "while IFS=$'\\t' read -r s i st a r; do echo \"$s|$i|$st|$a|$r\"; done"
    read_back = subprocess.run(
        ["bash", "-c", script], input=proc.stdout, capture_output=True, text=True, check=True
    ).stdout
    assert read_back.splitlines()[0] == "generate|-|missing|-|--mem=2G"
    as_json = json.loads(run_cli("plan", config, "--json").stdout)
    assert as_json[0] == {"stage": "generate", "inputs": [], "state": "missing", "active_job": None, "sbatch_args": []}


def test_pipeline_sh_reports_a_missing_config(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "slurm" / "pipeline.sh"), str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "MICROPARADE_PYTHON": sys.executable},
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_slurm_scripts_parse():
    for script in sorted(Path(ROOT / "slurm").glob("*.s*")):
        subprocess.run(["bash", "-n", str(script)], check=True)


# ----------------------------------------------------------------------------------------------
# status columns
# ----------------------------------------------------------------------------------------------
def test_status_columns_show_the_publishing_job_then_the_latest_recorded_one(tmp_path, monkeypatch):
    from microparade.engine import compute_status, run_pipeline
    from microparade.slurm.records import record_job, slurm_status_columns
    from microparade.storage import Store

    c = cfg(f"run_dir={tmp_path / 'run'}", "data.generate.rows=100")
    store = Store(c.run_dir)
    # generate ran as job 990001 (a later record of it, e.g. a duplicate, does not override that);
    # ingest has a queued job 990003 and nothing published; text was never submitted.
    monkeypatch.setenv("SLURM_JOB_ID", "990001")
    run_pipeline(c, only="generate")
    monkeypatch.delenv("SLURM_JOB_ID")
    record_job(store, "generate", "990002", "sbatch")
    record_job(store, "ingest", "990003", "sbatch")
    cols = slurm_status_columns(c, compute_status(c))
    # Unknown to accounting (these ids were never submitted): state "?", elapsed "-".
    assert cols == {
        "generate": {"slurm_job": "990001", "slurm_state": "?", "elapsed": "-"},
        "ingest": {"slurm_job": "990003", "slurm_state": "?", "elapsed": "-"},
    }
    # A stage run outside Slurm shows no job.
    run_pipeline(c, only="generate", force=True)
    assert "generate" not in slurm_status_columns(c, compute_status(c))


def test_submitit_jobs_source_the_site_script(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROPARADE_HOME", str(tmp_path))
    assert not any("site.sh" in line for line in _submitit_params(cfg(), "text")["slurm_setup"])
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "site.sh").write_text("module load cuda\n")
    assert _submitit_params(cfg(), "text")["slurm_setup"][0] == f"source {tmp_path / 'slurm' / 'site.sh'}"
