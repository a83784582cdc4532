"""train stage: MicroParade trained end to end on the chunks, with exact, resumable checkpoints.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
