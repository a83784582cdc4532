#!/usr/bin/env python
"""Training throughput of the efficient vs the naive (paper's) pair encoding.

Writes synthetic chunks (docs/data-format.md §7) with realistic lengths — candidate and history
tweets ~45 content tokens on average, ``--empty`` of the history slots empty — reads them back
through the hot-swap loader, and times forward + backward + optimizer step of the same model on
the same batches with both encodings, side by side, for each history size. Prints examples/s,
data efficiency (content tokens / encoded tokens) and the speed-up; ``--write-docs`` records the
table in docs/benchmarks.md under "## Training throughput".

``--backend xla`` (run with the XLA environment, ``.venv-tpu/bin/python``) instead trains the
efficient encoding with static shapes (``ShapeBuckets``) on torch-xla's SPMD backend, one fresh
process per history size and bucket grid (so every grid compiles from scratch), side by side with
eager CPU on the same batches in that process. Prints examples/s without the steps that compiled
(their time is reported as compile seconds), the number of XLA compilations, data efficiency with
buckets and with the eager token budget, and the XLA/eager ratios; ``--write-docs`` records the
table under "## XLA training throughput".

    python benchmarks/train_throughput.py                       # MiniLM, H = 4 6 10
    python benchmarks/train_throughput.py --encoder tiny --steps 5
    PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 TF_CPP_MIN_LOG_LEVEL=2 \
        .venv-tpu/bin/python benchmarks/train_throughput.py --backend xla   # XLA:CPU, tiny encoder
    PJRT_DEVICE=TPU .venv-tpu/bin/python benchmarks/train_throughput.py --backend xla --write-docs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from microparade.config import ModelConfig
from microparade.model import SpecialTokens, build_model, encode_batch
from microparade.model.batching import ShapeBuckets
from microparade.model.loader import ChunkLoader
from microparade.recsys_format import TARGETS
from microparade.stages.chunks.contract import SCHEMA_VERSION, ChunksManifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Training throughput"
XLA_SECTION = "## XLA training throughput"
TPU_COMMAND = "PJRT_DEVICE=TPU .venv-tpu/bin/python benchmarks/train_throughput.py --backend xla --write-docs"
SPECIALS = {"cls": 101, "sep": 102, "pad": 0, "unk": 100, "link": 1000}
N_FEATURES = 16


def _lengths(rng: np.random.Generator, n: int, mean: float, limit: int) -> np.ndarray:
    """Tweet lengths in content tokens: a right-skewed distribution with the given mean."""
    sigma = 0.45
    mu = np.log(mean) - sigma**2 / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, size=n)), 3, limit).astype(np.int64)


def chunk_table(n: int, h: int, empty: float, max_length: int, seed: int) -> pa.Table:
    """n examples with history size h (vectorised; token ids are random MiniLM whole words)."""
    rng = np.random.default_rng(seed)
    limit = max_length - 2
    c_len = _lengths(rng, n, 45, limit)
    n_valid = rng.binomial(h, 1.0 - empty, size=n)
    mask = np.arange(h)[None, :] < n_valid[:, None]
    h_len = np.where(mask, _lengths(rng, n * h, 45, limit).reshape(n, h), 0)

    def ragged(lengths: np.ndarray) -> pa.ListArray:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = rng.integers(1996, 29000, size=int(offsets[-1])).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    inner = ragged(h_len.reshape(-1))
    outer_off = pa.array((np.arange(n + 1) * h).astype(np.int32))
    fixed = lambda values, t: pa.ListArray.from_arrays(outer_off, pa.array(values.reshape(-1), t))  # noqa: E731
    hours = np.where(mask, rng.integers(0, 24, size=(n, h)), 24).astype(np.int8)
    return pa.table(
        {
            "row_id": pa.array(np.arange(n, dtype=np.int64) + seed * 10_000_000),
            "tweet_id": pa.array([f"{i:032X}" for i in range(n)]),
            "b_user_id": pa.array([f"{i % 997:032X}" for i in range(n)]),
            "a_follower_count": pa.array(rng.integers(0, 10**6, size=n)),
            **{t: pa.array((rng.random(n) < r).astype(np.int8)) for t, r in zip(TARGETS, (0.4, 0.09, 0.03, 0.006))},
            "tokens": ragged(c_len),
            "hour": pa.array(rng.integers(0, 24, size=n).astype(np.int8)),
            "hist_tokens": pa.ListArray.from_arrays(outer_off, inner),
            "hist_engagement": fixed(np.where(mask, 1, 0), pa.int8()),
            "hist_hour": fixed(hours, pa.int8()),
            "hist_mask": fixed(mask, pa.bool_()),
            "hist_len": pa.array(n_valid.astype(np.int8)),
            "features": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.normal(size=n * N_FEATURES).astype(np.float32)), N_FEATURES
            ),
        }
    )


def write_chunks(directory: Path, h: int, rows: int, chunks: int, empty: float, max_length: int) -> ChunksManifest:
    """Chunk files + the parsed manifest the loader reads (what the chunks stage would publish)."""
    files = []
    positives = np.zeros(len(TARGETS))
    for c in range(chunks):
        rel = f"train/chunk-{c:05d}.parquet"
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        table = chunk_table(rows // chunks, h, empty, max_length, seed=h * 100 + c)
        positives += [np.sum(table.column(t).to_numpy()) for t in TARGETS]
        pq.write_table(table, path, compression="zstd")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        files.append({"path": rel, "rows": table.num_rows, "bytes": len(data), "sha256": sha, "split": "train"})
    n = sum(f["rows"] for f in files)
    train = {"rows": n, "chunks": chunks, "label_rates": {t: float(p / n) for t, p in zip(TARGETS, positives)}}
    extra = {
        "schema_version": SCHEMA_VERSION,
        "feature_names": [f"f{i}" for i in range(N_FEATURES)],
        "normalization": {"mean": [0.0] * N_FEATURES, "std": [1.0] * N_FEATURES},
        "history_size": h,
        "max_length": max_length,
        "encoder_tokenizer": "minilm",
        "special_tokens": SPECIALS,
        "splits": {"train": train},
    }
    return ChunksManifest.from_dict({"files": files, "extra": extra}, str(directory))


def measure(model, batches, encoding: str, max_length: int, token_budget: int, warmup: int) -> dict:
    """examples/s of forward + backward + Adam step, and data efficiency, over ``batches``."""
    specials = SpecialTokens.from_mapping(SPECIALS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    examples = valid = encoded = 0
    seconds = 0.0
    for i, ex in enumerate(batches):
        t0 = time.perf_counter()
        mb = encode_batch(ex, specials=specials, max_length=max_length, encoding=encoding, token_budget=token_budget)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(mb), mb.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            seconds += dt
            examples += len(ex)
            valid += mb.valid_tokens
            encoded += mb.encoded_tokens
    return {
        "examples_per_s": examples / seconds,
        "efficiency": valid / encoded,
        "seconds": seconds,
        "examples": examples,
    }


def load_batches(directory: Path, h: int, args) -> tuple[ChunksManifest, list]:
    """The synthetic chunks of history size ``h`` and the first ``warmup + steps`` batches of their epoch 0."""
    n_batches = args.steps + args.warmup
    rows = n_batches * args.batch_size
    manifest = write_chunks(directory, h, rows, chunks=2, empty=args.empty, max_length=args.max_length)
    with ChunkLoader(manifest, "train", batch_size=args.batch_size, seed=0) as lo:
        batches = [b.examples for b in lo.epoch(0)][:n_batches]
    return manifest, batches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backend",
        choices=("cpu", "xla"),
        default="cpu",
        help="cpu: efficient vs naive encoding, eager (default); xla: static shapes on torch-xla vs eager CPU",
    )
    ap.add_argument("--encoder", help="minilm (real weights; default on cpu) or tiny (default on xla)")
    ap.add_argument("--histories", type=int, nargs="+", default=[4, 6, 10])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--steps",
        type=int,
        help="timed steps per encoding and history size (default 4); on xla the batches after the warm-up, "
        "of which those that compiled are not timed (default 10)",
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--empty", type=float, default=0.7, help="fraction of empty history slots")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument(
        "--grids",
        nargs="+",
        default=["1x1", "2x2", "4x4"],
        help="xla: shape-bucket grids, ROWSxLENGTHS (ShapeBuckets n_rows x n_lengths)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads of eager CPU (0: torch's default)")
    ap.add_argument("--write-docs", action="store_true", help=f"record the table in {DOC.relative_to(ROOT)}")
    ap.add_argument("--xla-child", help=argparse.SUPPRESS)  # internal: one (H, grid) measurement
    args = ap.parse_args(argv)
    if args.encoder is None:
        args.encoder = "tiny" if args.backend == "xla" else "minilm"
    if args.steps is None:
        args.steps = 10 if args.backend == "xla" else 4
    if args.backend == "xla":
        for g in args.grids:
            parse_grid(g)  # fail early on a malformed grid
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.xla_child:
        return xla_child(args)
    if args.backend == "xla":
        return main_xla(args)
    results = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        for h in args.histories:
            manifest, batches = load_batches(Path(tmp) / f"h{h}", h, args)
            slots = np.concatenate([b.hist_mask for b in batches])
            row = {"h": h, "empty": 1.0 - float(slots.mean())}
            for encoding in ("efficient", "naive"):
                torch.manual_seed(0)
                model = build_model(ModelConfig(encoder=args.encoder), manifest, seed=0)
                row[encoding] = measure(model, batches, encoding, args.max_length, args.token_budget, args.warmup)
                print(
                    f"H={h:2d} {encoding:9s} {row[encoding]['examples_per_s']:8.2f} ex/s  "
                    f"data efficiency {row[encoding]['efficiency']:.3f}  ({row[encoding]['seconds']:.1f}s)",
                    flush=True,
                )
            row["speedup"] = row["efficient"]["examples_per_s"] / row["naive"]["examples_per_s"]
            print(f"H={h:2d} speed-up efficient/naive: {row['speedup']:.2f}x", flush=True)
            results.append(row)
    table = render(results, args, started, load_start, os.getloadavg())
    publish(SECTION, table, args.write_docs, doc=DOC)
    return 0


# -- --backend xla ------------------------------------------------------------------------------


def parse_grid(grid: str) -> tuple[int, int]:
    """``"4x4"`` -> ``(4, 4)``: ShapeBuckets' ``n_rows`` and ``n_lengths``."""
    try:
        rows, lengths = (int(x) for x in grid.lower().replace("×", "x").split("x"))
    except ValueError:
        raise SystemExit(f"--grids: {grid!r} is not ROWSxLENGTHS (e.g. 2x2)") from None
    if rows < 1 or lengths < 1:
        raise SystemExit(f"--grids: {grid!r} needs at least one row count and one length")
    return rows, lengths


def main_xla(args) -> int:
    """One child process per (H, grid), so that each grid's compilations start from an empty cache."""
    from importlib.util import find_spec

    from microparade.compute.xla import INSTALL_HINT

    if find_spec("torch_xla") is None:
        raise SystemExit(f"--backend xla needs torch-xla, which {sys.executable} lacks: {INSTALL_HINT}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mp-bench-xla-") as tmp:
        for h in args.histories:
            for grid in args.grids:
                spec = Path(tmp) / f"h{h}-{grid}.json"
                spec.write_text(json.dumps({"args": vars(args), "h": h, "grid": grid}))
                cmd = [sys.executable, str(Path(__file__).resolve()), "--xla-child", str(spec)]
                proc = subprocess.run(cmd, cwd=ROOT)
                if proc.returncode != 0:
                    raise SystemExit(f"the measurement of H={h}, grid {grid} failed (exit {proc.returncode})")
                results.append(json.loads(spec.with_suffix(".out.json").read_text()))
    elapsed = time.perf_counter() - t_start
    table = render_xla(results, args, started, load_start, os.getloadavg(), elapsed)
    publish(XLA_SECTION, table, args.write_docs, doc=DOC)
    return 0


def xla_child(args) -> int:
    """Measure one (H, grid) on XLA and eager CPU (two copies of the model), on the same batches."""
    import torch_xla
    import torch_xla.core.xla_model as xm

    from microparade.compute.factory import make_backend

    spec_path = Path(args.xla_child)
    spec = json.loads(spec_path.read_text())
    for k, v in spec["args"].items():
        if k != "xla_child":
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, grid = spec["h"], spec["grid"]
    n_rows, n_lengths = parse_grid(grid)
    backend = make_backend("xla", environ={}).setup()
    specials = SpecialTokens.from_mapping(SPECIALS)
    with tempfile.TemporaryDirectory(prefix="mp-bench-xla-child-") as tmp:
        manifest, batches = load_batches(Path(tmp), h, args)
    buckets = ShapeBuckets.make(
        batch_size=args.batch_size,
        history_size=h,
        max_length=args.max_length,
        n_rows=n_rows,
        n_lengths=n_lengths,
        multiple=backend.shape_multiple,
    )
    cfg = ModelConfig(encoder=args.encoder)

    def fresh(wrap: bool):
        torch.manual_seed(0)
        model = build_model(cfg, manifest, seed=0)
        model.train()
        if wrap:
            model = backend.wrap(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        if wrap:
            backend.prepare_optimizer(opt)
        return model, opt

    def step(model, opt, mb) -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(mb), mb.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cpu_model, cpu_opt = fresh(False)  # the same batches (static shapes), eager
    tb_model, tb_opt = fresh(False)  # the efficient encoding without buckets (token budget), eager
    # Phases over the same batches rather than interleaved steps, so that each runs on its own
    # (the thread pools of XLA:CPU and torch keep spinning for a while after their work).
    steps = []
    for ex in batches:
        t0 = time.perf_counter()
        mb = encode_batch(ex, specials=specials, max_length=args.max_length, encoding="efficient", buckets=buckets)
        t_enc = time.perf_counter() - t0
        steps.append(
            {
                "examples": len(ex),
                "mb": mb,
                "shape": list(mb.shape),
                "t_enc": t_enc,
                "valid": mb.valid_tokens,
                "encoded": mb.encoded_tokens,
            }
        )
    for i, s in enumerate(steps):  # eager, the same static-shape batches
        t0 = time.perf_counter()
        step(cpu_model, cpu_opt, s["mb"])
        s["t_cpu"] = time.perf_counter() - t0
        print(f"H={h:2d} grid {grid:5s} eager step {i:2d} {s['t_enc'] + s['t_cpu']:7.2f}s", flush=True)
    for i, (ex, s) in enumerate(zip(batches, steps)):  # eager, token budget instead of buckets
        t0 = time.perf_counter()
        tb = encode_batch(
            ex, specials=specials, max_length=args.max_length, encoding="efficient", token_budget=args.token_budget
        )
        step(tb_model, tb_opt, tb)
        s["t_tb"] = time.perf_counter() - t0
        s["tb_valid"], s["tb_encoded"] = tb.valid_tokens, tb.encoded_tokens
        print(f"H={h:2d} grid {grid:5s} eager step {i:2d} token budget {s['t_tb']:7.2f}s", flush=True)
    backend.seed(0)
    xla_model, xla_opt = fresh(True)
    compiles_before = backend.compilations()
    for i, s in enumerate(steps):  # XLA, the same static-shape batches
        c0 = backend.compilations()
        t0 = time.perf_counter()
        xmb = backend.send(s.pop("mb"))
        step(xla_model, xla_opt, xmb)
        backend.step_end()  # runs the traced step (compiling it first if its graph is new)
        xm.wait_device_ops()  # time the execution too, step by step
        s["t_xla"] = time.perf_counter() - t0
        s["compiled"] = backend.compilations() - c0
        print(
            f"H={h:2d} grid {grid:5s} xla   step {i:2d} shape {s['shape'][0]:4d}x{s['shape'][1]:<4d} "
            f"{s['t_enc'] + s['t_xla']:7.2f}s{' (compiled)' if s['compiled'] else ''}",
            flush=True,
        )
    # Timed: the same batches for every column, without the warm-up and every step that compiled.
    timed = [s for i, s in enumerate(steps) if i >= args.warmup and not s["compiled"]]
    n_ex = sum(s["examples"] for s in timed)

    def rate(key: str, with_encode: bool) -> float | None:
        secs = sum(s[key] + (s["t_enc"] if with_encode else 0.0) for s in timed)
        return n_ex / secs if timed else None

    result = {
        "h": h,
        "grid": grid,
        "rows": list(buckets.rows),
        "lengths": list(buckets.lengths),
        "empty": 1.0 - float(np.concatenate([b.hist_mask for b in batches]).mean()),
        "shapes": len({tuple(s["shape"]) for s in steps}),
        "compilations": backend.compilations(),
        "compilations_before_steps": compiles_before,
        "compiling_steps": sum(1 for s in steps if s["compiled"]),
        "compile_s": sum(s["t_enc"] + s["t_xla"] for s in steps if s["compiled"]),
        "timed_steps": len(timed),
        "steps": len(steps),
        "xla_ex_s": rate("t_xla", True),
        "cpu_ex_s": rate("t_cpu", True),
        "tb_ex_s": rate("t_tb", False),
        "efficiency": sum(s["valid"] for s in steps) / sum(s["encoded"] for s in steps),
        "tb_efficiency": sum(s["tb_valid"] for s in steps) / sum(s["tb_encoded"] for s in steps),
        "device": backend.describe(),
        "kind": backend.kind,
        "torch": torch.__version__,
        "torch_xla": torch_xla.__version__,
        "threads": torch.get_num_threads(),
        "per_step": steps,
    }
    spec_path.with_suffix(".out.json").write_text(json.dumps(result))
    r = result
    ratio = f"{r['xla_ex_s'] / r['cpu_ex_s']:.2f}x" if timed else "n/a"
    print(
        f"H={h:2d} grid {grid:5s} {r['shapes']} shape(s), {r['compilations']} compilation(s) "
        f"({r['compile_s']:.1f}s); xla {_num(r['xla_ex_s'])} ex/s, eager {_num(r['cpu_ex_s'])} ex/s "
        f"(xla/eager {ratio}), eager token budget {_num(r['tb_ex_s'])} ex/s; data efficiency "
        f"{r['efficiency']:.3f} (buckets) vs {r['tb_efficiency']:.3f} (token budget); "
        f"{r['timed_steps']}/{r['steps']} steps timed",
        flush=True,
    )
    return 0


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def _command(argv: list[str]) -> str:
    """The command line of this run: the XLA environment variables, the interpreter, the arguments."""
    env = " ".join(
        f"{k}={os.environ[k]}" for k in ("PJRT_DEVICE", "CPU_NUM_DEVICES", "TF_CPP_MIN_LOG_LEVEL") if k in os.environ
    )
    exe = Path(sys.executable)
    python = os.path.relpath(exe, ROOT) if exe.is_relative_to(ROOT) else "python"
    return " ".join(x for x in (env, python, "benchmarks/train_throughput.py", *argv) if x)


def render_xla(results: list[dict], args, started: str, load_start, load_end, elapsed: float) -> str:
    first = results[0]
    fmt_load = lambda load: "/".join(f"{x:.1f}" for x in load)  # noqa: E731
    lines = [
        f"Measured {started} on {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"torch {first['torch']}, torch-xla {first['torch_xla']}, backend {first['device']}; eager CPU with "
        f"{first['threads']} thread(s); load average (1/5/15 min) {fmt_load(load_start)} at the start, "
        f"{fmt_load(load_end)} at the end (the machine is shared); {elapsed / 60:.1f} min in all. "
        f"Encoder `{args.encoder}`, batch {args.batch_size}, max_length {args.max_length}, tweets of ~45 content "
        f"tokens, {args.empty:.0%} of history slots empty (drawn); efficient encoding. Each history size and "
        f"bucket grid runs in a fresh process (XLA's compilation cache starts empty) that trains three copies "
        f"of the same model (same seed) one after the other on the same {args.warmup + args.steps} batches: "
        f"eager on the CPU with the static-shape batches (`ShapeBuckets`, rows × lengths), eager with the token "
        f"budget ({args.token_budget}) instead of buckets, then on XLA with the static-shape batches. "
        f"Eager torch with more than one thread can collapse while other processes load the machine (each "
        f"parallel op waits for a descheduled worker thread: 2.4 instead of 120 ex/s on a shared 2-core machine), "
        f"which `--threads 1` avoids. "
        f"A step is encode + forward + backward + Adam step (+ host-to-device copy and `torch_xla.sync()` on "
        f"XLA, waited for step by step, so host tracing does not overlap execution as with the trainer's feeder "
        f"thread). ex/s counts the same steps in every column: not the {args.warmup} warm-up step(s) and not "
        f"the steps whose XLA compilation count grew (their time is *compile s*, execution included).",
        "",
        f"Command: `{_command(sys.argv[1:])}`. On a TPU VM: `{TPU_COMMAND}`.",
        "",
        "| H | empty slots | grid | bucket rows × lengths | shapes used | XLA compilations | compile s "
        "| timed steps | XLA ex/s | eager ex/s (same batches) | XLA / eager | data efficiency (buckets) "
        "| eager ex/s (token budget) | XLA / eager (token budget) | data efficiency (token budget) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows = ",".join(map(str, r["rows"]))
        lengths = ",".join(map(str, r["lengths"]))
        lines.append(
            f"| {r['h']} | {r['empty']:.0%} | {r['grid']} | {rows} × {lengths} | {r['shapes']} "
            f"| {r['compilations']} | {r['compile_s']:.1f} | {r['timed_steps']}/{r['steps']} "
            f"| {_num(r['xla_ex_s'])} | {_num(r['cpu_ex_s'])} | {_ratio(r['xla_ex_s'], r['cpu_ex_s'])} "
            f"| {r['efficiency']:.1%} | {_num(r['tb_ex_s'])} | {_ratio(r['xla_ex_s'], r['tb_ex_s'])} "
            f"| {r['tb_efficiency']:.1%} |"
        )
    if first["kind"] == "CPU":
        where = (
            f"- They were measured on `{first['device']}`. XLA:CPU is not a TPU: it compiles the same traced "
            "graphs for CPU cores (its virtual devices share this machine's cores), so *XLA ex/s* and the "
            "XLA / eager ratios say nothing about TPU speed, only that the XLA path runs end to end at this "
            "cost here. On a TPU VM the same command gives the TPU's numbers (with the VM's host CPU as the "
            "eager baseline)."
        )
    else:
        where = (
            f"- They were measured on `{first['device']}`: *XLA ex/s* is its throughput at these shapes, with "
            "every step waited for (the trainer overlaps the next batch's encoding and copy with the step); the "
            "eager columns are the host CPU of the same machine."
        )
    lines += [
        "",
        "What these numbers can and cannot say about a TPU:",
        "",
        where,
        "- What carries over: the number of distinct shapes and compilations per grid (a property of the "
        "batches and the bucket grid, not of the chip: one graph per shape used, when every step of a shape "
        "traces the same graph), and the data efficiency (content tokens / encoded tokens), i.e. the padding "
        "that static shapes cost compared with the eager token budget. Each padded token is compute the TPU "
        "spends too; compile seconds differ on a TPU but grow with the number of shapes there as well.",
        "- A finer grid trades more compilations (once per shape and process) for less padding; which side "
        "wins on a TPU depends on its compile time and step time, which only a TPU run measures. Few steps "
        "per grid here: shapes that first appear late are compiled (and counted) but hardly timed.",
    ]
    return "\n".join(lines)


def render(results: list[dict], args, started: str, load_start, load_end) -> str:
    cpu = f"{os.cpu_count()} CPU cores" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    argv = " ".join(sys.argv[1:])
    lines = [
        f"Measured {started} on {cpu} ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_start)} at the start, {'/'.join(f'{x:.1f}' for x in load_end)} at the end "
        f"(the machine is shared). Encoder `{args.encoder}`, batch {args.batch_size}, max_length {args.max_length}, "
        f"token budget {args.token_budget}, tweets of ~45 content tokens, {args.empty:.0%} of history slots empty "
        f"(drawn); forward + backward + Adam step of the same model on the same batches, {args.steps} timed steps "
        f"after {args.warmup} warm-up per encoding. Command: `python benchmarks/train_throughput.py {argv}`.",
        "",
        "| H | empty slots | efficient ex/s | naive ex/s | speed-up "
        "| data efficiency (efficient) | data efficiency (naive) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['h']} | {r['empty']:.0%} | {r['efficient']['examples_per_s']:.2f} "
            f"| {r['naive']['examples_per_s']:.2f} "
            f"| {r['speedup']:.2f}x | {r['efficient']['efficiency']:.1%} | {r['naive']['efficiency']:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
