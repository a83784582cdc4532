"""Experiments: many variants of one config, sharing their common stages, compared in one report."""
