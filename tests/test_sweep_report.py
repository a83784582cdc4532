"""The comparison report of a sweep (``{sweep_dir}/report/``): the seed-averaged paired bootstrap, the
cells' formatting, the rows every run must share, when the published report is current, and the whole
report of experiments/small.yaml."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from microparade.engine.fingerprint import canonical_json
from microparade.engine.layout import stage_store
from microparade.engine.manifest import MANIFEST_SCHEMA, read_manifest, sha256_bytes
from microparade.engine.runner import manifest_document
from microparade.errors import StageError
from microparade.metrics import bootstrap_averages, paired_bootstrap
from microparade.recsys_format import TARGETS
from microparade.sweep.experiment import load_experiment
from microparade.sweep.plan import SweepPlan, build_plan
from microparade.sweep.report import _fingerprint_parts, report_state, write_sweep_report
from microparade.sweep.report_cost import collect_cost
from microparade.sweep.report_data import RunResult, seed_difference, shared_rows
from microparade.sweep.report_sections import format_interval, mean_std
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

SMALL = ROOT / "experiments" / "small.yaml"


# ----------------------------------------------------------------------------------------------
# the numbers
# ----------------------------------------------------------------------------------------------
def test_seed_difference_by_hand():
    # A's two seeds average to [2, 3, 4, 5] on the four draws, B's one seed is 1: differences 1..4.
    draws_a = np.array([[1.0, 2, 3, 4], [3, 4, 5, 6]])
    draws_b = np.array([[1.0, 1, 1, 1]])
    d = seed_difference([0.3, 0.5], [0.1], draws_a, draws_b, confidence=0.5)
    # The 25th and 75th percentiles of [1, 2, 3, 4] (linear interpolation) bound the 50% interval.
    assert d == pytest.approx({"diff": 0.3, "low": 1.75, "high": 3.25})
    assert seed_difference([0.3, 0.5], [0.1], None, None, 0.95) == pytest.approx(
        {"diff": 0.3, "low": None, "high": None}
    )
    assert seed_difference([0.3, None], [0.1], draws_a, draws_b, 0.95) == {"diff": None, "low": None, "high": None}
    nan_draws = np.full((1, 4), np.nan)
    assert seed_difference([0.3], [0.1], nan_draws, draws_b, 0.95)["low"] is None


def _predictions(rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((rows, len(TARGETS))) < 0.3).astype(np.int8)
    p1 = np.clip(0.3 * labels + 0.7 * rng.random(labels.shape), 0, 1)
    p2 = np.clip(0.1 * labels + 0.9 * rng.random(labels.shape), 0, 1)
    return labels, p1, p2


def test_the_bootstrap_resamples_the_same_rows_for_every_run():
    labels, p1, p2 = _predictions()
    draws = bootstrap_averages(labels, [p1, p2, p2, p1], n=200, seed=3)["ap"]
    assert draws.shape == (4, 200)
    # The same two prediction sets as seeds of A and (in the other order) of B: every draw's
    # difference of the seed means is exactly 0, so is the interval.
    d = seed_difference([0.2, 0.3], [0.3, 0.2], draws[:2], draws[2:], 0.95)
    assert (d["low"], d["high"]) == (0.0, 0.0)
    # With one seed each it is paired_bootstrap's interval of the avg AP on the same resamples.
    one = seed_difference([0.5], [0.4], draws[[0]], draws[[1]], 0.95)
    ref = paired_bootstrap(labels, p1, p2, n=200, seed=3)["ap"]["avg"]
    assert (one["low"], one["high"]) == pytest.approx((ref["low"], ref["high"]), abs=1e-12)
    assert ref["low"] > 0  # p1 carries more signal: the interval is not degenerate


def test_cells_are_mean_and_sample_std_over_seeds():
    assert mean_std([0.5, 0.7], 4) == "0.6000 ± 0.1414"
    assert mean_std([0.5], 4) == "0.5000"
    assert mean_std([1.0, None, 3.0], 2) == "2.00 ± 1.41 (n=2)"
    assert mean_std([None, None], 2) == "-"
    assert format_interval({"diff": 0.0123, "low": -0.004, "high": 0.029}) == "+0.0123 [-0.0040, +0.0290]"
    assert format_interval({"diff": -0.5, "low": None, "high": None}) == "-0.5000 (no interval)"
    assert format_interval({"diff": None, "low": None, "high": None}) == "-"


def test_runs_scored_on_other_rows_are_an_error():
    same = shared_rows(["a/seed-0", "b/seed-0"], [np.array([1, 2, 3]), np.array([1, 2, 3])], "valid")
    assert same.tolist() == [1, 2, 3]
    with pytest.raises(StageError, match=r"b/seed-0 and a/seed-0 were evaluated on different valid rows .*2 rows"):
        shared_rows(["a/seed-0", "b/seed-0"], [np.array([1, 2, 3]), np.array([1, 2, 4])], "valid")


# ----------------------------------------------------------------------------------------------
# when the report is current
# ----------------------------------------------------------------------------------------------
def _plan(tmp_path: Path, *overrides: str) -> SweepPlan:
    doc = {
        "name": "t",
        "base": str(ROOT / "configs" / "demo.yaml"),
        "sweep_dir": str(tmp_path / "sweep"),
        "variants": {"a": [], "b": ["history.size=2"]},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return build_plan(load_experiment(path, list(overrides)))


def _fake_manifest(root: str, stage: str, content: str, **fields: object) -> None:
    path = Path(root) / stage / "_MANIFEST.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": MANIFEST_SCHEMA, "stage": stage, "fingerprint": content, "files": [], **fields}
    path.write_text(json.dumps(doc))


def test_report_state_follows_the_runs_manifests(tmp_path):
    plan = _plan(tmp_path)
    with pytest.raises(StageError, match=r"2 run\(s\) are not done: a/seed-0 \(train missing.*; b/seed-0"):
        write_sweep_report(plan)
    assert report_state(plan) == "missing"
    for run in plan.runs:
        for stage in ("train", "evaluate"):
            _fake_manifest(run.run_dir, stage, "v1")
    # Publish a report manifest with the fingerprint of the current runs (as write_sweep_report does).
    parts, missing = _fingerprint_parts(plan)
    assert missing == []
    fingerprint = sha256_bytes(canonical_json(parts))
    marker = {"started": "-", "host": "-", "pid": 0, "slurm": None}
    doc = manifest_document("report", fingerprint, parts, [], None, marker, 0.0, {})
    (Path(plan.sweep_dir) / "report").mkdir(parents=True)
    (Path(plan.sweep_dir) / "report" / "_MANIFEST.json").write_text(json.dumps(doc))
    assert report_state(plan) is None

    _fake_manifest(plan.runs[1].run_dir, "evaluate", "v2")  # b's evaluation was redone
    assert report_state(plan) == "runs changed: b/seed-0"
    _fake_manifest(plan.runs[1].run_dir, "evaluate", "v1")
    assert report_state(plan) is None
    assert report_state(_plan(tmp_path, "experiment.report.bootstrap=10")) == "experiment settings changed"
    (Path(plan.runs[0].run_dir) / "train" / "_MANIFEST.json").unlink()
    assert report_state(plan) == "run(s) not done: a/seed-0"


def test_cost_counts_each_slurm_job_once_per_variant(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    results = []
    for i, run in enumerate(plan.runs):
        # One array task ran the whole run (train, evaluate and report): it is counted once.
        slurm = {"job_id": str(100 + i), "array_job_id": "7", "array_task_id": str(i)}
        for stage, seconds in (("train", 10.0), ("evaluate", 2.0), ("report", 1.0)):
            _fake_manifest(run.run_dir, stage, "v1", duration_s=seconds * (i + 1), slurm=slurm)
        manifests = {s: read_manifest(stage_store(run.cfg, s), s) for s in run.stages}
        results.append(RunResult(run, {}, {s: m for s, m in manifests.items() if m}, np.zeros((0, 4))))
    asked: list[list[str]] = []

    def usage(ids: list[str]) -> dict[str, dict[str, float | str]]:
        asked.append(ids)
        return {j: {"state": "COMPLETED", "elapsed_s": 60.0, "cpu_hours": 0.5, "gpu_hours": 0.25} for j in ids}

    monkeypatch.setattr("microparade.sweep.report_cost.sacct_usage", usage)
    cost = collect_cost(plan, results)
    assert cost.stage_seconds["b"] == {"train": [20.0], "evaluate": [4.0], "report": [2.0]}
    assert cost.run_totals("b") == [26.0]
    assert asked == [["7_0", "7_1"]]  # sacct's names of the array tasks, asked once
    assert cost.slurm == {
        v: {"jobs": 1, "jobs_known": 1, "elapsed_s": 60.0, "cpu_hours": 0.5, "gpu_hours": 0.25} for v in ("a", "b")
    }
    assert cost.slurm_note == ""
    monkeypatch.setattr("microparade.sweep.report_cost.sacct_usage", lambda ids: {})
    assert "sacct is not available" in collect_cost(plan, results).slurm_note


# ----------------------------------------------------------------------------------------------
# the whole report of experiments/small.yaml
# ----------------------------------------------------------------------------------------------
def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _sections(markdown: str) -> dict[str, str]:
    """``{title: text}`` of the ``## `` sections of a Markdown report."""
    parts = markdown.split("\n## ")[1:]
    return {p.split("\n", 1)[0]: p for p in parts}


def check_small_experiment_report(sweep: Path, args: list[str]) -> None:
    """The comparison report of a finished ``experiments/small.yaml`` sweep in ``sweep`` (run by
    tests/test_sweep.py's whole-sweep test, which calls this): every cell and interval, the GBDT
    and prior rows, the links both ways, and a report that is remade only when a run changes."""
    report = sweep / "report"
    html = (report / "index.html").read_text()
    md = (report / "report.md").read_text()
    summary = json.loads((report / "summary.json").read_text())
    spec = load_experiment(SMALL).spec
    sections = _sections(md)
    metrics = {
        (v, s): json.loads((sweep / "runs" / v / f"seed-{s}" / "evaluate" / "metrics.json").read_text())["valid"]
        for v in spec.variants
        for s in spec.seeds
    }
    for name, comp in spec.comparisons.items():
        table = sections[comp.title]
        cmp = summary["comparisons"][name]
        for entry in cmp["variants"]:
            v = entry["variant"]
            for metric, digits in (("ap", 4), ("rce", 2)):
                for t in (*TARGETS, "avg"):
                    cell = _cell([metrics[(v, s)][metric][t] for s in spec.seeds], digits)
                    assert cell in table and cell in html, (name, v, metric, t, cell)
            rows = [line.replace("**", "") for line in table.splitlines()]
            row = next(line for line in rows if line.startswith(f"| {comp.label(v)} |"))
            if v == comp.reference:
                assert "reference" in row
                continue
            diff = entry["difference"]["ap"]
            means = [statistics.mean(metrics[(x, s)]["ap"]["avg"] for s in spec.seeds) for x in (v, comp.reference)]
            assert diff["diff"] == pytest.approx(means[0] - means[1], abs=1e-12)
            assert diff["low"] < diff["high"]
            ci = f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
            assert ci in row and ci in html
        assert "| GBDT, features only | 1 fit |" in table and "| prior (positive rate) |" in table
        assert cmp["gbdt_difference"]["ap"]["low"] is not None
    assert "GBDT, features only: fit once" in md and summary["resamples"] == 200
    assert "row sampling" in md or "sampling of the rows only" in md
    assert "did not run under Slurm" in md

    # Links to every run's own report, and from each back to this one.
    for v in spec.variants:
        for s in spec.seeds:
            href = f"../runs/{v}/seed-{s}/report/index.html"
            assert f'href="{href}"' in html and (report / href).resolve().is_file()
            own = (sweep / "runs" / v / f"seed-{s}" / "report" / "index.html").read_text()
            assert 'href="../../../../report/index.html"' in own

    # A second report changes nothing; a changed evaluation makes it stale.
    manifest = (report / "_MANIFEST.json").read_bytes()
    assert "is current" in run_cli("sweep", "report", SMALL, *args).stderr
    assert (report / "_MANIFEST.json").read_bytes() == manifest
    plan = build_plan(load_experiment(SMALL, args))
    assert report_state(plan) is None
    evaluate = sweep / "runs" / "h2" / "seed-1" / "evaluate" / "_MANIFEST.json"
    evaluate.write_bytes(evaluate.read_bytes() + b"\n")
    assert report_state(plan) == "runs changed: h2/seed-1"
