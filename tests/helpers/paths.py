"""Paths inside the checkout that tests use; nothing outside it."""

from __future__ import annotations

from pathlib import Path

#: The ``tests`` directory.
TESTS_DIR = Path(__file__).resolve().parents[1]
#: The repository root (the checkout).
ROOT = TESTS_DIR.parent
#: The bert-base-multilingual-cased tokenizer shipped as test data (see tests/data/README.md).
MBERT_VOCAB = TESTS_DIR / "data" / "bert-base-multilingual-cased"
