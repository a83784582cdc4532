"""microparade: the MicroParade tweet-engagement recommender as a resumable HPC batch pipeline."""

__version__ = "0.1.0"
