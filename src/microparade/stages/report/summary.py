"""``summary.json``: the report's key numbers for machines (schema ``microparade.report-summary/1``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...engine.context import StageContext
from ...engine.manifest import Manifest
from ...metrics import FAIRNESS_EDGES, group_labels
from ...recsys_format import TARGETS
from .baseline import BASELINE_PARAMS, BASELINES, Baseline
from .common import TRAIN_SERIES, UPSTREAM, SplitScores, diff, finite, job_id, verdict
from .history import HISTORY_FEATURES
from .inputs import ReportInputs
from .sections_results import compared_rows

SUMMARY_SCHEMA = "microparade.report-summary/1"


#: ``summary.json`` names of the baselines' metrics: ``baseline`` (features only, as before the
#: second baseline) and ``baseline_history``.
SUMMARY_NAMES = {"features": "baseline", "history": "baseline_history"}


def build_summary(
    ctx: StageContext, inputs: ReportInputs, baseline: Baseline, scores: list[SplitScores]
) -> dict[str, Any]:
    """The ``summary.json`` document (JSON-serialisable, no NaN)."""
    metrics, deltas = _metrics(scores)
    return {
        "schema": SUMMARY_SCHEMA,
        "run_dir": ctx.cfg.run_dir,
        "fingerprint": ctx.fingerprint,
        "stages": {name: _stage(inputs.manifest(name)) for name in UPSTREAM},
        "metrics": metrics,
        **deltas,
        "comparisons": {s.split: _comparison(s) for s in scores if s.model is not None and s.baselines},
        "baseline": {
            "status": baseline.status,
            "train_rows": baseline.train_rows,
            "train_rows_available": baseline.train_rows_available,
            "n_features": baseline.n_features,
            "iterations": baseline.iterations.get("features", {}),
            "iterations_history": baseline.iterations.get("history", {}),
            "history_features": list(HISTORY_FEATURES),
            "params": BASELINE_PARAMS,
            "notes": baseline.notes,
        },
        "calibration": _calibration(inputs.calibration),
        "train": _train(inputs.train_log),
        "fairness_group_edges": list(FAIRNESS_EDGES),
        "fairness_group_labels": group_labels(FAIRNESS_EDGES),
    }


def _headline(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: m[k] for k in ("rows", "ap", "rce", "ap_fair", "rce_fair", "positive_rate")}


def _metrics(scores: list[SplitScores]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Headline metrics per split (model, baselines, prior) and the model-minus-baseline averages
    (``model_minus_baseline``, ``model_minus_baseline_history``)."""
    metrics: dict[str, Any] = {}
    deltas: dict[str, Any] = {f"model_minus_{name}": {} for name in SUMMARY_NAMES.values()}
    for s in scores:
        metrics[s.split] = {"model": _headline(s.model), "prior": _headline(s.prior)}
        for key, name in SUMMARY_NAMES.items():
            base = s.baselines.get(key)
            metrics[s.split][name] = _headline(base)
            if s.model is not None and base is not None:
                deltas[f"model_minus_{name}"][s.split] = {
                    f"{m}_avg": diff(s.model[m]["avg"], base[m]["avg"]) for m in ("ap", "rce", "ap_fair", "rce_fair")
                }
    return metrics, deltas


def _comparison(s: SplitScores) -> dict[str, Any]:
    """The model minus each baseline on the compared rows: differences, 95% intervals, verdicts."""
    vs: dict[str, Any] = {}
    for key, label in BASELINES:
        if key not in s.baselines:
            continue
        vs[key] = {"label": label}
        for metric in ("ap", "rce"):
            vs[key][metric] = {}
            for target in (*TARGETS, "avg"):
                d = s.difference(key, metric, target)
                vs[key][metric][target] = {**(d or {"diff": None, "low": None, "high": None}), "verdict": verdict(d)}
    return {"rows": compared_rows(s), "resamples": s.resamples, "notes": s.notes, "vs": vs}


def _calibration(cal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibration's kind and, per split, AP avg and RCE avg before and after; None without calibration.json."""
    if cal is None:
        return None
    splits = {}
    for split, entry in (cal.get("splits") or {}).items():
        splits[split] = {"rows_scored": entry.get("rows_scored")}
        for state in ("uncalibrated", "calibrated"):
            m = entry.get(state) or {}
            splits[split][state] = {f"{k}_avg": (m.get(k) or {}).get("avg") for k in ("ap", "rce")}
    return {k: cal.get(k) for k in ("kind", "fraction", "fit_rows", "note")} | {"splits": splits}


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
