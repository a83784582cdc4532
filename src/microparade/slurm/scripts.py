"""The per-stage files of the checkout, rendered from the stage registry: ``slurm/<stage>.sbatch``
(the batch script ``slurm/pipeline.sh`` submits) and ``jobs/<stage>.py`` (what the script runs).

Every fact in them comes from the stage's :class:`~microparade.engine.registry.StageSpec`: its
default resources become ``#SBATCH`` lines through :func:`~.resources.sbatch_flags` (the same
table gives submitit its parameters), ``requeue`` adds the time-limit signal and ``--requeue``,
and ``dask`` / ``requeue`` pick the body function of ``slurm/common.sh``. Regenerate after
changing the registry::

    python -m microparade.slurm.scripts           # write slurm/<stage>.sbatch and jobs/<stage>.py
    python -m microparade.slurm.scripts --check   # exit 1 listing stale, missing or extra files
"""

from __future__ import annotations

import argparse
import stat
import sys
from pathlib import Path

from ..engine.registry import SIGNAL_WARNING_S, STAGES, StageSpec
from .resources import RESOURCE_OPTIONS, checkout, sbatch_flags

#: The command that regenerates the files (named in their header and in ``--check`` failures).
REGENERATE = "python -m microparade.slurm.scripts"

SBATCH_TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name=mp-{stage}
{sbatch_lines}
# {summary}
# usage: sbatch [sbatch options] slurm/{stage}.sbatch CONFIG [key=value ...]
# Resources above are defaults: command-line sbatch options win (slurm/pipeline.sh passes the
# config's slurm.{stage} / slurm.default values that way). Logs: --output={{slurm.log_dir}}/%x-%j.out
# Generated from the stage registry (src/microparade/engine/registry.py) by `{regenerate}`.
set -euo pipefail
# shellcheck disable=SC1091
source "${{MICROPARADE_HOME:-${{SLURM_SUBMIT_DIR:-$PWD}}}}/slurm/common.sh"
{body} {stage} "$@"
"""

JOB_TEMPLATE = '''\
#!/usr/bin/env python
"""Run the {stage} stage alone: `python jobs/{stage}.py CONFIG [key=value ...] [--force]`."""
# Generated from the stage registry (src/microparade/engine/registry.py) by `{regenerate}`.

import sys

from microparade.entry import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("{stage}"))
'''

#: sbatch option for the tasks of each node: one, unless the stage runs one task per GPU.
TASKS_OPTION = "--ntasks-per-node"

#: What a stage with ``requeue=True`` adds: the warning signal to the batch shell before the time
#: limit, and a job that may be requeued and appends to its log.
REQUEUE_OPTIONS = (f"--signal=B:USR2@{SIGNAL_WARNING_S}", "--requeue", "--open-mode=append")


def _option_of(field: str) -> str:
    """The sbatch option of a ``SlurmStageConfig`` field, from :data:`RESOURCE_OPTIONS`."""
    return next(flag for name, flag, _, _ in RESOURCE_OPTIONS if name == field)


def _setting(option: str, flags: list[str]) -> list[str]:
    """The flags of ``flags`` that set ``option``."""
    return [f for f in flags if f.startswith(f"{option}=")]


def resource_lines(spec: StageSpec) -> list[str]:
    """The stage's default resources as sbatch options (:func:`sbatch_flags` of ``spec.resources``)
    in the scripts' order: the job's shape first, with one task per node unless the flags set the
    tasks, and the time limit last."""
    flags = sbatch_flags(spec.resources, spec)
    time = _setting(_option_of("time"), flags)
    lines = [f for f in flags if f not in time]
    if not _setting(TASKS_OPTION, flags):
        nodes = _setting(_option_of("nodes"), lines)
        at = lines.index(nodes[0]) + 1 if nodes else 0
        lines.insert(at, f"{TASKS_OPTION}=1")
    return lines + time


def _summary(spec: StageSpec) -> str:
    """The script's first comment line: the stage's description and how its job runs."""
    text = spec.description or f"the {spec.name} stage"
    text = text[:1].upper() + text[1:]
    if spec.dask:
        text += " (Dask)"
    if spec.requeue:
        text += "; requeues itself on preemption"
    return text + "."


def _body(spec: StageSpec) -> str:
    """The ``slurm/common.sh`` function that runs the stage in its job."""
    if spec.dask and spec.requeue:
        raise ValueError(
            f"stage {spec.name!r} sets both dask and requeue in the registry; slurm/common.sh has "
            "no function for a Dask stage that requeues (mp_dask_stage or mp_requeueing)"
        )
    if spec.requeue:
        return "mp_requeueing"
    return "mp_dask_stage" if spec.dask else "mp_stage"


def sbatch_script(spec: StageSpec) -> str:
    """The text of ``slurm/<stage>.sbatch``."""
    options = resource_lines(spec) + (list(REQUEUE_OPTIONS) if spec.requeue else [])
    return SBATCH_TEMPLATE.format(
        stage=spec.name,
        sbatch_lines="\n".join(f"#SBATCH {option}" for option in options),
        summary=_summary(spec),
        regenerate=REGENERATE,
        body=_body(spec),
    )


def job_file(spec: StageSpec) -> str:
    """The text of ``jobs/<stage>.py``."""
    return JOB_TEMPLATE.format(stage=spec.name, regenerate=REGENERATE)


def rendered(stages: tuple[StageSpec, ...] = STAGES) -> dict[str, str]:
    """Path relative to the checkout → text, for the files of every stage."""
    files = {}
    for spec in stages:
        files[f"slurm/{spec.name}.sbatch"] = sbatch_script(spec)
        files[f"jobs/{spec.name}.py"] = job_file(spec)
    return files


def _is_current(path: Path, text: str) -> bool:
    return path.read_text() == text and bool(path.stat().st_mode & stat.S_IXUSR)


def extra_files(root: Path, stages: tuple[StageSpec, ...] = STAGES) -> list[str]:
    """Stage files in ``root`` (``slurm/*.sbatch``, ``jobs/*.py``) of no registered stage."""
    found = {p.relative_to(root).as_posix() for p in [*root.glob("slurm/*.sbatch"), *root.glob("jobs/*.py")]}
    return sorted(found - rendered(stages).keys())


def check(root: Path, stages: tuple[StageSpec, ...] = STAGES) -> list[str]:
    """``"<problem>: <path>"`` for each stage file of ``root`` that differs from its rendering
    (content or executable bit), is missing, or belongs to no registered stage."""
    problems = []
    for rel, text in rendered(stages).items():
        path = root / rel
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif not _is_current(path, text):
            problems.append(f"stale: {rel}")
    problems += [f"extra (no registered stage): {rel}" for rel in extra_files(root, stages)]
    return problems


def write(root: Path, stages: tuple[StageSpec, ...] = STAGES) -> list[str]:
    """Write the files of every stage into ``root`` (executable), and return those that changed."""
    changed = []
    for rel, text in rendered(stages).items():
        path = root / rel
        if path.is_file() and _is_current(path, text):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        changed.append(rel)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) the stage files of the checkout."""
    ap = argparse.ArgumentParser(
        prog=REGENERATE,
        description="Render slurm/<stage>.sbatch and jobs/<stage>.py of every registered stage into the "
        "checkout ($MICROPARADE_HOME, else the one this package is in).",
    )
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 listing stale, missing or extra files")
    args = ap.parse_args(argv)
    root = checkout()
    if not (root / "slurm" / "common.sh").is_file():
        print(f"{root} is not a microparade checkout (no slurm/common.sh): set MICROPARADE_HOME", file=sys.stderr)
        return 2
    if args.check:
        problems = check(root)
        for problem in problems:
            print(problem)
        if problems:
            print(f"regenerate with: {REGENERATE}", file=sys.stderr)
        return 1 if problems else 0
    for rel in write(root):
        print(f"wrote {rel}")
    extra = extra_files(root)
    for rel in extra:
        print(f"extra (no registered stage; delete it or register the stage): {rel}", file=sys.stderr)
    return 1 if extra else 0


if __name__ == "__main__":
    sys.exit(main())
