"""The MicroParade model: encoder loading (:mod:`.encoder`), the network (:mod:`.network`), batching
(:mod:`.batching`), the chunk loader (:mod:`.loader`) and the ``model.pt`` format (:mod:`.bundle`)."""

from __future__ import annotations

from .batching import Examples, ModelBatch, SpecialTokens, encode_batch
from .bundle import MODEL_FORMAT, build_model, load_model_bundle, model_bundle
from .network import MicroParade

__all__ = [
    "Examples",
    "MODEL_FORMAT",
    "MicroParade",
    "ModelBatch",
    "SpecialTokens",
    "build_model",
    "encode_batch",
    "load_model_bundle",
    "model_bundle",
]
