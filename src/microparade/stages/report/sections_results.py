"""The Results section: official metrics per split for the model, the two GBDT baselines and the
prior; the model-minus-baseline differences with their paired bootstrap intervals and verdicts; the
per-popularity-group breakdown; the paper's reference numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...metrics import BOOTSTRAP_PERCENTILES, FAIRNESS_EDGES
from ...recsys_format import TARGETS
from .baseline import BASELINE_LABELS, BASELINES, Baseline
from .common import Difference, SplitScores, r2, verdict
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

#: ``(short name, row label, metrics)`` of the rows of a split's tables: model, baselines, prior.
Named = list[tuple[str, str, dict[str, Any]]]
#: Short names of the baselines for column headers and legends.
SHORT_NAMES = {"history": "GBDT feat.+hist.", "features": "GBDT feat."}
#: ``(metric, name, decimals)`` of the compared metrics.
COMPARED = (("ap", "AP", 4), ("rce", "RCE", 2))
#: Below this many positives an engagement's verdict is marked: resampling the rows cannot show
#: the uncertainty of so few positives (without a positive a resample leaves AP undefined).
FEW_POSITIVES = 10


def results_sections(inputs: ReportInputs, baseline: Baseline, scores: list[SplitScores]) -> list[Section]:
    """The Results section, one subsection per scored split, and the paper reference."""
    label = model_label(inputs.chunks, inputs.manifest("train"))
    return [
        _results_intro(inputs, baseline),
        *(_split_section(s, label) for s in scores),
        _paper_section(scores, label),
    ]


def _results_intro(inputs: ReportInputs, baseline: Baseline) -> Section:
    """What the metrics, the rows and the comparisons mean; why the model or the baselines are missing."""
    sec = Section("results", "Results")
    sec.add(
        Paragraph(
            "Official RecSys 2021 metrics. AP: average precision (sklearn). RCE: relative cross entropy in percent "
            "against predicting the positive rate (0 = no better than the prior, higher is better). avg: mean of the "
            "four engagements (the paper's 'avg of 4 APs'). fair: the metric computed inside 5 author-popularity "
            f"groups (a_follower_count lower edges {', '.join(f'{e:,}' for e in FAIRNESS_EDGES)}), averaged over "
            "groups, then over engagements; undefined values (a group without positives) are left out of averages. "
            "'pos': the positive rows of the engagement among the rows scored."
        ),
        Paragraph(
            "Rows: the model scored by the evaluate stage; two gradient-boosted-trees baselines "
            "(HistGradientBoostingClassifier per engagement, no text, same training sample, settings and seed): "
            "'GBDT, features + history' sees the chunks' features column and statistics of the user's history "
            "(valid slots, slots per engagement type, mean engagement hour on the 24-hour circle, engagements "
            "within 3 hours of the tweet's hour): everything the model sees except text; 'GBDT, features only' "
            "sees the features column"
            + (
                f"; both trained on {baseline.train_rows:,} of {baseline.train_rows_available:,} training rows "
                f"({baseline.n_features} features)"
                if baseline.status == "done"
                else ""
            )
            + "; the prior (a constant predicting the split's positive rate: AP = positive rate, RCE = 0). "
            "The baselines are scored on the rows the model is scored on (joined by row_id; the rows that fit "
            "the calibrators are left out).",
            kind="note",
        ),
        Paragraph(
            "Model minus baseline: the difference of a metric on the same rows, with a paired bootstrap 95% "
            "interval (the rows resampled with replacement report.bootstrap times; on each resample both are "
            f"scored and subtracted; the {BOOTSTRAP_PERCENTILES[0]}th and {BOOTSTRAP_PERCENTILES[1]}th "
            "percentiles). The model 'beats' a baseline when the interval lies above 0, 'loses to' it when the "
            "interval lies below 0, and 'ties' it when the interval contains 0: the difference is within the "
            f"noise of the rows scored. An engagement with fewer than {FEW_POSITIVES} positives has its verdict "
            "marked 'few positives': the bootstrap cannot show the uncertainty of so few.",
            kind="note",
        ),
    )
    if inputs.evaluation is None:
        sec.add(Paragraph(f"Model metrics: {inputs.eval_note}.", kind="note"))
    if baseline.status != "done":
        sec.add(Paragraph(f"Baselines: {baseline.status}.", kind="note"))
    for note in baseline.notes:
        sec.add(Paragraph(f"Baselines: {note}.", kind="note"))
    return sec


def _named(s: SplitScores, label: str) -> Named:
    """The rows of a split's tables: the model, the baselines, the prior."""
    named: Named = [("model", label, s.model)] if s.model is not None else []
    named += [(SHORT_NAMES[key], name, s.baselines[key]) for key, name in BASELINES if key in s.baselines]
    named.append(("prior", "prior (positive rate)", s.prior))
    return named


def _metric_row(name: str, m: dict[str, Any], kind: str) -> list[Any]:
    """One table row: the 4 engagements, their mean, and the fair mean of metric ``kind``."""
    fair = m[f"{kind}_fair"]
    if kind == "ap":
        return [name] + [m["ap"].get(t) for t in (*TARGETS, "avg")] + [fair.get(t) for t in (*TARGETS, "avg")]
    return [name] + [r2(m["rce"].get(t)) for t in (*TARGETS, "avg")] + [r2(fair.get(t)) for t in (*TARGETS, "avg")]


def _metric_columns(kind: str, positives: dict[str, int]) -> list[str]:
    """Column headers; the AP ones name the positives each AP is computed over."""
    k = kind.upper()
    heads = [f"{k} {t} ({positives[t]:,} pos)" if kind == "ap" else f"{k} {t}" for t in TARGETS]
    return ["model", *heads, f"{k} avg"] + [f"fair {t}" for t in (*TARGETS, "avg")]


def _group_mean(m: dict[str, Any], key: str, g: int) -> float | None:
    """Mean of metric ``key`` over the engagements defined in popularity group ``g``."""
    vals = [m["groups"][key][t][g] for t in TARGETS]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _signed(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def _bounds(d: Difference | None, digits: int) -> str:
    """``[low, high]`` of a difference, or ``-`` without an interval."""
    if d is None or d["low"] is None or d["high"] is None:
        return "-"
    return f"[{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def _phrase(label: str, d: Difference | None, digits: int) -> str:
    """How the model compares with one baseline on one metric, in words."""
    v = verdict(d)
    if d is None or v == "n/a":
        return f"cannot be compared with {label} (undefined)"
    if v == "no interval":
        return f"differs from {label} by {_signed(d['diff'], digits)} (no interval)"
    return f"{v} {label} ({_signed(d['diff'], digits)}, 95% interval {_bounds(d, digits)})"


def compared_rows(s: SplitScores) -> int:
    """The rows the model and the baselines were compared on."""
    return int(next(iter(s.baselines.values()))["rows"]) if s.baselines else int(s.ref["rows"])


def headline(s: SplitScores) -> str | None:
    """The model against each baseline on AP avg and RCE avg, in words; None without both sides."""
    keys = [key for key, _ in BASELINES if key in s.baselines]
    if s.model is None or not keys:
        return None
    how = f"{compared_rows(s):,} rows" + (f", {s.resamples:,} paired bootstrap resamples" if s.resamples else "")
    parts = [
        f"by {name} avg the model "
        + " and ".join(_phrase(BASELINE_LABELS[k], s.difference(k, metric), digits) for k in keys)
        for metric, name, digits in COMPARED
    ]
    return f"On {s.split} ({how}): " + "; ".join(parts) + "."


def _split_section(s: SplitScores, label: str) -> Section:
    """One split: AP and RCE tables, the model-versus-baselines comparison, the popularity groups."""
    sub = Section(f"results-{s.split}", f"Split {s.split} ({s.ref['rows']:,} rows)", level=3)
    named = _named(s, label)
    for kind, what in (("ap", "average precision"), ("rce", "relative cross entropy, %")):
        sub.add(
            Table(
                _metric_columns(kind, s.positives()),
                [_metric_row(name, m, kind) for _, name, m in named],
                caption=f"{s.split}: {kind.upper()} ({what}); 'fair' = mean over the 5 author-popularity groups",
                bold_rows={0} if s.model is not None else set(),
            )
        )
    sub.add(*_comparison_blocks(s))
    sub.add(*_group_blocks(s, named))
    return sub


def _difference_cells(s: SplitScores, keys: list[str], metric: str, target: str, digits: int) -> list[str]:
    """Per baseline: the model minus it, the 95% interval, the verdict (marked with few positives)."""
    few = target != "avg" and s.positives()[target] < FEW_POSITIVES
    cells = []
    for key in keys:
        d = s.difference(key, metric, target)
        v = verdict(d)
        marked = few and v in ("beats", "loses to", "ties")
        cells += [
            _signed(d["diff"] if d else None, digits),
            _bounds(d, digits),
            f"{v} (few positives)" if marked else v,
        ]
    return cells


def _comparison_blocks(s: SplitScores) -> list[Block]:
    """Does text earn its compute: the model minus each baseline, per engagement, with intervals."""
    sentence = headline(s)
    if sentence is None:
        return [Paragraph(f"{s.split}: {n}.", kind="note") for n in s.notes]
    out: list[Block] = [Paragraph(f"Does text earn its compute? {sentence}")]
    keys = [key for key, _ in BASELINES if key in s.baselines]
    positives = s.positives()
    for metric, name, digits in COMPARED:
        rows = [[t, positives.get(t), *_difference_cells(s, keys, metric, t, digits)] for t in (*TARGETS, "avg")]
        columns = ["engagement", "positives"] + [
            c for k in keys for c in (f"model − {BASELINE_LABELS[k]}", "95% interval", "verdict")
        ]
        caption = f"{s.split}: {name} of the model minus each baseline on the same {compared_rows(s):,} rows" + (
            f"; 95% paired bootstrap interval over {s.resamples:,} resamples; 'ties' = the interval contains 0"
            if s.resamples
            else "; no intervals"
        )
        out.append(Table(columns, rows, caption=caption))
    out += [Paragraph(f"{s.split}: {n}.", kind="note") for n in s.notes]
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
