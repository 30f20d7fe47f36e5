"""The 30 registered ranking models on a tiny feature map: shapes, fit, and the maths.

Parametrized over the registry: construction, forward shapes, a one-epoch fit through
FuxiCTR's ``BaseModel.fit`` on ``LongSeqDataLoader`` batches, invariance to masked left
padding, finite predictions for empty histories. Model-specific: SimSoft/TWIN with
top-k >= history length equal full target attention, and their GSU selections equal a
brute-force reference; TWIN's GSU copies; ETA/SDIM determinism; the compressed column of
``_CHIME`` / ``_LEARN`` variants and the ``_HIST`` / ``_STATS`` controls; gradient accumulation; bad input.
"""
from __future__ import annotations

import pytest
import torch

from fuxictr_chime.errors import ConfigError, DataError
from fuxictr_chime.models import MODEL_NAMES, get_model
from fuxictr_chime.models.retrieval import (hamming_distance_reference, target_attention,
                                            topk_gather_reference)

from .conftest import left_pad

COLUMN = {"_CHIME": "chime_hist", "_LEARN": "learn_emb", "_HIST": "hist_ctrl", "_STATS": "stats_ctrl"}
WIDTH = {"chime_hist": 64, "learn_emb": 64, "hist_ctrl": 64, "stats_ctrl": 2}


def build(name, make_feature_map, model_kwargs, seed=0, **overrides):
    feature_map = make_feature_map(chime=name.endswith("_CHIME"), learn=name.endswith("_LEARN"),
                                   hist=name.endswith("_HIST"), stats=name.endswith("_STATS"))
    torch.manual_seed(seed)
    return get_model(name)(feature_map, **{**model_kwargs, **overrides}), feature_map


def randomize(model, seed=1, std=0.3):
    """Larger weights than FuxiCTR's tiny embedding init, so every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.sync_copies()
    return model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_construct_and_forward_shapes(name, make_feature_map, make_batch, model_kwargs):
    model, fmap = build(name, make_feature_map, model_kwargs)
    assert type(model).__name__ == name and model.model_id == name
    batch = make_batch(fmap, batch_size=6, length=12)
    model.eval()
    out = model(batch)
    assert out["y_pred"].shape == (6, 1)
    assert ((out["y_pred"] > 0) & (out["y_pred"] < 1)).all()
    model.train()
    out = model(batch)
    if name.startswith("SimSoft"):
        assert out["y_aux"].shape == (6, 1)
    loss = model.compute_loss(out, model.get_labels(batch))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_epoch_fit_with_the_long_sequence_loader(name, make_feature_map, model_kwargs,
                                                     tiny_dataset):
    from fuxictr_chime.data.loader import LongSeqDataLoader

    model, fmap = build(name, make_feature_map, model_kwargs)
    params = tiny_dataset.params

    def loader(split, shuffle):
        return LongSeqDataLoader(fmap, params[f"{split}_data"], split=split, batch_size=32,
                                 shuffle=shuffle, user_info=params["user_info"],
                                 item_info=params["item_info"], max_len=20, prefetch=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(loader("train", True), epochs=1, validation_data=loader("valid", False))
    assert model._train_batches == 3
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("dnn" in k for k in changed) and any("item_table" in k for k in changed)
    logs = model.evaluate(loader("test", False))
    assert 0.0 <= logs["AUC"] <= 1.0 and logs["logloss"] > 0
    state = torch.load(model.checkpoint, map_location="cpu")
    assert set(state) == set(model.state_dict())  # item data buffers are not in the checkpoint


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_masked_left_padding_does_not_change_predictions(name, make_feature_map, make_batch,
                                                         model_kwargs):
    # trim_padding off: the model itself must ignore the masked columns
    model, fmap = build(name, make_feature_map, model_kwargs, hash_bits=3, trim_padding=False)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=8, length=12, lengths=[12, 9, 5, 3, 1, 0, 7, 12])
    with torch.no_grad():
        base = model(batch)["y_pred"]
        padded = model(left_pad(batch, 9))["y_pred"]
    assert torch.allclose(base, padded, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trim_padding_drops_all_padding_columns_and_keeps_predictions(name, make_feature_map, make_batch,
                                                                       model_kwargs):
    """trim_padding (default) vs off on the same weights: the same predictions in eval mode; in
    train mode the same predictions and gradients too, except DIN's Dice BatchNorm, whose batch
    statistics count the padding rows (as LongCTR's dynamic padding does)."""
    trimmed, fmap = build(name, make_feature_map, model_kwargs, hash_bits=3)
    full, _ = build(name, make_feature_map, model_kwargs, hash_bits=3, trim_padding=False)
    randomize(trimmed)
    full.load_state_dict(trimmed.state_dict())
    full.sync_copies()
    batch = left_pad(make_batch(fmap, batch_size=8, length=12, lengths=[6, 5, 5, 3, 1, 0, 6, 2]), 30)
    keep = 42 if trimmed.uses_long_sequence else trimmed.short_len  # DIN looks up its last short_len only
    assert trimmed.get_history(batch).length == min(keep, max(6, getattr(trimmed, "topk", 1)))
    assert full.get_history(batch).length == keep
    trimmed.eval(), full.eval()
    with torch.no_grad():
        torch.testing.assert_close(trimmed(batch)["y_pred"], full(batch)["y_pred"], rtol=1e-5, atol=1e-6)
    if type(trimmed.short_attention).__name__ == "FusedDINAttention":
        return
    trimmed.train(), full.train()
    grads = []
    for model in (trimmed, full):
        torch.manual_seed(3)  # the same dropout masks (MIRRN's filters) in both
        out = model(batch)
        model.compute_loss(out, model.get_labels(batch)).backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_empty_history_gives_finite_predictions_and_gradients(name, make_feature_map,
                                                              make_batch, model_kwargs):
    model, fmap = build(name, make_feature_map, model_kwargs)
    randomize(model)
    batch = make_batch(fmap, batch_size=4, length=10, lengths=[0, 0, 0, 0])
    out = model(batch)  # train mode
    model.compute_loss(out, model.get_labels(batch)).backward()
    assert torch.isfinite(out["y_pred"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(batch)["y_pred"]).all()
        mixed = make_batch(fmap, batch_size=4, length=10, lengths=[0, 10, 0, 4])
        assert torch.isfinite(model(mixed)["y_pred"]).all()


@pytest.mark.parametrize("name", ["DIN", "SimSoft", "ETA", "SDIM", "TWIN"])
def test_history_longer_than_max_len_keeps_the_most_recent(name, make_feature_map, make_batch,
                                                           model_kwargs):
    model, fmap = build(name, make_feature_map, model_kwargs, max_len=6)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=5, length=10, lengths=[10, 8, 6, 2, 0])
    cut = {**batch, "item_seq": batch["item_seq"][:, -7:], "seq_mask": batch["seq_mask"][:, -6:]}
    with torch.no_grad():
        assert torch.allclose(model(batch)["y_pred"], model(cut)["y_pred"], atol=1e-6)


# --------------------------------------------------------------------------- GSU / ESU maths
def _long_interest(model, batch):
    """(target, history, long-term interest (B, D)) of a model in eval mode."""
    history = model.get_history(batch)
    target = history.target
    context = model.embed_context(batch, target.shape[0])
    out = model.interest(target, history, context)["interest"]
    return target, history, out[:, model.item_dim:]


@pytest.mark.parametrize("name", ["SimSoft", "TWIN"])
def test_topk_at_least_history_length_equals_full_target_attention(name, make_feature_map,
                                                                   make_batch, model_kwargs):
    model, fmap = build(name, make_feature_map, model_kwargs, topk=50)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=12, lengths=[12, 11, 5, 1, 0, 8])
    with torch.no_grad():
        target, history, long = _long_interest(model, batch)
        full = model.esu(target, history.dense(), history.mask)
    assert torch.allclose(long, full, atol=1e-6)


def _reference_long_interest(model, name, target, history):
    """Brute force: score every behavior, sort per row in Python, attend over the top-k."""
    seq = history.dense()  # (B, L, D)
    if name == "SimSoft":
        scores = torch.einsum("ba,bla->bl", model.gsu_query(target), model.gsu_key(seq))
    elif name == "TWIN":  # mean over heads of the GSU's scaled logits
        esu = model.esu
        heads = esu.num_heads
        q = model.esu.W_q(target).view(len(target), heads, -1)  # live ESU = GSU right after sync
        k = model.esu.W_k(seq).view(*seq.shape[:2], heads, -1)
        scores = torch.einsum("bhd,blhd->bl", q, k) / heads
    else:  # ETA: Hamming distance of unpacked SimHash bits, ties to the most recent
        bits = (seq @ model.simhash.projection) > 0  # (B, L, m)
        tbits = ((target @ model.simhash.projection) > 0).unsqueeze(1)  # (B, 1, m)
        dist = hamming_distance_reference(bits, tbits).double()  # (B, L)
        scores = -dist + torch.arange(seq.shape[1]) * 1e-3  # recent = higher position
    rows, rows_mask = topk_gather_reference(scores, history.mask, model.topk, seq)
    esu = model.esu
    out = target_attention(esu.W_q(target), esu.W_k(rows), esu.W_v(rows), rows_mask,
                           esu.num_heads, esu.scale)
    return esu.W_o(out)


@pytest.mark.parametrize("name", ["SimSoft", "ETA", "TWIN"])
def test_gsu_selection_equals_brute_force_reference(name, make_feature_map, make_batch,
                                                    model_kwargs):
    model, fmap = build(name, make_feature_map, model_kwargs, topk=4, hash_bits=16)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=12, lengths=[12, 10, 7, 3, 0, 12], seed=4)
    with torch.no_grad():
        target, history, long = _long_interest(model, batch)
        ref = _reference_long_interest(model, name, target, history)
    assert torch.allclose(long, ref, atol=1e-5)


def test_sdim_interest_equals_dense_reference(make_feature_map, make_batch, model_kwargs):
    from fuxictr_chime.models.retrieval import bucket_codes, sdim_aggregate_reference

    model, fmap = build("SDIM", make_feature_map, model_kwargs, num_hashes=12, hash_bits=3)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=12, seed=2)
    with torch.no_grad():
        target, history, long = _long_interest(model, batch)
        seq = history.dense()
        codes = bucket_codes((seq @ model.simhash.projection) > 0, 3)  # (B, L, 4)
        tcodes = bucket_codes((target @ model.simhash.projection) > 0, 3)  # (B, 4)
        ref = sdim_aggregate_reference(seq, history.mask, codes, tcodes)
    assert torch.allclose(long, ref, atol=1e-6)
    assert (long.abs().sum(-1) > 0).any()


def test_twin_gsu_equals_esu_right_after_a_sync_and_not_before(make_feature_map, make_batch,
                                                              model_kwargs):
    model, fmap = build("TWIN", make_feature_map, model_kwargs, sync_every=3)
    pairs = (("gsu_query_weight", model.esu.W_q.weight), ("gsu_key_weight", model.esu.W_k.weight))

    def in_sync():
        return [torch.equal(getattr(model, buf), param) for buf, param in pairs]

    assert in_sync() == [True, True]  # copied at construction
    initial = model.gsu_query_weight.clone()
    model.train()
    history = []
    for step in range(1, 8):
        model.train_step(make_batch(fmap, batch_size=8, length=12, seed=step))
        history.append(all(in_sync()))
        if step < 3:
            assert torch.equal(model.gsu_query_weight, initial)
    assert history == [False, False, True, False, False, True, False]
    assert model._train_batches == 7
    assert "gsu_query_weight" in model.state_dict()  # saved with the checkpoint


@pytest.mark.parametrize("name", ["ETA", "SDIM", "ETA_CHIME", "SDIM_LEARN"])
def test_hashing_models_are_deterministic(name, make_feature_map, make_batch, model_kwargs):
    kwargs = {"hash_bits": 8} if name.startswith("ETA") else {}
    a, fmap = build(name, make_feature_map, model_kwargs, seed=5, **kwargs)
    b, _ = build(name, make_feature_map, model_kwargs, seed=5, **kwargs)
    a.eval(), b.eval()
    batch = make_batch(fmap, batch_size=8, length=12, seed=9)
    with torch.no_grad():
        first, second = a(batch)["y_pred"], a(batch)["y_pred"]
        other = b(batch)["y_pred"]
    assert torch.equal(first, second)
    assert torch.equal(first, other)
    assert torch.equal(a.simhash.projection, b.simhash.projection)
    c, _ = build(name, make_feature_map, model_kwargs, seed=5, hash_seed=123, **kwargs)
    assert not torch.equal(a.simhash.projection, c.simhash.projection)


# --------------------------------------------------------------------------- compressed columns
@pytest.mark.parametrize("name", ["DIN", "SimSoft", "ETA", "SDIM", "TWIN", "MIRRN"])
@pytest.mark.parametrize("suffix", ["_CHIME", "_LEARN", "_HIST", "_STATS"])
def test_variant_uses_its_column_and_plain_model_ignores_it(name, suffix, make_feature_map,
                                                            make_batch, model_kwargs):
    column = COLUMN[suffix]
    variant, fmap = build(name + suffix, make_feature_map, model_kwargs)
    plain = get_model(name)(fmap, **model_kwargs)  # same feature map, column active
    batch = make_batch(fmap, batch_size=6, length=12)
    changed = {**batch, column: batch[column] + torch.rand(batch[column].shape) * 3}
    for model, should_change in ((variant, True), (plain, False)):
        model.eval()
        with torch.no_grad():
            a, b = model(batch)["y_pred"], model(changed)["y_pred"]
        assert (not torch.allclose(a, b, atol=1e-6)) is should_change, type(model).__name__
    assert column in variant.context_features and column not in plain.context_features
    weight = f"embedding_layer.embedding_layer.feature_encoders.{column}.weight"
    assert variant.state_dict()[weight].shape == (4, WIDTH[column])  # FuxiCTR's Linear(pretrain_dim, 4)


@pytest.mark.parametrize("name", ["DIN", "SimSoft", "ETA", "SDIM", "TWIN", "MIRRN"])
def test_zero_column_is_the_plain_model_from_the_same_shared_weights(name, make_feature_map,
                                                                   make_batch, model_kwargs):
    """A column that is zero for every user (stats_column_scale.py --zero) embeds to zero
    (Linear without bias), so the variant computes the plain model's predictions, loss and
    gradients from the plain model's weights, and one training step keeps them equal; the
    column's projection and the MLP columns that read it get zero gradient. What a zero column
    changes in a run is the random draws and the Xavier fan-in of the layers that read it."""
    variant, fmap = build(name + "_STATS", make_feature_map, model_kwargs)
    plain = randomize(get_model(name)(fmap, **model_kwargs))
    encoders = variant.embedding_layer.embedding_layer.feature_encoders
    widths = [encoders[f].out_features if f in encoders else 4 for f in variant.context_features]
    at = variant.context_features.index("stats_ctrl")
    offset, width = sum(widths[:at]), widths[at]  # the column's block within the context

    def column(weight):  # its input columns in a layer whose input ends with the context
        start = weight.shape[1] - sum(widths) + offset
        return torch.arange(start, start + width)

    def others(weight):  # mask of the layer's other input columns
        keep = torch.ones(weight.shape[1], dtype=torch.bool)
        keep[column(weight)] = False
        return keep

    encoder = "embedding_layer.embedding_layer.feature_encoders.stats_ctrl.weight"
    state, wider = variant.state_dict(), []
    assert set(state) - set(plain.state_dict()) == {encoder}
    with torch.no_grad():
        for key, value in plain.state_dict().items():
            if state[key].shape != value.shape:  # the final MLP's (SimSoft: and aux head's) first layer
                assert state[key].shape[1] == value.shape[1] + width, key
                state[key][:, others(state[key])] = value
                wider.append(key)
            else:
                state[key].copy_(value)
    assert "dnn.mlp.0.weight" in wider
    batch = make_batch(fmap, batch_size=8, length=12)
    zero = {**batch, "stats_ctrl": torch.zeros_like(batch["stats_ctrl"])}
    for model, inputs in ((plain, batch), (variant, zero)):
        model.train()
        model.optimizer.zero_grad()
        torch.manual_seed(3)  # the same dropout masks (MIRRN's filters)
        model.compute_loss(model(inputs), model.get_labels(inputs)).backward()
    grads = {key: p.grad for key, p in variant.named_parameters()}
    for key, param in plain.named_parameters():
        grad = grads[key][:, others(grads[key])] if key in wider else grads[key]
        assert torch.allclose(grad, param.grad, rtol=1e-4, atol=1e-6), key  # float summation order
    assert torch.count_nonzero(grads[encoder]) == 0
    assert all(torch.count_nonzero(grads[key][:, column(grads[key])]) == 0 for key in wider)
    for model, inputs in ((plain, batch), (variant, zero)):
        torch.manual_seed(3)
        model.train_step(inputs)
    plain.eval(), variant.eval()
    with torch.no_grad():
        assert torch.allclose(variant(zero)["y_pred"], plain(batch)["y_pred"], atol=1e-5)
        assert not torch.allclose(variant(batch)["y_pred"], plain(batch)["y_pred"], atol=1e-5)


@pytest.mark.parametrize("name", ["DIN_HIST", "TWIN_CHIME"])
def test_column_interaction_feeds_the_mlp_the_column_times_the_projected_target(name, make_feature_map,
                                                                                 make_batch, model_kwargs):
    """column_interaction=True: MLP input = [target, interest, context, e_col * (W target)]; the
    extra block is exactly that product (zero when the column's embedding is zero), and the
    switch is a no-op for a plain model (no column)."""
    model, fmap = build(name, make_feature_map, model_kwargs, column_interaction=True)
    spec, _ = build(name, make_feature_map, model_kwargs)
    randomize(model)
    column = model.compressed_column
    start, end = model._column_slice
    assert end - start == 4 and model.column_target.weight.shape == (4, model.item_dim)
    assert model.dnn.mlp[0].in_features == spec.dnn.mlp[0].in_features + 4
    batch = make_batch(fmap, batch_size=6, length=12)
    seen = {}
    model.dnn.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    model.eval()
    with torch.no_grad():
        model(batch)
        target = model.get_history(batch).target  # (B, D)
        context = model.embed_context(batch, 6)  # (B, C)
        encoder = model.embedding_layer.embedding_layer.feature_encoders[column]
        e_col = encoder(batch[column].float())  # (B, 4): the column's own embedding
        assert torch.allclose(context[:, start:end], e_col, atol=1e-6)
        assert torch.allclose(seen["x"][:, -4:], e_col * model.column_target(target), atol=1e-6)
        assert torch.allclose(seen["x"][:, :-4], torch.cat([target, seen["x"][:, target.shape[1]:-4 - context.shape[1]],
                                                             context], dim=-1))
        model({**batch, column: torch.zeros_like(batch[column])})
        assert encoder.bias is None  # FuxiCTR's Linear(pretrain_dim, dim, bias=False): zeros embed to 0
        assert torch.equal(seen["x"][:, -4:], torch.zeros(6, 4))
    plain = get_model(name.split("_")[0])(fmap, **model_kwargs, column_interaction=True)
    assert plain._column_slice is None and not hasattr(plain, "column_target")


@pytest.mark.parametrize("name", ["DIN_CHIME", "TWIN_LEARN", "MIRRN_CHIME", "MIRRN_LEARN"])
def test_variant_without_its_column_is_a_config_error(name, make_feature_map, model_kwargs):
    with pytest.raises(ConfigError) as err:
        get_model(name)(make_feature_map(), **model_kwargs)
    column = COLUMN["_" + name.split("_")[1]]
    assert column in str(err.value) and "compress export" in str(err.value)


# --------------------------------------------------------------------------- training step
def test_gradient_accumulation_equals_one_step_on_the_mean_loss(make_feature_map, make_batch,
                                                               model_kwargs):
    settings = {"attention_hidden_activations": "ReLU", "accumulation_steps": 2}
    acc, fmap = build("TWIN", make_feature_map, model_kwargs, **settings)
    ref, _ = build("TWIN", make_feature_map, model_kwargs, **{**settings,
                                                              "accumulation_steps": 1})
    ref.load_state_dict(acc.state_dict())
    batches = [make_batch(fmap, batch_size=8, length=12, seed=s) for s in (1, 2)]
    acc.train(), ref.train()
    start = {k: v.clone() for k, v in acc.state_dict().items()}
    acc.train_step(batches[0])
    assert all(torch.equal(v, start[k]) for k, v in acc.state_dict().items())  # no step yet
    acc.train_step(batches[1])
    ref.optimizer.zero_grad()
    loss = sum(ref.compute_loss(ref(b), ref.get_labels(b)) for b in batches) / 2
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 10.0)
    ref.optimizer.step()
    for (k, a), b in zip(acc.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert not torch.equal(acc.state_dict()["dnn.mlp.0.weight"], start["dnn.mlp.0.weight"])


def test_simsoft_loss_adds_the_weighted_gsu_auxiliary_loss(make_feature_map, make_batch,
                                                           model_kwargs):
    model, fmap = build("SimSoft", make_feature_map, model_kwargs, aux_weight=0.5)
    batch = make_batch(fmap, batch_size=8, length=12)
    out = model(batch)
    y = model.get_labels(batch)
    bce = torch.nn.functional.binary_cross_entropy
    expected = bce(out["y_pred"], y) + 0.5 * bce(out["y_aux"], y)
    assert torch.allclose(model.add_loss(out, y), expected)
    model.add_loss(out, y).backward()
    assert model.gsu_key.weight.grad.abs().sum() > 0  # the GSU learns through the aux head
    model.eval()
    assert "y_aux" not in model(batch)


def test_batch_without_sequence_columns_is_a_data_error(make_feature_map, make_batch,
                                                        model_kwargs):
    model, fmap = build("DIN", make_feature_map, model_kwargs)
    batch = make_batch(fmap)
    with pytest.raises(DataError, match="item_seq"):
        model({k: v for k, v in batch.items() if k != "item_seq"})
    with pytest.raises(DataError, match="seq_mask"):
        model({**batch, "seq_mask": batch["seq_mask"][:, 1:]})
    with pytest.raises(DataError, match="hour"):
        model({k: v for k, v in batch.items() if k != "hour"})


def test_bad_settings_are_config_errors(make_feature_map, model_kwargs):
    fmap = make_feature_map()
    with pytest.raises(ConfigError, match="short_len"):
        get_model("DIN")(fmap, **{**model_kwargs, "short_len": 0})
    with pytest.raises(ConfigError, match="num_hashes"):
        get_model("SDIM")(fmap, **{**model_kwargs, "num_hashes": 0, "hash_bits": 3})
    with pytest.raises(ConfigError, match="hash_bits"):
        get_model("ETA")(fmap, **{**model_kwargs, "hash_bits": 65})
    with pytest.raises(ConfigError, match="model_root"):
        get_model("DIN")(fmap, **{k: v for k, v in model_kwargs.items() if k != "model_root"})
