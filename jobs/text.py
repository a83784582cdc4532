#!/usr/bin/env python
"""Run the text stage alone: `python jobs/text.py CONFIG [key=value ...] [--force]`."""
# Generated from the stage registry (src/microparade/engine/registry.py) by `python -m microparade.slurm.scripts`.

import sys

from microparade.entry import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("text"))
