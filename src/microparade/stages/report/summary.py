"""``summary.json``: the report's key numbers for machines (schema ``microparade.report-summary/1``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...engine.context import StageContext
from ...engine.manifest import Manifest
from ...metrics import FAIRNESS_EDGES, group_labels
from .baseline import BASELINE_PARAMS, Baseline
from .common import TRAIN_SERIES, UPSTREAM, diff, finite, job_id, split_scores
from .inputs import ReportInputs

SUMMARY_SCHEMA = "microparade.report-summary/1"


def build_summary(ctx: StageContext, inputs: ReportInputs, baseline: Baseline) -> dict[str, Any]:
    """The ``summary.json`` document (JSON-serialisable, no NaN)."""
    metrics, deltas = _metrics(inputs, baseline)
    return {
        "schema": SUMMARY_SCHEMA,
        "run_dir": ctx.cfg.run_dir,
        "fingerprint": ctx.fingerprint,
        "stages": {name: _stage(inputs.manifest(name)) for name in UPSTREAM},
        "metrics": metrics,
        "model_minus_baseline": deltas,
        "baseline": {
            "status": baseline.status,
            "train_rows": baseline.train_rows,
            "train_rows_available": baseline.train_rows_available,
            "n_features": baseline.n_features,
            "iterations": baseline.iterations,
            "params": BASELINE_PARAMS,
            "notes": baseline.notes,
        },
        "train": _train(inputs.train_log),
        "fairness_group_edges": list(FAIRNESS_EDGES),
        "fairness_group_labels": group_labels(FAIRNESS_EDGES),
    }


def _headline(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: m[k] for k in ("rows", "ap", "rce", "ap_fair", "rce_fair", "positive_rate")}


def _metrics(inputs: ReportInputs, baseline: Baseline) -> tuple[dict[str, Any], dict[str, Any]]:
    """Headline metrics per split (model, baseline, prior) and the model-minus-baseline averages."""
    metrics, deltas = {}, {}
    for s in split_scores(inputs.evaluation, baseline.metrics):
        metrics[s.split] = {"model": _headline(s.model), "baseline": _headline(s.baseline), "prior": _headline(s.prior)}
        if s.model is not None and s.baseline is not None:
            deltas[s.split] = {
                f"{key}_avg": diff(s.model[key]["avg"], s.baseline[key]["avg"])
                for key in ("ap", "rce", "ap_fair", "rce_fair")
            }
    return metrics, deltas


def _stage(m: Manifest | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "files": len(m.files),
        "rows": m.data.get("rows"),
        "bytes": m.data.get("bytes"),
        "duration_s": m.data.get("duration_s"),
        "fingerprint": m.data.get("fingerprint"),
        "host": m.data.get("host"),
        "slurm_job_id": job_id(m),
    }


def _train(log: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Record count, last step, and last/mean of each training series."""
    if not log:
        return None
    train: dict[str, Any] = {"records": len(log), "last_step": log[-1]["step"]}
    for key, *_ in TRAIN_SERIES:
        vals = [float(r[key]) for r in log if finite(r.get(key))]
        if vals:
            train[f"{key}_last"] = vals[-1]
            train[f"{key}_mean"] = float(np.mean(vals))
    return train
