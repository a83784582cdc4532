"""Shared by the benchmarks: write one section of docs/benchmarks.md, leaving the others alone."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def update_section(section: str, body: str, intro: str = "# Benchmarks\n", doc: Path = DOC) -> None:
    """Replace the ``section`` heading's block of ``doc`` with ``body`` (or append it)."""
    text = doc.read_text() if doc.exists() else intro
    block = f"{section}\n\n{body}\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.write_text(text)


def publish(section: str, body: str, write_docs: bool, intro: str = "# Benchmarks\n", doc: Path = DOC) -> None:
    """Print a benchmark's ``body``; with ``write_docs`` also record it as ``section`` of ``doc``."""
    print()
    print(body)
    if write_docs:
        update_section(section, body, intro, doc=doc)
        print(f"\nwrote {doc}")
