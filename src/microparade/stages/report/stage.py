"""report stage: one self-contained HTML page, a Markdown twin and ``summary.json`` for a run.

Outputs (``{run_dir}/report/``):

- ``index.html`` — self-contained: inline CSS, plots embedded as base64 PNG, no scripts, no
  external resources.
- ``report.md`` — the same tables; plots referenced as ``plots/*.png`` (relative to ``report.md``).
- ``plots/*.png`` — the figures, also as files.
- ``summary.json`` — key numbers for machines (schema ``microparade.report-summary/1``).

Content: headline numbers; the official metrics per evaluated split for the model, a features-only
gradient-boosted-trees baseline and the prior (a constant predicting the positive rate), with the
per-popularity-group breakdown and the paper's reference numbers; training curves; data statistics
(rows, label rates, quarantine, history lengths, chunk sizes); a per-stage table from the manifests
(with Slurm job ids, and sacct state/elapsed where sacct answers); the run configuration.

Every section tolerates missing upstream stages: the report builds from whatever manifests exist
and says "stage not run" elsewhere. The baseline answers "does text earn its compute?": a
``HistGradientBoostingClassifier`` per target on the training chunks' ``features`` column alone
(seeded subsample of at most ``report.baseline_max_rows`` rows), scored with the same
:func:`microparade.metrics.compute_metrics` on the evaluated splits.

Determinism: the report depends only on its inputs and config (no generation timestamp, seeded
baseline, timestamp-free PNGs). The one exception is the optional sacct columns, which show the
*current* accounting state of the jobs.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ...compute.backends import available_cpus
from . import render as rg
from ...metrics import FAIRNESS_EDGES, compute_metrics, group_labels, prior_metrics
from ...recsys_format import TARGETS
from ...engine.fingerprint import code_version
from ...engine.manifest import Manifest, read_manifest
from ...storage import format_bytes

SUMMARY_SCHEMA = "microparade.report-summary/1"
#: Upstream stages described by the report, in pipeline order.
UPSTREAM = ("generate", "ingest", "text", "features", "chunks", "train", "evaluate")
SPLIT_ORDER = ("train", "valid", "test")
NOT_RUN = "stage not run"

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

#: HistGradientBoostingClassifier settings of the baseline: sklearn defaults plus mild L2 and
#: early stopping on a 10% stratified hold-out, so small or easy data does not overfit.
BASELINE_PARAMS: dict[str, Any] = {
    "max_iter": 200,
    "learning_rate": 0.1,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 10,
}
#: A target needs this many positives and negatives in the sample to train a classifier (the
#: stratified early-stopping split needs both classes); below it the baseline predicts the
#: sample's positive rate for that target.
BASELINE_MIN_CLASS_ROWS = 20


def run(ctx) -> None:
    manifests = _manifests(ctx)
    evaluation, eval_note = _read_evaluation(ctx, manifests.get("evaluate"))
    train_log, train_note = _read_train_log(ctx, manifests.get("train"))
    eval_splits = _ordered(evaluation) if evaluation else ["valid"]
    baseline = _run_baseline(ctx, manifests.get("chunks"), eval_splits)
    sacct, sacct_note = _sacct(manifests)

    sections = [
        *_summary_sections(ctx, manifests, evaluation, baseline, train_log),
        *_results_sections(ctx, evaluation, eval_note, baseline),
        *_training_sections(manifests.get("train"), train_log, train_note),
        *_data_sections(manifests),
        *_stages_sections(ctx, manifests, sacct, sacct_note),
        *_config_sections(ctx),
    ]
    meta = _meta_lines(ctx)
    title = "MicroParade run report"

    for fig in rg.figures(sections):
        with ctx.open_out(f"plots/{fig.name}.png") as f:
            f.write(fig.png)
    with ctx.open_out("index.html") as f:
        f.write(rg.render_html(title, meta, sections).encode())
    with ctx.open_out("report.md") as f:
        f.write(rg.render_markdown(title, meta, sections, plot_dir="plots").encode())
    summary = _summary(ctx, manifests, evaluation, baseline, train_log)
    with ctx.open_out("summary.json") as f:
        f.write((json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())

    ctx.extra.update(
        sections=[s.id for s in sections if s.level == 2],
        plots=[f.name for f in rg.figures(sections)],
        stages_reported=[s for s in UPSTREAM if manifests.get(s) is not None],
        baseline=baseline.status,
    )
    ctx.log(f"report written: {ctx.store.url(ctx.name, 'index.html')}")


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def _manifests(ctx) -> dict[str, Manifest | None]:
    """The upstream manifests: the stage's inputs, plus ``generate`` read from the store."""
    out: dict[str, Manifest | None] = {name: ctx.inputs.get(name) for name in UPSTREAM}
    if out["generate"] is None and ctx.cfg.data.generate is not None:
        out["generate"] = read_manifest(ctx.store, "generate")
    return out


def _has_file(m: Manifest, path: str) -> bool:
    return any(f["path"] == path for f in m.files)


def _read_evaluation(ctx, m: Manifest | None) -> tuple[dict[str, dict] | None, str]:
    if m is None:
        return None, NOT_RUN
    if not _has_file(m, "metrics.json"):
        return None, "the evaluate stage published no metrics.json"
    data = json.loads(ctx.store.read_bytes(f"{m.stage}/metrics.json"))
    splits = {k: v for k, v in data.items() if isinstance(v, dict) and "ap" in v and "rce" in v}
    if not splits:
        return None, "evaluate/metrics.json holds no split metrics"
    return splits, ""


def _read_train_log(ctx, m: Manifest | None) -> tuple[list[dict[str, Any]] | None, str]:
    if m is None:
        return None, NOT_RUN
    if not _has_file(m, "metrics.jsonl"):
        return None, "the train stage published no metrics.jsonl"
    records = []
    for line in ctx.store.read_bytes(f"{m.stage}/metrics.jsonl").decode().splitlines():
        line = line.strip()
        if not line:
            continue
        rec = json.loads(line)
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
    if not records:
        return None, "train/metrics.jsonl holds no step records"
    records.sort(key=lambda r: r["step"])
    return records, ""


def _ordered(splits) -> list[str]:
    return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def _file_split(f: dict[str, Any]) -> str:
    return f.get("split") or f["path"].split("/", 1)[0]


# ----------------------------------------------------------------------------------------------
# baseline: gradient-boosted trees on the features alone
# ----------------------------------------------------------------------------------------------
@dataclass
class Baseline:
    #: ``done``, ``disabled``, or why it could not run.
    status: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_rows: int = 0
    train_rows_available: int = 0
    n_features: int = 0
    iterations: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read_chunk(ctx, m: Manifest, path: str, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features [n, F] float32, labels [n, 4] float (NaN = unknown), a_follower_count [n])``."""
    with ctx.store.open(f"{m.stage}/{path}", "rb") as fh:
        table = pq.read_table(fh, columns=["features", *TARGETS, "a_follower_count"])
    col = table.column("features").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != n_features:
        raise ValueError(
            f"chunks/{path}: column 'features' is {col.type}, expected fixed_size_list<float>[{n_features}] "
            "(docs/data-format.md §7)"
        )
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, n_features)
    labels = np.stack(
        [table.column(t).cast(pa.float64()).to_numpy(zero_copy_only=False) for t in TARGETS], axis=1
    ) if table.num_rows else np.zeros((0, len(TARGETS)))
    afc = table.column("a_follower_count").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return x, labels, afc


def _run_baseline(ctx, chunks: Manifest | None, eval_splits: list[str]) -> Baseline:
    """Train and score the baseline with OpenMP limited to ``report.baseline_threads``.

    The limit matters on shared nodes: OpenMP teams larger than the free cores spin-wait and run
    an order of magnitude slower than one thread.
    """
    from threadpoolctl import threadpool_limits

    threads = ctx.cfg.report.baseline_threads or available_cpus()
    with threadpool_limits(limits=threads, user_api="openmp"):
        return _fit_and_score_baseline(ctx, chunks, eval_splits)


def _fit_and_score_baseline(ctx, chunks: Manifest | None, eval_splits: list[str]) -> Baseline:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rc = ctx.cfg.report
    if not rc.baseline:
        return Baseline("disabled (report.baseline is false)")
    if chunks is None:
        return Baseline(f"chunks: {NOT_RUN}")
    feature_names = chunks.extra.get("feature_names") or []
    if not feature_names:
        return Baseline("the chunks manifest lists no feature_names")
    n_features = len(feature_names)
    by_split: dict[str, list[dict[str, Any]]] = {}
    for f in chunks.files:
        by_split.setdefault(_file_split(f), []).append(f)
    train_files = sorted(by_split.get("train", []), key=lambda f: f["path"])
    if not train_files:
        return Baseline("no training chunks")

    # Seeded sample: whole chunks in a seeded order (chunks are already shuffled row-wise, so this
    # reads only ~max_rows rows), then an exact seeded subsample down to max_rows.
    rng = np.random.default_rng(rc.seed)
    picked, rows = [], 0
    for i in rng.permutation(len(train_files)):
        if rows >= rc.baseline_max_rows:
            break
        picked.append(train_files[i])
        rows += int(train_files[i].get("rows") or 0)
    parts = [_read_chunk(ctx, chunks, f["path"], n_features) for f in picked]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    out = Baseline("done", n_features=n_features, train_rows_available=int(sum(int(f.get("rows") or 0) for f in train_files)))
    known = ~np.isnan(y).any(axis=1)
    if not known.all():
        out.notes.append(f"{int((~known).sum()):,} training rows without labels left out")
        x, y = x[known], y[known]
    if x.shape[0] > rc.baseline_max_rows:
        keep = np.sort(rng.choice(x.shape[0], rc.baseline_max_rows, replace=False))
        x, y = x[keep], y[keep]
    if x.shape[0] == 0:
        return Baseline("the training chunks hold no labelled rows")
    out.train_rows = int(x.shape[0])

    models: dict[str, Any] = {}
    constants: dict[str, float] = {}
    for j, target in enumerate(TARGETS):
        yt = y[:, j].astype(np.int8)
        pos = int(yt.sum())
        if min(pos, yt.size - pos) < BASELINE_MIN_CLASS_ROWS:
            constants[target] = pos / yt.size
            out.iterations[target] = None
            out.notes.append(
                f"{target}: {pos:,} positive(s) in {yt.size:,} sampled rows (fewer than {BASELINE_MIN_CLASS_ROWS} of a class); "
                "the baseline predicts the sample's positive rate"
            )
            continue
        t0 = time.perf_counter()
        clf = HistGradientBoostingClassifier(random_state=rc.seed, **BASELINE_PARAMS)
        clf.fit(x, yt)
        models[target] = clf
        out.iterations[target] = int(clf.n_iter_)
        ctx.log(f"baseline {target}: {clf.n_iter_} trees on {yt.size:,} rows x {n_features} features in {time.perf_counter() - t0:.1f}s")

    for split in eval_splits:
        files = sorted(by_split.get(split, []), key=lambda f: f["path"])
        if not files:
            out.notes.append(f"{split}: no chunks")
            continue
        labels, preds, afcs, unknown = [], [], [], 0
        for f in files:
            xs, ys, afc = _read_chunk(ctx, chunks, f["path"], n_features)
            ok = ~np.isnan(ys).any(axis=1)
            unknown += int((~ok).sum())
            if not ok.any():
                continue
            xs, ys, afc = xs[ok], ys[ok], afc[ok]
            p = np.empty(ys.shape, dtype=np.float64)
            for j, target in enumerate(TARGETS):
                p[:, j] = models[target].predict_proba(xs)[:, 1] if target in models else constants[target]
            labels.append(ys.astype(np.int8))
            preds.append(p)
            afcs.append(afc)
        if unknown:
            out.notes.append(f"{split}: {unknown:,} rows without labels are not scored")
        if not labels:
            continue
        out.metrics[split] = compute_metrics(np.concatenate(labels), np.concatenate(preds), np.concatenate(afcs))
        ctx.log(f"baseline on {split}: AP avg {_num(out.metrics[split]['ap']['avg'])}, RCE avg {_num(out.metrics[split]['rce']['avg'], 2)}")
    if not out.metrics:
        out.status = "no labelled rows in the evaluated splits"
    return out


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------------------------
# Slurm accounting
# ----------------------------------------------------------------------------------------------
def _job_id(m: Manifest | None) -> str | None:
    slurm = m.data.get("slurm") if m is not None else None
    return str(slurm["job_id"]) if slurm and slurm.get("job_id") else None


def _sacct(manifests: dict[str, Manifest | None]) -> tuple[dict[str, dict[str, str]], str]:
    """sacct state/elapsed of the stages' jobs; empty (with the reason) when unavailable."""
    ids = sorted({j for j in (_job_id(m) for m in manifests.values()) if j})
    if not ids:
        return {}, ""
    try:
        from ...slurm.query import sacct_info
    except ImportError:
        return {}, "sacct state not shown: microparade.launch.sacct_info is not available"
    try:
        info = sacct_info(ids)
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as exc:
        return {}, f"sacct state not shown: {type(exc).__name__}: {exc}"
    if not info:
        return {}, "sacct state not shown: sacct is not available or knows none of these jobs"
    return info, ""


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def _model_label(ctx) -> str:
    c = ctx.cfg
    return f"MicroParade (H={c.history.size}, {c.model.heads} head, {c.model.encoder})"


def _metric_row(name: str, m: dict[str, Any], kind: str) -> list[Any]:
    """One table row: the 4 engagements, their mean, and the fair mean of metric ``kind``."""
    fair = m[f"{kind}_fair"]
    if kind == "ap":
        return [name] + [m["ap"].get(t) for t in (*TARGETS, "avg")] + [fair.get(t) for t in (*TARGETS, "avg")]
    return [name] + [_r2(m["rce"].get(t)) for t in (*TARGETS, "avg")] + [_r2(fair.get(t)) for t in (*TARGETS, "avg")]


def _r2(v: float | None) -> str | None:
    """RCE is shown with 2 decimals (it is a percentage)."""
    return None if v is None else f"{v:.2f}"


def _metric_columns(kind: str) -> list[str]:
    k = kind.upper()
    return ["model"] + [f"{k} {t}" for t in (*TARGETS, "avg")] + [f"fair {t}" for t in (*TARGETS, "avg")]


def _group_mean(m: dict[str, Any], key: str, g: int) -> float | None:
    vals = [m["groups"][key][t][g] for t in TARGETS]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _signed(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def _summary_sections(ctx, manifests, evaluation, baseline: Baseline, train_log) -> list[rg.Section]:
    sec = rg.Section("summary", "Summary")
    rows: list[list[Any]] = []
    for split in _ordered(set(evaluation or {}) | set(baseline.metrics)):
        model_m = (evaluation or {}).get(split)
        base_m = baseline.metrics.get(split)
        ref = model_m or base_m
        prior_m = prior_metrics(ref)
        rows.append([
            split,
            ref["rows"],
            model_m["ap"]["avg"] if model_m else None,
            base_m["ap"]["avg"] if base_m else None,
            prior_m["ap"]["avg"],
            _r2(model_m["rce"]["avg"]) if model_m else None,
            _r2(base_m["rce"]["avg"]) if base_m else None,
        ])
    if rows:
        sec.add(rg.Table(
            ["split", "rows", "AP avg model", "AP avg GBDT baseline", "AP avg prior", "RCE avg model", "RCE avg GBDT baseline"],
            rows,
            caption="headline numbers (details under Results)",
        ))
    else:
        sec.add(rg.Paragraph("No metrics: neither the evaluate stage nor the baseline produced any.", kind="note"))
    done = [s for s in UPSTREAM if manifests.get(s) is not None]
    missing = [s for s in UPSTREAM if manifests.get(s) is None]
    total_s = sum(float(manifests[s].data.get("duration_s") or 0) for s in done)
    facts = [f"Stages reported: {', '.join(done) or 'none'}; total stage time {rg.fmt_duration(total_s)}."]
    if missing:
        facts.append(f"Not run (or not part of this pipeline): {', '.join(missing)}.")
    if train_log:
        last = train_log[-1]
        facts.append(f"Training: {len(train_log):,} logged steps, last step {last['step']:,}"
                     + (f", last loss {last['loss']:.4f}." if isinstance(last.get("loss"), (int, float)) else "."))
    sec.add(*(rg.Paragraph(f) for f in facts))
    return [sec]


def _results_sections(ctx, evaluation: dict[str, dict] | None, eval_note: str, baseline: Baseline) -> list[rg.Section]:
    sec = rg.Section("results", "Results")
    out = [sec]
    sec.add(
        rg.Paragraph(
            "Official RecSys 2021 metrics. AP: average precision (sklearn). RCE: relative cross entropy in percent "
            "against predicting the positive rate (0 = no better than the prior, higher is better). avg: mean of the "
            "four engagements (the paper's 'avg of 4 APs'). fair: the metric computed inside 5 author-popularity "
            f"groups (a_follower_count lower edges {', '.join(f'{e:,}' for e in FAIRNESS_EDGES)}), averaged over "
            "groups, then over engagements; undefined values (a group without positives) are left out of averages."
        ),
        rg.Paragraph(
            "Rows: the model scored by the evaluate stage; a features-only gradient-boosted-trees baseline "
            "(HistGradientBoostingClassifier per engagement on the chunks' features column, no text)"
            + (f", trained on {baseline.train_rows:,} of {baseline.train_rows_available:,} training rows "
               f"({baseline.n_features} features)" if baseline.status == "done" else "")
            + "; the prior (a constant predicting the split's positive rate: AP = positive rate, RCE = 0).",
            kind="note",
        ),
    )
    if evaluation is None:
        sec.add(rg.Paragraph(f"Model metrics: {eval_note}.", kind="note"))
    if baseline.status != "done":
        sec.add(rg.Paragraph(f"Baseline: {baseline.status}.", kind="note"))
    for note in baseline.notes:
        sec.add(rg.Paragraph(f"Baseline: {note}.", kind="note"))

    splits = _ordered(set(evaluation or {}) | set(baseline.metrics))
    for split in splits:
        model_m = (evaluation or {}).get(split)
        base_m = baseline.metrics.get(split)
        ref = model_m or base_m
        prior_m = prior_metrics(ref)
        sub = rg.Section(f"results-{split}", f"Split {split} ({ref['rows']:,} rows)", level=3)
        out.append(sub)
        named: list[tuple[str, str, dict]] = []
        if model_m is not None:
            named.append(("model", _model_label(ctx), model_m))
        if base_m is not None:
            named.append(("baseline", "GBDT baseline (features only)", base_m))
        named.append(("prior", "prior (positive rate)", prior_m))
        for kind, what in (("ap", "average precision"), ("rce", "relative cross entropy, %")):
            sub.add(rg.Table(
                _metric_columns(kind),
                [_metric_row(label, m, kind) for _, label, m in named],
                caption=f"{split}: {kind.upper()} ({what}); 'fair' = mean over the 5 author-popularity groups",
                bold_rows={0} if model_m is not None else set(),
            ))
        if model_m is not None and base_m is not None:
            d_ap = _diff(model_m["ap"]["avg"], base_m["ap"]["avg"])
            d_rce = _diff(model_m["rce"]["avg"], base_m["rce"]["avg"])
            verdict = "beats" if d_ap is not None and d_ap > 0 else "does not beat"
            sub.add(rg.Paragraph(
                f"Does text earn its compute? On {split} the model {verdict} the features-only baseline: "
                f"AP avg {_signed(d_ap, 4)}, RCE avg {_signed(d_rce, 2)} (model minus baseline)."
            ))
            if model_m["rows"] != base_m["rows"]:
                sub.add(rg.Paragraph(
                    f"The model was scored on {model_m['rows']:,} rows, the baseline on {base_m['rows']:,}.", kind="note"))
        labels = ref["groups"]["labels"]
        g_rows = []
        for g, label in enumerate(labels):
            row: list[Any] = [label, ref["groups"]["rows"][g]]
            row += [_group_mean(m, "ap", g) for _, _, m in named]
            row += [_r2(_group_mean(m, "rce", g)) for _, _, m in named]
            g_rows.append(row)
        sub.add(
            rg.Table(
                ["author followers", "rows"] + [f"AP {k}" for k, _, _ in named] + [f"RCE {k}" for k, _, _ in named],
                g_rows,
                caption=f"{split}: per author-popularity group, mean over the engagements defined in the group",
            ),
            rg.Figure(
                f"results_groups_{split}",
                rg.grouped_bars(
                    labels,
                    {k: [_group_mean(m, "ap", g) for g in range(len(labels))] for k, _, m in named},
                    title=f"{split}: AP (mean of 4 engagements) by author popularity",
                    xlabel="author follower count",
                    ylabel="AP",
                ),
                caption=f"{split}: AP per author-popularity group (the groups behind 'AP fair').",
            ),
        )

    paper = rg.Section("results-paper", "Paper reference (real RecSys 2021 data)", level=3)
    out.append(paper)
    paper_rows: list[list[Any]] = [[f"paper: {name}", ap] for name, ap in PAPER_REFERENCE]
    for split in splits:
        if evaluation and split in evaluation:
            paper_rows.append([f"this run, {split} split: {_model_label(ctx)}", evaluation[split]["ap"]["avg"]])
    paper.add(
        rg.Paragraph(
            "Average of the four APs reported by the paper, on the real RecSys 2021 data. Not comparable to runs on "
            "synthetic data (different users, tweets, label rates and signal): orientation for runs on the real data only.",
            kind="note",
        ),
        rg.Table(["setting", "avg of 4 APs"], paper_rows, caption="paper, real RecSys 2021 data, not comparable to synthetic data"),
    )
    return out


_TRAIN_SERIES = (
    ("loss", "training loss", "loss", False),
    ("lr", "learning rate", "lr", False),
    ("examples_per_s", "throughput", "examples / s", False),
    ("data_efficiency", "data efficiency", "as logged by train", False),
)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _training_sections(train_m: Manifest | None, log: list[dict[str, Any]] | None, note: str) -> list[rg.Section]:
    sec = rg.Section("training", "Training")
    if log is None:
        sec.add(rg.Paragraph(f"Training curves: {note}.", kind="note"))
    else:
        panels, stats = [], []

        def series(key: str) -> tuple[list[float], list[float]]:
            pts = [(r["step"], float(r[key])) for r in log if _finite(r.get(key))]
            if pts:
                arr = np.asarray([p[1] for p in pts])
                stats.append([key, len(pts), pts[0][1], pts[-1][1], float(arr.min()), float(arr.max()), float(arr.mean())])
            return [p[0] for p in pts], [p[1] for p in pts]

        for key, title, ylabel, log_y in _TRAIN_SERIES:
            xs, ys = series(key)
            if not xs:
                continue
            lines = [(key, xs, ys)]
            if key == "loss" and len(ys) >= 20:
                w = max(2, len(ys) // 20)
                lines.append((f"moving average ({w} points)", xs[w - 1 :], np.convolve(ys, np.ones(w) / w, mode="valid").tolist()))
            panels.append((title, ylabel, lines, log_y))
            if key == "loss":
                per_target = [(t, *series(f"loss_{t}")) for t in TARGETS]
                per_target = [line for line in per_target if line[1]]
                if per_target:
                    panels.append(("loss per engagement", "BCE", per_target, False))
        if panels:
            sec.add(
                rg.Figure("train_curves", rg.line_panels(panels, xlabel="optimizer step"),
                          caption="Training curves from train/metrics.jsonl."),
                rg.Table(["series", "points", "first", "last", "min", "max", "mean"], stats,
                         caption=f"train/metrics.jsonl: {len(log):,} records, steps {log[0]['step']:,} to {log[-1]['step']:,}"),
            )
        else:
            sec.add(rg.Paragraph("train/metrics.jsonl has none of the series loss, lr, examples_per_s, data_efficiency.", kind="note"))
    if train_m is not None:
        facts = _scalars(train_m.extra)
        if facts:
            sec.add(rg.Table(["train manifest extra", "value"], facts))
    return [sec]


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


def _data_sections(manifests: dict[str, Manifest | None]) -> list[rg.Section]:
    gen, ing, txt, chk = (manifests.get(s) for s in ("generate", "ingest", "text", "chunks"))
    gen_rows = (gen.extra.get("rows") or {}) if gen else {}
    ing_splits = (ing.extra.get("splits") or {}) if ing else {}
    chk_splits = (chk.extra.get("splits") or {}) if chk else {}
    hist = (txt.extra.get("hist_len_hist") or {}) if txt else {}
    sec = rg.Section("data", "Data")
    out = [sec]
    splits = _ordered(set(gen_rows) | set(ing_splits) | set(chk_splits) | set(hist))
    not_run = [s for s, m in (("generate", gen), ("ingest", ing), ("text", txt), ("chunks", chk)) if m is None]
    if not_run:
        sec.add(rg.Paragraph(f"{', '.join(not_run)}: {NOT_RUN}; their columns show '-'.", kind="note"))
    if not splits:
        sec.add(rg.Paragraph("No data statistics: none of generate, ingest, text, chunks published any.", kind="note"))
        return out

    rows = []
    for s in splits:
        ig, ck = ing_splits.get(s, {}), chk_splits.get(s, {})
        rows.append([s, gen_rows.get(s), ig.get("rows_in"), ig.get("rows_out"), ig.get("rows_quarantined"),
                     ck.get("rows"), ck.get("chunks")])
    sec.add(rg.Table(["split", "generated", "ingest in", "ingest out", "quarantined", "chunk rows", "chunks"], rows,
                     caption="rows per split"))

    rate_rows = []
    gen_rates = (gen.extra.get("label_rates") or {}) if gen else {}
    for s in splits:
        rates, source = (chk_splits.get(s) or {}).get("label_rates"), "chunks"
        if not rates:
            rates, source = gen_rates.get(s), "generate"
        if rates:
            rate_rows.append([s, source] + [rates.get(t) for t in TARGETS])
    if rate_rows:
        sec.add(rg.Table(["split", "source"] + list(TARGETS), rate_rows, caption="label (positive) rates per split"))

    if ing is not None:
        q_rows = [[s, reason, n] for s in splits for reason, n in sorted((ing_splits.get(s, {}).get("quarantined_by_reason") or {}).items())]
        if q_rows:
            sec.add(rg.Table(["split", "reason", "rows"], q_rows, caption="ingest quarantine (malformed lines) by reason"))
        else:
            sec.add(rg.Paragraph("Ingest quarantined no lines."))

    hsec = rg.Section("data-history", "History lengths", level=3)
    out.append(hsec)
    if not hist:
        hsec.add(rg.Paragraph(f"text: {NOT_RUN}." if txt is None else "The text manifest has no hist_len_hist.", kind="note"))
    else:
        cfg_h = txt.extra.get("history") or {}
        if cfg_h:
            hsec.add(rg.Paragraph("History settings: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg_h.items())) + "."))
        size = max(len(v) for v in hist.values()) - 1
        h_rows, shares = [], {}
        for s in _ordered(hist):
            counts = np.zeros(size + 1, dtype=np.int64)
            counts[: len(hist[s])] = hist[s]
            n = int(counts.sum())
            mean = float((counts * np.arange(size + 1)).sum() / n) if n else None
            h_rows.append([s, n, mean, (counts[0] / n) if n else None, *counts.tolist()])
            shares[s] = (counts / n).tolist() if n else [None] * (size + 1)
        hsec.add(
            rg.Table(["split", "rows", "mean valid slots", "share empty"] + [str(k) for k in range(size + 1)], h_rows,
                     caption="rows by number of valid history slots (0..H)"),
            rg.Figure("data_history_lengths",
                      rg.grouped_bars([str(k) for k in range(size + 1)], shares,
                                      title="history length distribution", xlabel="valid history slots", ylabel="share of rows"),
                      caption="Share of rows per number of valid history slots, per split."),
        )

    csec = rg.Section("data-chunks", "Chunks", level=3)
    out.append(csec)
    if chk is None:
        csec.add(rg.Paragraph(f"chunks: {NOT_RUN}.", kind="note"))
    else:
        by_split: dict[str, list[dict[str, Any]]] = {}
        for f in chk.files:
            if f["path"].endswith(".parquet"):
                by_split.setdefault(_file_split(f), []).append(f)
        c_rows, sizes = [], {}
        for s in _ordered(by_split):
            r = np.array([int(f.get("rows") or 0) for f in by_split[s]])
            mb = np.array([f["bytes"] / 1e6 for f in by_split[s]])
            median = float(np.median(r))
            c_rows.append([s, len(r), int(r.min()), int(median) if median.is_integer() else median, int(r.max()),
                           float(mb.min()), float(np.median(mb)), float(mb.max()), float(mb.sum())])
            sizes[s] = mb.tolist()
        if c_rows:
            target = chk.extra.get("target_mb")
            csec.add(
                rg.Table(["split", "chunks", "rows min", "rows median", "rows max", "MB min", "MB median", "MB max", "MB total"],
                         c_rows, caption="chunk sizes" + (f" (target {target} MB)" if target else "")),
                rg.Figure("data_chunk_sizes", rg.histogram(sizes, title="chunk size distribution", xlabel="MB per chunk",
                                                            ylabel="chunks"),
                          caption="Chunk sizes (MB) per split, from the chunks manifest."),
            )
        else:
            csec.add(rg.Paragraph("The chunks manifest lists no Parquet chunks.", kind="note"))
    return out


def _stages_sections(ctx, manifests: dict[str, Manifest | None], sacct: dict[str, dict[str, str]], sacct_note: str) -> list[rg.Section]:
    sec = rg.Section("stages", "Pipeline stages")
    rows = []
    for name in UPSTREAM:
        m = manifests.get(name)
        if m is None:
            state = "not used" if name == "generate" and ctx.cfg.data.generate is None else NOT_RUN
            rows.append([name, state] + [None] * 10)
            continue
        d = m.data
        slurm = d.get("slurm") or {}
        job = _job_id(m)
        acct = sacct.get(job, {}) if job else {}
        rows.append([
            name, "done", len(m.files), d.get("rows"), format_bytes(d.get("bytes")), rg.fmt_duration(d.get("duration_s")),
            str(d.get("fingerprint", ""))[:12], d.get("host"), job,
            slurm.get("restart_count"), acct.get("state"), acct.get("elapsed"),
        ])
    sec.add(rg.Table(
        ["stage", "state", "files", "rows", "bytes", "duration", "fingerprint", "host", "Slurm job", "restarts",
         "Slurm state", "Slurm elapsed"],
        rows,
        caption="one row per upstream stage, from its _MANIFEST.json",
    ))
    if sacct_note:
        sec.add(rg.Paragraph(sacct_note + ".", kind="note"))
    prov = sorted({(m.data.get("code_version"), m.data.get("git_commit")) for m in manifests.values() if m is not None},
                  key=lambda t: (str(t[0]), str(t[1])))
    if prov:
        sec.add(rg.Table(["code version", "git commit"], [[c, g] for c, g in prov], caption="code that produced the stages"))
    return [sec]


def _config_yaml(ctx) -> str:
    data = ctx.cfg.to_dict()
    if data.get("storage_options"):
        # Storage options can hold credentials (tokens, keys); show which keys were set, not values.
        data["storage_options"] = {k: "<redacted>" for k in data["storage_options"]}
    return yaml.safe_dump(data, sort_keys=False)


def _config_sections(ctx) -> list[rg.Section]:
    sec = rg.Section("config", "Configuration")
    sec.add(rg.Paragraph("The resolved configuration of this run (storage_options values redacted)."),
            rg.Preformatted(_config_yaml(ctx)))
    return [sec]


def _meta_lines(ctx) -> list[str]:
    return [
        f"run_dir: {ctx.cfg.run_dir}",
        f"report fingerprint {ctx.fingerprint[:16]}, code {code_version()}",
    ]


# ----------------------------------------------------------------------------------------------
# summary.json
# ----------------------------------------------------------------------------------------------
def _headline(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: m[k] for k in ("rows", "ap", "rce", "ap_fair", "rce_fair", "positive_rate")}


def _summary(ctx, manifests, evaluation, baseline: Baseline, train_log) -> dict[str, Any]:
    metrics, deltas = {}, {}
    for split in _ordered(set(evaluation or {}) | set(baseline.metrics)):
        model_m = (evaluation or {}).get(split)
        base_m = baseline.metrics.get(split)
        metrics[split] = {
            "model": _headline(model_m),
            "baseline": _headline(base_m),
            "prior": _headline(prior_metrics(model_m or base_m)),
        }
        if model_m is not None and base_m is not None:
            deltas[split] = {
                "ap_avg": _diff(model_m["ap"]["avg"], base_m["ap"]["avg"]),
                "rce_avg": _diff(model_m["rce"]["avg"], base_m["rce"]["avg"]),
                "ap_fair_avg": _diff(model_m["ap_fair"]["avg"], base_m["ap_fair"]["avg"]),
                "rce_fair_avg": _diff(model_m["rce_fair"]["avg"], base_m["rce_fair"]["avg"]),
            }
    stages = {}
    for name in UPSTREAM:
        m = manifests.get(name)
        stages[name] = None if m is None else {
            "files": len(m.files),
            "rows": m.data.get("rows"),
            "bytes": m.data.get("bytes"),
            "duration_s": m.data.get("duration_s"),
            "fingerprint": m.data.get("fingerprint"),
            "host": m.data.get("host"),
            "slurm_job_id": _job_id(m),
        }
    train = None
    if train_log:
        last = train_log[-1]
        train = {"records": len(train_log), "last_step": last["step"]}
        for key, *_ in _TRAIN_SERIES:
            vals = [float(r[key]) for r in train_log if _finite(r.get(key))]
            if vals:
                train[f"{key}_last"] = vals[-1]
                train[f"{key}_mean"] = float(np.mean(vals))
    return {
        "schema": SUMMARY_SCHEMA,
        "run_dir": ctx.cfg.run_dir,
        "fingerprint": ctx.fingerprint,
        "stages": stages,
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
        "train": train,
        "fairness_group_edges": list(FAIRNESS_EDGES),
        "fairness_group_labels": group_labels(FAIRNESS_EDGES),
    }
