"""The Calibration section: how the evaluate stage calibrated the model's probabilities
(``evaluate/calibration.json``), AP and RCE before and after, and reliability diagrams of valid."""

from __future__ import annotations

from typing import Any

from ...recsys_format import TARGETS
from .common import ordered, r2
from .inputs import ReportInputs
from .render import Block, Figure, Paragraph, Section, Table, reliability_panels

#: The two prediction sets of ``calibration.json``, in plot and table order.
STATES = ("uncalibrated", "calibrated")
#: The split whose reliability diagrams are drawn.
DIAGRAM_SPLIT = "valid"


def calibration_section(inputs: ReportInputs) -> Section:
    """The calibrators, the metrics before and after calibration per split, the valid reliability diagrams."""
    sec = Section("calibration", "Calibration")
    cal = inputs.calibration
    if cal is None:
        return sec.add(Paragraph(f"Calibration: {inputs.calibration_note}.", kind="note"))
    sec.add(_method(cal))
    if cal.get("note"):
        sec.add(Paragraph(f"{cal['note']}.", kind="note"))
    fit = cal.get("fit") or {}
    if fit:
        sec.add(_fit_table(fit))
    splits = cal.get("splits") or {}
    for split in ordered(splits):
        sec.add(_metrics_table(split, splits[split]))
    if DIAGRAM_SPLIT in splits:
        sec.add(*_diagram(splits[DIAGRAM_SPLIT]))
    elif splits:
        sec.add(Paragraph(f"No reliability diagrams: calibration.json has no {DIAGRAM_SPLIT} split.", kind="note"))
    return sec


def _method(cal: dict[str, Any]) -> Paragraph:
    kind = cal.get("kind")
    if kind in (None, "none"):
        return Paragraph("No calibration: the final probabilities are the model's own (evaluate.calibration none).")
    fraction = cal.get("fraction")
    share = f" ({fraction:.0%} of the valid split, chosen by row id)" if isinstance(fraction, (int, float)) else ""
    return Paragraph(
        f"The model's probabilities are calibrated per engagement ({kind}) on {cal.get('fit_rows') or 0:,} "
        f"held-out valid rows{share}; those rows are left out of every valid score. A calibrator is a monotone "
        "map: an increasing one keeps the ranking, and so AP up to ties; calibration aims at RCE and the "
        "reliability diagrams."
    )


def _params(params: dict[str, Any]) -> str:
    """A calibrator's parameters in a few words."""
    kind = params.get("kind")
    if kind == "platt":
        a, b = float(params.get("a", 0.0)), float(params.get("b", 0.0))
        return f"sigmoid({a:.4g} * logit(p) {'-' if b < 0 else '+'} {abs(b):.4g})"
    if kind == "isotonic":
        return f"{len(params.get('x') or [])} thresholds"
    return "-"


def _fit_table(fit: dict[str, Any]) -> Table:
    rows = []
    for t in TARGETS:
        entry = fit.get(t) or {}
        params = entry.get("params") or {}
        rows.append(
            [t, entry.get("rows"), entry.get("positives"), params.get("kind"), _params(params), entry.get("note")]
        )
    return Table(
        ["engagement", "fit rows", "positives", "calibrator", "parameters", "note"],
        rows,
        caption="calibrators, fit on the held-out valid rows",
    )


def _mean_prob(bins: dict[str, Any] | None) -> float | None:
    """The mean predicted probability over every row of a reliability diagram's bins."""
    if not bins:
        return None
    pairs = [(c, m) for c, m in zip(bins.get("count") or [], bins.get("mean_predicted") or []) if c and m is not None]
    total = sum(c for c, _ in pairs)
    return sum(c * m for c, m in pairs) / total if total else None


def _metrics_table(split: str, entry: dict[str, Any]) -> Table:
    """AP, RCE and the mean predicted probability before and after calibration, per engagement."""
    before, after = entry.get("uncalibrated") or {}, entry.get("calibrated") or {}
    reliability = entry.get("reliability") or {}
    rows = []
    for t in (*TARGETS, "avg"):
        rate = (after.get("positive_rate") or {}).get(t)
        means = [_mean_prob((reliability.get(state) or {}).get(t)) for state in STATES]
        positives = ((after.get("groups") or {}).get("positives") or {}).get(t)
        rows.append(
            [
                t,
                sum(positives) if positives else None,
                (before.get("ap") or {}).get(t),
                (after.get("ap") or {}).get(t),
                r2((before.get("rce") or {}).get(t)),
                r2((after.get("rce") or {}).get(t)),
                rate,
                *means,
            ]
        )
    columns = ["engagement", "positives", "AP uncalibrated", "AP calibrated", "RCE uncalibrated", "RCE calibrated"]
    columns += ["positive rate", "mean prob. uncalibrated", "mean prob. calibrated"]
    return Table(
        columns,
        rows,
        caption=f"{split}: before and after calibration, on the {entry.get('rows_scored') or 0:,} rows scored",
    )


def _points(bins: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    """The non-empty bins of a reliability diagram: ``(mean predicted, observed rate)``."""
    if not bins:
        return [], []
    pts = [
        (float(m), float(o))
        for c, m, o in zip(bins.get("count") or [], bins.get("mean_predicted") or [], bins.get("observed_rate") or [])
        if c and m is not None and o is not None
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _diagram(entry: dict[str, Any]) -> list[Block]:
    """One reliability panel per engagement: observed positive rate against mean predicted probability."""
    reliability = entry.get("reliability") or {}
    panels = [(t, [(state, *_points((reliability.get(state) or {}).get(t))) for state in STATES]) for t in TARGETS]
    if not any(xs for _, lines in panels for _, xs, _ in lines):
        return [Paragraph(f"No reliability diagrams: the {DIAGRAM_SPLIT} bins are empty.", kind="note")]
    return [
        Figure(
            f"calibration_reliability_{DIAGRAM_SPLIT}",
            reliability_panels(panels),
            caption=f"{DIAGRAM_SPLIT}: reliability per engagement, before and after calibration (equal-width "
            "bins of the predicted probability, empty bins left out; on the diagonal = calibrated).",
        )
    ]
