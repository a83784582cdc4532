#!/usr/bin/env python
"""Training throughput on a shared node: torch thread counts and OpenMP's wait policy, alone and
with one other job on the same CPUs.

Each measurement is a fresh process (OpenMP reads ``OMP_WAIT_POLICY`` when torch loads) that
trains the model for ``--steps`` batches of synthetic chunks (``benchmarks/train_throughput.py``'s)
and prints examples/s. "With one other job" starts a second, identical process at the same moment
on the same CPUs: the competing job a shared node gives you. Variants, side by side in one run:

- threads: 1, and every CPU of the affinity (``--threads``, default: all);
- ``OMP_WAIT_POLICY``: unset (libgomp spins at each barrier before it sleeps) and ``PASSIVE``
  (waiting threads sleep at once);
- model: the text model (``--encoder``, default MiniLM) and the features-only model
  (``model.use_text=false``), whose steps are tiny and barrier-bound.

    python benchmarks/threads.py                 # MiniLM + features-only, ~6 min on 2 cores
    python benchmarks/threads.py --encoder tiny --steps 4
    python benchmarks/threads.py --write-docs    # record the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Threads on a shared node"
POLICIES = ("unset", "PASSIVE")


def child(args: argparse.Namespace) -> int:
    """One measurement: train ``args.steps`` batches, print ``{"examples_per_s": ...}``."""
    import torch

    from microparade.config import ModelConfig
    from microparade.model import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import load_batches, measure

    torch.set_num_threads(args.child_threads)
    batch_args = argparse.Namespace(
        steps=args.steps, warmup=1, batch_size=args.batch_size, empty=0.7, max_length=args.max_length
    )
    with tempfile.TemporaryDirectory(prefix="mp-threads-") as tmp:
        manifest, batches = load_batches(Path(tmp), 4, batch_args)
        torch.manual_seed(0)
        cfg = ModelConfig(encoder=args.encoder, use_text=args.model == "text")
        model = build_model(cfg, manifest, seed=0)
        if args.start_at:  # start together with the competing process
            time.sleep(max(0.0, args.start_at - time.time()))
        result = measure(model, batches, "efficient", args.max_length, 8192, warmup=1)
    print(json.dumps({"examples_per_s": result["examples_per_s"], "threads": torch.get_num_threads()}))
    return 0


def _spawn(args: argparse.Namespace, model: str, threads: int, policy: str, start_at: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    steps = args.steps if model == "text" else args.steps * 50
    cmd = [sys.executable, __file__, "--child", "--model", model, "--child-threads", str(threads)]
    cmd += ["--encoder", args.encoder, "--steps", str(steps), "--batch-size", str(args.batch_size)]
    cmd += ["--max-length", str(args.max_length), "--start-at", str(start_at)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def run(args: argparse.Namespace, model: str, threads: int, policy: str, jobs: int) -> float:
    """examples/s of the first of ``jobs`` identical processes started together."""
    start_at = time.time() + (20.0 if model == "text" else 8.0)  # after every process has loaded its model
    procs = [_spawn(args, model, threads, policy, start_at) for _ in range(jobs)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a measurement failed: {outs}")
    return float(json.loads(outs[0].strip().splitlines()[-1])["examples_per_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--steps", type=int, default=6, help="timed text-model steps (features-only: 50x)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="text", help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    rows = []
    for model in ("text", "features-only"):
        for threads in sorted({1, args.threads}):
            for policy in POLICIES:
                alone = run(args, model, threads, policy, jobs=1)
                shared = run(args, model, threads, policy, jobs=2)
                rows.append((model, threads, policy, alone, shared))
                print(
                    f"{model:13s} threads={threads} OMP_WAIT_POLICY={policy:7s} alone {alone:9.1f} ex/s  "
                    f"with one other job {shared:9.1f} ex/s ({shared / alone:.2f}x)",
                    flush=True,
                )
    table = render(rows, args, started, load_start, os.getloadavg())
    print()
    print(f"{SECTION}\n\n{table}")
    if args.write_docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _docs import update_section

        update_section(SECTION, table)
        print(f"\nwrote {DOC}")
    return 0


def render(rows: list, args: argparse.Namespace, started: str, load_start, load_end) -> str:
    cpus = len(os.sched_getaffinity(0))
    lines = [
        f"Measured {started} on {cpus} CPU(s) ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}; load average at the start {load_start[0]:.1f}, at the end "
        f"{load_end[0]:.1f}. Command: `python benchmarks/threads.py"
        + (f" --encoder {args.encoder}" if args.encoder != "minilm" else "")
        + "`. Text model: "
        f"{args.encoder}, H=4, batch {args.batch_size}, {args.steps} timed steps; features-only model: "
        f"{args.steps * 50} steps. *With one other job*: a second identical process started at the same "
        "moment on the same CPUs.",
        "",
        "| model | torch threads | OMP_WAIT_POLICY | alone, ex/s | with one other job, ex/s | kept |",
        "|---|---|---|---|---|---|",
    ]
    for model, threads, policy, alone, shared in rows:
        lines.append(f"| {model} | {threads} | {policy} | {alone:,.1f} | {shared:,.1f} | {shared / alone:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
