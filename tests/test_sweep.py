"""Experiments (``microparade sweep``): the experiment file's validation, the plan's sharing of data
stages, read-only shared stages in the runner, and a whole local sweep on generated data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from microparade.config import load_config
from microparade.engine.runner import run_pipeline
from microparade.errors import ConfigError, StageError
from microparade.sweep.experiment import load_experiment
from microparade.sweep.plan import build_plan
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.test_sweep_report import check_small_experiment_report

SMALL = ROOT / "experiments" / "small.yaml"
PAPER = ROOT / "experiments" / "paper.yaml"


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _doc(**changes) -> dict:
    doc = {
        "name": "t",
        "base": str(ROOT / "configs" / "demo.yaml"),
        "seeds": [0, 1],
        "variants": {"base": [], "h2": ["history.size=2"]},
        "comparisons": {"history": {"variants": ["base", "h2"]}},
    }
    doc.update(changes)
    return doc


# ----------------------------------------------------------------------------------------------
# the experiment file
# ----------------------------------------------------------------------------------------------
def test_shipped_experiments_validate():
    for path in (SMALL, PAPER):
        plan = build_plan(load_experiment(path))
        assert plan.runs and plan.units
    paper = load_experiment(PAPER).spec
    assert set(paper.comparisons) == {"history", "ablations", "heads"}
    assert "no_history" in paper.variants and len(paper.seeds) >= 2


def test_every_problem_of_an_experiment_file_in_one_error(tmp_path):
    doc = _doc(
        seeds=[0, 0],
        colour="red",
        variants={"base": [], "h0": ["history.size=0"], "typo": ["histroy.size=4"]},
        comparisons={"history": {"variants": ["base", "h7"]}},
    )
    with pytest.raises(ConfigError) as err:
        load_experiment(_write(tmp_path, doc))
    msg = str(err.value)
    assert "colour: unknown key" in msg and "seeds" in msg and "h7" in msg
    # The variants' configs are checked once the file itself validates: both problems together.
    doc = _doc(
        variants={"base": [], "h0": ["history.size=0"], "typo": ["histroy.size=4"]},
        comparisons={},
        seed_keys=["train.grad_clip"],
    )
    with pytest.raises(ConfigError) as err:
        load_experiment(_write(tmp_path, doc))
    msg = str(err.value)
    assert "variant 'h0'" in msg and "history.size" in msg
    assert "variant 'typo'" in msg and "histroy: unknown key" in msg
    assert "seed_keys: 'train.grad_clip' is not an integer setting" in msg


def test_two_variants_that_compute_the_same_are_refused(tmp_path):
    doc = _doc(variants={"base": [], "same": ["history.size=4"]}, comparisons={})
    with pytest.raises(ConfigError, match="same/seed-0 computes exactly what base/seed-0 computes"):
        build_plan(load_experiment(_write(tmp_path, doc)))


def test_bad_experiment_is_one_line_on_the_command_line_and_nothing_runs(tmp_path):
    path = _write(tmp_path, _doc(variants={"base": [], "h2": ["history.size=two"]}, sweep_dir=str(tmp_path / "s")))
    proc = run_cli("sweep", "run", path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "variant 'h2'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_command_line_overrides_reach_the_experiment_and_every_variant(tmp_path):
    exp = load_experiment(SMALL, [f"experiment.sweep_dir={tmp_path}", "experiment.seeds=[3]", "train.max_steps=2"])
    plan = build_plan(exp)
    assert plan.sweep_dir == str(tmp_path)
    assert {r.seed for r in plan.runs} == {3} and {r.cfg.train.seed for r in plan.runs} == {3}
    assert {r.cfg.train.max_steps for r in plan.runs} == {2}


# ----------------------------------------------------------------------------------------------
# the plan: what is shared
# ----------------------------------------------------------------------------------------------
def test_plan_shares_each_data_stage_per_identity(tmp_path):
    plan = build_plan(load_experiment(SMALL, [f"experiment.sweep_dir={tmp_path}"]))
    by_stage: dict[str, list] = {}
    for u in plan.units:
        by_stage.setdefault(u.stage, []).append(u)
    # H changes text (and so chunks); generate, ingest and features are the same for every run.
    assert {s: len(us) for s, us in by_stage.items()} == {
        "generate": 1,
        "ingest": 1,
        "features": 1,
        "text": 2,
        "chunks": 2,
    }
    runs = {r.label: r for r in plan.runs}
    base, h2, no_text = runs["base/seed-0"], runs["h2/seed-1"], runs["no_text/seed-1"]
    assert base.units == no_text.units  # a model-only variant reuses everything upstream
    assert base.units["features"] == h2.units["features"] and base.units["text"] != h2.units["text"]
    assert base.stages == ["train", "evaluate", "report"]
    assert base.cfg.shared_stages["chunks"] == f"{tmp_path}/shared/{base.units['chunks']}"
    assert base.run_dir == f"{tmp_path}/runs/base/seed-0"
    # A unit reads only the units it depends on (features reads ingest, not text).
    features = plan.unit(base.units["features"])
    assert set(features.cfg.shared_stages) == {"generate", "ingest"} and features.cfg.run_dir == features.root
    # Identities are stable, and a model-only change leaves every data unit as it was.
    again = build_plan(load_experiment(SMALL, [f"experiment.sweep_dir={tmp_path}", "train.lr=0.5"]))
    assert [u.key for u in again.units] == [u.key for u in plan.units]


def test_a_shared_stage_is_read_only_in_a_run(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [f"run_dir={tmp_path / 'run'}", f"shared_stages={{generate: {tmp_path}/elsewhere}}"],
    )
    with pytest.raises(StageError, match=r"stage generate is shared from .*/elsewhere/generate and is not done"):
        run_pipeline(cfg, until="generate")
    with pytest.raises(StageError, match="this run only reads it"):
        run_pipeline(cfg, only="generate")
    assert not (tmp_path / "elsewhere").exists()
    bad = cfg.model_copy(update={"shared_stages": {"generat": str(tmp_path)}})
    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(bad)


# ----------------------------------------------------------------------------------------------
# a whole sweep on this machine
# ----------------------------------------------------------------------------------------------
def _manifest(path: Path) -> dict:
    return json.loads((path / "_MANIFEST.json").read_text())


@pytest.mark.slow
def test_local_sweep_computes_shared_stages_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = [f"experiment.sweep_dir={sweep}", "train.num_threads=1"]
    out = run_cli("sweep", "run", SMALL, *args, "--parallel", "2").stdout
    assert "computed 7 shared stage(s) and 6 run(s)" in out, out
    assert f"report {sweep / 'report' / 'index.html'}" in out, out
    units = sorted(p for p in (sweep / "shared").iterdir() if p.is_dir())
    assert len(units) == 7
    started = {}
    for unit in units:
        stage = unit.name.rsplit("-", 1)[0]
        assert [p.name for p in unit.iterdir() if p.is_dir()] == [stage]  # one stage per unit
        started[unit.name] = _manifest(unit / stage)["started"]
    runs = sorted(p.relative_to(sweep / "runs").as_posix() for p in (sweep / "runs").glob("*/seed-*"))
    assert runs == [f"{v}/seed-{s}" for v in ("base", "h2", "no_text") for s in (0, 1)]
    for run in runs:
        stages = sorted(p.name for p in (sweep / "runs" / run).iterdir() if p.is_dir() and not p.name.startswith("_"))
        assert stages == ["evaluate", "report", "train"], (run, stages)  # data stages live in shared/ only
        # Each run's chunks are the unit's: the train manifest's input is the unit's manifest.
        cfg = yaml.safe_load((sweep / "runs" / run / "config.yaml").read_text())
        chunks = Path(cfg["shared_stages"]["chunks"]) / "chunks" / "_MANIFEST.json"
        train = _manifest(sweep / "runs" / run / "train")
        assert train["fingerprint_inputs"]["inputs"]["chunks"] == hashlib.sha256(chunks.read_bytes()).hexdigest()

    # A second run computes nothing, and the shared stages were not rewritten.
    out = run_cli("sweep", "run", SMALL, *args).stdout
    assert "computed 0 shared stage(s) and 0 run(s)" in out, out
    assert {u.name: _manifest(u / u.name.rsplit("-", 1)[0])["started"] for u in units} == started

    status = json.loads(run_cli("sweep", "status", SMALL, *args, "--json").stdout)
    assert [(r["variant"], r["seed"], r["state"]) for r in status["runs"]] == [
        (v, s, "done") for v in ("base", "h2", "no_text") for s in (0, 1)
    ]
    assert all(isinstance(r["avg_ap"], float) for r in status["runs"])
    assert status["report"] == "done"
    text = run_cli("sweep", "status", SMALL, *args).stdout
    assert "6/6 run(s) done" in text and "no_text" in text
    check_small_experiment_report(sweep, args)  # last: it ends by changing a run
