"""The train stage's optimiser: parameter groups, their learning rates and the schedule.

A pre-trained encoder and layers trained from scratch want different step sizes: the encoder is
fine-tuned at ``train.lr`` (the paper's 1e-5 range), while the aggregator, the heads and the hour
and empty-slot embeddings start from random weights and learn at ``train.head_lr`` (1e-3 range).
Weight decay applies to weight matrices only; biases, LayerNorm scales and embedding tables are
not decayed (they have no scale to shrink towards).

The schedule multiplies every group's peak rate by the same factor: a linear warm-up over
``train.warmup_steps``, then ``constant``, ``linear`` or ``cosine`` decay reaching 0 after the
last planned step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

#: Parameter-group names, in the optimizer's group order.
GROUPS = ("encoder", "encoder_no_decay", "head", "head_no_decay")


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters that are not decayed: every 0/1-D tensor and every embedding table."""
    names = {n for n, p in model.named_parameters() if p.ndim < 2}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def freeze_encoder(model: nn.Module, trainable_layers: int) -> int:
    """Freeze all but the top ``trainable_layers`` transformer layers of ``model.encoder`` (-1: none).

    The embeddings are frozen whenever any layer is. Returns how many parameters were frozen.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or trainable_layers < 0:
        return 0
    n_layers = int(encoder.config.num_hidden_layers)
    first_trained = max(n_layers - trainable_layers, 0)
    frozen = 0
    for name, p in encoder.named_parameters():
        parts = name.split(".")
        index = int(parts[parts.index("layer") + 1]) if "layer" in parts else -1
        if index < first_trained:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def param_groups(model: nn.Module, lr: float, head_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """The four optimizer groups (encoder / from scratch × decayed / not), empty ones left out.

    Every group carries its ``name``; its ``lr`` is its peak rate (the schedule scales it).
    """
    no_decay = _no_decay_names(model)
    members: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith("encoder.") else "head"
        members[part + ("_no_decay" if name in no_decay else "")].append(p)
    groups = []
    for g in GROUPS:
        if members[g]:
            groups.append(
                {
                    "name": g,
                    "params": members[g],
                    "lr": lr if g.startswith("encoder") else head_lr,
                    "weight_decay": 0.0 if g.endswith("no_decay") else weight_decay,
                }
            )
    return groups


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The factor on the peak rates for optimizer step ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown train.schedule {schedule!r} (expected constant, linear or cosine)")


def build_optimizer(
    model: nn.Module, tc: Any, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam/AdamW over :func:`param_groups` and its :func:`lr_factor` scheduler (``tc``: TrainConfig)."""
    opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(param_groups(model, tc.lr, tc.head_lr, tc.weight_decay))
    warmup, schedule = tc.warmup_steps, tc.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps, schedule))
    return optimizer, scheduler
