"""Same weights, same batch: loss and predictions on XLA (SPMD over every device) vs eager CPU.

Run with the XLA environment: ``PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 .venv-tpu/bin/python -m
tests.xla.equivalence``. Prints one JSON object per (encoding, heads) case with the largest
absolute differences; tests/test_xla.py asserts them against its tolerances.
"""

from __future__ import annotations

import copy
import json

import torch
import torch.nn.functional as F

import tests.helpers.train as h
from microparade.compute.factory import make_backend
from microparade.config import ModelConfig
from microparade.model import build_model, encode_batch
from microparade.model.batching import Examples, ShapeBuckets, SpecialTokens
from microparade.stages.chunks.contract import ChunksManifest

B, H, F_, MAX_LEN = 16, 4, 5, 64


def chunks() -> ChunksManifest:
    return h.model_chunks(F_, H, MAX_LEN)


def main() -> None:
    backend = make_backend("xla", environ={}).setup()
    table = h.chunk_table(B, history_size=H, n_features=F_, seed=3, empty_fraction=0.5, max_length=MAX_LEN)
    ex = Examples.from_table(table, history_size=H, n_features=F_)
    specials = SpecialTokens.from_mapping(h.SPECIAL_TOKENS, "test specials")
    buckets = ShapeBuckets.make(batch_size=B, history_size=H, max_length=MAX_LEN, multiple=backend.shape_multiple)
    for encoding in ("efficient", "naive"):
        for heads in ("single", "multi"):
            cpu_model = build_model(ModelConfig(encoder="tiny", heads=heads, agg_heads=4), chunks(), seed=1).eval()
            xla_model = backend.wrap(copy.deepcopy(cpu_model)).eval()
            mb = encode_batch(ex, specials=specials, max_length=MAX_LEN, encoding=encoding, buckets=buckets)
            with torch.no_grad():
                cpu_logits = cpu_model(mb)
                cpu_loss = F.binary_cross_entropy_with_logits(cpu_logits, mb.labels)
                xmb = backend.send(mb)
                x_logits = xla_model(xmb)
                x_loss = F.binary_cross_entropy_with_logits(x_logits, xmb.labels)
                backend.step_end()
            x_logits_cpu, x_loss_cpu = x_logits.cpu(), x_loss.cpu()
            print(
                json.dumps(
                    {
                        "encoding": encoding,
                        "heads": heads,
                        "shape": list(mb.shape or ()),
                        "devices": backend.shape_multiple,
                        "loss_cpu": float(cpu_loss),
                        "loss_xla": float(x_loss_cpu),
                        "max_abs_logit_diff": float((cpu_logits - x_logits_cpu).abs().max()),
                        "max_abs_prob_diff": float((cpu_logits.sigmoid() - x_logits_cpu.sigmoid()).abs().max()),
                        "logit_scale": float(cpu_logits.abs().max()),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
