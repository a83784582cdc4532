#!/usr/bin/env python
"""Inference speed and quality of each ``evaluate.precision``, side by side with training speed.

Takes a run directory whose train stage is done (default ``runs/demo``: ``microparade run
configs/demo.yaml --until train``), loads its ``model.pt`` and chunks, and in one process:

- predicts every labelled evaluation split (valid, test) with evaluate's own code path
  (``predict_split``: chunk loader, efficient encoding with ``evaluate.token_budget``,
  ``torch.inference_mode``) at each precision, ``--repeats`` times, the precisions alternating so
  that they share the machine's load; reports the median rows/s, where the time went (reading and
  encoding the batches vs the model's forward), AP per engagement and avg of the raw probabilities
  on the same rows, and the largest probability difference from fp32;
- times training steps (forward + backward + Adam, the whole model trainable, as
  ``benchmarks/train_throughput.py``) on a copy of the same model and batches of its training
  split, alternating with the inference repeats, and prints the inference / training ratios.

``--write-docs`` records the table in docs/benchmarks.md under "## Inference".

    python benchmarks/inference.py --run-dir runs/demo
    python benchmarks/inference.py --run-dir runs/demo --repeats 1 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microparade.compute.factory import make_backend
from microparade.metrics import compute_metrics
from microparade.model import SpecialTokens, encode_batch, load_model_bundle
from microparade.model.inference import PRECISIONS, for_inference
from microparade.model.loader import ChunkLoader
from microparade.recsys_format import TARGETS
from microparade.stages.chunks.contract import ChunksManifest
from microparade.stages.evaluate.stage import predict_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Inference"


class _Timed:
    """A model whose forward calls are timed (the rest of ``predict_split`` is reading and encoding)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.seconds = 0.0

    def __call__(self, mb: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.model(mb)
        self.seconds += time.perf_counter() - t0
        return out


def predict(model: torch.nn.Module, chunks: ChunksManifest, split: str, bundle: dict, args) -> dict[str, Any]:
    """One split predicted as the evaluate stage does; its rows/s and the forward's share of the time."""
    backend = make_backend("cpu", environ={}).setup()
    timed = _Timed(model)
    t0 = time.perf_counter()
    with ChunkLoader(chunks, split, batch_size=args.batch_size, shuffle=False, with_ids=True) as loader:
        res = predict_split(timed, loader, bundle, backend, args.token_budget, None, lambda *a: None)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    return {"res": res, "seconds": seconds, "forward": timed.seconds}


def train_rate(model: torch.nn.Module, batches: list, bundle: dict, args) -> float:
    """Training examples/s: forward + backward + Adam step of the whole model on ``batches``."""
    specials = SpecialTokens.from_mapping(bundle["special_tokens"])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    t0 = time.perf_counter()
    for ex in batches:
        mb = encode_batch(ex, specials=specials, max_length=int(bundle["max_length"]), token_budget=args.token_budget)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(mb), mb.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(len(ex) for ex in batches) / (time.perf_counter() - t0)


def _quality(res: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    labelled = not np.isnan(res["labels"]).any()
    ap = compute_metrics(res["labels"].astype(np.int8), res["probs"], res["a_follower_count"])["ap"] if labelled else {}
    return {"ap": ap, "max_diff": float(np.abs(res["probs"] - ref["probs"]).max())}


def measure(args) -> dict[str, Any]:
    """Every number of the table (see the module docstring)."""
    run = Path(args.run_dir)
    bundle = torch.load(run / "train" / "model.pt", map_location="cpu", weights_only=True)
    chunks = ChunksManifest.read(str(run))
    splits = [s for s in ("valid", "test") if chunks.files(s)]
    models = {p: for_inference(load_model_bundle(bundle), p) for p in args.precisions}
    trainee = load_model_bundle(bundle)
    with ChunkLoader(chunks, "train", batch_size=args.train_batch_size, shuffle=False) as lo:
        batches = [b.examples for _, b in zip(range(args.train_steps), lo.epoch(0))]
    runs: dict[str, list[dict]] = {p: [] for p in args.precisions}
    train: list[float] = []
    for r in range(args.repeats):
        for p in args.precisions:
            runs[p].append({s: predict(models[p], chunks, s, bundle, args) for s in splits})
            rows = sum(len(v["res"]["row_id"]) for v in runs[p][-1].values())
            secs = sum(v["seconds"] for v in runs[p][-1].values())
            print(f"repeat {r}: {p:5s} {rows / secs:8.2f} rows/s ({secs:.1f} s)", flush=True)
        train.append(train_rate(trainee, batches, bundle, args))
        print(f"repeat {r}: train {train[-1]:8.2f} ex/s", flush=True)
    ref = {s: runs[args.precisions[0]][0][s]["res"] for s in splits}
    out: dict[str, Any] = {"splits": splits, "train_ex_s": statistics.median(train), "precisions": {}}
    for p, reps in runs.items():
        rows = sum(len(reps[0][s]["res"]["row_id"]) for s in splits)
        secs = [sum(rep[s]["seconds"] for s in splits) for rep in reps]
        fwd = [sum(rep[s]["forward"] for s in splits) for rep in reps]
        out["precisions"][p] = {
            "rows": rows,
            "rows_s": rows / statistics.median(secs),
            "forward_share": statistics.median(f / s for f, s in zip(fwd, secs)),
            "quality": {s: _quality(reps[0][s]["res"], ref[s]) for s in splits},
        }
    return out


def render(out: dict[str, Any], args, started: str, load_start, load_end) -> str:
    base = out["precisions"][args.precisions[0]]
    lines = [
        f"Measured {started} on {os.cpu_count()} CPU cores ({platform.machine()}, {platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_start)} at the start, {'/'.join(f'{x:.1f}' for x in load_end)} at the "
        f"end (the machine is shared). Model and rows: `{args.run_dir}` (its `model.pt`, its "
        f"{' and '.join(out['splits'])} chunks: {base['rows']} rows), predicted with the evaluate stage's code "
        f"(`predict_split`, batch {args.batch_size}, token budget {args.token_budget}), {args.repeats} repeat(s) "
        f"per precision, alternating; rows/s is the median. *forward* is the model's share of the time (the rest: "
        f"reading chunks, building batches, collecting outputs). Training: forward + backward + Adam step of the "
        f"whole model (encoder trainable) on {args.train_steps} batches of {args.train_batch_size} training rows, "
        f"once per repeat, median. AP: raw (uncalibrated) probabilities on the same rows; "
        f"max |Δp|: the largest probability difference from {args.precisions[0]}. "
        f"Command: `python benchmarks/inference.py {' '.join(sys.argv[1:])}`.",
        "",
        "| precision | split | rows/s | vs fp32 | vs training | forward | "
        + " | ".join(f"AP {t}" for t in TARGETS)
        + " | AP avg | max abs Δp |",
        "|---|---|---|---|---|---|" + "---|" * (len(TARGETS) + 2),
    ]
    for p, m in out["precisions"].items():
        for s, q in m["quality"].items():
            ap = q["ap"]
            aps = " | ".join("-" if ap.get(t) is None else f"{ap[t]:.4f}" for t in (*TARGETS, "avg"))
            lines.append(
                f"| {p} | {s} | {m['rows_s']:.1f} | {m['rows_s'] / base['rows_s']:.2f}x "
                f"| {m['rows_s'] / out['train_ex_s']:.2f}x | {m['forward_share']:.0%} | {aps} | {q['max_diff']:.2g} |"
            )
    lines += ["", f"Training on the same machine: {out['train_ex_s']:.2f} examples/s."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/demo", help="a run directory whose train stage is done")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="evaluate.batch_size")
    ap.add_argument("--token-budget", type=int, default=8192, help="evaluate.token_budget")
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--train-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--write-docs", action="store_true", help=f"record the table in {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    if args.precisions[0] != "fp32":
        args.precisions = ["fp32", *[p for p in args.precisions if p != "fp32"]]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    out = measure(args)
    table = render(out, args, started, load_start, os.getloadavg())
    publish(SECTION, table, args.write_docs, doc=DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
