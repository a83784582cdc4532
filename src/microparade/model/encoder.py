"""The text encoder: a Hugging Face BERT-family model loaded from local files only.

``model.encoder`` names it:

- ``minilm`` — the offline all-MiniLM-L6-v2 weights (:func:`microparade.resources.minilm_path`);
- ``tiny`` — a small randomly initialised BERT with MiniLM's vocabulary (30522 ids, so the same
  tokenised chunks work) for fast tests and CPU experiments; its initial weights depend only on the
  seed;
- anything else — a local directory with ``config.json`` and ``model.safetensors`` (or
  ``pytorch_model.bin``).

Weights are read directly (safetensors / torch) rather than through ``from_pretrained``, which keeps
loading quiet, offline and independent of the hub cache, and lets a checkpoint rebuild the exact
architecture from the stored config (:func:`encoder_from_config`) without the original files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..assets import minilm_path

#: Architecture of the ``tiny`` encoder (vocabulary of MiniLM, so the same token ids apply).
TINY_CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    # No dropout on attention probabilities: on CPU their Bernoulli masks cost more than the
    # tiny model's matrix products. Hidden-state dropout stays at BERT's 0.1.
    "attention_probs_dropout_prob": 0.0,
}

#: Weight-name prefixes of task models that wrap the bare encoder (``BertForX.bert.*``).
_WRAPPER_PREFIXES = ("bert.", "roberta.", "model.", "encoder_model.")


def encoder_from_config(config: dict[str, Any]) -> nn.Module:
    """A randomly initialised bare encoder (no pooler) of the architecture in ``config``."""
    import inspect

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    cfg = dict(config)
    hf_config = AutoConfig.for_model(cfg.pop("model_type", "bert"), **cfg)
    model_cls: Any = MODEL_MAPPING[type(hf_config)]
    # The pooler is never used (the model takes the [CLS] hidden state); leave it out when possible.
    params = inspect.signature(model_cls).parameters
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in params else {}
    return model_cls(hf_config, **kwargs)


def encoder_config(encoder: nn.Module) -> dict[str, Any]:
    """The JSON-able architecture of an encoder (what :func:`encoder_from_config` takes back)."""
    keys = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "position_embedding_type",
    )
    d = cast(Any, encoder).config.to_dict()
    return {k: d[k] for k in keys if k in d}


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = directory / "pytorch_model.bin"
    if pt.exists():
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"encoder directory {directory} has neither model.safetensors nor pytorch_model.bin")


def _load_pretrained(directory: Path) -> nn.Module:
    import json

    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"encoder directory {directory} has no config.json")
    config = json.loads(cfg_path.read_text())
    keep = {
        k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")
    }
    model = encoder_from_config(keep)
    weights = _read_weights(directory)
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        key = name
        if key not in own:
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix) and key[len(prefix) :] in own:
                    key = key[len(prefix) :]
                    break
        if key in own:
            state[key] = tensor
    # Buffers such as position_ids are rebuilt by the model; every parameter must come from disk.
    missing = [k for k, _ in model.named_parameters() if k not in state]
    if missing:
        raise ValueError(
            f"encoder weights in {directory} do not match its config.json: {len(missing)} parameter(s) "
            f"missing, e.g. {missing[:3]}"
        )
    model.load_state_dict(state, strict=False)
    return model


def load_encoder(spec: str, seed: int = 0) -> nn.Module:
    """The encoder named by ``model.encoder`` (see the module docstring), in train mode."""
    if spec == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = encoder_from_config(TINY_CONFIG)
    elif spec == "minilm":
        model = _load_pretrained(minilm_path())
    else:
        directory = Path(spec).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(
                f"model.encoder {spec!r} is neither 'minilm', 'tiny' nor a local directory with a Hugging Face encoder"
            )
        model = _load_pretrained(directory)
    model.train()
    return model
