"""The XLA environment of the tests: ``.venv-tpu`` (``bash env/install.sh tpu``) on XLA's CPU runtime.

The XLA tests run the real CLI and scripts with ``.venv-tpu/bin/python`` and several virtual XLA:CPU
devices (``PJRT_DEVICE=CPU``, ``CPU_NUM_DEVICES``). Without that environment they are skipped,
except in CI (``CI`` set), where a missing environment is a failure: CI installs it.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.paths import ROOT
from tests.helpers.train import subprocess_env

TPU_PYTHON = ROOT / ".venv-tpu" / "bin" / "python"


def require_xla_env() -> str:
    """The XLA environment's Python; skip (fail in CI) when it is not installed."""
    if not TPU_PYTHON.exists():
        msg = f"{TPU_PYTHON} is missing: run `bash env/install.sh tpu`"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI installs it: the XLA tests must run)")
        pytest.skip(msg)
    return str(TPU_PYTHON)


def xla_env(devices: int = 4) -> dict[str, str]:
    """Environment of a child on XLA:CPU with ``devices`` virtual devices (quiet C++ logs)."""
    env = subprocess_env()
    env.update(PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(devices), TF_CPP_MIN_LOG_LEVEL="2")
    return env


def xla_cli(config_path: str, *args: str) -> list[str]:
    """``microparade run CONFIG ...`` under the XLA Python, with the test chunks stage registered."""
    code = (
        "import sys; from tests.helpers.train import patch_stages; patch_stages(); "
        "from microparade.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [require_xla_env(), "-c", code, "run", config_path, *args]
