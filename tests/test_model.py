"""The MicroParade model, the encoder loader and the efficient / naive pair encoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

import tests.helpers.train as h
from microparade.config import ModelConfig
from microparade.model import build_model, encode_batch, load_model_bundle, model_bundle
from microparade.model.batching import Examples, ShapeBuckets, SpecialTokens, bucket_ladder
from microparade.model.encoder import TINY_CONFIG, encoder_config, load_encoder
from microparade.model.network import MicroParade
from microparade.stages.chunks.contract import ChunksManifest

SPECIALS = SpecialTokens(cls=101, sep=102, pad=0)


#: One torch thread: CPU results are bit-reproducible at a fixed thread count.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _chunks(n_features: int, history_size: int, max_length: int = 64) -> ChunksManifest:
    return h.model_chunks(n_features, history_size, max_length)


def _examples(n: int, history_size: int = 6, seed: int = 0, empty_fraction: float = 0.7) -> Examples:
    table = h.chunk_table(n, history_size=history_size, n_features=5, seed=seed, empty_fraction=empty_fraction)
    return Examples.from_table(table, history_size=history_size, n_features=5, with_ids=True)


def _tiny_example() -> Examples:
    """Two examples, H = 2: cand [5, 6, 7] with history ([8, 9], empty); cand [4] with no history."""
    table = pa.table(
        {
            "row_id": pa.array([10, 11], pa.int64()),
            "tweet_id": pa.array(["A", "B"]),
            "b_user_id": pa.array(["U", "V"]),
            "a_follower_count": pa.array([5, 500], pa.int64()),
            "like": pa.array([1, 0], pa.int8()),
            "retweet": pa.array([0, 0], pa.int8()),
            "reply": pa.array([0, 1], pa.int8()),
            "quote": pa.array([0, 0], pa.int8()),
            "tokens": pa.array([[5, 6, 7], [4]], pa.list_(pa.int32())),
            "hist_tokens": pa.array([[[8, 9], []], [[], []]], pa.list_(pa.list_(pa.int32()))),
            "hist_mask": pa.array([[True, False], [False, False]], pa.list_(pa.bool_())),
            "hist_hour": pa.array([[13, 24], [24, 24]], pa.list_(pa.int8())),
            "features": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()), 2),
        }
    )
    return Examples.from_table(table, history_size=2, n_features=2, with_ids=True)


# ----------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------
def test_examples_from_table_take_and_concat():
    ex = _tiny_example()
    assert ex.row_id.tolist() == [10, 11]
    assert ex.cand_offsets.tolist() == [0, 3, 4] and ex.cand_values.tolist() == [5, 6, 7, 4]
    assert ex.hist_offsets.tolist() == [0, 2, 2, 2, 2] and ex.hist_values.tolist() == [8, 9]
    assert ex.labels.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    assert ex.features.tolist() == [[1, 2], [3, 4]]
    rev = ex.take(np.array([1, 0]))
    assert rev.row_id.tolist() == [11, 10]
    assert rev.cand_values.tolist() == [4, 5, 6, 7] and rev.cand_offsets.tolist() == [0, 1, 4]
    assert rev.hist_offsets.tolist() == [0, 0, 0, 2, 2] and rev.hist_values.tolist() == [8, 9]
    both = Examples.concat(ex.take(np.array([1])), ex.take(np.array([0])))
    for field in (
        "row_id",
        "cand_values",
        "cand_offsets",
        "hist_values",
        "hist_offsets",
        "hist_mask",
        "labels",
        "tweet_id",
    ):
        assert np.array_equal(getattr(both, field), getattr(rev, field)), field


def test_examples_reject_wrong_history_size():
    table = h.chunk_table(4, history_size=3, n_features=5)
    with pytest.raises(ValueError, match="history_size is 4"):
        Examples.from_table(table, history_size=4, n_features=5)


def test_efficient_sequences_are_hand_computed():
    ex = _tiny_example()
    mb = encode_batch(ex, specials=SPECIALS, max_length=16, encoding="efficient", token_budget=64)
    # Sequences: ex0 cand [CLS 5 6 7 SEP] (5), ex0 pair [CLS 5 6 7 SEP 8 9 SEP] (8), ex1 cand [CLS 4 SEP] (3).
    # All fall in the 8-token bucket: one call of 3 rows, in slot order.
    assert len(mb.groups) == 1
    g = mb.groups[0]
    assert g.input_ids.tolist() == [
        [101, 5, 6, 7, 102, 0, 0, 0],
        [101, 5, 6, 7, 102, 8, 9, 102],
        [101, 4, 102, 0, 0, 0, 0, 0],
    ]
    assert g.token_type_ids.tolist() == [[0] * 8, [0, 0, 0, 0, 0, 1, 1, 1], [0] * 8]
    assert g.attention_mask.tolist() == [[1] * 5 + [0] * 3, [1] * 8, [1] * 3 + [0] * 5]
    assert g.slots.tolist() == [0, 1, 3]  # flat (example * (1 + H) + slot)
    assert mb.slot_mask.tolist() == [[True, True, False], [True, False, False]]
    assert (mb.valid_tokens, mb.encoded_tokens) == (16, 24)


def test_naive_encodes_every_slot_at_full_length():
    ex = _tiny_example()
    mb = encode_batch(ex, specials=SPECIALS, max_length=16, encoding="naive")
    assert len(mb.groups) == 1
    g = mb.groups[0]
    assert tuple(g.input_ids.shape) == (6, 32)  # 2 examples x (1 + 2) slots, 2 * max_length
    assert g.input_ids[2, :6].tolist() == [101, 5, 6, 7, 102, 102]  # empty slot: [CLS] cand [SEP] [SEP]
    assert (mb.valid_tokens, mb.encoded_tokens) == (16, 6 * 32)


def test_buckets_token_budget_and_static_shapes():
    ex = _examples(40, history_size=10, seed=3)
    ladder = bucket_ladder(64)
    assert ladder[0] == 8 and ladder[-1] == 128 and len(ladder) == 16
    mb = encode_batch(ex, specials=SPECIALS, max_length=64, token_budget=256)
    n_seq = 40 + int(ex.hist_mask.sum())
    assert sum(g.n_real for g in mb.groups) == n_seq
    assert (
        sorted(torch.cat([g.slots for g in mb.groups]).tolist())
        == np.flatnonzero(np.concatenate([np.ones((40, 1), bool), ex.hist_mask], 1).reshape(-1)).tolist()
    )
    for g in mb.groups:
        rows, length = g.input_ids.shape
        assert rows * length <= 256 and length in ladder
        # each sequence is in the smallest rung that holds it
        lengths = g.attention_mask.sum(1)
        assert (lengths <= length).all() and (lengths > length - 8).all()
    assert mb.valid_tokens / mb.encoded_tokens > 0.9


def test_shape_buckets_give_one_call_of_a_fixed_grid():
    """Static shapes: every batch is one encoder call whose shape comes from a fixed grid, with
    filler rows pointing at the trash slot; over many batches only grid shapes appear."""
    buckets = ShapeBuckets.make(batch_size=40, history_size=10, max_length=64, n_rows=4, n_lengths=4, multiple=3)
    assert buckets.lengths == (32, 64, 96, 128)
    assert buckets.rows == (141, 240, 342, 441) and all(r % 3 == 0 for r in buckets.rows) and len(buckets) == 16
    seen = set()
    for seed in range(6):
        ex = _examples(40, history_size=10, seed=seed)
        mb = encode_batch(ex, specials=SPECIALS, max_length=64, buckets=buckets)
        assert len(mb.groups) == 1 and mb.shape is not None
        g = mb.groups[0]
        n_seq = 40 + int(ex.hist_mask.sum())
        rows, length = mb.shape
        assert tuple(g.input_ids.shape) == (rows, length) and rows in buckets.rows and length in buckets.lengths
        assert (
            g.n_real == n_seq
            and rows >= n_seq
            and (rows == buckets.rows[0] or buckets.rows[buckets.rows.index(rows) - 1] < n_seq)
        )
        assert g.slots.shape == (rows,) and g.slots[n_seq:].eq(40 * 11).all()  # filler -> trash slot
        assert g.attention_mask[n_seq:, :2].eq(1).all() and g.attention_mask[n_seq:, 2:].eq(0).all()
        assert mb.encoded_tokens == rows * length and mb.valid_tokens == int(g.attention_mask[:n_seq].sum())
        seen.add(mb.shape)
    assert seen <= {(r, n) for r in buckets.rows for n in buckets.lengths}
    with pytest.raises(ValueError, match="exceed the largest shape bucket"):
        buckets.pick(442, 10)


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", ["single", "multi"])
def test_efficient_equals_naive_logits(heads):
    ex = _examples(24, history_size=6, seed=1)
    cfg = ModelConfig(encoder="tiny", heads=heads, agg_heads=4)
    model = build_model(cfg, _chunks(5, 6), seed=0).eval()
    eff = encode_batch(ex, specials=SPECIALS, max_length=64, encoding="efficient", token_budget=512)
    naive = encode_batch(ex, specials=SPECIALS, max_length=64, encoding="naive")
    buckets = ShapeBuckets.make(batch_size=24, history_size=6, max_length=64, n_rows=3, n_lengths=2)
    static = encode_batch(ex, specials=SPECIALS, max_length=64, encoding="efficient", buckets=buckets)
    assert len(eff.groups) > 3 and naive.encoded_tokens > 3 * eff.encoded_tokens
    with torch.no_grad():
        a, b, c = model(eff), model(naive), model(static)
    assert a.shape == (24, 4)
    assert a.std(0).min() > 1e-3  # logits depend on the example
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_efficient_and_naive_gradients_agree():
    """Same loss and gradients (dropout off): training with either encoding is the same computation."""
    ex = _examples(12, history_size=4, seed=6)
    model = build_model(ModelConfig(encoder="tiny"), _chunks(5, 4), seed=0).eval()
    grads = []
    for encoding in ("efficient", "naive"):
        model.zero_grad()
        mb = encode_batch(ex, specials=SPECIALS, max_length=64, encoding=encoding, token_budget=256)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(mb), mb.labels)
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (l_eff, g_eff), (l_naive, g_naive) = grads
    assert l_eff == pytest.approx(l_naive, rel=1e-6)
    assert g_eff.keys() == g_naive.keys() and "encoder.embeddings.word_embeddings.weight" in g_eff
    for k in g_eff:
        torch.testing.assert_close(g_eff[k], g_naive[k], rtol=1e-4, atol=1e-6)
    # empty slots are masked: their learned vector gets no gradient
    assert g_eff["empty_slot"].abs().max() == 0


def test_multi_heads_are_separate_nets():
    model = build_model(ModelConfig(encoder="tiny", heads="multi"), _chunks(5, 6), seed=0)
    assert len(model.heads) == 4
    assert all(head.output[-1].out_features == 1 for head in model.heads)
    single = build_model(ModelConfig(encoder="tiny"), _chunks(5, 6), seed=0)
    assert len(single.heads) == 1 and single.heads[0].output[-1].out_features == 4
    # compress 64 -> 192, concat 5 features -> 197 -> hidden 192 -> out
    assert single.heads[0].compress[0].in_features == 64 and single.heads[0].output[0].in_features == 197


def test_masked_slots_do_not_matter():
    ex = _examples(8, history_size=4, seed=2)
    assert ex.hist_mask.any() and not ex.hist_mask.all()
    model = build_model(ModelConfig(encoder="tiny"), _chunks(5, 4), seed=0).eval()
    # Content in a masked slot (tokens + hour), encoded by the naive path, changes nothing ...
    table = h.chunk_table(8, history_size=4, n_features=5, seed=2).to_pydict()
    for i in range(8):
        for j in range(4):
            if not table["hist_mask"][i][j]:
                table["hist_tokens"][i][j] = [3000 + i, 3001 + j]
                table["hist_hour"][i][j] = 5
    noisy = Examples.from_table(
        pa.table(table, schema=h.chunk_table(1, history_size=4).schema), history_size=4, n_features=5
    )
    assert len(noisy.hist_values) > len(ex.hist_values)
    with torch.no_grad():
        base = model(encode_batch(ex, specials=SPECIALS, max_length=64))
        torch.testing.assert_close(
            base, model(encode_batch(noisy, specials=SPECIALS, max_length=64, encoding="naive")), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            base, model(encode_batch(noisy, specials=SPECIALS, max_length=64)), rtol=1e-5, atol=1e-5
        )
        # ... while the hour of a valid slot does.
        valid = ex.take(np.arange(8))
        valid.hist_hour = np.where(valid.hist_mask, (valid.hist_hour + 7) % 24, 24)
        assert not torch.allclose(base, model(encode_batch(valid, specials=SPECIALS, max_length=64)))


def test_use_time_false_ignores_hours():
    ex = _examples(8, history_size=4, seed=2)
    model = build_model(ModelConfig(encoder="tiny", use_time=False), _chunks(5, 4), seed=0).eval()
    assert not hasattr(model, "hour_embedding")
    shifted = ex.take(np.arange(8))
    shifted.hist_hour = np.where(shifted.hist_mask, (shifted.hist_hour + 7) % 24, 24)
    with torch.no_grad():
        a = model(encode_batch(ex, specials=SPECIALS, max_length=64))
        b = model(encode_batch(shifted, specials=SPECIALS, max_length=64))
    assert torch.equal(a, b)


def test_use_history_false_encodes_only_the_candidates():
    ex = _examples(8, history_size=4, seed=2)
    assert ex.hist_mask.any()
    mb = encode_batch(ex, specials=SPECIALS, max_length=64, use_history=False)
    # One sequence per example ([CLS] cand [SEP]) and no history slot left for the aggregator.
    assert sum(g.input_ids.shape[0] for g in mb.groups) == 8
    assert mb.slot_mask[:, 0].all() and not mb.slot_mask[:, 1:].any()
    assert mb.valid_tokens == int(np.diff(ex.cand_offsets).clip(max=62).sum() + 2 * 8)
    # The history's content then changes nothing: the same as examples without any history.
    bare = ex.take(np.arange(8))
    bare.hist_mask = np.zeros_like(bare.hist_mask)
    model = build_model(ModelConfig(encoder="tiny", use_history=False), _chunks(5, 4), seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(mb), model(encode_batch(bare, specials=SPECIALS, max_length=64)), rtol=1e-6, atol=1e-6
        )


def test_features_only_model_has_no_encoder():
    ex = _examples(8, history_size=4)
    model = build_model(ModelConfig(encoder="tiny", use_text=False), _chunks(5, 4), seed=0).eval()
    assert not hasattr(model, "encoder") and not hasattr(model, "aggregator")
    mb = encode_batch(ex, specials=SPECIALS, max_length=64, use_text=False)
    assert mb.groups == [] and mb.encoded_tokens == 0
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == (5 * 192 + 192) + 2 * 192 + (192 * 4 + 4)  # Linear + LayerNorm + Linear
    with torch.no_grad():
        out = model(mb)
    assert out.shape == (8, 4)


def test_feature_normalisation_buffers():
    model = build_model(ModelConfig(encoder="tiny", use_text=False, dropout=0.0), _chunks(2, 2), seed=0).eval()
    assert model.feature_mean.tolist() == [0.5, 0.5] and model.feature_std.tolist() == [2.0, 2.0]
    assert "feature_mean" in model.state_dict()
    ex = _tiny_example()
    mb = encode_batch(ex, specials=SPECIALS, max_length=16, use_text=False)
    head = model.heads[0]
    with torch.no_grad():
        expected = head.output(torch.tensor([[0.25, 0.75], [1.25, 1.75]]))  # (x - 0.5) / 2
        torch.testing.assert_close(model(mb), expected)


def test_agg_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="agg_heads=6 must divide"):
        build_model(ModelConfig(encoder="tiny", agg_heads=6), _chunks(5, 4), seed=0)


def test_model_bundle_round_trip():
    ex = _examples(12, history_size=4, seed=5)
    cfg = ModelConfig(encoder="tiny", heads="multi")
    model = build_model(cfg, _chunks(5, 4), seed=7).eval()
    buf = io.BytesIO()
    torch.save(model_bundle(model, cfg, _chunks(5, 4)), buf)
    bundle = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert bundle["special_tokens"]["cls"] == 101 and bundle["history_size"] == 4
    # The model.pt format: these keys, in this order, with plain Python values.
    assert list(bundle) == [
        "format",
        "state_dict",
        "model_config",
        "encoder_config",
        "feature_names",
        "normalization",
        "history_size",
        "max_length",
        "special_tokens",
        "encoder_tokenizer",
    ]
    assert bundle["feature_names"] == [f"f{i}" for i in range(5)]
    assert bundle["normalization"] == {"mean": [0.5] * 5, "std": [2.0] * 5}
    assert bundle["special_tokens"] == h.SPECIAL_TOKENS and bundle["encoder_tokenizer"] == "minilm"
    assert bundle["max_length"] == 64
    again = load_model_bundle(bundle)
    assert not again.training
    mb = encode_batch(ex, specials=SPECIALS, max_length=64)
    with torch.no_grad():
        assert torch.equal(model(mb), again(mb))


# ----------------------------------------------------------------------------------------------
# encoders
# ----------------------------------------------------------------------------------------------
def test_tiny_encoder_is_seeded():
    a, b, c = load_encoder("tiny", seed=1), load_encoder("tiny", seed=1), load_encoder("tiny", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embeddings.word_embeddings.weight"], sc["embeddings.word_embeddings.weight"])
    assert a.config.hidden_size == 64 and a.config.vocab_size == 30522 and a.config.num_hidden_layers == 2
    assert encoder_config(a)["hidden_size"] == TINY_CONFIG["hidden_size"]


def test_local_directory_encoder(tmp_path):
    from safetensors.torch import save_file

    src = load_encoder("tiny", seed=3)
    cfg = dict(encoder_config(src))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # a task-model checkpoint: weights prefixed with "bert."
    save_file({f"bert.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = load_encoder(str(tmp_path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in src.state_dict().items())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        load_encoder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither 'minilm', 'tiny'"):
        load_encoder(str(tmp_path / "nope"))


def test_minilm_encoder_real_weights():
    from safetensors.torch import load_file

    from microparade.assets import minilm_path

    enc = load_encoder("minilm")
    assert enc.config.hidden_size == 384 and enc.config.num_hidden_layers == 6
    disk = load_file(str(minilm_path() / "model.safetensors"))
    own = enc.state_dict()
    assert torch.equal(own["encoder.layer.5.output.dense.weight"], disk["encoder.layer.5.output.dense.weight"])
    assert not hasattr(enc, "pooler") or enc.pooler is None
    # The model as a whole with MiniLM: efficient == naive too
    ex = _examples(4, history_size=4, seed=9)
    model = MicroParade.from_config(
        ModelConfig(), encoder=enc, n_features=5, feature_mean=[0.0] * 5, feature_std=[1.0] * 5
    ).eval()
    with torch.no_grad():
        a = model(encode_batch(ex, specials=SPECIALS, max_length=64))
        b = model(encode_batch(ex, specials=SPECIALS, max_length=64, encoding="naive"))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_efficient_equals_naive_on_cuda():
    ex = _examples(16, history_size=6, seed=4)
    model = build_model(ModelConfig(encoder="tiny"), _chunks(5, 6), seed=0).eval().cuda()
    with torch.no_grad():
        a = model(encode_batch(ex, specials=SPECIALS, max_length=64).to("cuda"))
        b = model(encode_batch(ex, specials=SPECIALS, max_length=64, encoding="naive").to("cuda"))
        cpu = build_model(ModelConfig(encoder="tiny"), _chunks(5, 6), seed=0).eval()
        c = cpu(encode_batch(ex, specials=SPECIALS, max_length=64))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.cpu(), c, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("heads", ["single", "multi"])
def test_prior_initialised_output_gives_the_prior_entropy(heads):
    """Output biases at the positive rates' log-odds: the initial loss is the labels' entropy (±1%)."""
    rates = np.array([0.4, 0.09, 0.03, 0.007])
    model = build_model(ModelConfig(encoder="tiny", heads=heads), _chunks(5, 6), seed=3)
    model.init_output(tuple(np.log(rates / (1 - rates))))
    ex = _examples(400, seed=4)
    mb = encode_batch(ex, specials=SPECIALS, max_length=64)
    n = len(ex)
    labels = torch.zeros(n, 4)
    for j, r in enumerate(rates):  # exactly the rates: the entropy is the best constant loss
        labels[: round(r * n), j] = 1.0
    model.train()  # dropout on, as in the first training step
    with torch.no_grad():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(mb), labels, reduction="none").mean(0)
    realised = labels.mean(0).numpy()
    entropy = -realised * np.log(realised) - (1 - realised) * np.log(1 - realised)
    assert np.allclose(loss.numpy(), entropy, rtol=0.01), (loss, entropy)
    # without it the heads start near p = 0.5: about log 2 per engagement
    fresh = build_model(ModelConfig(encoder="tiny", heads=heads), _chunks(5, 6), seed=3).train()
    with torch.no_grad():
        start = torch.nn.functional.binary_cross_entropy_with_logits(fresh(mb), labels, reduction="none").mean(0)
    assert start.mean().item() > 2 * entropy.mean()


def test_feature_transform_logs_heavy_tails_only():
    model = build_model(ModelConfig(encoder="tiny", use_text=False), _chunks(4, 2), seed=0)
    rng = np.random.default_rng(0)
    n = 20000
    counts = np.floor(rng.lognormal(2.0, 1.5, n))  # heavy-tailed count
    flag = (rng.random(n) < 0.02).astype(float)  # rare flag: skewed but two-valued
    normal = rng.normal(3.0, 2.0, n)
    lag = np.where(rng.random(n) < 0.9, 0.0, rng.standard_cauchy(n) * 100)  # mostly 0, wild tails
    sample = torch.tensor(np.stack([counts, flag, normal, lag], axis=1), dtype=torch.float32)
    assert model.fit_feature_transform(sample) == [0, 3]
    out = model.normalise_features(sample)
    assert out.abs().max() <= 8.0
    assert torch.allclose(out[:, 2].mean(), torch.tensor(0.0), atol=1e-3)
    assert torch.allclose(out[:, 2].std(), torch.tensor(1.0), atol=1e-3)
    # log-scaled counts are far less skewed than the raw ones
    logged = np.log1p(counts)
    assert abs(((logged - logged.mean()) ** 3).mean() / logged.std() ** 3) < 1
    # saved with the weights: a rebuilt model applies the same transform
    chunks = _chunks(4, 2)
    bundle = model_bundle(model, ModelConfig(encoder="tiny", use_text=False), chunks)
    assert torch.equal(load_model_bundle(bundle).normalise_features(sample), out)
