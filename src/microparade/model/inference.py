"""Inference precision: the trained network's encoder in fp32, bf16 autocast or dynamic int8.

:func:`for_inference` changes only the text encoder, which does nearly all of the work (docs/benchmarks.md,
"Inference"); the embedding lookup, the aggregator, the heads and the features stay in float32:

- ``fp32``: the model as trained;
- ``bf16``: the encoder's linear layers hold bfloat16 weights and its forward runs under
  ``torch.autocast(dtype=torch.bfloat16)`` (matrix products in bfloat16 — AMX / AVX512-BF16 on
  recent x86 CPUs, tensor cores on GPUs); its outputs are cast back to float32;
- ``int8``: the encoder's ``nn.Linear`` layers replaced by dynamically quantised int8 ones
  (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per batch), CPU
  only.

Training never calls this; it changes the model it is given in place (evaluate loads one to predict with).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, cast

import torch
from torch import nn

from .network import MicroParade

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


class AutocastEncoder(nn.Module):
    """``inner``'s forward under ``torch.autocast`` to bfloat16 on ``device_type``; the rest of the
    encoder interface the network uses (``config``, ``get_input_embeddings``) passes through."""

    def __init__(self, inner: nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner = inner
        self.config = cast(Any, inner).config
        self.device_type = device_type

    def get_input_embeddings(self) -> nn.Module:
        """The inner encoder's word embeddings (the network looks them up outside the encoder call)."""
        return cast(Any, self.inner).get_input_embeddings()

    def forward(self, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.inner(**kwargs)


def _bf16_linears(encoder: nn.Module) -> None:
    """Store the linear layers' weights in bfloat16: the same values autocast would cast them to on
    every call, cast once."""
    for module in encoder.modules():
        if isinstance(module, nn.Linear):
            module.to(torch.bfloat16)


def _quantize_int8(encoder: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch deprecates torch.ao.quantization in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(encoder, {nn.Linear}, dtype=torch.qint8)


def for_inference(model: MicroParade, precision: str, device_type: str = "cpu") -> MicroParade:
    """``model`` (in eval mode) with its encoder at ``precision`` (see the module docstring).

    The model is changed in place and returned; ``fp32`` and a model without text leave it as is.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"evaluate.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and device_type != "cpu":
        raise ValueError(f"evaluate.precision=int8 (dynamic quantisation) runs on the CPU only, not on {device_type}")
    model.eval()
    if precision == "fp32" or not model.use_text:
        return model
    encoder = model.encoder
    if precision == "bf16":
        _bf16_linears(encoder)
        model.encoder = AutocastEncoder(encoder, device_type)
    else:
        model.encoder = _quantize_int8(encoder)
    return model
