"""ingest stage: raw RecSys 2021 files → validated, typed Parquet per split (+ quarantine).

The stage's one entry point is :func:`run`; the runner calls it with a StageContext.
"""

from .stage import run

__all__ = ["run"]
