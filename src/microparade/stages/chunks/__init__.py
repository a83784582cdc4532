"""chunks stage: join ingest + text + features per split, shuffle, write ~``target_mb`` Parquet chunks.

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
