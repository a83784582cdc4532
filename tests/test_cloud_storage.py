"""The pipeline on real object-store emulators: gs:// (fake-gcs-server) and s3:// (moto server).

What is checked, through the CLI as a user runs it, with Dask worker *processes* reading and
writing the bucket themselves:

1. every stage of a small synthetic run publishes on the bucket; ``status --verify`` says done;
   the chunks listed in ``chunks/_MANIFEST.json`` exist with the recorded sizes and sha256 (read
   back through fsspec) and nothing else is left in the stage directory; ``evaluate/metrics.json``
   reads back; a second ``run`` skips every stage;
2. the chunk files written to the bucket are byte-identical to those of the same config with a
   local ``run_dir``;
3. an emulator restarted under ``microparade run --from train`` so that the outage always catches a
   checkpoint write: the GCS emulator keeps its objects, so the run either rides the outage out on
   retries or fails naming the URL (then ``status`` trusts only what verifies and a rerun finishes
   the rest); moto loses every object, so the run must fail naming the missing object, ``status``
   must then trust no stage, and a rerun rebuilds everything from scratch; either way the final
   weights and metrics equal those of an uninterrupted run;
4. the hot-swap loader reading chunks from gs:// rejects a chunk whose bytes were replaced.

The package source is frozen into a temporary copy for the module's runs (``PYTHONPATH``): stage
fingerprints hash the source, so an edit to the working tree between two runs would otherwise turn
"the second run skips everything" into a rerun (see ``frozen_env`` for the thread pinning).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.cloud

STAGES = ["generate", "ingest", "text", "features", "chunks", "train", "evaluate", "report"]
SPLIT_ROWS = {"train": 2400, "valid": 300, "test": 300}
BUCKET = "mp-pipeline"


def pipeline_config(run_dir: str, storage_options: dict | None = None) -> dict:
    """A small synthetic run (3000 rows, tiny encoder, 6 steps) with several train chunks."""
    return {
        "run_dir": run_dir,
        "storage_options": storage_options or {},
        "data": {"generate": {"rows": sum(SPLIT_ROWS.values()), "seed": 7}},
        # Worker processes (the default): they reach the emulator with the run's storage_options.
        "cluster": {
            "kind": "local",
            "n_workers": 2,
            "threads_per_worker": 1,
            "memory_limit": "2GiB",
            "dashboard": False,
        },
        "ingest": {"blocksize": "2MiB"},
        "history": {"size": 4},
        "text": {"max_length": 48},
        # 0.2 MB: three train chunks, one valid and one test chunk for this data.
        "chunks": {"target_mb": 0.2},
        "model": {"encoder": "tiny", "heads": "multi"},
        "train": {"batch_size": 16, "lr": 5e-5, "max_steps": 6, "checkpoint_every": 2, "log_every": 1},
        "report": {"baseline": False},
    }


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen_env(tmp_path_factory) -> dict[str, str]:
    """Environment of every CLI call: a frozen copy of the package, one torch thread.

    The copy (imported by the CLI and its Dask workers through ``PYTHONPATH``) keeps stage
    fingerprints fixed while the working tree changes. One thread because CPU training and inference
    are bit-reproducible only at a fixed thread count, and the thread count of a run otherwise depends
    on whether a Dask stage ran first in the same process (distributed sets ``OMP_NUM_THREADS=1``
    in the client process, so a full run trains with 1 thread, a ``--from train`` rerun with all).
    """
    dst = tmp_path_factory.mktemp("frozen-src")
    shutil.copytree(ROOT / "src" / "microparade", dst / "microparade", ignore=shutil.ignore_patterns("__pycache__"))
    return {"PYTHONPATH": str(dst), "OMP_NUM_THREADS": "1"}


class Run:
    """One configured run directory and the CLI calls on it."""

    def __init__(self, config: Path, run_dir: str, env: dict[str, str], server=None):
        self.config, self.run_dir, self.env, self.server = config, run_dir, env, server
        #: Seconds the first, complete ``run`` took, and the trained weights' sha256 and the
        #: metrics it produced (what a run interrupted later must reproduce).
        self.first_run_s = 0.0
        self.uninterrupted: dict = {}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env, check=check, timeout=600)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.cli("run", str(self.config), *args, check=check)

    def status(self) -> dict[str, str]:
        """``{stage: state}`` from ``microparade status --verify`` (every published file re-hashed)."""
        out = json.loads(self.cli("status", str(self.config), "--verify", "--json").stdout)
        return {s["stage"]: s["state"] for s in out["stages"]}

    def fs(self):
        if self.server is None:
            return fsspec.filesystem("file")
        return self.server.filesystem()

    def path(self, rel: str) -> str:
        base = self.run_dir.split("://", 1)[1] if "://" in self.run_dir else self.run_dir
        return f"{base}/{rel}"

    def read(self, rel: str) -> bytes:
        return self.fs().cat_file(self.path(rel))

    def read_json(self, rel: str):
        return json.loads(self.read(rel))


def model_sha256(run: Run) -> str:
    """The trained weights' sha256 as the train manifest records it."""
    return {f["path"]: f["sha256"] for f in run.read_json("train/_MANIFEST.json")["files"]}["model.pt"]


def assert_ran(proc: subprocess.CompletedProcess, ran: list[str], skipped: list[str]) -> None:
    """The CLI's summary line names exactly these stages as run and as skipped, in order."""
    line = proc.stdout.strip().splitlines()[-1]
    expected = f"microparade: ran {', '.join(ran) or 'nothing'}; skipped {', '.join(skipped) or 'nothing'} "
    assert line.startswith(expected), line


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, frozen_env) -> Run:
    """The same config with a local run_dir, up to the chunks (the storage-independent reference)."""
    tmp = tmp_path_factory.mktemp("local-run")
    run = Run(write_yaml(tmp / "config.yaml", pipeline_config(str(tmp / "run"))), str(tmp / "run"), frozen_env)
    assert_ran(run.run("--until", "chunks"), STAGES[:5], [])
    return run


@pytest.fixture(scope="module", params=["gs", "s3"])
def bucket_run(request, tmp_path_factory, frozen_env):
    """A complete, uninterrupted run whose run_dir is a bucket URL."""
    server = request.getfixturevalue("gcs_server" if request.param == "gs" else "s3_server")
    tmp = tmp_path_factory.mktemp(f"{request.param}-run")
    bucket = server.make_bucket(BUCKET)
    run_dir = f"{bucket}/run"
    config = write_yaml(tmp / "config.yaml", pipeline_config(run_dir, server.storage_options))
    run = Run(config, run_dir, frozen_env, server)
    t0 = time.monotonic()
    proc = run.run()
    run.first_run_s = time.monotonic() - t0
    assert_ran(proc, STAGES, [])
    run.uninterrupted = {"model": model_sha256(run), "metrics": run.read_json("evaluate/metrics.json")}
    return run


def stage_leftovers(run: Run) -> list[str]:
    """Markers and scratch directories still present in any stage directory of a run."""
    base = run.path("")
    bad = []
    for p in run.fs().find(base, withdirs=False):
        rel = p[len(base) :]
        parts = rel.split("/")
        if len(parts) > 1 and parts[1] in ("_INCOMPLETE.json", "_FAILED.json", "_staging", "_work"):
            bad.append(rel)
    return bad


# ------------------------------------------------------------------------------------------------
# 1. the whole pipeline on a bucket
# ------------------------------------------------------------------------------------------------
def test_pipeline_on_bucket(bucket_run):
    run = bucket_run
    print(f"{run.run_dir}: first run {run.first_run_s:.1f}s")
    assert run.status() == {s: "done" for s in STAGES}
    assert stage_leftovers(run) == []

    manifest = run.read_json("chunks/_MANIFEST.json")
    files = manifest["files"]
    paths = [f["path"] for f in files]
    assert paths == sorted(paths)
    by_split = {s: [f for f in files if f["split"] == s] for s in SPLIT_ROWS}
    assert {s: sum(f["rows"] for f in chunks) for s, chunks in by_split.items()} == SPLIT_ROWS
    assert [f["path"] for f in by_split["train"]] == [f"train/chunk-{i:05d}.parquet" for i in range(3)]
    # The stage directory holds exactly the manifest's chunks, the manifest and the released lease.
    fs = run.fs()
    base = run.path("chunks")
    listed = sorted(p[len(base) + 1 :] for p in fs.find(base, withdirs=False))
    assert listed == sorted(paths + ["_MANIFEST.json", "_lease/00000001.json"])
    assert json.loads(run.read("chunks/_lease/00000001.json"))["state"] == "released"
    for f in files:
        data = run.read(f"chunks/{f['path']}")
        assert len(data) == f["bytes"], f["path"]
        assert sha256(data) == f["sha256"], f["path"]
        assert pq.read_table(pa.BufferReader(data)).num_rows == f["rows"]

    metrics = run.read_json("evaluate/metrics.json")
    assert set(metrics) == {"valid"}  # test is unlabelled
    assert set(metrics["valid"]["ap"]) == {"avg", "like", "retweet", "reply", "quote"}
    assert 0.0 < metrics["valid"]["ap"]["avg"] < 1.0

    assert_ran(run.run(), [], STAGES)
    # Nothing changed on the bucket: the same weights and metrics as after the first run.
    assert model_sha256(run) == run.uninterrupted["model"]
    assert run.read_json("evaluate/metrics.json") == run.uninterrupted["metrics"]


# ------------------------------------------------------------------------------------------------
# 2. determinism across storage
# ------------------------------------------------------------------------------------------------
def test_bucket_chunks_identical_to_local_run(bucket_run, local_run):
    run = bucket_run
    remote, local = run.read_json("chunks/_MANIFEST.json"), local_run.read_json("chunks/_MANIFEST.json")
    assert remote["files"] == local["files"]
    assert remote["extra"] == local["extra"]
    for f in remote["files"]:
        assert run.read(f"chunks/{f['path']}") == local_run.read(f"chunks/{f['path']}"), f["path"]


# ------------------------------------------------------------------------------------------------
# 3. the emulator restarts while train runs
# ------------------------------------------------------------------------------------------------
def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until the run's log holds ``text``; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before logging {text!r}")
        time.sleep(0.02)
    raise AssertionError(f"the run did not log {text!r} within {timeout}s")


def _log_second(log: str, text: str) -> int:
    """Second of the day of the first log line holding ``text`` (lines start with ``HH:MM:SS``)."""
    line = next(line for line in log.splitlines() if text in line)
    h, m, s = (int(x) for x in line[:8].split(":"))
    return h * 3600 + m * 60 + s


def test_emulator_restart_during_train(bucket_run, tmp_path):
    """The emulator goes down while ``train`` computes step 4 and comes back 2 s after the step is
    logged; the checkpoint of step 4 is written right after that log line, so the outage always
    catches a write (and the model, the publication, evaluate and report come after it)."""
    run = bucket_run
    server = run.server
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as fout, open(err, "w") as ferr:
        proc = subprocess.Popen(
            # -v: the checkpoint lines, details that the console leaves out by default, are timed below.
            [sys.executable, "-m", "microparade.cli", "-v", "run", str(run.config), "--from", "train"],
            cwd=ROOT,
            env={**os.environ, **run.env},
            stdout=fout,
            stderr=ferr,
            text=True,
        )
    try:
        _wait_for_line(err, "[train] step 3/6 ", proc, timeout=300)
        server.stop()
        try:
            _wait_for_line(err, "[train] step 4/6 ", proc, timeout=300)
            time.sleep(2)
        finally:
            server.start()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = out.read_text(), err.read_text()
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    print(f"{run.run_dir}: exit {rc}; {stdout.strip().splitlines()[-1] if rc == 0 else last}")

    if run.server.protocol == "s3":
        # moto lost the bucket: the run cannot have succeeded, and it must say what is missing
        # (the step-4 checkpoint, or whatever train wrote next if the outage outlasted the retries).
        assert rc == 1, stderr[-3000:]
        assert last.startswith("microparade: stage train failed: "), stderr[-3000:]
        assert f"s3://{BUCKET}/run/train/" in last, last
        # Nothing is left to trust: every stage reads as missing, none as done.
        assert run.status() == {s: "missing" for s in STAGES}
        server.make_bucket(BUCKET)
        assert_ran(run.run(), STAGES, [])
    elif rc == 0:
        # The GCS emulator kept its objects and the clients retried through the outage: the
        # step-4 checkpoint was only saved once the emulator was back, 2 s or more after the step.
        assert_ran(subprocess.CompletedProcess([], 0, stdout, stderr), ["train", "evaluate", "report"], [])
        gap = _log_second(stderr, "[train] checkpoint ckpt-000000004.pt") - _log_second(stderr, "[train] step 4/6 ")
        assert gap % 86400 >= 2, gap
    else:
        assert rc == 1, stderr[-3000:]
        assert last.startswith("microparade: stage "), stderr[-3000:]
        assert f"gs://{BUCKET}/run/" in last, last
        status = run.status()
        done = [s for s in STAGES if status[s] == "done"]
        # Upstream of train stays published (the emulator kept it); what failed is not trusted.
        assert done == STAGES[: len(done)] and len(done) >= 5, status
        assert all(status[s] in ("failed", "incomplete", "missing", "stale") for s in STAGES[len(done) :]), status
        assert_ran(run.run(), STAGES[len(done) :], done)
    assert run.status() == {s: "done" for s in STAGES}
    assert stage_leftovers(run) == []
    assert model_sha256(run) == run.uninterrupted["model"]
    assert run.read_json("evaluate/metrics.json") == run.uninterrupted["metrics"]


# ------------------------------------------------------------------------------------------------
# 4. the loader verifies what it reads from gs://
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bucket_run", ["gs"], indirect=True)
def test_loader_rejects_replaced_chunk_on_gcs(bucket_run):
    from microparade.model.loader import ChunkChecksumError, ChunkLoader

    run = bucket_run
    fs = run.fs()
    manifest = run.read_json("chunks/_MANIFEST.json")
    # A copy of the chunks stage under another prefix, so the run itself stays intact.
    copy = f"{BUCKET}/loader-copy"
    fs.pipe_file(f"{copy}/chunks/_MANIFEST.json", run.read("chunks/_MANIFEST.json"))
    for f in manifest["files"]:
        fs.pipe_file(f"{copy}/chunks/{f['path']}", run.read(f"chunks/{f['path']}"))
    so = run.server.storage_options
    with ChunkLoader.from_run_dir(f"gs://{copy}", "train", storage_options=so, batch_size=16, shuffle=False) as loader:
        assert sum(len(b) for b in loader.epoch(0)) == SPLIT_ROWS["train"]

    # chunk 1 replaced by chunk 0's bytes: valid Parquet, same schema, size and rows; only the hash tells.
    train = {f["path"]: f for f in manifest["files"] if f["split"] == "train"}
    c0, c1 = train["train/chunk-00000.parquet"], train["train/chunk-00001.parquet"]
    assert c0["rows"] == c1["rows"] and c0["sha256"] != c1["sha256"]
    fs.pipe_file(f"{copy}/chunks/train/chunk-00001.parquet", run.read("chunks/train/chunk-00000.parquet"))
    with ChunkLoader.from_run_dir(f"gs://{copy}", "train", storage_options=so, batch_size=16, shuffle=False) as loader:
        batches = loader.epoch(0)
        first = [next(batches) for _ in range(c0["rows"] // 16)]
        assert sum(len(b) for b in first) == (c0["rows"] // 16) * 16
        with pytest.raises(ChunkChecksumError) as err:
            list(batches)
    msg = str(err.value)
    assert f"gs://{copy}/chunks/train/chunk-00001.parquet" in msg, msg
    assert c1["sha256"] in msg and c0["sha256"] in msg, msg


# ------------------------------------------------------------------------------------------------
# storage.retry: what the restart tests rely on, without a server
# ------------------------------------------------------------------------------------------------
def test_retry_rides_out_s3_connection_errors_and_names_missing_objects(tmp_path):
    from botocore.exceptions import EndpointConnectionError

    from microparade.storage import retry

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket/key")
        return "ok"

    assert retry(flaky, what="write s3://bucket/key", base_delay=0.01) == "ok"
    assert len(calls) == 3

    def down() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket/key")

    with pytest.raises(OSError, match=r"^write s3://bucket/key: failed after 2 attempts: EndpointConnectionError"):
        retry(down, what="write s3://bucket/key", attempts=2, base_delay=0.01)

    fs = fsspec.filesystem("file")
    missing = str(tmp_path / "missing.bin")
    with pytest.raises(FileNotFoundError, match=rf"read {missing}: ") as err:
        retry(lambda: fs.cat_file(missing), what=f"read {missing}")
    assert err.value.errno == 2


# ------------------------------------------------------------------------------------------------
# 5. train and evaluate from chunks copied to another bucket (data.chunks)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bucket_run", ["gs"], indirect=True)
def test_train_and_evaluate_from_chunks_copied_to_another_bucket(bucket_run):
    run = bucket_run
    fs = run.fs()
    other = run.server.make_bucket("mp-handoff")
    manifest = run.read_json("chunks/_MANIFEST.json")
    for rel in ["_MANIFEST.json", *(f["path"] for f in manifest["files"])]:
        fs.pipe_file(f"{other.split('://', 1)[1]}/copy/chunks/{rel}", run.read(f"chunks/{rel}"))
    fresh = Run(run.config, f"{other}/fresh", run.env, run.server)
    overrides = [f"run_dir={fresh.run_dir}", f"data.chunks={other}/copy"]
    proc = fresh.run(*overrides)
    assert_ran(proc, ["train", "evaluate", "report"], [])
    assert f"[chunks] imported: {other}/copy/chunks (3,000 rows, verified)" in proc.stderr
    assert fresh.read_json("evaluate/metrics.json") == run.uninterrupted["metrics"]
    assert model_sha256(fresh) == run.uninterrupted["model"]
    status = json.loads(fresh.cli("status", str(run.config), *overrides, "--verify", "--json").stdout)
    assert {s["stage"]: s["state"] for s in status["stages"]} == dict.fromkeys(["chunks", *STAGES[5:]], "done")
