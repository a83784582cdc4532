"""generate stage: synthetic RecSys 2021 raw files under ``{run_dir}/generate/{split}/``.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
