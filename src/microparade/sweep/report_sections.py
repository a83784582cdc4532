"""The comparison report's document: a summary, one section per comparison (the paper's table, the
metric per variant with its seeds and intervals, the training curves), the runs with links to their
own reports, the cost, and the experiment's variants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..recsys_format import TARGETS
from ..stages.report.baseline import BASELINE_LABELS
from ..stages.report.common import finite, r2
from ..stages.report.render import (
    Figure,
    GroupLine,
    IntervalPanel,
    Link,
    Paragraph,
    Section,
    Table,
    fmt_duration,
    group_line_panels,
    interval_panels,
    relative_href,
)
from ..storage import join
from .experiment import ComparisonSpec
from .plan import SweepPlan
from .report_cost import SHARED, Cost
from .report_data import GBDT, Interval, SweepData, tables

#: Decimals of AP and RCE cells.
DIGITS = {"ap": 4, "rce": 2}
GBDT_LABEL = BASELINE_LABELS["features"]
PRIOR_LABEL = "prior (positive rate)"


def seed_stats(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (None below 2 values) of the defined values, and their number."""
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return None, None, 0
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else None
    return float(np.mean(defined)), std, len(defined)


def mean_std(values: Sequence[float | None], digits: int) -> str:
    """``mean ± std`` over seeds (just the value for one seed); ``(n=k)`` when only k seeds define it."""
    mean, std, n = seed_stats(values)
    if mean is None:
        return "-"
    text = f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text if n == len(values) else f"{text} (n={n})"


def format_interval(d: Interval, digits: int = DIGITS["ap"]) -> str:
    """``+0.0123 [-0.0040, +0.0290]``; ``(no interval)`` without bounds, ``-`` without a difference."""
    if d["diff"] is None:
        return "-"
    text = f"{d['diff']:+.{digits}f}"
    if d["low"] is None or d["high"] is None:
        return f"{text} (no interval)"
    return f"{text} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def interval_text(data: SweepData) -> str:
    """What the intervals cover (in the report's words)."""
    if data.draws is None:
        return "There are no intervals: " + "; ".join(data.notes or ["nothing to resample"]) + "."
    return (
        f"Δ AP avg is the mean over the variant's seeds of avg AP minus the mean over the reference's seeds, "
        f"with a paired bootstrap {data.confidence:.0%} interval from {data.resamples:,} resamples of the "
        f"{data.rows.row_id.size:,} evaluation rows, the same resampled rows for every run. It covers the "
        "sampling of the rows only, not the variation between seeds, which the ± (sample standard deviation "
        "over the n seeds) shows."
    )


def _row(label: str, n: Any, metrics: Sequence[dict[str, Any]], delta: str) -> list[Any]:
    """A table row: AP and RCE per engagement and avg, mean ± std over ``metrics`` (one per seed)."""
    cells: list[Any] = [label, n]
    for metric, digits in DIGITS.items():
        cells += [mean_std([m[metric][t] for m in metrics], digits) for t in (*TARGETS, "avg")]
    return [*cells, delta]


def comparison_table(data: SweepData, comp: ComparisonSpec) -> Table:
    """The paper's table: one row per variant, then the GBDT and the prior."""
    ref = comp.reference
    rows = []
    for v in comp.variants:
        results = data.results_of(v)
        delta = "reference" if v == ref else format_interval(data.difference(v, ref))
        rows.append(_row(comp.label(v), len(results), [r.metrics for r in results], delta))
    if data.gbdt is not None:
        rows.append(_row(GBDT_LABEL, "1 fit", [data.gbdt], format_interval(data.difference(GBDT, ref))))
    rows.append(_row(PRIOR_LABEL, "-", [data.prior], "-"))
    columns = ["variant", "n"]
    for metric in ("AP", "RCE"):
        columns += [f"{metric} {t}" for t in (*TARGETS, "avg")]
    columns.append(f"Δ AP avg vs {comp.label(ref)} [{data.confidence:.0%} CI]")
    caption = (
        f"{data.split} split, {data.rows.row_id.size:,} rows; each cell: mean ± sample standard deviation over "
        "the n seeds; Δ: paired bootstrap interval over the rows (see Summary)"
    )
    return Table(columns, rows, caption=caption, bold_rows={comp.variants.index(ref)})


def _metric_plot(data: SweepData, comp: ComparisonSpec, colors: dict[str, int]) -> bytes:
    """avg AP and avg RCE per variant: every seed, the mean, the interval of the difference to the reference."""
    ref = comp.reference
    panels: list[IntervalPanel] = []
    for metric, name in (("ap", "avg AP"), ("rce", "avg RCE")):
        ref_mean = seed_stats([r.metrics[metric]["avg"] for r in data.results_of(ref)])[0]
        cols = []
        for v in comp.variants:
            values = [float(x) for r in data.results_of(v) if (x := r.metrics[metric]["avg"]) is not None]
            d = data.difference(v, ref, metric)
            bounds = None
            if v != ref and ref_mean is not None and d["low"] is not None and d["high"] is not None:
                bounds = (ref_mean + d["low"], ref_mean + d["high"])
            cols.append((colors[v], comp.label(v), values, bounds))
        refs = [(f"{comp.label(ref)} (mean)", ref_mean)]
        if data.gbdt is not None:
            refs.append((GBDT_LABEL, data.gbdt[metric]["avg"]))
        panels.append((f"{name} on {data.split}", name, cols, [(k, y) for k, y in refs if y is not None]))
    return interval_panels(panels)


def _series(log: list[dict[str, Any]] | None, key: str) -> tuple[list[float], list[float]]:
    pts = [(float(r["step"]), float(r[key])) for r in log or [] if finite(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _curves(data: SweepData, comp: ComparisonSpec, colors: dict[str, int]) -> bytes | None:
    """Training loss and valid avg AP during training, every seed of every variant (one colour per variant)."""
    loss: list[GroupLine] = []
    valid: list[GroupLine] = []
    for v in comp.variants:
        for r in data.results_of(v):
            for lines, records, key in ((loss, r.train_log, "loss"), (valid, r.validation, "valid_ap")):
                xs, ys = _series(records, key)
                if xs:
                    lines.append((colors[v], comp.label(v), xs, ys))
    panels = [("training loss", "loss", loss, False), ("valid avg AP during training", "avg AP", valid, False)]
    shown = [p for p in panels if p[2]]
    return group_line_panels(shown, xlabel="optimizer step") if shown else None


def comparison_section(name: str, comp: ComparisonSpec, data: SweepData, colors: dict[str, int]) -> Section:
    sec = Section(f"cmp-{name}", comp.title or name)
    sec.add(comparison_table(data, comp))
    sec.add(
        Figure(
            f"{name}_metric",
            _metric_plot(data, comp, colors),
            caption=f"Dots: each seed's value on the {data.split} rows; diamond: their mean; bar: the "
            f"{data.confidence:.0%} interval of the difference to {comp.label(comp.reference)}, drawn around its "
            "mean (row sampling only); dashed lines: the reference's mean and the GBDT.",
        )
    )
    curves = _curves(data, comp, colors)
    if curves is None:
        sec.add(Paragraph("No training curves: the runs' train stages published no metrics.jsonl.", kind="note"))
    else:
        sec.add(Figure(f"{name}_training", curves, caption="Every seed's curves; one colour per variant."))
    return sec


def _summary_section(plan: SweepPlan, data: SweepData) -> Section:
    spec = plan.experiment.spec
    sec = Section("summary", "Summary")
    if spec.description:
        sec.add(Paragraph(spec.description))
    sec.add(
        Paragraph(
            f"{len(spec.variants)} variant(s) × {len(spec.seeds)} seed(s) = {len(plan.runs)} runs, scored on the "
            f"{data.split} split: {data.rows.row_id.size:,} rows, those each run's evaluate metrics use (the "
            "calibration hold-out left out), the same in every run."
        ),
        Paragraph(interval_text(data)),
        Paragraph(f"{GBDT_LABEL}: {data.gbdt_note}.", kind="note"),
    )
    rows = [
        [
            comp.title or name,
            comp.label(v),
            comp.label(comp.reference),
            format_interval(data.difference(v, comp.reference)),
        ]
        for name, comp in tables(plan).items()
        for v in comp.variants
        if v != comp.reference
    ]
    if rows:
        columns = ["comparison", "variant", "reference", f"Δ AP avg [{data.confidence:.0%} CI]"]
        sec.add(Table(columns, rows, caption="every difference to a table's reference"))
    return sec


def _runs_section(plan: SweepPlan, data: SweepData, from_dir: str) -> Section:
    rows = []
    for r in data.runs:
        href = relative_href(join(r.run.run_dir, "report", "index.html"), from_dir)
        steps = r.manifests["train"].extra.get("steps") if "train" in r.manifests else None
        ap, rce = r.metrics["ap"]["avg"], r2(r.metrics["rce"]["avg"])
        rows.append([r.run.variant, r.run.seed, steps, ap, rce, Link("report", href)])
    table = Table(["variant", "seed", "train steps", "AP avg", "RCE avg", "own report"], rows)
    return Section("runs", "Runs").add(table)


def _cost_section(plan: SweepPlan, cost: Cost) -> Section:
    sec = Section("cost", "Cost")
    stages = plan.runs[0].stages
    rows = []
    for v, per_stage in cost.stage_seconds.items():
        totals = cost.run_totals(v)
        means = [seed_stats(per_stage.get(s, []))[0] for s in stages]
        rows.append(
            [v, len(totals), *map(fmt_duration, means), fmt_duration(float(np.mean(totals))), fmt_duration(sum(totals))]
        )
    columns = ["variant", "runs", *(f"{s} (mean)" for s in stages), "run (mean)", "all seeds"]
    sec.add(Table(columns, rows, caption="wall time of the runs' model stages (their manifests' duration_s)"))
    units = [[u["key"], u["stage"], u["runs"], fmt_duration(u["duration_s"])] for u in cost.units]
    sec.add(Table(["shared stage", "stage", "runs reading it", "wall time"], units, caption="computed once"))
    runs_s = sum(sum(cost.run_totals(v)) for v in cost.stage_seconds)
    shared_s = sum(u["duration_s"] or 0.0 for u in cost.units)
    sec.add(
        Paragraph(
            f"Total wall time: {fmt_duration(runs_s)} in the runs, {fmt_duration(shared_s)} in the shared stages."
        )
    )
    if cost.slurm:
        slurm_rows = [
            [name, u["jobs"], fmt_duration(u["elapsed_s"]), u["cpu_hours"], u["gpu_hours"]]
            for name, u in sorted(cost.slurm.items(), key=lambda kv: kv[0] == SHARED)
        ]
        columns = ["variant", "Slurm jobs", "elapsed (sum)", "CPU hours", "GPU hours"]
        sec.add(Table(columns, slurm_rows, caption="sacct accounting, each job once"))
    if cost.slurm_note:
        sec.add(Paragraph(cost.slurm_note, kind="note"))
    return sec


def _experiment_section(plan: SweepPlan) -> Section:
    spec = plan.experiment.spec
    sec = Section("experiment", "Experiment")
    sec.add(
        Paragraph(f"Experiment file {plan.experiment.path}; seeds {spec.seeds} (set as {', '.join(spec.seed_keys)})."),
        Paragraph("Overrides of every variant: " + (" ".join(spec.overrides) or "none") + "."),
        Table(["variant", "overrides"], [[v, " ".join(o) or "(the base config)"] for v, o in spec.variants.items()]),
    )
    return sec


def build_sections(plan: SweepPlan, data: SweepData, cost: Cost, from_dir: str) -> list[Section]:
    """Every section, in page order (``from_dir``: where the report lives, for relative links)."""
    colors = {v: i for i, v in enumerate(plan.experiment.spec.variants)}
    return [
        _summary_section(plan, data),
        *(comparison_section(name, comp, data, colors) for name, comp in tables(plan).items()),
        _runs_section(plan, data, from_dir),
        _cost_section(plan, cost),
        _experiment_section(plan),
    ]
