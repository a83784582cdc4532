"""features stage: tabular features per ingest row (docs/features.md), computed with Dask.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
