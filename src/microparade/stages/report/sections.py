"""The report's sections, in page order: summary, results, calibration, training, data, pipeline
stages, config.

Results, calibration and data live in :mod:`.sections_results`, :mod:`.sections_calibration` and
:mod:`.sections_data`; this module holds the shorter sections and :func:`build_sections`, which
assembles them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import yaml

from ...engine.context import StageContext
from ...engine.fingerprint import code_version
from ...engine.manifest import Manifest
from ...recsys_format import TARGETS
from ...storage import format_bytes
from .baseline import BASELINES, Baseline
from .common import NOT_RUN, TRAIN_SERIES, UPSTREAM, SplitScores, finite, job_id, r2
from .inputs import ReportInputs
from .render import (
    Figure,
    Line,
    Link,
    Panel,
    Paragraph,
    Preformatted,
    Section,
    Table,
    fmt_duration,
    line_panels,
    relative_href,
)
from .sections_calibration import calibration_section
from .sections_data import data_sections
from .sections_results import headline, results_sections


def build_sections(
    ctx: StageContext, inputs: ReportInputs, baseline: Baseline, scores: list[SplitScores]
) -> list[Section]:
    """Every section of the report, in page order."""
    return [
        _summary_section(inputs, scores),
        *results_sections(inputs, baseline, scores),
        calibration_section(inputs),
        _training_section(inputs.manifest("train"), inputs.train_log, inputs.train_note),
        *data_sections(inputs.manifests),
        _stages_section(ctx, inputs),
        _config_section(ctx),
    ]


def meta_lines(ctx: StageContext) -> list[str | Link]:
    """The lines under the report's title: the run directory, the comparison report of the experiment
    the run belongs to (``report.comparison``) and what built the report."""
    lines: list[str | Link] = [f"run_dir: {ctx.cfg.run_dir}"]
    comparison = ctx.cfg.report.comparison
    if comparison:
        lines.append(Link(f"comparison report: {comparison}", relative_href(comparison, ctx.store.url(ctx.name))))
    return [*lines, f"report fingerprint {ctx.fingerprint[:16]}, code {code_version()}"]


# ----------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------
def _avg(m: dict[str, Any] | None, metric: str) -> Any:
    """The avg of ``metric`` of a metrics dict (RCE rounded for display), None without one."""
    if m is None:
        return None
    return m[metric]["avg"] if metric == "ap" else r2(m[metric]["avg"])


def _summary_section(inputs: ReportInputs, scores: list[SplitScores]) -> Section:
    sec = Section("summary", "Summary")
    rows: list[list[Any]] = [
        [s.split, s.ref["rows"]]
        + [_avg(m, "ap") for m in (s.model, *(s.baselines.get(k) for k, _ in BASELINES), s.prior)]
        + [_avg(m, "rce") for m in (s.model, *(s.baselines.get(k) for k, _ in BASELINES))]
        for s in scores
    ]
    if rows:
        columns = ["split", "rows"]
        columns += [f"AP avg {who}" for who in ("model", *(label for _, label in BASELINES), "prior")]
        columns += [f"RCE avg {who}" for who in ("model", *(label for _, label in BASELINES))]
        sec.add(Table(columns, rows, caption="headline numbers (details under Results)"))
        sec.add(*(Paragraph(h) for s in scores if (h := headline(s)) is not None))
    else:
        sec.add(Paragraph("No metrics: neither the evaluate stage nor the baselines produced any.", kind="note"))
    sec.add(*(Paragraph(f) for f in _summary_facts(inputs)))
    return sec


def _summary_facts(inputs: ReportInputs) -> list[str]:
    """Which stages ran and for how long; how far training got."""
    done = inputs.done()
    missing = [s for s in UPSTREAM if s not in done]
    total_s = sum(float(m.data.get("duration_s") or 0) for m in done.values())
    facts = [f"Stages reported: {', '.join(done) or 'none'}; total stage time {fmt_duration(total_s)}."]
    if missing:
        facts.append(f"Not run (or not part of this pipeline): {', '.join(missing)}.")
    log = inputs.train_log
    if log:
        last = log[-1]
        facts.append(
            f"Training: {len(log):,} logged steps, last step {last['step']:,}"
            + (f", last loss {last['loss']:.4f}." if isinstance(last.get("loss"), (int, float)) else ".")
        )
    return facts


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def _training_section(train_m: Manifest | None, log: list[dict[str, Any]] | None, note: str) -> Section:
    sec = Section("training", "Training")
    if log is None:
        sec.add(Paragraph(f"Training curves: {note}.", kind="note"))
    else:
        panels, stats = _train_panels(log)
        if panels:
            sec.add(
                Figure(
                    "train_curves",
                    line_panels(panels, xlabel="optimizer step"),
                    caption="Training curves from train/metrics.jsonl.",
                ),
                Table(
                    ["series", "points", "first", "last", "min", "max", "mean"],
                    stats,
                    caption=f"train/metrics.jsonl: {len(log):,} records, "
                    f"steps {log[0]['step']:,} to {log[-1]['step']:,}",
                ),
            )
        else:
            sec.add(
                Paragraph(
                    "train/metrics.jsonl has none of the series loss, lr, examples_per_s, data_efficiency.", kind="note"
                )
            )
    if train_m is not None:
        facts = _scalars(train_m.extra)
        if facts:
            sec.add(Table(["train manifest extra", "value"], facts))
    return sec


def _series(log: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the records whose ``key`` is a finite number."""
    pts = [(r["step"], float(r[key])) for r in log if finite(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _stats_row(key: str, ys: Sequence[float]) -> list[Any]:
    arr = np.asarray(ys)
    return [key, len(ys), ys[0], ys[-1], float(arr.min()), float(arr.max()), float(arr.mean())]


def _train_panels(log: list[dict[str, Any]]) -> tuple[list[Panel], list[list[Any]]]:
    """The training-curve panels and one statistics row per plotted series."""
    panels: list[Panel] = []
    stats: list[list[Any]] = []
    for key, title, ylabel, log_y in TRAIN_SERIES:
        xs, ys = _series(log, key)
        if not xs:
            continue
        stats.append(_stats_row(key, ys))
        panels.append((title, ylabel, [(key, xs, ys), *_moving_average(key, xs, ys)], log_y))
        if key != "loss":
            continue
        per_target: list[Line] = []
        for t in TARGETS:
            txs, tys = _series(log, f"loss_{t}")
            if txs:
                stats.append(_stats_row(f"loss_{t}", tys))
                per_target.append((t, txs, tys))
        if per_target:
            panels.append(("loss per engagement", "BCE", per_target, False))
    return panels, stats


def _moving_average(key: str, xs: list[float], ys: list[float]) -> list[Line]:
    """A smoothed line for a loss series of at least 20 points (window: a 20th of the points)."""
    if key != "loss" or len(ys) < 20:
        return []
    w = max(2, len(ys) // 20)
    return [(f"moving average ({w} points)", xs[w - 1 :], np.convolve(ys, np.ones(w) / w, mode="valid").tolist())]


def _scalars(d: dict[str, Any], prefix: str = "", depth: int = 2) -> list[list[Any]]:
    """Scalar entries of a manifest's ``extra`` (dotted keys, nested dicts up to ``depth``)."""
    out: list[list[Any]] = []
    for k in sorted(d):
        v = d[k]
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 0:
            out += _scalars(v, key + ".", depth - 1)
        elif isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 120) or v is None:
            out.append([key, v if not isinstance(v, float) else f"{v:.6g}"])
    return out


# ----------------------------------------------------------------------------------------------
# pipeline stages and configuration
# ----------------------------------------------------------------------------------------------
_STAGE_COLUMNS = [
    "stage",
    "state",
    "files",
    "rows",
    "bytes",
    "duration",
    "fingerprint",
    "host",
    "Slurm job",
    "restarts",
    "Slurm state",
    "Slurm elapsed",
]


def _stage_row(name: str, m: Manifest, sacct: dict[str, dict[str, str]]) -> list[Any]:
    """One published stage: its manifest's totals, provenance and Slurm job."""
    d = m.data
    slurm = d.get("slurm") or {}
    job = job_id(m)
    acct = sacct.get(job, {}) if job else {}
    return [
        name,
        "done",
        len(m.files),
        d.get("rows"),
        format_bytes(d.get("bytes")),
        fmt_duration(d.get("duration_s")),
        str(d.get("fingerprint", ""))[:12],
        d.get("host"),
        job,
        slurm.get("restart_count"),
        acct.get("state"),
        acct.get("elapsed"),
    ]


def _stages_section(ctx: StageContext, inputs: ReportInputs) -> Section:
    sec = Section("stages", "Pipeline stages")
    rows: list[list[Any]] = []
    for name in UPSTREAM:
        m = inputs.manifest(name)
        if m is None:
            state = "not used" if name == "generate" and ctx.cfg.data.generate is None else NOT_RUN
            rows.append([name, state] + [None] * 10)
        else:
            rows.append(_stage_row(name, m, inputs.sacct))
    sec.add(Table(_STAGE_COLUMNS, rows, caption="one row per upstream stage, from its _MANIFEST.json"))
    if inputs.sacct_note:
        sec.add(Paragraph(inputs.sacct_note + ".", kind="note"))
    prov = sorted(
        {(m.data.get("code_version"), m.data.get("git_commit")) for m in inputs.manifests.values() if m is not None},
        key=lambda t: (str(t[0]), str(t[1])),
    )
    if prov:
        sec.add(
            Table(["code version", "git commit"], [[c, g] for c, g in prov], caption="code that produced the stages")
        )
    return sec


def _config_yaml(ctx: StageContext) -> str:
    data = ctx.cfg.to_dict()
    if data.get("storage_options"):
        # Storage options can hold credentials (tokens, keys); show which keys were set, not values.
        data["storage_options"] = {k: "<redacted>" for k in data["storage_options"]}
    return yaml.safe_dump(data, sort_keys=False)


def _config_section(ctx: StageContext) -> Section:
    sec = Section("config", "Configuration")
    sec.add(
        Paragraph("The resolved configuration of this run (storage_options values redacted)."),
        Preformatted(_config_yaml(ctx)),
    )
    return sec
