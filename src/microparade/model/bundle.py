"""The ``model.pt`` format: a model built for the chunks, saved with what inference needs, and loaded back.

``model.pt`` (written by the train stage, read by evaluate) is a ``torch.save`` of a dict of plain
types and tensors, loadable with ``weights_only=True``:

- ``format``: ``"microparade.model/1"``;
- ``state_dict``: the network's weights (feature normalisation included, as buffers);
- ``model_config``: the ``model`` config section; ``encoder_config``: the encoder's architecture
  (``None`` for the features-only model), enough to rebuild it without the original weight files;
- ``feature_names``, ``normalization`` (``mean``/``std``), ``history_size``, ``max_length``,
  ``special_tokens``, ``encoder_tokenizer``: what inference needs to build inputs the same way
  (copied from the chunks manifest, :class:`~microparade.stages.chunks.contract.ChunksManifest`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..stages.chunks.contract import ChunksManifest
from .encoder import encoder_config, encoder_from_config, load_encoder
from .network import MicroParade

MODEL_FORMAT = "microparade.model/1"


def build_model(model_cfg: Any, chunks: ChunksManifest, seed: int = 0) -> MicroParade:
    """A fresh model for ``chunks`` (their feature count and normalisation).

    The whole initialisation (encoder included for ``tiny``) happens under ``torch.manual_seed(seed)``
    so two builds with the same seed are identical.
    """
    torch.manual_seed(seed)
    encoder = load_encoder(model_cfg.encoder, seed=seed) if model_cfg.use_text else None
    return MicroParade.from_config(
        model_cfg,
        encoder=encoder,
        n_features=chunks.n_features,
        feature_mean=list(chunks.normalization.mean),
        feature_std=list(chunks.normalization.std),
    )


def model_bundle(
    model: MicroParade, model_cfg: Any, chunks: ChunksManifest, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """The ``model.pt`` content for ``model`` trained on ``chunks`` (see the module docstring), with
    the weights ``state_dict`` when given (e.g. an earlier, better state of the same model)."""
    state = model.state_dict() if state_dict is None else state_dict
    return {
        "format": MODEL_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "model_config": model_cfg.model_dump(mode="json") if hasattr(model_cfg, "model_dump") else dict(model_cfg),
        "encoder_config": encoder_config(model.encoder) if model.use_text else None,
        "feature_names": list(chunks.feature_names),
        "normalization": {"mean": list(chunks.normalization.mean), "std": list(chunks.normalization.std)},
        "history_size": chunks.history_size,
        "max_length": chunks.max_length,
        "special_tokens": dict(chunks.special_tokens),
        "encoder_tokenizer": chunks.encoder_tokenizer,
    }


def load_model_bundle(bundle: dict[str, Any]) -> MicroParade:
    """Rebuild the trained network from a ``model.pt`` dict (in eval mode)."""
    if bundle.get("format") != MODEL_FORMAT:
        raise ValueError(f"not a microparade model file (format {bundle.get('format')!r}, expected {MODEL_FORMAT!r})")
    cfg = bundle["model_config"]
    encoder = encoder_from_config(bundle["encoder_config"]) if bundle["encoder_config"] is not None else None
    model = MicroParade.from_config(
        cfg,
        encoder=encoder,
        n_features=len(bundle["feature_names"]),
        feature_mean=bundle["normalization"]["mean"],
        feature_std=bundle["normalization"]["std"],
    )
    model.load_state_dict(bundle["state_dict"])
    model.eval()
    return model
