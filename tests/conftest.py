"""Shared fixtures: offline model settings, CLI runner, small generated datasets, real Slurm,
and real object-store emulators."""

from __future__ import annotations

import os

import pytest

from tests.helpers.cli import run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def slurm():
    """A real single-host Slurm (two emulated nodes + slurmdbd); fails loudly in CI if it cannot start."""
    from tests.helpers.slurm_cluster import ensure_slurm

    return ensure_slurm()


@pytest.fixture(scope="session")
def gcs_server():
    from tests.helpers.storage_servers import FakeGCS

    server = FakeGCS().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_server():
    from tests.helpers.storage_servers import MotoS3

    server = MotoS3().start()
    yield server
    server.close()


@pytest.fixture
def one_torch_thread():
    """torch at one thread for the test, restored after (torch imported here, not for every test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
