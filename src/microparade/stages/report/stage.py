"""report stage: one self-contained HTML page, a Markdown twin and ``summary.json`` for a run.

Outputs (``{run_dir}/report/``):

- ``index.html`` — self-contained: inline CSS, plots embedded as base64 PNG, no scripts, no
  external resources.
- ``report.md`` — the same tables; plots referenced as ``plots/*.png`` (relative to ``report.md``).
- ``plots/*.png`` — the figures, also as files.
- ``summary.json`` — key numbers for machines (schema ``microparade.report-summary/1``).

Content: headline numbers; the official metrics per evaluated split for the model, two
gradient-boosted-trees baselines (features + history statistics, features only: everything but the
text, and less) scored on the model's rows, and the prior (a constant predicting the positive rate);
every model-minus-baseline difference with a paired bootstrap 95% interval and its verdict (beats,
loses to, ties); the per-popularity-group breakdown and the paper's reference numbers; the
calibration (metrics before and after, reliability diagrams); training curves; data statistics
(rows, label rates, quarantine, history lengths, chunk sizes); a per-stage table from the manifests
(with Slurm job ids, and sacct state/elapsed where sacct answers); the run configuration.

Every section tolerates missing upstream stages: the report builds from whatever manifests exist
and says "stage not run" elsewhere. What was run (history size, model heads and encoder, data
statistics) is read from the manifests, not from the report's config.

Modules: :mod:`.inputs` (manifests, metrics and calibration files, the model's predictions, sacct),
:mod:`.baseline` with :mod:`.history` (the baselines), :mod:`.compare` (the same rows, the
intervals), :mod:`.sections` with :mod:`.sections_results`, :mod:`.sections_calibration` and
:mod:`.sections_data` (the document), :mod:`.summary` (``summary.json``), :mod:`.render` (HTML,
Markdown, plots).

Determinism: the report depends only on its inputs and config (no generation timestamp, seeded
baselines and bootstrap, timestamp-free PNGs). The one exception is the optional sacct columns, which show the
*current* accounting state of the jobs.
"""

from __future__ import annotations

import json
from typing import Any

from ...engine.context import StageContext
from .baseline import run_baseline
from .common import ordered
from .compare import compare
from .inputs import read_inputs
from .render import Section, figures, render_html, render_markdown
from .sections import build_sections, meta_lines
from .summary import build_summary

TITLE = "MicroParade run report"


def run(ctx: StageContext) -> None:
    inputs = read_inputs(ctx)
    eval_splits = ordered(inputs.evaluation) if inputs.evaluation else ["valid"]
    baseline = run_baseline(ctx, inputs.chunks, inputs.chunks_note, eval_splits)
    scores = compare(ctx, inputs, baseline)
    sections = build_sections(ctx, inputs, baseline, scores)
    _write_documents(ctx, sections)
    _write_bytes(ctx, "summary.json", _json(build_summary(ctx, inputs, baseline, scores)))
    ctx.extra.update(
        sections=[s.id for s in sections if s.level == 2],
        plots=[f.name for f in figures(sections)],
        stages_reported=list(inputs.done()),
        baseline=baseline.status,
    )
    ctx.log(f"report written: {ctx.store.url(ctx.name, 'index.html')}")


def _write_documents(ctx: StageContext, sections: list[Section]) -> None:
    """``plots/*.png``, ``index.html`` and ``report.md``."""
    for fig in figures(sections):
        _write_bytes(ctx, f"plots/{fig.name}.png", fig.png)
    meta = meta_lines(ctx)
    _write_bytes(ctx, "index.html", render_html(TITLE, meta, sections).encode())
    _write_bytes(ctx, "report.md", render_markdown(TITLE, meta, sections, plot_dir="plots").encode())


def _write_bytes(ctx: StageContext, rel: str, data: bytes) -> None:
    with ctx.open_out(rel) as f:
        f.write(data)


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
