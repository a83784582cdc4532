"""Worker loss: Dask worker processes SIGKILLed in the middle of the text and chunks stages of a
``microparade run`` on a local cluster. The Nanny restarts them, Dask reruns the lost tasks, and
the published text, features and chunks files are byte-identical to an undisturbed run's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

STAGES = ("text", "features", "chunks")
#: Seconds the disturbed run may take to reach each kill point, and to finish.
WAIT_S = 180.0
#: What a multiprocessing ``spawn`` child runs: the Dask worker processes a LocalCluster's nannies start.
SPAWNED = b"multiprocessing.spawn"
#: What the scheduler logs when a P2P shuffle starts.
SHUFFLE = re.compile(r"Shuffle \w+ initialized")


def write_config(tmp_path: Path, name: str) -> Path:
    """A config of 10 ingest parts, 10 text user partitions and ~10 train chunks on 2 worker processes."""
    cfg = {
        "run_dir": str(tmp_path / name),
        "data": {"generate": {"rows": 20000, "rows_per_file": 2000, "seed": 7}},
        "cluster": {
            "kind": "local",
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": True,
            "memory_limit": "2GiB",
            "dashboard": False,
        },
        "ingest": {"blocksize": "1MiB"},
        "history": {"size": 4},
        "text": {"max_length": 32, "partition_rows": 2000},
        "chunks": {"target_mb": 0.5},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def published_hashes(run_dir: Path, stage: str) -> dict[str, str]:
    """``path -> sha256`` of every file in the stage's ``_MANIFEST.json``, checked against the bytes on disk."""
    manifest = json.loads((run_dir / stage / "_MANIFEST.json").read_text())
    hashes = {f["path"]: f["sha256"] for f in manifest["files"]}
    for rel, sha in hashes.items():
        on_disk = hashlib.sha256((run_dir / stage / rel).read_bytes()).hexdigest()
        assert on_disk == sha, f"{stage}/{rel}: the file's sha256 differs from its manifest entry"
    return hashes


def dask_workers(run_pid: int) -> list[int]:
    """The Dask worker processes of a run, oldest first: its ``multiprocessing.spawn`` children (with a
    local cluster the nannies live in the run process and spawn one worker process each)."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # from field 3, "state", on
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == run_pid and SPAWNED in cmdline:
            workers.append((int(fields[19]), int(stat.parent.name)))  # (start time, pid)
    return [pid for _, pid in sorted(workers)]


class Run:
    """``microparade run CFG --until chunks`` in the background, its log in a file."""

    def __init__(self, config: Path, run_dir: Path):
        self.run_dir = run_dir
        self.log_path = config.with_suffix(".log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "microparade.cli", "run", str(config), "--until", "chunks"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> list[str]:
        """The console output and the run's log files (``_logs/*.log``: every library's INFO lines)."""
        files = sorted((self.run_dir / "_logs").glob("*.log"))
        return [path.read_text(errors="replace") for path in [self.log_path, *files]]

    def log(self) -> str:
        return "\n".join(self.logs())

    def logged_after(self, line: str, pattern: re.Pattern[str]) -> bool:
        """Whether ``pattern`` was logged after ``line``."""
        log = self.log()
        start = log.find(line)
        return start >= 0 and pattern.search(log, start) is not None

    def exists(self, rel: str) -> bool:
        return (self.run_dir / rel).exists()

    def wait_until(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll every 10 ms until ``ready()``; fail if the run exits or takes longer than :data:`WAIT_S`."""
        deadline = time.monotonic() + WAIT_S
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the run exited ({self.proc.returncode}) before {what}:\n{self.log()[-6000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {WAIT_S:.0f}s:\n{self.log()[-6000:]}")
            time.sleep(0.01)

    def kill_when(self, stage: str, what: str, ready: Callable[[], bool], count: int = 1) -> list[int]:
        """Once ``stage`` runs and ``ready()``, SIGKILL ``count`` Dask worker processes (oldest first:
        they took part in the stage from its start); the stage must not be published yet."""
        self.wait_until(what, lambda: self.exists(f"{stage}/_INCOMPLETE.json") and ready())
        pids = dask_workers(self.proc.pid)[:count]
        assert len(pids) == count, f"expected {count} Dask worker process(es) of run {self.proc.pid}, found {pids}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert not self.exists(f"{stage}/_MANIFEST.json"), f"{stage} was published before the kill: it proves nothing"
        return pids

    def finish(self) -> str:
        try:
            rc = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the run did not finish within {WAIT_S:.0f}s after the kills:\n{self.log()[-6000:]}")
        log = self.log()
        assert rc == 0, f"the run exited {rc} after losing workers:\n{log[-8000:]}"
        return log


def test_worker_sigkill_mid_text_and_chunks(tmp_path):
    """Workers killed three times in one run, each while the stage's tasks are in flight: one while
    text cleans, one while text's P2P shuffle runs, every worker (whichever holds the chunk tasks'
    part list) while chunks writes the train chunks. The run completes with identical bytes."""
    base = tmp_path / "base"
    run_cli("run", write_config(tmp_path, "base"), "--until", "chunks")
    expected = {stage: published_hashes(base, stage) for stage in STAGES}
    assert len(expected["chunks"]) > 6, "too few chunks for a kill to land during the reduce"

    run = Run(write_config(tmp_path, "killed"), tmp_path / "killed")
    killed = run.kill_when(
        "text", "a cleaned scratch part", lambda: any((run.run_dir / "text/_work/clean").rglob("*.arrow"))
    )
    assert "[text] clean done" not in run.log(), "every part was cleaned before the kill"
    killed += run.kill_when("text", "text's first P2P shuffle", lambda: run.logged_after("[text] clean done", SHUFFLE))
    assert "[text] windows + assemble: 10/10" not in run.log(), "the shuffle was over before the kill"
    staged = run.run_dir / "chunks/_staging/train"
    killed += run.kill_when("chunks", "a staged train chunk", lambda: staged.is_dir() and any(staged.iterdir()), 2)
    assert not re.search(r"\[chunks\] train: \d+ rows ->", run.log()), "the train chunks were written before the kill"
    log = run.finish()

    lost = re.findall(r"Worker process (\d+) was killed by signal 9", log)
    assert set(map(int, lost)) == set(killed), f"the log does not report the {len(killed)} killed workers"
    for text in run.logs():  # every nanny restarted its worker: the cluster did not shrink
        end = text.find("[chunks] done")
        assert end >= 0 and "Closing Nanny" not in text[:end], "a nanny was closed (or chunks not done) during the run"
    assert "restarted due to stimulus" in log, "the P2P shuffle did not restart: the kill missed it"
    for stage in STAGES:
        assert published_hashes(tmp_path / "killed", stage) == expected[stage], f"{stage} outputs differ"
