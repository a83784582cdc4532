"""Inference precision: the trained network's encoder in fp32, bfloat16 or dynamic int8.

:func:`for_inference` changes only the text encoder, which does nearly all of the work (docs/benchmarks.md,
"Inference"); the aggregator, the heads and the features stay in float32:

- ``fp32``: the model as trained;
- ``bf16``: the whole encoder (word and position embeddings, layer norms, attention, linear layers)
  cast to bfloat16, so its activations stay bfloat16 from the embedding lookup to the [CLS] vectors,
  which the network casts back to float32 before the aggregator. Matrix products run on AMX /
  AVX512-BF16 on recent x86 CPUs and on tensor cores on GPUs. Casting the encoder predicted 1.2-1.5x
  the rows/s of ``torch.autocast`` (which casts every linear layer's input on every call and keeps
  the element-wise work in float32) on the same rows, with the same AP;
- ``int8``: the encoder's ``nn.Linear`` layers replaced by dynamically quantised int8 ones
  (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per batch), CPU
  only.

Training never calls this; it changes the model it is given in place (evaluate loads one to predict with).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from .network import MicroParade

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


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
        encoder.to(torch.bfloat16)
    else:
        model.encoder = _quantize_int8(encoder)
    return model
