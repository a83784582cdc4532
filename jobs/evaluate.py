#!/usr/bin/env python
"""Run the evaluate stage alone: `python jobs/evaluate.py CONFIG [key=value ...] [--force]`."""
# Generated from the stage registry (src/microparade/engine/registry.py) by `python -m microparade.slurm.scripts`.

import sys

from microparade.entry import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("evaluate"))
