"""Shared fixtures: offline model settings, CLI runner, small generated datasets, real Slurm,
and real object-store emulators."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MBERT_VOCAB = SHARED / "vocab" / "bert-base-multilingual-cased"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_cli(*args: str, cwd: Path | str | None = None, env: dict | None = None, check: bool = True, timeout: float = 900):
    """Run ``microparade ARGS`` in a subprocess (as a user would) and return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "microparade.cli", *map(str, args)],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"microparade {' '.join(map(str, args))} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def cli():
    return run_cli


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def slurm():
    """A real single-host Slurm (two emulated nodes + slurmdbd); fails loudly in CI if it cannot start."""
    from slurm_cluster import ensure_slurm

    return ensure_slurm()


@pytest.fixture(scope="session")
def gcs_server():
    from storage_servers import FakeGCS

    server = FakeGCS().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_server():
    from storage_servers import MotoS3

    server = MotoS3().start()
    yield server
    server.close()
