"""The model against the baselines on the same rows: their metrics and paired bootstrap intervals.

For every split scored by the model (``evaluate/metrics.json``) or the baselines, the baselines'
predictions (one per labelled chunk row) are joined with the model's
(``evaluate/predictions/{split}.parquet``) by ``row_id``, and the baselines are scored on the joined
rows that did not fit the calibrators (``calibration_holdout`` false; every row in files without
the column), the rows the evaluate stage scores the model on. On those rows,
:func:`microparade.metrics.paired_bootstrap_many` gives the 95% interval of every model-minus-baseline
difference (``report.bootstrap`` resamples seeded by ``report.seed``; 0 = none). Without the model's
predictions the baselines are scored on every labelled row and there are no intervals.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...engine.context import StageContext
from ...metrics import compute_metrics, paired_bootstrap_many, prior_metrics
from .baseline import BASELINES, Baseline, SplitRows
from .common import SplitScores, ordered
from .inputs import ModelPredictions, ReportInputs, read_model_predictions


def compare(ctx: StageContext, inputs: ReportInputs, baseline: Baseline) -> list[SplitScores]:
    """One entry per split scored by the model or the baselines, in split order."""
    evaluation = inputs.evaluation or {}
    out = []
    for split in ordered(set(evaluation) | set(baseline.splits)):
        model_m, rows = evaluation.get(split), baseline.splits.get(split)
        if rows is not None:
            out.append(_compare_split(ctx, inputs, split, model_m, rows))
        elif model_m is not None:
            out.append(SplitScores(split, model_m, {}, model_m, prior_metrics(model_m)))
    return out


def _join(rows: SplitRows, model: ModelPredictions) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The baseline rows to score (indices into ``rows``), the model's predictions for them, and notes
    on the rows left out."""
    _, i_rows, i_model = np.intersect1d(rows.row_id, model.row_id, assume_unique=True, return_indices=True)
    held = model.holdout[i_model]
    notes = []
    if held.any():
        notes.append(f"{int(held.sum()):,} rows that fit the calibrators are left out of every score")
    only_model = model.row_id.size - i_model.size
    if only_model:
        notes.append(f"{only_model:,} rows the model predicted have no labelled chunk row and are not scored")
    only_chunks = rows.row_id.size - i_rows.size
    if only_chunks:
        notes.append(f"{only_chunks:,} labelled chunk rows have no model prediction and are not scored")
    return i_rows[~held], model.probs[i_model[~held]], notes


def _compare_split(
    ctx: StageContext, inputs: ReportInputs, split: str, model_m: dict[str, Any] | None, rows: SplitRows
) -> SplitScores:
    """The baselines scored on the model's rows of ``split``, with the intervals of the differences."""
    notes: list[str] = []
    model_p = None
    sel = np.arange(rows.row_id.size)
    if model_m is not None:
        model, why = read_model_predictions(inputs.manifest("evaluate"), split)
        if model is None:
            notes.append(f"no paired comparison: {why}; the baselines are scored on every labelled row")
        else:
            sel, model_p, join_notes = _join(rows, model)
            notes += join_notes
    labels, afc = rows.labels[sel], rows.a_follower_count[sel]
    baselines = {key: compute_metrics(labels, rows.preds[key][sel], afc) for key, _ in BASELINES}
    if model_m is not None and model_m["rows"] != sel.size:
        notes.append(
            f"the model's metrics (evaluate/metrics.json) cover {model_m['rows']:,} rows, the baselines' {sel.size:,}"
        )
    ref = model_m or baselines[BASELINES[0][0]]
    scores = SplitScores(split, model_m, baselines, ref, prior_metrics(ref), notes=notes)
    n = ctx.cfg.report.bootstrap
    if model_p is not None and n == 0:
        notes.append("no intervals: report.bootstrap is 0")
    elif model_p is not None and sel.size:
        t0 = time.perf_counter()
        others = {key: rows.preds[key][sel] for key, _ in BASELINES}
        scores.intervals = paired_bootstrap_many(labels, model_p, others, n, ctx.cfg.report.seed)
        scores.resamples = n
        ctx.log(f"{split}: paired bootstrap, {n:,} resamples of {sel.size:,} rows in {time.perf_counter() - t0:.1f}s")
    return scores
