"""Entry points for running one stage alone (``jobs/<stage>.py``), from sbatch or submitit.

    python jobs/ingest.py CONFIG [key=value ...] [--force]

Equivalent to ``microparade run CONFIG --only STAGE``; exits 124 when the stage stopped on a
preemption signal after checkpointing (the sbatch scripts requeue on that code).
"""

from __future__ import annotations

import argparse
import sys

from .cli import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE, setup_logging
from .config import ConfigError, load_config


def run_one(stage: str, config: str, overrides: list[str], force: bool = False) -> int:
    from .runner import PreemptedError, StageError, run_pipeline

    try:
        cfg = load_config(config, overrides)
        outcome = run_pipeline(cfg, only=stage, force=force)
    except ConfigError as exc:
        print(f"microparade: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PreemptedError as exc:
        print(f"microparade: {stage}: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except StageError as exc:
        print(f"microparade: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"microparade: {stage} {outcome.get(stage, 'not run')}")
    return EXIT_OK


def stage_main(stage: str, argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"Run the {stage} stage alone.")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--force", action="store_true", help="rerun even if the stage is done")
    args, rest = ap.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(args.overrides) + rest
    setup_logging()
    return run_one(stage, args.config, args.overrides, args.force)
