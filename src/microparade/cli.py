"""``microparade`` command line.

    microparade run CONFIG [key=value ...] [--from STAGE] [--only STAGE] [--until STAGE] [--force]
    microparade status CONFIG [key=value ...] [--verify] [--json]
    microparade config CONFIG [key=value ...]
    microparade generate --out URL --rows N [--users U] [--seed S] [--tokenizer PATH] [--compression C]
    microparade sweep run|status|submit|cancel|report EXPERIMENT [key=value ...]

Exit codes: 0 ok, 1 a stage failed, 2 bad usage or configuration, 124 a stage stopped on a
preemption signal after saving its state (requeue and rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from .entry import EXIT_OK, add_config_args, guarded, load_args_config, setup_process, start_run_log
from .slurm.commands import add_commands as add_slurm_commands
from .sweep.commands import add_commands as add_sweep_commands


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="microparade", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="show library INFO and microparade DEBUG lines")
    ap.add_argument("--log-file", metavar="PATH", help="also log to PATH (default for run: {run_dir}/_logs/...)")
    ap.add_argument("--no-progress", action="store_true", help="periodic log lines instead of progress bars")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline (skipping stages that are done)")
    add_config_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun STAGE and everything after it")
    g.add_argument("--only", metavar="STAGE", help="run only STAGE (its inputs must be done)")
    p.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    p.add_argument("--force", action="store_true", help="rerun the selected stages even if done")
    p.add_argument(
        "--wait",
        nargs="?",
        const="inf",
        metavar="SECONDS",
        help="wait (without limit, or up to SECONDS) for a stage another live runner is computing, instead of "
        "refusing; then skip it if that runner published it (runner.lease_wait_s)",
    )

    p = sub.add_parser("status", help="show the state of every stage")
    add_config_args(p)
    p.add_argument("--verify", action="store_true", help="re-hash every published file (sha256)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("config", help="print the resolved configuration (or one value with --get)")
    add_config_args(p)
    p.add_argument("--get", metavar="KEY", help="print only this dotted key's value, e.g. cluster.kind")
    p.add_argument(
        "--python-for",
        metavar="STAGE",
        help="print the Python a Slurm job of STAGE must run when not the default (the XLA environment's "
        "for backend xla), else nothing",
    )

    p = sub.add_parser("generate", help="write a synthetic RecSys 2021 dataset")
    p.add_argument("--out", required=True, help="output directory (path or fsspec URL)")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--users", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="tokenizer dir (default: the offline MiniLM tokenizer)")
    p.add_argument("--compression", choices=["gzip", "bz2", "zstd"])
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)

    add_slurm_commands(sub)
    add_sweep_commands(sub)
    return ap


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.runner import preflight, run_pipeline

    if args.wait is not None:
        args.overrides = [*args.overrides, f"runner.lease_wait_s={args.wait}"]
    cfg = load_args_config(args)
    preflight(cfg, only=args.only, from_stage=args.from_stage, until=args.until)  # before the log file exists
    log_path = start_run_log(cfg, args.log_file)
    outcome = run_pipeline(cfg, only=args.only, from_stage=args.from_stage, until=args.until, force=args.force)
    ran = [k for k, v in outcome.items() if v == "ran"]
    skipped = [k for k, v in outcome.items() if v == "skipped"]
    where = f"run_dir {cfg.run_dir}" + (f"; log {log_path}" if log_path else "")
    print(f"microparade: ran {', '.join(ran) or 'nothing'}; skipped {', '.join(skipped) or 'nothing'} ({where})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .engine.status import compute_status, format_status, iter_status_rows
    from .slurm.records import slurm_status_columns

    cfg = load_args_config(args)
    statuses = compute_status(cfg, verify="sha256" if args.verify else "size")
    extra = slurm_status_columns(cfg, statuses)
    if args.json:
        rows = iter_status_rows(statuses)
        for r in rows:
            r.update((extra or {}).get(r["stage"], {}))
        print(json.dumps({"run_dir": cfg.run_dir, "stages": rows}, indent=2))
    else:
        print(f"run_dir: {cfg.run_dir}")
        print(format_status(statuses, extra))
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)
    if args.python_for:
        from .slurm.resources import stage_python

        print(stage_python(cfg, args.python_for) or "")
    elif args.get:
        value = cfg.section(args.get)
        print(value if isinstance(value, str) else json.dumps(value))
    else:
        print(cfg.to_yaml(), end="")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from .stages.generate.synth import generate_dataset

    summary = generate_dataset(
        args.out,
        rows=args.rows,
        users=args.users,
        seed=args.seed,
        tokenizer=args.tokenizer,
        compression=args.compression,
        rows_per_file=args.rows_per_file,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
    )
    rates = summary["label_rates"]
    for split, n in summary["rows"].items():
        r = rates.get(split, {})
        print(f"{split:5s} {n:>10,} rows  " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print(f"wrote {len(summary['files'])} file(s) under {args.out}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "status": cmd_status,
    "config": cmd_config,
    "generate": cmd_generate,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides may come after options too: `run CONFIG --force history.size=4`.
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    setup_process(args.verbose, log_file=args.log_file, progress=not args.no_progress)
    handler = COMMANDS.get(args.command) or args.handler
    return guarded(lambda: handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
