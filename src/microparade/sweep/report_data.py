"""What the comparison report computes: every run's evaluation on the shared rows, the features-only
GBDT fit once, the prior, and the paired bootstrap of the seed-averaged differences.

The rows are those each run's ``evaluate/metrics.json`` scores on ``report.split``: the rows of its
``evaluate/predictions/{split}.parquet`` outside the calibration hold-out. Every run must score the
same rows (joined by ``row_id``); their labels and follower counts come from the chunks the GBDT is
fit on (those of the first table's reference variant, first seed). One bootstrap resamples those
rows ``report.bootstrap`` times, the same resamples for every run and the GBDT, so a difference of
seed means can be taken on every draw.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.layout import stage_store
from ..engine.manifest import Manifest, read_manifest
from ..errors import StageError
from ..metrics import ap_of, bootstrap_averages, compute_metrics, prior_metrics
from ..recsys_format import TARGETS
from ..stages.chunks.contract import ChunksManifest
from ..stages.report.baseline import BaselineSettings, SplitRows, fit_baselines, split_labels
from ..stages.report.inputs import read_model_predictions, read_step_records
from .experiment import ComparisonSpec
from .plan import SweepPlan, SweepRun
from .state import run_metrics

log = logging.getLogger("microparade")

#: The name of the GBDT's row (in :meth:`SweepData.difference` and ``summary.json``).
GBDT = "gbdt"
#: ``{"diff", "low", "high"}``: a difference and its interval (bounds None without one).
Interval = dict[str, float | None]


def tables(plan: SweepPlan) -> dict[str, ComparisonSpec]:
    """The report's tables: the experiment's comparisons, else one table of every variant."""
    spec = plan.experiment.spec
    if spec.comparisons:
        return dict(spec.comparisons)
    return {"all": ComparisonSpec.model_construct(title="All variants", variants=list(spec.variants), labels={})}


def gbdt_run(plan: SweepPlan) -> SweepRun:
    """The run whose chunks the GBDT is fit on and the labels are read from: the first table's reference, first seed."""
    return plan.runs_of(next(iter(tables(plan).values())).reference)[0]


@dataclass
class RunResult:
    run: SweepRun
    #: ``evaluate/metrics.json[split]``: the run's cells of the tables.
    metrics: dict[str, Any]
    #: The run's published model stages by name.
    manifests: dict[str, Manifest]
    #: ``[rows, 4]`` final probabilities on the shared rows, in the order of :attr:`EvalRows.row_id`.
    probs: np.ndarray
    #: ``train/metrics.jsonl`` and ``train/validation.jsonl`` records (None when absent).
    train_log: list[dict[str, Any]] | None = None
    validation: list[dict[str, Any]] | None = None


@dataclass
class EvalRows:
    """The rows every run is scored on, sorted by ``row_id``."""

    row_id: np.ndarray
    #: ``[rows, 4]`` int8, columns in ``TARGETS`` order.
    labels: np.ndarray
    a_follower_count: np.ndarray


@dataclass
class SweepData:
    split: str
    rows: EvalRows
    #: One per run of the plan, in plan order.
    runs: list[RunResult]
    #: The GBDT's metrics on the rows (None when not fit) and how it was fit, or why not.
    gbdt: dict[str, Any] | None
    gbdt_note: str
    prior: dict[str, Any]
    confidence: float
    resamples: int = 0
    #: ``{"ap" | "rce": [runs (+ the GBDT), resamples]}``: avg of the metric on every resample.
    draws: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)

    def results_of(self, variant: str) -> list[RunResult]:
        return [r for r in self.runs if r.run.variant == variant]

    def _side(self, name: str, metric: str) -> tuple[list[int], list[float | None]]:
        """Rows of :attr:`draws` and the points (avg ``metric``) of a variant's seeds, or of the GBDT."""
        if name == GBDT:
            return [len(self.runs)], [self.gbdt[metric]["avg"] if self.gbdt else None]
        idx = [i for i, r in enumerate(self.runs) if r.run.variant == name]
        return idx, [self.runs[i].metrics[metric]["avg"] for i in idx]

    def difference(self, name: str, reference: str, metric: str = "ap") -> Interval:
        """Variant ``name`` (or :data:`GBDT`) minus ``reference``: the means over their seeds of avg ``metric``."""
        a_idx, a = self._side(name, metric)
        b_idx, b = self._side(reference, metric)
        draws = self.draws[metric] if self.draws is not None else None
        if draws is None or max(a_idx + b_idx) >= draws.shape[0]:
            return seed_difference(a, b, None, None, self.confidence)
        return seed_difference(a, b, draws[a_idx], draws[b_idx], self.confidence)


def seed_difference(
    points_a: Sequence[float | None],
    points_b: Sequence[float | None],
    draws_a: np.ndarray | None,
    draws_b: np.ndarray | None,
    confidence: float,
) -> Interval:
    """(mean of A's seeds) minus (mean of B's seeds), with the ``confidence`` percentile interval of the same
    difference on every bootstrap draw (``draws_*``: ``[seeds, draws]``, the same resamples for every row)."""
    if not points_a or not points_b or any(p is None for p in [*points_a, *points_b]):
        return {"diff": None, "low": None, "high": None}
    diff = float(np.mean(np.asarray(points_a, dtype=float)) - np.mean(np.asarray(points_b, dtype=float)))
    if draws_a is None or draws_b is None:
        return {"diff": diff, "low": None, "high": None}
    d = draws_a.mean(axis=0) - draws_b.mean(axis=0)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"diff": diff, "low": None, "high": None}
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(d, [tail, 100.0 - tail])
    return {"diff": diff, "low": float(low), "high": float(high)}


def _read_run(run: SweepRun, split: str) -> tuple[RunResult, np.ndarray]:
    """A run's metrics, manifests, training logs and predictions of the rows its metrics score (by row id)."""
    manifests = {s: m for s in run.stages if (m := read_manifest(stage_store(run.cfg, s), s)) is not None}
    evaluate = manifests.get("evaluate")
    metrics = run_metrics(run, split)
    if evaluate is None or metrics is None:
        url = stage_store(run.cfg, "evaluate").url("evaluate", "metrics.json")
        raise StageError(
            f"{run.label}: {url} has no {split!r} metrics; the comparison report (report.split={split}) needs "
            f"that split evaluated (evaluate.splits) and labelled in every run"
        )
    preds, why = read_model_predictions(evaluate, split)
    if preds is None:
        raise StageError(f"{run.label}: {why}")
    keep = ~preds.holdout
    order = np.argsort(preds.row_id[keep], kind="stable")
    row_id = preds.row_id[keep][order]
    if metrics["rows"] != row_id.size:
        raise StageError(
            f"{run.label}: {evaluate.url('metrics.json')} scores {metrics['rows']:,} {split} rows but "
            f"{evaluate.url(f'predictions/{split}.parquet')} holds {row_id.size:,} outside the calibration hold-out"
        )
    result = RunResult(run, metrics, manifests, preds.probs[keep][order])
    result.train_log = read_step_records(manifests.get("train"))[0]
    result.validation = read_step_records(manifests.get("train"), "validation.jsonl")[0]
    return result, row_id


def shared_rows(labels: Sequence[str], row_ids: Sequence[np.ndarray], split: str) -> np.ndarray:
    """The row ids every run scored (the first's), or a :class:`StageError` naming two runs that differ."""
    first = row_ids[0]
    for label, ids in zip(labels[1:], row_ids[1:]):
        if not np.array_equal(ids, first):
            only = np.setxor1d(ids, first).size
            raise StageError(
                f"{label} and {labels[0]} were evaluated on different {split} rows ({ids.size:,} and "
                f"{first.size:,} rows scored, {only:,} rows scored by only one): the report pairs the runs row by "
                "row, so every run must score the same rows (same data, splits and evaluate.calibration_fraction)"
            )
    return first


def _labels_and_gbdt(run: SweepRun, split: str, plan: SweepPlan) -> tuple[SplitRows | None, np.ndarray | None, str]:
    """The labelled rows of ``split`` in ``run``'s chunks, the GBDT's predictions for them (when fit) and
    how it was fit, or why not."""
    store = stage_store(run.cfg, "chunks")
    m = read_manifest(store, "chunks")
    if m is None:
        raise StageError(f"{run.label}: no chunks manifest at {store.url('chunks')} (its labels are the report's)")
    chunks = ChunksManifest.from_manifest(m)
    so = run.cfg.storage_options
    settings = plan.experiment.spec.report
    if not settings.gbdt:
        return split_labels(chunks, split, so), None, "not fit (report.gbdt is false)"
    rc = run.cfg.report
    fit = BaselineSettings(rc.baseline_max_rows, settings.seed, rc.baseline_threads, so, _log, keys=("features",))
    baseline = fit_baselines(chunks, [split], fit)
    rows = baseline.splits.get(split)
    if baseline.status != "done" or rows is None:
        return split_labels(chunks, split, so), None, f"not fit: {baseline.status}"
    note = (
        f"fit once on {baseline.train_rows:,} of the {baseline.train_rows_available:,} training rows of "
        f"{m.url()} (the chunks of {run.label}), seed {settings.seed}"
    )
    return rows, rows.preds["features"], "; ".join([note, *baseline.notes])


def _log(msg: str, *args: Any) -> None:
    log.info("[sweep report] " + msg, *args)


def _join_labels(
    labelled: SplitRows | None, row_id: np.ndarray, gbdt: np.ndarray | None, where: str
) -> tuple[EvalRows, np.ndarray | None]:
    """The labels and follower counts of the evaluated rows (and the GBDT's predictions for them)."""
    if labelled is None:
        raise StageError(f"{where} holds no labelled rows of the evaluated split")
    _, i_lab, i_row = np.intersect1d(labelled.row_id, row_id, assume_unique=True, return_indices=True)
    if i_row.size != row_id.size:
        raise StageError(
            f"{row_id.size - i_row.size:,} of the {row_id.size:,} evaluated rows have no labelled row in {where}"
        )
    rows = EvalRows(row_id, labelled.labels[i_lab], labelled.a_follower_count[i_lab])
    return rows, None if gbdt is None else gbdt[i_lab]


def _check_agrees(result: RunResult, rows: EvalRows) -> None:
    """The run's avg AP on the joined rows is its ``metrics.json``'s (else the labels are not the run's)."""
    aps = [ap_of(rows.labels[:, j], result.probs[:, j]) for j in range(len(TARGETS))]
    defined = [a for a in aps if math.isfinite(a)]
    shown = result.metrics["ap"]["avg"]
    if defined and shown is not None and abs(float(np.mean(defined)) - shown) > 1e-9:
        raise StageError(
            f"{result.run.label}: avg AP {float(np.mean(defined)):.6f} on the joined rows, but its evaluate "
            f"metrics.json says {shown:.6f}: the chunks' labels are not those the run was scored with"
        )


def collect(plan: SweepPlan) -> SweepData:
    """Everything the tables, plots and intervals show."""
    settings = plan.experiment.spec.report
    split = settings.split
    read = [_read_run(run, split) for run in plan.runs]
    results = [r for r, _ in read]
    row_id = shared_rows([r.run.label for r in results], [ids for _, ids in read], split)
    chunks_run = gbdt_run(plan)
    labelled, gbdt_p, gbdt_note = _labels_and_gbdt(chunks_run, split, plan)
    where = stage_store(chunks_run.cfg, "chunks").url("chunks")
    rows, gbdt_p = _join_labels(labelled, row_id, gbdt_p, f"the {split} chunks of {chunks_run.label} ({where})")
    for r in results:
        _check_agrees(r, rows)
    gbdt = compute_metrics(rows.labels, gbdt_p, rows.a_follower_count) if gbdt_p is not None else None
    data = SweepData(split, rows, results, gbdt, gbdt_note, prior_metrics(results[0].metrics), settings.confidence)
    if settings.bootstrap == 0:
        data.notes.append("no intervals: report.bootstrap is 0")
    elif row_id.size:
        t0 = time.perf_counter()
        sets = [r.probs for r in results] + ([gbdt_p] if gbdt_p is not None else [])
        data.draws = bootstrap_averages(rows.labels, sets, settings.bootstrap, settings.seed)
        data.resamples = settings.bootstrap
        took = time.perf_counter() - t0
        _log(
            "paired bootstrap: %d resamples of %d rows, %d prediction sets in %.1fs",
            data.resamples,
            row_id.size,
            len(sets),
            took,
        )
    return data
