"""evaluate stage: predictions of the trained model and the official metrics per split.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
