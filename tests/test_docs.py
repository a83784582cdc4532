"""Docs stay true to the code: the config reference is generated from the config tree, every key is
described, the README's commands are the ones CI runs, and documented files exist."""

from __future__ import annotations

import re

from microparade import configdoc
from microparade.config import Config
from tests.helpers.paths import ROOT


def test_config_reference_is_current():
    assert (ROOT / "docs" / "config.md").read_text() == configdoc.render(), (
        "docs/config.md is out of date: python -m microparade.configdoc > docs/config.md"
    )


def test_every_config_key_is_described():
    missing = [
        row for row in configdoc.render().splitlines() if row.startswith("| `") and row.rstrip().endswith("|  |")
    ]
    assert not missing, "config keys without a #: comment:\n" + "\n".join(missing)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert blocks[0] == "bash env/install.sh && .venv/bin/microparade run configs/demo.yaml"
    [test_cmd] = [b for b in blocks if "pytest" in b]
    assert test_cmd == "bash env/install.sh dev tpu && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_cmd


def test_documented_files_exist():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (ROOT / link).exists(), link
    for stage in ("generate", "ingest", "text", "features", "chunks", "train", "evaluate", "report"):
        assert (ROOT / "jobs" / f"{stage}.py").exists()
        assert (ROOT / "slurm" / f"{stage}.sbatch").exists()


def test_demo_config_is_valid():
    from microparade.config import load_config

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert isinstance(cfg, Config) and cfg.data.generate is not None
