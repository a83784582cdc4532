"""Stage runner: skip / rerun / downstream invalidation, failures, verification, crash injection."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microparade.config import load_config
from microparade.engine import compute_status, read_manifest, run_pipeline
from microparade.storage import Store
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT


def _config(tmp_path: Path, run: str = "run", rows: int = 3000, blocksize: str = "64KiB") -> Path:
    p = tmp_path / f"{run}.yaml"
    p.write_text(
        f"""
run_dir: {tmp_path / run}
data:
  generate: {{rows: {rows}, seed: 3, rows_per_file: 1000}}
cluster: {{n_workers: 1, threads_per_worker: 2, processes: false, dashboard: false}}
ingest: {{blocksize: {blocksize}}}
"""
    )
    return p


def _digests(root: Path, stage: str) -> dict[str, str]:
    out = {}
    base = root / stage
    for f in sorted(base.rglob("*")):
        rel = f.relative_to(base).as_posix()
        if f.is_file() and not rel.startswith("_"):
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _states(cfg_path: Path, *overrides: str) -> dict[str, str]:
    cfg = load_config(cfg_path, list(overrides))
    return {s.name: s.state for s in compute_status(cfg, verify="sha256")}


def test_rerun_skips_done_stages_and_manifest_describes_files(tmp_path):
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    first = run_pipeline(cfg, until="ingest")
    assert first == {"generate": "ran", "ingest": "ran"}
    assert run_pipeline(cfg, until="ingest") == {"generate": "skipped", "ingest": "skipped"}
    assert (Path(cfg.run_dir) / "config.yaml").exists(), "resolved config is saved with the run"

    store = Store(cfg.run_dir)
    m = read_manifest(store, "ingest")
    assert m is not None and m.data["schema"] == "microparade.manifest/1"
    for f in m.files:
        p = Path(cfg.run_dir) / "ingest" / f["path"]
        assert p.stat().st_size == f["bytes"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == f["sha256"]
    assert sum(f["rows"] for f in m.files) == m.data["rows"] == 3000
    # fingerprint inputs: code, the stage's config sections, the input manifest's hash
    fp = m.data["fingerprint_inputs"]
    assert set(fp["config"]) == {"data.raw", "ingest"}
    assert fp["inputs"] == {"generate": read_manifest(store, "generate").hash}
    assert not (Path(cfg.run_dir) / "ingest" / "_INCOMPLETE.json").exists()
    assert not (Path(cfg.run_dir) / "ingest" / "_staging").exists()


def test_config_change_reruns_that_stage_and_downstream_only(tmp_path):
    cfgp = _config(tmp_path)
    run_pipeline(load_config(cfgp), until="ingest")
    gen_manifest = (tmp_path / "run" / "generate" / "_MANIFEST.json").read_bytes()
    # an ingest-only change: generate is kept, ingest reruns
    cfg2 = load_config(cfgp, ["ingest.max_bad_fraction=0.5"])
    states = _states(cfgp, "ingest.max_bad_fraction=0.5")
    assert (states["generate"], states["ingest"]) == ("done", "stale")
    assert run_pipeline(cfg2, until="ingest") == {"generate": "skipped", "ingest": "ran"}
    assert (tmp_path / "run" / "generate" / "_MANIFEST.json").read_bytes() == gen_manifest
    # an upstream change: everything downstream is stale and reruns
    cfg3 = load_config(cfgp, ["ingest.max_bad_fraction=0.5", "data.generate.seed=4"])
    states = _states(cfgp, "ingest.max_bad_fraction=0.5", "data.generate.seed=4")
    assert states["generate"] == "stale" and states["ingest"] == "stale"
    assert run_pipeline(cfg3, until="ingest") == {"generate": "ran", "ingest": "ran"}


def test_only_from_and_force(tmp_path):
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    with pytest.raises(Exception, match="needs generate"):
        run_pipeline(cfg, only="ingest")
    run_pipeline(cfg, until="ingest")
    assert run_pipeline(cfg, only="ingest") == {"ingest": "skipped"}
    assert run_pipeline(cfg, only="ingest", force=True) == {"ingest": "ran"}
    assert run_pipeline(cfg, from_stage="generate", until="ingest") == {"generate": "ran", "ingest": "ran"}


def test_tampered_output_is_detected_and_rebuilt(tmp_path):
    cfgp = _config(tmp_path)
    cfg = load_config(cfgp)
    run_pipeline(cfg, until="ingest")
    part = sorted((tmp_path / "run" / "ingest" / "train").glob("*.parquet"))[0]
    good = part.read_bytes()
    part.write_bytes(good[:-10] + b"0123456789")  # same size, different bytes
    assert _states(cfgp)["ingest"] == "stale"
    assert run_pipeline(cfg, until="ingest") == {"generate": "skipped", "ingest": "ran"}
    assert part.read_bytes() == good


def test_failed_stage_is_recorded_and_not_trusted(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"""
run_dir: {tmp_path / "bad"}
data: {{raw: {{train: {tmp_path / "nothing-here"}/part-*}}}}
cluster: {{n_workers: 1, processes: false, dashboard: false}}
"""
    )
    proc = cli("run", bad, "--until", "ingest", check=False)
    assert proc.returncode == 1
    assert "stage ingest failed" in proc.stderr and "nothing-here" in proc.stderr
    failed = json.loads((tmp_path / "bad" / "ingest" / "_FAILED.json").read_text())
    assert "nothing-here" in failed["error"] and failed["traceback"]
    assert not (tmp_path / "bad" / "ingest" / "_MANIFEST.json").exists()
    status = cli("status", bad).stdout
    assert "ingest" in status and "failed" in status


def test_crash_injection_sigkill_mid_write_then_rerun_is_byte_identical(tmp_path):
    """SIGKILL the whole run while ingest writes; the rerun publishes exactly what a clean run does."""
    ref = _config(tmp_path, "ref", rows=40000, blocksize="256KiB")
    crash = _config(tmp_path, "crash", rows=40000, blocksize="256KiB")
    run_cli("run", ref, "--until", "ingest")

    proc = subprocess.Popen(
        [sys.executable, "-m", "microparade.cli", "run", str(crash), "--until", "ingest"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    staging = tmp_path / "crash" / "ingest" / "_staging"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            written = [p for p in staging.rglob("*.parquet") if p.stat().st_size > 0] if staging.exists() else []
            if len(written) >= 2:
                break
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
            time.sleep(0.02)
        else:
            pytest.fail("ingest never started writing")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    states = _states(crash)
    assert states["generate"] == "done"
    assert states["ingest"] == "incomplete"
    assert not (tmp_path / "crash" / "ingest" / "_MANIFEST.json").exists()

    out = run_cli("run", crash, "--until", "ingest")
    assert "skipped generate" in out.stdout or "skipped: done" in out.stderr
    host = socket.gethostname()
    assert (
        f"[ingest] took over the lease of pid {proc.pid} on {host}: process {proc.pid} on {host} is gone" in out.stderr
    )
    assert _states(crash)["ingest"] == "done"
    for stage in ("generate", "ingest"):
        assert _digests(tmp_path / "crash", stage) == _digests(tmp_path / "ref", stage), stage
        a = json.loads((tmp_path / "crash" / stage / "_MANIFEST.json").read_text())["files"]
        b = json.loads((tmp_path / "ref" / stage / "_MANIFEST.json").read_text())["files"]
        assert [(f["path"], f["sha256"], f["rows"]) for f in a] == [(f["path"], f["sha256"], f["rows"]) for f in b]
