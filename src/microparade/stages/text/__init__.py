"""text stage: cleaned candidate text, per-user engagement histories, history windows.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
