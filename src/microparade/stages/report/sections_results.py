"""The Results section: official metrics per split for the model, the baseline and the prior, the
per-popularity-group breakdown, and the paper's reference numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...metrics import FAIRNESS_EDGES
from ...recsys_format import TARGETS
from .baseline import Baseline
from .common import SplitScores, diff, r2
from .inputs import ReportInputs, model_label
from .render import Block, Figure, Paragraph, Section, Table, grouped_bars

#: The paper's results (REFERENCE §3): average of the 4 APs on the real RecSys 2021 data.
PAPER_REFERENCE: tuple[tuple[str, float], ...] = (
    ("history 4 (batch 96), single head", 0.1539),
    ("history 6 (batch 64), single head", 0.1555),
    ("history 10 (batch 40), single head", 0.1590),
    ("history 6, no engagement prefix", 0.1569),
    ("history 6, no time embeddings", 0.1435),
    ("history 6, no text", 0.1262),
    ("history 4, multi-head", 0.2287),
)

#: ``(key, row label, metrics)`` of the rows of a split's tables: model, baseline, prior.
Named = list[tuple[str, str, dict[str, Any]]]


def results_sections(inputs: ReportInputs, baseline: Baseline, scores: list[SplitScores]) -> list[Section]:
    """The Results section, one subsection per scored split, and the paper reference."""
    label = model_label(inputs.chunks, inputs.manifest("train"))
    return [
        _results_intro(inputs, baseline),
        *(_split_section(s, label) for s in scores),
        _paper_section(scores, label),
    ]


def _results_intro(inputs: ReportInputs, baseline: Baseline) -> Section:
    """What the metrics and the rows mean; why the model or the baseline is missing."""
    sec = Section("results", "Results")
    sec.add(
        Paragraph(
            "Official RecSys 2021 metrics. AP: average precision (sklearn). RCE: relative cross entropy in percent "
            "against predicting the positive rate (0 = no better than the prior, higher is better). avg: mean of the "
            "four engagements (the paper's 'avg of 4 APs'). fair: the metric computed inside 5 author-popularity "
            f"groups (a_follower_count lower edges {', '.join(f'{e:,}' for e in FAIRNESS_EDGES)}), averaged over "
            "groups, then over engagements; undefined values (a group without positives) are left out of averages."
        ),
        Paragraph(
            "Rows: the model scored by the evaluate stage; a features-only gradient-boosted-trees baseline "
            "(HistGradientBoostingClassifier per engagement on the chunks' features column, no text)"
            + (
                f", trained on {baseline.train_rows:,} of {baseline.train_rows_available:,} training rows "
                f"({baseline.n_features} features)"
                if baseline.status == "done"
                else ""
            )
            + "; the prior (a constant predicting the split's positive rate: AP = positive rate, RCE = 0).",
            kind="note",
        ),
    )
    if inputs.evaluation is None:
        sec.add(Paragraph(f"Model metrics: {inputs.eval_note}.", kind="note"))
    if baseline.status != "done":
        sec.add(Paragraph(f"Baseline: {baseline.status}.", kind="note"))
    for note in baseline.notes:
        sec.add(Paragraph(f"Baseline: {note}.", kind="note"))
    return sec


def _metric_row(name: str, m: dict[str, Any], kind: str) -> list[Any]:
    """One table row: the 4 engagements, their mean, and the fair mean of metric ``kind``."""
    fair = m[f"{kind}_fair"]
    if kind == "ap":
        return [name] + [m["ap"].get(t) for t in (*TARGETS, "avg")] + [fair.get(t) for t in (*TARGETS, "avg")]
    return [name] + [r2(m["rce"].get(t)) for t in (*TARGETS, "avg")] + [r2(fair.get(t)) for t in (*TARGETS, "avg")]


def _metric_columns(kind: str) -> list[str]:
    k = kind.upper()
    return ["model"] + [f"{k} {t}" for t in (*TARGETS, "avg")] + [f"fair {t}" for t in (*TARGETS, "avg")]


def _group_mean(m: dict[str, Any], key: str, g: int) -> float | None:
    """Mean of metric ``key`` over the engagements defined in popularity group ``g``."""
    vals = [m["groups"][key][t][g] for t in TARGETS]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _signed(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def _split_section(s: SplitScores, label: str) -> Section:
    """One split: AP and RCE tables, the model-versus-baseline verdict, the popularity groups."""
    sub = Section(f"results-{s.split}", f"Split {s.split} ({s.ref['rows']:,} rows)", level=3)
    named: Named = []
    if s.model is not None:
        named.append(("model", label, s.model))
    if s.baseline is not None:
        named.append(("baseline", "GBDT baseline (features only)", s.baseline))
    named.append(("prior", "prior (positive rate)", s.prior))
    for kind, what in (("ap", "average precision"), ("rce", "relative cross entropy, %")):
        sub.add(
            Table(
                _metric_columns(kind),
                [_metric_row(name, m, kind) for _, name, m in named],
                caption=f"{s.split}: {kind.upper()} ({what}); 'fair' = mean over the 5 author-popularity groups",
                bold_rows={0} if s.model is not None else set(),
            )
        )
    if s.model is not None and s.baseline is not None:
        sub.add(*_verdict(s.split, s.model, s.baseline))
    sub.add(*_group_blocks(s, named))
    return sub


def _verdict(split: str, model_m: dict[str, Any], base_m: dict[str, Any]) -> list[Block]:
    """Does text earn its compute: the model minus the features-only baseline."""
    d_ap = diff(model_m["ap"]["avg"], base_m["ap"]["avg"])
    d_rce = diff(model_m["rce"]["avg"], base_m["rce"]["avg"])
    verdict = "beats" if d_ap is not None and d_ap > 0 else "does not beat"
    out: list[Block] = [
        Paragraph(
            f"Does text earn its compute? On {split} the model {verdict} the features-only baseline: "
            f"AP avg {_signed(d_ap, 4)}, RCE avg {_signed(d_rce, 2)} (model minus baseline)."
        )
    ]
    if model_m["rows"] != base_m["rows"]:
        out.append(
            Paragraph(
                f"The model was scored on {model_m['rows']:,} rows, the baseline on {base_m['rows']:,}.", kind="note"
            )
        )
    return out


def _group_blocks(s: SplitScores, named: Named) -> list[Block]:
    """The per-author-popularity-group table and bar chart of a split."""
    labels = s.ref["groups"]["labels"]
    g_rows = []
    for g, group in enumerate(labels):
        row: list[Any] = [group, s.ref["groups"]["rows"][g]]
        row += [_group_mean(m, "ap", g) for _, _, m in named]
        row += [r2(_group_mean(m, "rce", g)) for _, _, m in named]
        g_rows.append(row)
    chart = grouped_bars(
        labels,
        {k: [_group_mean(m, "ap", g) for g in range(len(labels))] for k, _, m in named},
        title=f"{s.split}: AP (mean of 4 engagements) by author popularity",
        xlabel="author follower count",
        ylabel="AP",
    )
    return [
        Table(
            ["author followers", "rows"] + [f"AP {k}" for k, _, _ in named] + [f"RCE {k}" for k, _, _ in named],
            g_rows,
            caption=f"{s.split}: per author-popularity group, mean over the engagements defined in the group",
        ),
        Figure(
            f"results_groups_{s.split}",
            chart,
            caption=f"{s.split}: AP per author-popularity group (the groups behind 'AP fair').",
        ),
    ]


def _paper_section(scores: list[SplitScores], label: str) -> Section:
    """The paper's numbers next to this run's, with the caveat that synthetic data is not comparable."""
    paper = Section("results-paper", "Paper reference (real RecSys 2021 data)", level=3)
    rows: list[list[Any]] = [[f"paper: {name}", ap] for name, ap in PAPER_REFERENCE]
    rows += [[f"this run, {s.split} split: {label}", s.model["ap"]["avg"]] for s in scores if s.model is not None]
    paper.add(
        Paragraph(
            "Average of the four APs reported by the paper, on the real RecSys 2021 data. Not comparable to runs on "
            "synthetic data (different users, tweets, label rates and signal): orientation for runs on the real "
            "data only.",
            kind="note",
        ),
        Table(
            ["setting", "avg of 4 APs"], rows, caption="paper, real RecSys 2021 data, not comparable to synthetic data"
        ),
    )
    return paper
