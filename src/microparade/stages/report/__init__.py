"""report stage: one self-contained HTML page, a Markdown twin and ``summary.json`` for a run.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
