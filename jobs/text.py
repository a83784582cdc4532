#!/usr/bin/env python
"""Run the text stage alone: `python jobs/text.py CONFIG [key=value ...] [--force]`."""

import sys

from microparade.entry import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("text"))
