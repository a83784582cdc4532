#!/usr/bin/env python
"""Model quality on generated data: the prior, the two GBDT baselines and three networks, on the same rows.

Generates data with the pipeline's own generate stage (``--rows``, ``--seed``) and runs the real
pipeline (``configs/demo.yaml``: MiniLM, its text settings, history of 4; plus overrides) up to
chunks once, in ``WORKDIR/upstream``. Every variant then gets its own run directory holding the
upstream stage directories as hard links of those files (the published files are never written
again, and their manifests and fingerprints are unchanged, so the runner finds them done: asserted)
and runs train → evaluate → report there: the features-only network (``model.use_text=false``),
the text model with a single head and with ``model.heads=multi``, each for every ``--seeds``
(``train.seed``), with the demo's ``train:`` settings (frozen MiniLM, batch 32, 200 steps, model
selection every 100 steps on 500 valid rows) unless ``--max-steps`` / ``--batch-size`` say
otherwise. Evaluate scores the valid split only, with the default Platt calibration, so every
number is on the same valid rows: those with ``calibration_holdout == false``. The prior and the
GBDT baselines ("features only", "features + history") come from the report's ``summary.json``,
as do the model-vs-GBDT verdicts (paired bootstrap); the text-vs-features-only differences are
paired bootstraps of the predictions (``microparade.metrics.paired_bootstrap``). With ``--workdir``,
a rerun reuses what is done there (the runner skips stages whose fingerprint matches; the stage
seconds are then those of the run that published them). The GBDTs train with one OpenMP thread
(``--baseline-threads``; the same trees as with more, which collapsed on a loaded 2-core machine),
torch with the demo's thread count unless ``--threads``.

Prints the tables (AP and RCE per engagement and averaged, mean ± half the range over seeds for the
networks, positives per engagement, each run's stage seconds, the verdicts, the calibration fit);
``--write-docs`` records them in docs/benchmarks.md under "## Model quality".

    python benchmarks/quality.py                                       # 100k rows, seeds 0 1 (> 1 h on 2 cores)
    python benchmarks/quality.py --rows 6000 --max-steps 5 --seeds 0   # smoke run (a few minutes)
    python benchmarks/quality.py --rows 30000 --seeds 0 1 --workdir /tmp/quality --write-docs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from microparade.config import Config, load_config
from microparade.engine import run_pipeline
from microparade.metrics import paired_bootstrap
from microparade.recsys_format import TARGETS
from microparade.stages.report.common import verdict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import publish  # noqa: E402
from preprocess import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Model quality"
DEMO = ROOT / "configs" / "demo.yaml"
UPSTREAM = ("generate", "ingest", "text", "features", "chunks")
#: ``(key, label, overrides)`` of the networks trained, in table order.
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("features", "features-only NN", ("model.use_text=false",)),
    ("single", "text model, single head", ("model.use_text=true", "model.heads=single")),
    ("multi", "text model, multi head", ("model.use_text=true", "model.heads=multi")),
)
#: ``(summary.json metrics key, comparison key, label)`` of the report's reference rows.
REFERENCES = (
    ("prior", None, "prior (positive rate)"),
    ("baseline", "features", "GBDT, features only"),
    ("baseline_history", "history", "GBDT, features + history"),
)


@dataclass
class Run:
    """One trained variant: its report summary, calibration, selection, stage times and valid predictions."""

    variant: str
    seed: int
    wall_s: float
    stage_s: dict[str, float]
    summary: dict[str, Any]
    calibration: dict[str, Any]
    selection: dict[str, Any]
    row_id: np.ndarray
    probs: np.ndarray

    @property
    def model(self) -> dict[str, Any]:
        return self.summary["metrics"]["valid"]["model"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows generated (data.generate.rows; default 100000)")
    ap.add_argument("--seed", type=int, help="data.generate.seed (default: the demo's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.seed of each network (default 0 1)")
    ap.add_argument("--max-steps", type=int, help="train.max_steps (default: the demo's)")
    ap.add_argument("--batch-size", type=int, help="train.batch_size (default: the demo's)")
    ap.add_argument(
        "--baseline-threads",
        type=int,
        default=1,
        help="report.baseline_threads (default 1: identical trees; 2 OpenMP threads on a loaded 2-core machine "
        "made the report 7-150x slower)",
    )
    ap.add_argument("--threads", type=int, help="train.num_threads (default: the demo's, 0 = every CPU)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (report.bootstrap)")
    ap.add_argument("--config", type=Path, default=DEMO, help="the base config (default configs/demo.yaml)")
    ap.add_argument("--workdir", type=Path, help="keep the run directories here (default: a temporary directory)")
    ap.add_argument("--write-docs", action="store_true", help=f"record the tables in {DOC.relative_to(ROOT)}")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the pipeline's log")
    return ap.parse_args(argv)


def overrides(args: argparse.Namespace, run_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The config overrides of one run directory: data size, H = 4, valid only, the CLI's train settings."""
    out = [
        f"run_dir={run_dir}",
        f"data.generate.rows={args.rows}",
        "history.size=4",
        "evaluate.splits=[valid]",
        "evaluate.calibration=platt",
        f"report.bootstrap={args.bootstrap}",
        f"report.baseline_threads={args.baseline_threads}",
    ]
    out += [] if args.seed is None else [f"data.generate.seed={args.seed}"]
    out += [] if args.max_steps is None else [f"train.max_steps={args.max_steps}"]
    out += [] if args.batch_size is None else [f"train.batch_size={args.batch_size}"]
    out += [] if args.threads is None else [f"train.num_threads={args.threads}"]
    return out + list(extra)


def link_upstream(src: Path, dst: Path) -> None:
    """``dst`` gets the upstream stage directories of ``src`` as hard links (the stages never rewrite a
    published file; a stage that reruns publishes new files in their place). A ``dst`` holding other
    upstream outputs (an earlier run of ``--workdir`` with other data or code) is emptied first;
    one holding the same keeps its downstream stages, which the runner then skips when done."""
    same = all(
        (dst / s / "_MANIFEST.json").is_file()
        and (dst / s / "_MANIFEST.json").read_bytes() == (src / s / "_MANIFEST.json").read_bytes()
        for s in UPSTREAM
    )
    if same:
        return
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for stage in UPSTREAM:
        shutil.copytree(src / stage, dst / stage, copy_function=os.link)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _durations(run_dir: Path, stages: tuple[str, ...]) -> dict[str, float]:
    """Each stage's ``duration_s`` from its manifest."""
    return {s: float(_json(run_dir / s / "_MANIFEST.json")["duration_s"]) for s in stages}


def valid_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and final probabilities ``[N, 4]`` of the scored valid rows (not the calibration hold-out)."""
    t = pq.read_table(run_dir / "evaluate" / "predictions" / "valid.parquet")
    scored = ~t.column("calibration_holdout").to_numpy(zero_copy_only=False)
    probs = np.stack([t.column(c).to_numpy() for c in TARGETS], axis=1).astype(np.float64)
    return t.column("row_id").to_numpy()[scored], probs[scored]


def valid_labels(upstream: Path, row_id: np.ndarray) -> np.ndarray:
    """The labels ``[N, 4]`` of ``row_id`` (sorted) from the valid chunks."""
    manifest = _json(upstream / "chunks" / "_MANIFEST.json")
    paths = [upstream / "chunks" / f["path"] for f in manifest["files"] if f.get("split") == "valid"]
    t = pa.concat_tables(pq.read_table(p, columns=["row_id", *TARGETS]) for p in paths)
    ids = t.column("row_id").to_numpy()
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], row_id)
    if pos.size and (pos.max() >= ids.size or not np.array_equal(ids[order][pos], row_id)):
        raise SystemExit(f"the valid predictions name rows missing from the valid chunks of {upstream / 'chunks'}")
    return np.stack([t.column(c).to_numpy()[order][pos] for c in TARGETS], axis=1).astype(np.int8)


def train_variant(args: argparse.Namespace, workdir: Path, key: str, extra: tuple[str, ...], seed: int) -> Run:
    """Train, evaluate and report one variant in its own run directory over the shared upstream outputs."""
    run_dir = workdir / f"{key}-seed{seed}"
    link_upstream(workdir / "upstream", run_dir)
    cfg = load_config(args.config, overrides(args, run_dir, (*extra, f"train.seed={seed}")))
    t0 = time.perf_counter()
    outcome = run_pipeline(cfg, until="report")
    wall = time.perf_counter() - t0
    rerun = [s for s in UPSTREAM if outcome.get(s) != "skipped"]
    if rerun:
        raise SystemExit(f"{run_dir}: upstream stages {rerun} were not found done; the variants must share them")
    preds = valid_predictions(run_dir)
    return Run(
        variant=key,
        seed=seed,
        wall_s=wall,
        stage_s=_durations(run_dir, ("train", "evaluate", "report")),
        summary=_json(run_dir / "report" / "summary.json"),
        calibration=_json(run_dir / "evaluate" / "calibration.json"),
        selection=_json(run_dir / "train" / "_MANIFEST.json")["extra"].get("selection") or {},
        row_id=preds[0],
        probs=preds[1],
    )


def spread(values: list[float | None], digits: int) -> str:
    """``mean ± half the range`` of the defined values (the value alone for one seed)."""
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    mean = float(np.mean(v))
    return f"{mean:.{digits}f}" if len(v) == 1 else f"{mean:.{digits}f} ± {(max(v) - min(v)) / 2:.{digits}f}"


def metric_table(metric: str, runs: list[Run], first: dict[str, Any], positives: np.ndarray | None) -> list[str]:
    """The AP or RCE table: the report's reference rows, then each network over its seeds."""
    cols, digits = [*TARGETS, "avg"], 4 if metric == "ap" else 2
    lines = [
        f"| model | seeds | {' | '.join(f'{metric.upper()} {c}' for c in cols)} |",
        "|---|---|" + "---|" * len(cols),
    ]
    if positives is not None:
        rows = int(first["metrics"]["valid"]["model"]["rows"])
        cells = " | ".join(f"{int(p):,}" for p in positives)
        lines.append(f"| positives (of {rows:,} scored rows) | | {cells} | |")
    for name, _, label in REFERENCES:
        m = first["metrics"]["valid"][name]
        cells = " | ".join("n/a" if m is None or m[metric][c] is None else f"{m[metric][c]:.{digits}f}" for c in cols)
        lines.append(f"| {label} | | {cells} |")
    for key, label, _ in VARIANTS:
        mine = [r for r in runs if r.variant == key]
        if mine:
            cells = " | ".join(spread([r.model[metric][c] for r in mine], digits) for c in cols)
            lines.append(f"| {label} | {' '.join(str(r.seed) for r in mine)} | {cells} |")
    return lines


def _interval(d: dict[str, Any] | None, digits: int = 4) -> str:
    """``+0.0123 [-0.0010, +0.0250] beats`` of a difference with its 95% interval and verdict."""
    if d is None or d.get("diff") is None:
        return "n/a"
    ci = "" if d.get("low") is None else f" [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return f"{d['diff']:+.{digits}f}{ci} {d.get('verdict') or verdict(d)}"


def runs_table(runs: list[Run]) -> list[str]:
    """One row per trained network: selection, averages, verdicts against the GBDTs, stage seconds."""
    lines = [
        "| model | seed | best step / last | AP avg | RCE avg | AP avg − GBDT features (95%) "
        "| AP avg − GBDT features + history (95%) | train s | train ex/s | evaluate s | report s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {k: label for k, label, _ in VARIANTS}
    for r in runs:
        vs = ((r.summary.get("comparisons") or {}).get("valid") or {}).get("vs") or {}
        cells = [_interval((vs.get(k) or {}).get("ap", {}).get("avg")) for _, k, _ in REFERENCES[1:]]
        sel = r.selection
        step = f"{sel.get('best_step', '?')} / {sel.get('last_step', '?')}"
        rate = (r.summary.get("train") or {}).get("examples_per_s_mean")
        lines.append(
            f"| {labels[r.variant]} | {r.seed} | {step} | {r.model['ap']['avg']:.4f} | {r.model['rce']['avg']:.2f} "
            f"| {cells[0]} | {cells[1]} | {r.stage_s['train']:.0f} | {'n/a' if rate is None else f'{rate:.1f}'} "
            f"| {r.stage_s['evaluate']:.0f} "
            f"| {r.stage_s['report']:.0f} |"
        )
    return lines


def text_vs_features(runs: list[Run], labels: np.ndarray, n: int) -> list[str]:
    """Paired bootstrap of each text model minus the features-only network of the same seed, on the same rows."""
    lines = [
        "| seed | text model − features-only NN | AP avg (95%) | RCE avg (95%) |",
        "|---|---|---|---|",
    ]
    by = {(r.variant, r.seed): r for r in runs}
    names = {k: label for k, label, _ in VARIANTS}
    for (key, seed), r in by.items():
        base = by.get(("features", seed))
        if key == "features" or base is None or n < 1:
            continue
        if not np.array_equal(r.row_id, base.row_id):
            raise SystemExit(f"seed {seed}: {key} and features-only scored different valid rows")
        d = paired_bootstrap(labels, r.probs, base.probs, n, seed=0)
        lines.append(f"| {seed} | {names[key]} | {_interval(d['ap']['avg'])} | {_interval(d['rce']['avg'], 2)} |")
    return lines


def calibration_notes(runs: list[Run]) -> list[str]:
    """The calibration fit (rows, positives per engagement) and any fallback or reversed ranking."""
    cal = runs[0].calibration
    fit = cal.get("fit") or {}
    pos = ", ".join(f"{t} {fit[t]['positives']:,}" for t in TARGETS if t in fit)
    notes = [
        f"Calibration: {cal.get('kind')} per engagement, fit on the {cal.get('fit_rows', 0):,} valid rows of the "
        f"hold-out (the same rows in every run; positives in them: {pos or 'none'}), scored on the others."
    ]
    for r in runs:
        for t, entry in (r.calibration.get("fit") or {}).items():
            a = (entry.get("params") or {}).get("a")
            if entry.get("note"):
                notes.append(f"{r.variant} seed {r.seed}, {t}: {entry['note']}")
            elif a is not None and a <= 0:
                notes.append(f"{r.variant} seed {r.seed}, {t}: Platt slope a = {a:.3f} reverses the ranking")
        if r.calibration.get("note"):
            notes.append(f"{r.variant} seed {r.seed}: {r.calibration['note']}")
    return notes


def reference_notes(runs: list[Run]) -> list[str]:
    """The report's notes, and whether every run's report scored the same GBDT and prior numbers."""
    first = runs[0].summary
    notes = [f"Report note: {n}" for n in ((first.get("comparisons") or {}).get("valid") or {}).get("notes", [])]
    for r in runs[1:]:
        for name, _, label in REFERENCES:
            a, b = first["metrics"]["valid"][name], r.summary["metrics"]["valid"][name]
            if (a or {}).get("ap") != (b or {}).get("ap"):
                notes.append(f"{label}: the report of {r.variant} seed {r.seed} scored other numbers than the first")
    return notes


def describe(
    cfg: Config, args: argparse.Namespace, upstream: Path, started: str, load: list[float], command: str
) -> str:
    """The paragraph saying what was measured, where, how and with which command."""
    m = machine_info()
    splits = _json(upstream / "chunks" / "_MANIFEST.json")["extra"]["splits"]
    rows = ", ".join(f"{s} {splits[s]['rows']:,}" for s in ("train", "valid", "test") if s in splits)
    up = _durations(upstream, UPSTREAM)
    t, gen = cfg.train, cfg.data.generate
    assert gen is not None  # the overrides always set data.generate.rows
    return (
        f"Measured {started} on {m['nproc']} CPU cores ({m['cpu_model']}), {m['ram_gib']:.0f} GiB RAM, Python "
        f"{m['python']}; load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end (the machine "
        f"is shared). Command: `{command}`. Data: the "
        f"generate stage, {gen.rows:,} rows (seed {gen.seed}; chunk rows {rows}), "
        f"history of {cfg.history.size} ({cfg.history.window}), text.max_length {cfg.text.max_length}, encoder "
        f"`{cfg.model.encoder}`; generate → chunks once ({sum(up.values()):.0f} s: "
        f"{', '.join(f'{s} {v:.0f}' for s, v in up.items())}), then train → evaluate → report per network in its "
        f"own run directory over hard links of those outputs. Training ({args.config.name} `train:`): "
        f"`encoder_trainable_layers` {t.encoder_trainable_layers}, batch {t.batch_size} × {t.max_steps} steps, "
        f"lr {t.lr:g} / head_lr {t.head_lr:g}, warm-up {t.warmup_steps}, model selection every {t.eval_every} "
        f"steps on the first {t.eval_rows} valid rows (`model.pt` = the best), torch threads "
        f"{t.num_threads or 'all CPUs'}; GBDT threads {cfg.report.baseline_threads}. Evaluate: the valid split, "
        f"{cfg.evaluate.calibration} calibration on a hold-out of {cfg.evaluate.calibration_fraction:.0%} of it; "
        f"every number below is on the other valid rows, the same for every model. The prior predicts the "
        f"positive rate (AP = the rate, RCE = 0); the GBDTs are the report's baselines on those rows."
    )


def render(
    runs: list[Run], labels: np.ndarray, args: argparse.Namespace, head: str, total_s: float, upstream_s: float
) -> str:
    """The section's Markdown: description, AP and RCE tables, the runs, text vs features-only, notes."""
    first = runs[0].summary
    order = {k: i for i, (k, _, _) in enumerate(VARIANTS)}
    ordered = sorted(runs, key=lambda r: (order[r.variant], r.seed))
    stage_total = upstream_s + sum(sum(r.stage_s.values()) for r in runs)
    spread_note = " (mean ± half the range over the seeds)" if len(args.seeds) > 1 else ""
    lines = [
        head,
        "",
        f"Average precision per engagement{spread_note}:",
        "",
        *metric_table("ap", ordered, first, labels.sum(axis=0)),
        "",
        f"RCE per engagement{spread_note}:",
        "",
        *metric_table("rce", ordered, first, None),
        "",
        "Each network: the step of the model scored, the averages, the difference from each GBDT on the same "
        f"rows with its paired bootstrap 95% interval ({args.bootstrap:,} resamples; *ties* when it holds 0), "
        "the stage seconds and the mean of the throughput train logged:",
        "",
        *runs_table(ordered),
        "",
        "Text model minus the features-only network of the same seed, paired bootstrap on the same rows:",
        "",
        *text_vs_features(ordered, labels, args.bootstrap),
        "",
        *(f"- {n}" for n in calibration_notes(ordered) + reference_notes(ordered)),
        f"- Total run time {total_s / 60:.1f} min; stage seconds summed over the upstream stages and every "
        f"network's train, evaluate and report: {stage_total / 60:.1f} min.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/quality.py", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        import distributed  # noqa: F401  (configures its loggers when first imported: quieten them after)

        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)  # a warning per shuffle
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start, t0 = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mp-quality-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        upstream = workdir / "upstream"
        cfg = load_config(args.config, overrides(args, upstream))
        print(f"generate → chunks in {upstream} ...", flush=True)
        run_pipeline(cfg, until="chunks")
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
        runs = []
        for seed in args.seeds:
            for key, label, extra in VARIANTS:
                print(f"{label}, seed {seed}: train → evaluate → report ...", flush=True)
                r = train_variant(args, workdir, key, extra, seed)
                print(
                    f"  AP avg {r.model['ap']['avg']:.4f}, RCE avg {r.model['rce']['avg']:.2f} "
                    f"({', '.join(f'{s} {v:.0f}s' for s, v in r.stage_s.items())}; {r.wall_s:.0f}s)",
                    flush=True,
                )
                runs.append(r)
        labels = valid_labels(upstream, runs[0].row_id)
        head = describe(cfg, args, upstream, started, [load_start, os.getloadavg()[0]], command)
        upstream_s = sum(_durations(upstream, UPSTREAM).values())
        body = render(runs, labels, args, head, time.perf_counter() - t0, upstream_s)
    publish(SECTION, body, args.write_docs, doc=DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
