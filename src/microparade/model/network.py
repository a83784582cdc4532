"""The MicroParade network (REFERENCE §3).

Per example:

1. the encoder's ``[CLS]`` embedding of ``[CLS] candidate [SEP]`` (slot 0) and of
   ``[CLS] candidate [SEP] history_i [SEP]`` for every valid history slot (slots 1..H); empty slots
   hold the ``empty_slot`` parameter instead of an encoder output. The aggregator masks empty slots,
   so that vector never reaches the output (its gradient is zero: only weight decay changes it);
   it only gives empty slots one defined value whichever encoding built the batch, which is what
   makes the efficient and naive encodings hand the aggregator identical inputs;
2. a learned hour-of-day embedding (24 hours + unknown) of the history engagement added to each
   history slot (``model.use_time``);
3. a transformer encoder over the 1 + H slots with a key-padding mask (``agg_layers`` /
   ``agg_heads`` / ``dropout``); the output at the candidate position
4. → compress FF to ``compress_dim`` → concatenated with the normalised features → output FF →
   4 logits (``heads: single``), or one compress + output net per engagement, one logit each
   (``heads: multi``). Every FF layer is Linear → LayerNorm → ReLU → Dropout.

``use_text: false`` is the features-only ablation: no encoder, no aggregator, only the output FF on
the normalised features. Feature normalisation lives in buffers, so a saved ``state_dict`` carries
it: the features stage's training-split mean/std, or with ``model.feature_transform: log`` a
transform fitted by the train stage on a training sample (:meth:`MicroParade.fit_feature_transform`:
heavy-tailed features log-scaled, then standardised and clipped).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..recsys_format import TARGETS
from .batching import ModelBatch

N_TARGETS = len(TARGETS)
#: Hour-of-day ids: 0..23, and 24 for unknown (padding slots).
N_HOURS = 25
#: Features with a training-sample skewness above this (in absolute value) are log-scaled.
FEATURE_SKEW_LIMIT = 3.0
#: Standardised features are clipped to ± this many standard deviations.
FEATURE_CLIP = 8.0


def _ff(in_dim: int, out_dim: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU(), nn.Dropout(dropout)]


def _attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The encoder's attention mask: the 2-D 0/1 mask, or on XLA the 4-D additive mask.

    Given a 2-D mask, transformers tests whether it is all ones (to skip it): on a lazy XLA tensor
    that runs a small graph and waits for it mid-forward, once per step and per shape. A 4-D mask
    is used as given.
    """
    if mask.device.type != "xla":
        return mask
    keep = mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class Head(nn.Module):
    """compress FF (text models only) → concat normalised features → FF → ``n_out`` logits."""

    def __init__(
        self, text_dim: int | None, n_features: int, compress_dim: int, hidden_dim: int, n_out: int, dropout: float
    ):
        super().__init__()
        self.compress = nn.Sequential(*_ff(text_dim, compress_dim, dropout)) if text_dim else None
        in_dim = (compress_dim if text_dim else 0) + n_features
        if in_dim == 0:
            raise ValueError("the features-only model needs at least one feature")
        self.output = nn.Sequential(*_ff(in_dim, hidden_dim, dropout), nn.Linear(hidden_dim, n_out))

    def forward(self, text: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        x = features if self.compress is None else torch.cat([self.compress(text), features], dim=-1)
        return self.output(x)


class MicroParade(nn.Module):
    """The MicroParade model; ``forward(batch) -> (B, 4)`` logits in ``TARGETS`` order."""

    #: Feature normalisation, registered as buffers (saved with the weights).
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    feature_log: torch.Tensor

    def __init__(
        self,
        *,
        encoder: nn.Module | None,
        n_features: int,
        feature_mean: torch.Tensor | list[float],
        feature_std: torch.Tensor | list[float],
        use_time: bool = True,
        heads: str = "single",
        agg_layers: int = 2,
        agg_heads: int = 4,
        dropout: float = 0.35,
        compress_dim: int = 192,
        hidden_dim: int = 192,
    ):
        super().__init__()
        mean = torch.as_tensor(feature_mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(feature_std, dtype=torch.float32).reshape(-1)
        if mean.numel() != n_features or std.numel() != n_features:
            raise ValueError(
                f"feature normalisation has {mean.numel()} means / {std.numel()} stds for {n_features} features"
            )
        if (std <= 0).any():
            raise ValueError("feature normalisation stds must be positive")
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_std", std)
        #: Features fed through ``sign(x) log1p(|x|)`` before standardising (heavy-tailed ones).
        self.register_buffer("feature_log", torch.zeros(n_features, dtype=torch.bool))
        self.use_text = encoder is not None
        self.use_time = use_time and self.use_text
        self.multi = heads == "multi"
        if heads not in ("single", "multi"):
            raise ValueError(f"model.heads must be 'single' or 'multi', got {heads!r}")
        text_dim = None
        if encoder is not None:
            self.encoder = encoder
            text_dim = int(cast(Any, encoder).config.hidden_size)
            if text_dim % agg_heads:
                raise ValueError(f"model.agg_heads={agg_heads} must divide the encoder's hidden size {text_dim}")
            self.pass_token_types = int(getattr(encoder.config, "type_vocab_size", 1)) >= 2
            self.empty_slot = nn.Parameter(torch.zeros(text_dim).normal_(0.0, 0.02))
            if self.use_time:
                self.hour_embedding = nn.Embedding(N_HOURS, text_dim)
            layer = nn.TransformerEncoderLayer(
                d_model=text_dim,
                nhead=agg_heads,
                dim_feedforward=4 * text_dim,
                dropout=dropout,
                batch_first=True,
            )
            # No nested-tensor fast path: the same arithmetic in train and eval, whatever the mask.
            self.aggregator = nn.TransformerEncoder(layer, agg_layers, enable_nested_tensor=False)
        n_heads, n_out = (N_TARGETS, 1) if self.multi else (1, N_TARGETS)
        self.heads = nn.ModuleList(
            Head(text_dim, n_features, compress_dim, hidden_dim, n_out, dropout) for _ in range(n_heads)
        )

    @classmethod
    def from_config(
        cls,
        model_cfg: Any,
        *,
        encoder: nn.Module | None,
        n_features: int,
        feature_mean: Any,
        feature_std: Any,
    ) -> MicroParade:
        """Build from a :class:`microparade.config.ModelConfig` (or its dict form)."""
        c = model_cfg if isinstance(model_cfg, dict) else model_cfg.model_dump()
        return cls(
            encoder=encoder if c["use_text"] else None,
            n_features=n_features,
            feature_mean=feature_mean,
            feature_std=feature_std,
            use_time=c["use_time"],
            heads=c["heads"],
            agg_layers=c["agg_layers"],
            agg_heads=c["agg_heads"],
            dropout=c["dropout"],
            compress_dim=c["compress_dim"],
            hidden_dim=c["hidden_dim"],
        )

    def fit_feature_transform(self, sample: torch.Tensor, skew_limit: float = FEATURE_SKEW_LIMIT) -> list[int]:
        """Fit the feature transform on a sample of training rows ``(N, F)``; the log-scaled indices.

        A feature with more than two values whose sample skewness exceeds ``skew_limit`` in absolute
        value (counts, count differences) is log-scaled; every feature is then standardised by the sample's mean and
        std of the transformed values. Standardised values are clipped to ``±FEATURE_CLIP``.
        """
        x = sample.to(torch.float64)
        centred = x - x.mean(0)
        std = centred.pow(2).mean(0).sqrt()
        skew = centred.pow(3).mean(0) / std.clamp_min(1e-12).pow(3)
        two_valued = ((x == x.min(0).values) | (x == x.max(0).values)).all(0)  # flags: scaling them is moot
        log = (skew.abs() > skew_limit) & ~two_valued
        x = torch.where(log, x.sign() * x.abs().log1p(), x)
        with torch.no_grad():
            self.feature_log.copy_(log)
            self.feature_mean.copy_(x.mean(0).float())
            self.feature_std.copy_(x.std(0, unbiased=False).clamp_min(1e-6).float())
        return [int(i) for i in torch.nonzero(log).flatten()]

    def normalise_features(self, features: torch.Tensor) -> torch.Tensor:
        """The network's view of the features: log-scaled where fitted, standardised, clipped."""
        x = torch.where(self.feature_log, features.sign() * features.abs().log1p(), features)
        return ((x - self.feature_mean) / self.feature_std).clamp(-FEATURE_CLIP, FEATURE_CLIP)

    def init_output(self, log_odds: list[float] | tuple[float, ...], weight_scale: float = 0.1) -> None:
        """Start every engagement's logit at ``log_odds`` (its training positive rate's log-odds).

        The output layers' biases take the log-odds and their weights are scaled by
        ``weight_scale``, so the initial predictions are the positive rates up to small noise and
        the initial loss is the prior's entropy: no early steps are spent learning the rates.
        """
        if len(log_odds) != N_TARGETS:
            raise ValueError(f"init_output needs {N_TARGETS} log-odds, got {len(log_odds)}")
        prior = torch.tensor(log_odds, dtype=torch.float32)
        with torch.no_grad():
            for i, head in enumerate(self.heads):
                last = cast(nn.Linear, cast(nn.Sequential, head.output)[-1])
                last.weight.mul_(weight_scale)
                last.bias.copy_(prior[i : i + 1] if self.multi else prior)

    def slot_embeddings(self, batch: ModelBatch) -> torch.Tensor:
        """``(B, 1 + H, D)``: encoder [CLS] vectors scattered to their slots, empty slots learned.

        Every encoder row is scattered, filler rows of static-shape batches into one extra trash
        slot ``B * (1 + H)`` that is then dropped: no shape depends on how many rows are real.
        """
        b, s = batch.slot_mask.shape
        d = self.empty_slot.shape[0]
        flat = self.empty_slot.expand(b * s + 1, d)
        outs, slots = [], []
        # One word-embedding lookup for all calls: its backward materialises a dense
        # (vocab x hidden) gradient, which per call would cost more than a small call itself.
        ids = [g.input_ids.reshape(-1) for g in batch.groups]
        encoder: Any = self.encoder
        words: Any = encoder.get_input_embeddings()(torch.cat(ids)) if ids else None
        start = 0
        for g in batch.groups:
            n = g.input_ids.numel()
            hidden = encoder(
                inputs_embeds=words[start : start + n].view(*g.input_ids.shape, -1),
                attention_mask=_attention_mask(g.attention_mask, words.dtype),
                token_type_ids=g.token_type_ids if self.pass_token_types else None,
            ).last_hidden_state
            start += n
            outs.append(hidden[:, 0])
            slots.append(g.slots)
        if outs:
            flat = flat.index_copy(0, torch.cat(slots), torch.cat(outs).to(flat.dtype))
        emb = flat[: b * s].reshape(b, s, d)
        # Naive encoding also encodes empty slots; both encodings hand the aggregator the same input.
        return torch.where(batch.slot_mask.unsqueeze(-1), emb, self.empty_slot)

    def forward(self, batch: ModelBatch) -> torch.Tensor:
        features = self.normalise_features(batch.features)
        text = None
        if self.use_text:
            emb = self.slot_embeddings(batch)
            if self.use_time:
                hist = emb[:, 1:] + self.hour_embedding(batch.hist_hour)
                emb = torch.cat([emb[:, :1], hist], dim=1)
            agg = self.aggregator(emb, src_key_padding_mask=~batch.slot_mask)
            text = agg[:, 0]
        logits = [head(text, features) for head in self.heads]
        return torch.cat(logits, dim=-1)
