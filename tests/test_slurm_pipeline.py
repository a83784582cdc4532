"""The whole pipeline under the real local Slurm (tests/slurm/start.sh): sbatch scripts and submitit.

Everything is submitted at once by the module fixture, so that the independent runs share the
two emulated nodes; each test then waits for its own jobs:

- run A: ``slurm/pipeline.sh`` (one sbatch job per stage, afterok chain); its train job gets
  the pre-timeout SIGUSR2 (``scancel --batch --signal=USR2``) and requeues itself, then, once
  resumed, is requeued by ``scontrol requeue``;
- run B: ``microparade submit`` (submitit), same config; its train job gets the pre-timeout
  SIGUSR2 (``scancel --signal=USR2``) after its first checkpoint and requeues itself;
- run R: train + evaluate on a copy of A's upstream stages, never interrupted: the reference;
- run C: a chain whose ingest fails at run time;
- D: a 2-node ingest job with ``cluster.kind=scheduler_file`` (Dask inside the allocation);
- E: an ingest job with ``cluster.kind=jobqueue`` (Dask workers as separate Slurm jobs);
- run X: ``slurm/pipeline.sh`` with ``train.backend=xla`` / ``evaluate.backend=xla`` on the
  partition ``tpu``: those jobs run the XLA environment (.venv-tpu) on XLA's CPU runtime, the
  CPU report job collects their outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.helpers.slurm_cluster import jobqueue_overrides, sbatch, wait_jobs

# The first test to use the module fixture waits for a whole chain (CHAIN_TIMEOUT_S) after launching it.
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

CONFIG = ROOT / "configs" / "demo.yaml"
PIPELINE = ROOT / "slurm" / "pipeline.sh"
STAGES = ["generate", "ingest", "text", "features", "chunks", "train", "evaluate", "report"]
UPSTREAM = ["generate", "ingest", "text", "features", "chunks"]
#: Generous bounds for a loaded 2-core machine; on a quiet one the module takes about 4 minutes.
CHAIN_TIMEOUT_S = 900
JOB_TIMEOUT_S = 300
TRAIN_STEPS = 40


def overrides(run: Path, *extra: str) -> list[str]:
    """The smallest config that still runs every stage for real, as ``key=value`` overrides.

    3,000 synthetic rows (300 validation rows, enough positives for AP), the tiny encoder, one
    Dask worker, 40 training steps of 16 examples with a checkpoint every 4 (so that an
    interruption lands mid-training and the resumed run has work left) and a validation on 100
    rows every 20 (model selection across the interruption), one torch thread (CPU determinism), the
    labelled validation split evaluated (the test split has no labels: predictions only), the
    smallest baseline sample, and Slurm resources that fit the emulated nodes (4 CPUs, 8000 MB).
    """
    return [
        f"run_dir={run / 'run'}",
        f"slurm.log_dir={run / 'logs'}",
        "data.generate.rows=3000",
        "model.encoder=tiny",
        "cluster.n_workers=1",
        "cluster.memory_limit=1GiB",
        f"train.max_steps={TRAIN_STEPS}",
        "train.batch_size=16",
        "train.eval_every=20",
        "train.eval_rows=100",
        "train.checkpoint_every=4",
        "train.log_every=4",
        "train.num_threads=1",
        "evaluate.splits=[valid]",
        "report.baseline_max_rows=1000",
        "slurm.default.mem=1500M",
        "slurm.default.cpus_per_task=1",
        "slurm.default.time=00:30:00",
        *extra,
    ]


#: Run X: train and evaluate on the ``tpu`` partition with the xla backend (2 shape buckets at most).
XLA_OVERRIDES = (
    "train.backend=xla",
    "evaluate.backend=xla",
    "slurm.train.partition=tpu",
    "slurm.evaluate.partition=tpu",
    "train.shape_buckets.rows=2",
    "train.shape_buckets.lengths=1",
)
#: XLA's CPU runtime in the TPU jobs (sbatch exports the environment). One device: the jobs share
#: 2 busy cores, and XLA:CPU aborts a collective whose device threads wait more than 10 s for each
#: other (tests/test_xla.py covers several devices).
XLA_ENV = {"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def xla_python() -> str | None:
    """The XLA environment's Python (tests/helpers/xla.py decides: skip, or fail in CI)."""
    from tests.helpers.xla import TPU_PYTHON

    return str(TPU_PYTHON) if TPU_PYTHON.exists() else None


def raw_from(run: Path) -> list[str]:
    """Overrides reading ``run``'s generated raw files instead of generating (no generate stage)."""
    gen = run / "run" / "generate"
    return [
        "data.generate=null",
        f"data.raw.train={gen / 'train'}",
        f"data.raw.valid={gen / 'valid'}",
        f"data.raw.test={gen / 'test'}",
    ]


def job_env() -> dict[str, str]:
    # The jobs run this interpreter (sbatch exports the submitting environment).
    return {"MICROPARADE_PYTHON": sys.executable}


def run_pipeline_sh(*args: str, env: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """``slurm/pipeline.sh CONFIG ARGS``; returns its output and ``{stage: job id}`` submitted."""
    proc = subprocess.run(
        ["bash", str(PIPELINE), str(CONFIG), *args],
        cwd=ROOT,
        env={**os.environ, **job_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"pipeline.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    jobs = dict(re.findall(r"^(\w+) (\d+) \((?!already)", proc.stdout, flags=re.M))
    return proc.stdout, jobs


def run_submit(*args: str) -> tuple[str, dict[str, str]]:
    """``microparade submit CONFIG ARGS``; returns its output and ``{stage: job id}`` submitted."""
    proc = run_cli("submit", CONFIG, *args, env=job_env(), timeout=180)
    jobs = dict(re.findall(r"^(\w+)\t(\d+)$", proc.stdout, flags=re.M))
    return proc.stdout, jobs


def status_json(*args: str) -> dict[str, dict]:
    proc = run_cli("status", CONFIG, *args, "--json")
    return {row["stage"]: row for row in json.loads(proc.stdout)["stages"]}


def sacct_field(job_ids: list[str], fields: str, duplicates: bool = False) -> list[list[str]]:
    cmd = ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", fields]
    if duplicates:
        cmd.append("-D")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / "run" / stage / "_MANIFEST.json").read_text())


def file_hashes(run: Path, stage: str) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in manifest(run, stage)["files"]}


CHECKPOINT = r"\[train\] checkpoint ckpt-\d+\.pt at step \d+"


def wait_for_text(
    path: Path, pattern: str, timeout: float, start: int = 0, stop_pattern: str | None = None
) -> re.Match:
    """Poll a log file (it may not exist yet) until ``pattern`` matches at or after offset
    ``start``; fail early if ``stop_pattern`` shows up there first."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = re.compile(pattern, flags=re.M).search(text, start)
        if m:
            return m
        if stop_pattern and re.compile(stop_pattern, flags=re.M).search(text, start):
            raise AssertionError(f"{stop_pattern!r} appeared before {pattern!r} in {path}:\n{text[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{pattern!r} not seen within {timeout:.0f} s; log so far:\n{text[-3000:]}")


class Interrupter(threading.Thread):
    """Interrupts a running train job: for each ``(pattern, command)`` step, waits until the log
    shows ``pattern`` after what the previous step saw, then runs ``command``."""

    def __init__(self, what: str, log_path: Path, steps: list[tuple[str, list[str]]]):
        super().__init__(name=what, daemon=True)
        self.what, self.log_path, self.steps = what, log_path, steps
        self.seen: list[str] = []
        self.error = ""

    def run(self) -> None:
        start = 0
        try:
            for pattern, command in self.steps:
                m = wait_for_text(self.log_path, pattern, CHAIN_TIMEOUT_S, start, stop_pattern=r"\[train\] done in")
                self.seen.append(m.group(0))
                start = m.end()
                subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
        except Exception as exc:  # reported by the test that joins this thread
            self.error = f"{type(exc).__name__}: {exc}"

    def result(self) -> list[str]:
        """The log lines after which the job was interrupted, one per step."""
        self.join(CHAIN_TIMEOUT_S)
        assert not self.is_alive(), f"{self.what}: still waiting for {self.steps[len(self.seen)][0]!r}"
        assert not self.error, f"{self.what}: {self.error}"
        return self.seen


@dataclass
class Launched:
    base: Path
    a: Path
    b: Path
    c: Path
    d: Path
    e: Path
    r: Path
    a_out: str
    b_out: str
    c_out: str
    a_jobs: dict[str, str]
    b_jobs: dict[str, str]
    c_jobs: dict[str, str]
    d_job: str
    e_job: str
    r_jobs: dict[str, str]
    a_requeue: Interrupter
    b_usr2: Interrupter
    x: Path
    x_out: str
    x_jobs: dict[str, str]


@pytest.fixture(scope="module")
def launched(slurm, tmp_path_factory) -> Launched:
    base = tmp_path_factory.mktemp("slurm-pipeline")
    a, b, c, d, e, r, x = (base / n for n in "abcderx")
    for p in (a, b, c, d, e, r, x):
        (p / "logs").mkdir(parents=True)

    a_out, a_jobs = run_pipeline_sh(*overrides(a))
    b_out, b_jobs = run_submit(*overrides(b))
    c_out, c_jobs = run_pipeline_sh(*overrides(c, "data.generate=null", "data.raw.train=/nonexistent/*"))

    env = job_env()
    after_generate = [f"--dependency=afterok:{a_jobs['generate']}", "--kill-on-invalid-dep=yes"]
    common = ["--mem=1500M", "--cpus-per-task=1", "--time=15", f"--export=ALL,MICROPARADE_HOME={ROOT}"]
    d_job = sbatch(
        [
            *after_generate,
            *common,
            "--nodes=2",
            f"--output={d / 'logs' / 'ingest-%j.out'}",
            str(ROOT / "slurm" / "ingest.sbatch"),
            str(CONFIG),
            *overrides(d, *raw_from(a), "cluster.kind=scheduler_file"),
        ],
        env=env,
    )
    e_job = sbatch(
        [
            *after_generate,
            *common,
            f"--output={e / 'logs' / 'ingest-%j.out'}",
            str(ROOT / "slurm" / "ingest.sbatch"),
            str(CONFIG),
            *overrides(
                e,
                *raw_from(a),
                *jobqueue_overrides(e / "logs"),
            ),
        ],
        env=env,
    )
    # R: A's upstream outputs copied once A's chunks are published, then train + evaluate alone.
    copy = sbatch(
        [
            f"--dependency=afterok:{a_jobs['chunks']}",
            "--kill-on-invalid-dep=yes",
            "--mem=100M",
            "--time=5",
            f"--output={r / 'logs' / 'copy-%j.out'}",
            "--wrap",
            f"mkdir -p {r / 'run'} && cp -r " + " ".join(str(a / "run" / s) for s in UPSTREAM) + f" {r / 'run'}/",
        ],
    )
    r_train = sbatch(
        [
            f"--dependency=afterok:{copy}",
            "--kill-on-invalid-dep=yes",
            *common,
            "--job-name=mp-train",
            f"--output={r / 'logs' / '%x-%j.out'}",
            str(ROOT / "slurm" / "train.sbatch"),
            str(CONFIG),
            *overrides(r),
        ],
        env=env,
    )
    r_eval = sbatch(
        [
            f"--dependency=afterok:{r_train}",
            "--kill-on-invalid-dep=yes",
            *common,
            "--job-name=mp-evaluate",
            f"--output={r / 'logs' / '%x-%j.out'}",
            str(ROOT / "slurm" / "evaluate.sbatch"),
            str(CONFIG),
            *overrides(r),
        ],
        env=env,
    )

    a_train, b_train = a_jobs["train"], b_jobs["train"]
    # A, sbatch: first the pre-timeout SIGUSR2 to the batch shell (what --signal=B:USR2@90 sends),
    # then, after the resumed run's first checkpoint, an administrator's `scontrol requeue`.
    a_requeue = Interrupter(
        "A: SIGUSR2, then scontrol requeue",
        a / "logs" / f"mp-train-{a_train}.out",
        [
            (CHECKPOINT, ["scancel", "--batch", "--signal=USR2", a_train]),
            (r"\[train\] resumed from checkpoint.*\n(?:.*\n)*?.*" + CHECKPOINT, ["scontrol", "requeue", a_train]),
        ],
    )
    # B, submitit: SIGUSR2 to the job step that runs the stage (--signal=USR2@90).
    b_usr2 = Interrupter(
        "B: SIGUSR2",
        b / "logs" / "submitit" / b_train / f"{b_train}_0_log.err",
        [(CHECKPOINT, ["scancel", "--signal=USR2", b_train])],
    )
    a_requeue.start()
    b_usr2.start()
    # Last: submitting it must not delay the interrupters, which watch A's and B's train jobs.
    x_out, x_jobs = run_pipeline_sh(*overrides(x, *XLA_OVERRIDES), env=XLA_ENV) if xla_python() else ("", {})
    return Launched(
        base,
        a,
        b,
        c,
        d,
        e,
        r,
        a_out,
        b_out,
        c_out,
        a_jobs,
        b_jobs,
        c_jobs,
        d_job,
        e_job,
        {"copy": copy, "train": r_train, "evaluate": r_eval},
        a_requeue,
        b_usr2,
        x,
        x_out,
        x_jobs,
    )


def _assert_all_done_under_slurm(run: Path, jobs: dict[str, str], launcher: str, *extra: str) -> None:
    rows = status_json(*overrides(run, *extra))
    assert list(rows) == STAGES
    for stage in STAGES:
        row = rows[stage]
        assert row["state"] == "done", (stage, row)
        assert row["slurm_job"] == jobs[stage], (stage, row)
        assert row["slurm_state"] == "COMPLETED", (stage, row)
        assert re.fullmatch(r"\d\d:\d\d:\d\d", row["elapsed"]), (stage, row)
        # The manifest records the job that produced it.
        assert manifest(run, stage)["slurm"]["job_id"] == jobs[stage]
    recorded = json.loads((run / "run" / "_slurm" / "jobs.json").read_text())
    assert {s: [e["job_id"] for e in recorded[s]] for s in STAGES} == {s: [jobs[s]] for s in STAGES}
    assert {e["launcher"] for entries in recorded.values() for e in entries} == {launcher}
    table = run_cli("status", CONFIG, *overrides(run, *extra)).stdout
    header = table.splitlines()[1].split()
    assert header[header.index("fingerprint") + 1 :][:3] == ["slurm_job", "slurm_state", "elapsed"], table
    for stage in STAGES:
        assert re.search(rf"^{stage}\s+done\s.*\s{jobs[stage]}\s+COMPLETED\s+\d\d:\d\d:\d\d", table, flags=re.M), table


def test_pipeline_sh_runs_every_stage_as_a_chained_job(launched):
    a = launched.a
    assert set(launched.a_jobs) == set(STAGES), launched.a_out
    # Dependencies as submitted: each stage waits for the jobs of its inputs.
    assert (
        f"chunks {launched.a_jobs['chunks']} (missing, after "
        f"{launched.a_jobs['ingest']}:{launched.a_jobs['text']}:{launched.a_jobs['features']})" in launched.a_out
    )
    states = wait_jobs(launched.a_jobs.values(), timeout=CHAIN_TIMEOUT_S)
    assert set(states.values()) == {"COMPLETED"}, states
    names = {jid: name for jid, name in sacct_field(list(launched.a_jobs.values()), "JobID,JobName")}
    assert names == {jid: f"mp-{stage}" for stage, jid in launched.a_jobs.items()}
    for stage, jid in launched.a_jobs.items():
        log = (a / "logs" / f"mp-{stage}-{jid}.out").read_text()
        assert f"microparade: {stage} ran" in log, log[-2000:]
    _assert_all_done_under_slurm(a, launched.a_jobs, "sbatch")

    out, jobs = run_pipeline_sh(*overrides(a))
    assert jobs == {} and "every stage is done; nothing submitted" in out, out


def test_submit_runs_every_stage_with_submitit_and_matches_pipeline_sh(launched):
    b = launched.b
    assert set(launched.b_jobs) == set(STAGES), launched.b_out
    assert "submitted 8 job(s)" in launched.b_out
    states = wait_jobs(launched.b_jobs.values(), timeout=CHAIN_TIMEOUT_S)
    assert set(states.values()) == {"COMPLETED"}, states
    _assert_all_done_under_slurm(b, launched.b_jobs, "submitit")
    script = (
        b / "logs" / "submitit" / launched.b_jobs["chunks"] / f"{launched.b_jobs['chunks']}_submission.sh"
    ).read_text()
    deps = ":".join(launched.b_jobs[s] for s in ("ingest", "text", "features"))
    assert f"#SBATCH --dependency=afterok:{deps}" in script and "#SBATCH --kill-on-invalid-dep=yes" in script, script
    assert "#SBATCH --mem=1500M" in script and "#SBATCH --cpus-per-task=1" in script, script
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"' in script, script

    out, jobs = run_submit(*overrides(b))
    assert jobs == {} and "every stage is done; nothing submitted" in out, out

    # Same config, other launcher: byte-identical data (A finished first).
    wait_jobs(launched.a_jobs.values(), timeout=CHAIN_TIMEOUT_S)
    for stage in UPSTREAM:
        b_inputs, a_inputs = manifest(b, stage)["fingerprint_inputs"], manifest(launched.a, stage)["fingerprint_inputs"]
        assert b_inputs["config"] == a_inputs["config"] and b_inputs["code"] == a_inputs["code"], stage
        assert file_hashes(b, stage) == file_hashes(launched.a, stage), stage


def test_failed_stage_cancels_its_dependents_and_shows_failed(launched):
    c = launched.c
    jobs = launched.c_jobs
    assert set(jobs) == set(STAGES) - {"generate"}, launched.c_out
    states = wait_jobs(jobs.values(), timeout=JOB_TIMEOUT_S)
    assert states == {jid: ("FAILED" if stage == "ingest" else "CANCELLED") for stage, jid in jobs.items()}, states
    log = (c / "logs" / f"mp-ingest-{jobs['ingest']}.out").read_text()
    assert "microparade: stage ingest failed: IngestError: data.raw.train: '/nonexistent/*' matches no file" in log, (
        log[-2000:]
    )
    for stage in set(jobs) - {"ingest"}:  # cancelled while pending: they never started
        assert not (c / "logs" / f"mp-{stage}-{jobs[stage]}.out").exists(), stage
    rows = status_json(*overrides(c, "data.generate=null", "data.raw.train=/nonexistent/*"))
    assert rows["ingest"]["state"] == "failed" and "matches no file" in rows["ingest"]["reason"], rows["ingest"]
    assert (rows["ingest"]["slurm_job"], rows["ingest"]["slurm_state"]) == (jobs["ingest"], "FAILED")
    for stage in set(jobs) - {"ingest"}:
        assert rows[stage]["state"] == "missing" and rows[stage]["slurm_state"] == "CANCELLED", rows[stage]


def test_cancel_stops_every_queued_job_of_a_run(slurm, tmp_path):
    # Held jobs (extra sbatch options for every job) stay queued until cancelled.
    out, jobs = run_pipeline_sh(*overrides(tmp_path), env={"MICROPARADE_SBATCH_ARGS": "--hold"})
    assert set(jobs) == set(STAGES), out
    proc = run_cli("cancel", CONFIG, *overrides(tmp_path))
    cancelled = proc.stdout.strip().removeprefix("microparade: cancelled ").split(", ")
    assert sorted(cancelled, key=int) == sorted(jobs.values(), key=int), proc.stdout
    assert set(wait_jobs(jobs.values(), timeout=JOB_TIMEOUT_S).values()) == {"CANCELLED"}
    assert run_cli("cancel", CONFIG, *overrides(tmp_path)).stdout.strip() == "microparade: cancelled nothing"
    rows = status_json(*overrides(tmp_path))
    assert {s: (r["state"], r["slurm_state"]) for s, r in rows.items()} == {s: ("missing", "CANCELLED") for s in STAGES}


def test_two_node_job_runs_dask_workers_on_both_nodes(launched):
    d, job = launched.d, launched.d_job
    assert wait_jobs([job], timeout=JOB_TIMEOUT_S) == {job: "COMPLETED"}
    [[nodes]] = sacct_field([job], "NodeList")
    assert nodes == "node[1-2]"
    log = (d / "logs" / f"ingest-{job}.out").read_text()
    assert "dask: scheduler on node1, 2 worker task(s)" in log, log[-3000:]
    connected = r"cluster: scheduler_file \S+scheduler\.json at \S+, 2 worker\(s\): node1, node2"
    assert re.search(connected, log), log[-3000:]
    sched_log = (d / "logs" / f"dask-{job}" / "scheduler.log").read_text()
    assert re.search(r"Register worker addr: \S+ name: node1$", sched_log, flags=re.M), sched_log[-3000:]
    assert re.search(r"Register worker addr: \S+ name: node2$", sched_log, flags=re.M), sched_log[-3000:]
    wait_jobs([launched.a_jobs["ingest"]], timeout=CHAIN_TIMEOUT_S)
    assert file_hashes(d, "ingest") == file_hashes(launched.a, "ingest")


def test_jobqueue_runs_dask_workers_as_separate_slurm_jobs(launched):
    e, job = launched.e, launched.e_job
    assert wait_jobs([job], timeout=JOB_TIMEOUT_S) == {job: "COMPLETED"}
    log = (e / "logs" / f"ingest-{job}.out").read_text()
    m = re.search(r"cluster: 2 worker\(s\): SLURMCluster-0, SLURMCluster-1 in Slurm job\(s\) (\d+), (\d+);", log)
    assert m, log[-3000:]
    assert "--mem=1G" in log and f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in log, log[-3000:]
    workers = list(m.groups())
    wait_jobs(workers, timeout=JOB_TIMEOUT_S)
    rows = sacct_field(workers, "JobID,JobName,Start,NodeList")
    assert sorted(r[0] for r in rows) == sorted(workers)
    for jid, name, start, node in rows:
        assert name == "dask-worker" and start != "Unknown" and node in ("node1", "node2"), (jid, name, start, node)
    wait_jobs([launched.a_jobs["ingest"]], timeout=CHAIN_TIMEOUT_S)
    assert file_hashes(e, "ingest") == file_hashes(launched.a, "ingest")


def _train_losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_interrupted_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(launched):
    a, b, r = launched.a, launched.b, launched.r
    a_seen, [b_seen] = launched.a_requeue.result(), launched.b_usr2.result()
    r_states = wait_jobs(launched.r_jobs.values(), timeout=CHAIN_TIMEOUT_S)
    assert set(r_states.values()) == {"COMPLETED"}, r_states
    wait_jobs([launched.a_jobs["evaluate"], launched.b_jobs["evaluate"]], timeout=CHAIN_TIMEOUT_S)

    # A (sbatch): SIGUSR2 to the batch shell -> forwarded, checkpoint, exit 124 -> the job requeues
    # itself; then `scontrol requeue` -> SIGTERM -> checkpoint, exit 124, and Slurm requeues it.
    a_train = launched.a_jobs["train"]
    runs = sacct_field([a_train], "JobID,State", duplicates=True)
    assert [state for _, state in runs] == ["REQUEUED", "REQUEUED", "COMPLETED"], runs
    log = (a / "logs" / f"mp-train-{a_train}.out").read_text()
    assert all(seen in log for seen in a_seen)
    assert re.findall(
        r"stage train on node\d \(nodes: node\d, tasks 1, restart (\d), python \S+\)$", log, flags=re.M
    ) == [
        "0",
        "1",
        "2",
    ], log[-6000:]
    first, second, third = re.split(
        r"^.*stage train on node\d \(nodes: node\d, tasks 1, restart \d, python \S+\)$", log, flags=re.M
    )[1:]
    assert "SIGUSR2: asking train to checkpoint" in first, first[-3000:]
    assert f"train stopped early (exit 124 after SIGUSR2); requeueing job {a_train}" in first, first[-3000:]
    assert "SIGTERM: asking train to checkpoint" in second, second[-3000:]
    assert re.search(rf"train stopped early \(exit 124\); job {a_train} is COMPLETING", second), second[-3000:]
    steps = [
        int(re.search(r"\[train\] resumed from checkpoint ckpt-\d+\.pt: step (\d+)", run).group(1))
        for run in (second, third)
    ]
    assert 4 <= steps[0] < steps[1] < TRAIN_STEPS, (steps, log[-6000:])
    assert "resumed from checkpoint" not in first

    # B (submitit): SIGUSR2 (the pre-timeout signal) -> checkpoint, exit 124 -> the job requeues itself.
    b_train = launched.b_jobs["train"]
    runs = sacct_field([b_train], "JobID,State", duplicates=True)
    assert [state for _, state in runs] == ["REQUEUED", "COMPLETED"], runs
    blog = (b / "logs" / "submitit" / b_train / f"{b_train}_0_log.err").read_text()
    assert b_seen in blog
    assert "stopped on SIGUSR2" in blog and f"requeueing Slurm job {b_train}" in blog, blog[-4000:]
    assert f"stage train in Slurm job {b_train} on node" in blog and "(restart 1)" in blog, blog[-4000:]
    m = re.search(r"\[train\] resumed from checkpoint ckpt-(\d+)\.pt: step (\d+)", blog)
    assert m and 4 <= int(m.group(2)) < TRAIN_STEPS, blog[-4000:]

    # Both resumed runs equal the uninterrupted one: losses, weights, predictions, metrics.
    reference = _train_losses(r)
    assert [s for s, _ in reference] == list(range(4, TRAIN_STEPS + 1, 4))
    assert _train_losses(a) == reference
    assert _train_losses(b) == reference
    assert manifest(a, "train")["fingerprint"] == manifest(r, "train")["fingerprint"]
    for run in (a, b):
        assert file_hashes(run, "train")["model.pt"] == file_hashes(r, "train")["model.pt"]
        assert file_hashes(run, "evaluate") == file_hashes(r, "evaluate")
        assert json.loads((run / "run" / "evaluate" / "metrics.json").read_text()) == json.loads(
            (r / "run" / "evaluate" / "metrics.json").read_text()
        )


def test_xla_train_and_evaluate_run_on_the_tpu_partition(launched):
    """pipeline.sh with the xla backend: train and evaluate are submitted to the partition ``tpu``
    and run the XLA environment; report (CPU, default partition) collects their outputs."""
    from tests.helpers.xla import require_xla_env

    require_xla_env()
    x = launched.x
    assert set(launched.x_jobs) == set(STAGES), launched.x_out
    states = wait_jobs(launched.x_jobs.values(), timeout=CHAIN_TIMEOUT_S)
    assert set(states.values()) == {"COMPLETED"}, states
    partitions = dict(sacct_field(list(launched.x_jobs.values()), "JobID,Partition"))
    for stage, jid in launched.x_jobs.items():
        assert partitions[jid] == ("tpu" if stage in ("train", "evaluate") else "debug"), (stage, partitions)
    for stage in ("train", "evaluate"):
        log = (x / "logs" / f"mp-{stage}-{launched.x_jobs[stage]}.out").read_text()
        assert f"python {ROOT / '.venv-tpu' / 'bin' / 'python'}" in log, log[-3000:]
        assert "xla (1 CPU device(s), SPMD data parallel" in log, log[-3000:]
    train = json.loads((x / "run" / "train" / "_MANIFEST.json").read_text())["extra"]
    assert train["backend"] == "xla" and train["devices"] == 1 and train["steps"] == TRAIN_STEPS
    # at most 2 shapes (the bucket grid), each compiled once for training and once for validation
    assert 1 <= train["compilations"] <= 4 and train["selection"]["validations"] == 2
    report = (x / "run" / "report" / "index.html").read_text()
    assert "xla" in report
    _assert_all_done_under_slurm(x, launched.x_jobs, "sbatch", *XLA_OVERRIDES)
