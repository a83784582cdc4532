#!/usr/bin/env python
"""Run the ingest stage alone: `python jobs/ingest.py CONFIG [key=value ...] [--force]`."""

import sys

from microparade.entry import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("ingest"))
