"""PanGuForCausalLM: parameter counts, KV cache, document reset, save/load, recompute."""
import numpy as np
import paddle
import pytest

from paddle_pangu.config import PRESETS, PanGuConfig, get_preset
from paddle_pangu.model import PanGuForCausalLM, build_position_ids_and_mask


def _count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_matches_closed_form(name):
    config = get_preset(name)
    with paddle.LazyGuard():  # shapes only, nothing allocated (200B would not fit)
        model = PanGuForCausalLM(config)
    assert _count(model) == config.num_parameters()


def test_parameter_count_closed_form_by_hand():
    # REF table: 2.6B = H 2560, 32 layers incl. query layer, FFN 10240, vocab 40000, seq 1024
    h, f, layers, v, s = 2560, 10240, 32, 40000, 1024
    block = 4 * h + 4 * h * h + 4 * h + 2 * h * f + f + h
    expected = v * h + 2 * s * h + layers * block + 2 * h
    assert get_preset("2.6b").num_parameters() == expected
    assert abs(expected - 2.6e9) / 2.6e9 < 0.02
    assert abs(get_preset("13b").num_parameters() - 13e9) / 13e9 < 0.03
    assert abs(get_preset("200b").num_parameters() - 200e9) / 200e9 < 0.05


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_attention_heads"):
        PanGuConfig(hidden_size=65, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        PanGuConfig(hidden_act="relu")
    with pytest.raises(KeyError, match="unknown PanGu preset"):
        get_preset("7b")


def _decode_incrementally(model, ids, prompt_len):
    logits, cache = model(ids[:, :prompt_len], use_cache=True)
    steps = [logits]
    for t in range(prompt_len, ids.shape[1]):
        step, cache = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        steps.append(step)
    return paddle.concat(steps, axis=1), cache


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu", "fast_gelu"])
def test_kv_cache_equals_full_forward(act):
    config = get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, eod_reset=False,
                        hidden_act=act)
    paddle.seed(7)
    model = PanGuForCausalLM(config)
    model.eval()
    ids = paddle.randint(10, 40000, [2, 16])
    full = model(ids)
    inc, cache = _decode_incrementally(model, ids, prompt_len=5)
    np.testing.assert_allclose(inc.numpy(), full.numpy(), rtol=1e-5, atol=1e-5)
    assert len(cache) == config.num_layers  # one (k, v) per block plus the query layer
    assert cache[-1][0].shape == [2, config.num_attention_heads, 16, config.head_dim]


def test_query_layer_changes_output(tiny_model):
    """The query layer's own table really feeds the query (REF "query layer")."""
    ids = paddle.randint(10, 40000, [1, 8])
    before = tiny_model(ids).numpy()
    table = tiny_model.pangu.query_layer.top_query_embedding.weight
    table.set_value(np.random.RandomState(0).normal(0, 3.0, table.shape).astype("float32"))
    after = tiny_model(ids).numpy()
    np.testing.assert_allclose(after[:, 0], before[:, 0], rtol=1e-5, atol=1e-5)  # one key: softmax is 1 anyway
    assert np.abs(after[:, 1:] - before[:, 1:]).max() > 1e-4


def test_position_ids_restart_after_separator():
    ids = paddle.to_tensor([[11, 12, 9, 13, 14, 15, 9, 16]])
    pos, mask = build_position_ids_and_mask(ids, eod_token_id=9, eod_reset=True)
    assert pos.numpy().tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    m = mask.numpy()[0, 0]
    assert m[3, :3].sum() == 0 and m[3, 3]  # first token of doc 2 sees only itself
    assert m[2, :3].all() and not m[2, 3:].any()  # the separator belongs to the document it ends
    assert m[7, 7] and m[7, :7].sum() == 0
    pos_off, mask_off = build_position_ids_and_mask(ids, eod_token_id=9, eod_reset=False)
    assert pos_off.numpy().tolist() == [list(range(8))]
    assert mask_off.numpy()[0, 0].sum() == 36  # plain causal


def test_tokens_after_separator_cannot_see_before(tiny_model):
    """Changing document 1 must not change the logits of document 2 (eod_reset on)."""
    doc2 = [21, 22, 23, 24]
    a = paddle.to_tensor([[100, 101, 102, 9] + doc2])
    b = paddle.to_tensor([[300, 301, 302, 9] + doc2])
    la, lb = tiny_model(a).numpy(), tiny_model(b).numpy()
    np.testing.assert_allclose(la[:, 4:], lb[:, 4:], rtol=1e-5, atol=1e-5)
    assert np.abs(la[:, :3] - lb[:, :3]).max() > 1e-3
    # and a model without reset does see across the boundary
    tiny_model.config.eod_reset = False
    assert np.abs(tiny_model(a).numpy()[:, 4:] - tiny_model(b).numpy()[:, 4:]).max() > 1e-4


def test_save_load_round_trip_gives_identical_logits(tiny_model, tmp_path):
    ids = paddle.randint(10, 40000, [2, 10])
    expected = tiny_model(ids).numpy()
    tiny_model.save_pretrained(str(tmp_path), safe_serialization=True)
    assert (tmp_path / "config.json").exists()
    assert any(p.suffix == ".safetensors" for p in tmp_path.iterdir())
    loaded = PanGuForCausalLM.from_pretrained(str(tmp_path))
    loaded.eval()
    assert loaded.config.num_layers == tiny_model.config.num_layers
    np.testing.assert_array_equal(loaded(ids).numpy(), expected)


def test_loss_masks_padding_and_loss_mask(tiny_model):
    ids = paddle.randint(10, 40000, [2, 8])
    labels = paddle.randint(10, 40000, [2, 8])
    loss, logits = tiny_model(ids, labels=labels)
    z = logits.astype("float32").numpy()
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, labels.numpy()[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-5)
    padded = labels.numpy().copy()
    padded[:, 5:] = tiny_model.config.pad_token_id
    loss_pad, _ = tiny_model(ids, labels=paddle.to_tensor(padded))
    np.testing.assert_allclose(float(loss_pad), nll[:, :5].mean(), rtol=1e-5)
    lm = np.ones([2, 8], "float32")
    lm[0] = 0
    loss_lm, _ = tiny_model(ids, labels=labels, loss_mask=paddle.to_tensor(lm))
    np.testing.assert_allclose(float(loss_lm), nll[1].mean(), rtol=1e-5)


def test_recompute_gives_same_gradients(tiny_config):
    paddle.seed(3)
    model = PanGuForCausalLM(tiny_config)
    model.train()
    ids = paddle.randint(10, 40000, [2, 12])
    grads = []
    for interval in (0, 1):
        model.pangu.set_recompute(interval)
        model.clear_gradients()
        loss, _ = model(ids, labels=ids)
        loss.backward()
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_dropout_is_active_only_in_training():
    config = get_preset("tiny")  # dropout 0.1 as REF
    paddle.seed(5)
    model = PanGuForCausalLM(config)
    ids = paddle.randint(10, 40000, [1, 8])
    model.eval()
    np.testing.assert_array_equal(model(ids).numpy(), model(ids).numpy())
    model.train()
    assert np.abs(model(ids).numpy() - model(ids).numpy()).max() > 0


def test_init_follows_reference_scales():
    config = get_preset("350m", num_layers=4, vocab_size=4000)  # REF "init": out layers use 0.02/sqrt(2L)
    paddle.seed(0)
    model = PanGuForCausalLM(config)
    block = model.pangu.layers[0]
    assert abs(float(block.attention.q_proj.weight.std()) - 0.02) < 0.002
    assert abs(float(block.mlp.fc_out.weight.std()) - 0.02 / np.sqrt(8)) < 0.001
    assert abs(float(model.pangu.embeddings.word_embeddings.weight.std()) - 0.02) < 0.002


def test_sdpa_attention_matches_reference_math(tiny_config):
    """The fused-kernel path (paddle's scaled_dot_product_attention; math fallback on CPU) is the same function."""
    from paddle_pangu.model.layers import set_attention_impl

    paddle.seed(11)
    model = PanGuForCausalLM(tiny_config)
    ids = paddle.to_tensor([[101, 102, 9, 201, 202, 203, 204, 9, 301, 302]])
    results = {}
    for impl in ("plain", "sdpa"):
        assert set_attention_impl(model, impl) == tiny_config.num_layers  # every block + the query layer
        model.clear_gradients()
        loss, logits = model(ids, labels=ids)
        loss.backward()
        grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
        model.eval()
        cached, _ = _decode_incrementally(model, paddle.to_tensor([[5, 6, 7, 8, 10, 11]]), prompt_len=3)
        model.train()
        results[impl] = (logits.numpy(), grads, cached.numpy())
    np.testing.assert_allclose(results["sdpa"][0], results["plain"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results["sdpa"][2], results["plain"][2], rtol=1e-5, atol=1e-5)
    for name, g in results["plain"][1].items():
        np.testing.assert_allclose(results["sdpa"][1][name], g, rtol=1e-4, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="attention impl"):
        set_attention_impl(model, "flash")


class _FleetGlobalRead(AssertionError):
    pass


def _forbid_fleet_globals(monkeypatch):
    """Make every fleet accessor of the hybrid layout raise: the model may only use the context it is given."""
    from paddle.distributed import fleet
    from paddle.distributed.fleet.base import topology as fleet_topology

    class Forbidden:
        def __getattr__(self, name):
            raise _FleetGlobalRead(f"fleet global read: _HYBRID_PARALLEL_GROUP.{name}")

    def forbidden(*args, **kwargs):
        raise _FleetGlobalRead("fleet global read: get_hybrid_communicate_group()")

    monkeypatch.setattr(fleet, "get_hybrid_communicate_group", forbidden)
    monkeypatch.setattr(fleet_topology, "_HYBRID_PARALLEL_GROUP", Forbidden())
    # fleet's own mp layers read their mp_configs flags from the strategy fleet.init would have stored
    monkeypatch.setattr(fleet.fleet, "_user_defined_strategy", fleet.DistributedStrategy(), raising=False)


def test_parallel_context_decides_the_split(tiny_config, monkeypatch):
    """Without a context the model is plain; with an mp2 context every table-split parameter is split,
    and nothing in between reads fleet's globals."""
    from paddle.distributed.collective import Group
    from paddle.distributed.fleet.meta_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    from paddle_pangu.model import weight_tables as wt
    from paddle_pangu.parallel.context import ParallelContext
    from paddle_pangu.parallel.topology import seed_everything

    _forbid_fleet_globals(monkeypatch)
    seed_everything(5, mp_rank=1)  # the model_parallel_rng stream fleet's mp layers draw from
    plain = PanGuForCausalLM(tiny_config)
    assert not any(isinstance(m, (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding))
                   for m in plain.sublayers())
    assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == wt.plain_param_shapes(tiny_config)

    ctx = ParallelContext(mp_degree=2, mp_rank=1, mp_group=Group(1, 4242, [0, 1]))  # this process = mp rank 1
    split = PanGuForCausalLM(tiny_config, parallel=ctx)
    attention = split.pangu.layers[0].attention
    assert isinstance(attention.q_proj, ColumnParallelLinear) and isinstance(attention.out_proj, RowParallelLinear)
    assert isinstance(split.pangu.embeddings.word_embeddings, VocabParallelEmbedding)
    assert attention.num_heads == tiny_config.num_attention_heads // 2
    # every shape is what the declarative tensor-parallel table gives rank 1 of 2
    zeros = {k: np.zeros(s, "float32") for k, s in wt.plain_param_shapes(tiny_config).items()}
    expected = {k: tuple(v.shape) for k, v in wt.split_state_dict(zeros, 2, 1).items()}
    assert {k: tuple(v.shape) for k, v in split.state_dict().items()} == expected
    assert expected != wt.plain_param_shapes(tiny_config)


def test_paddlenlp_degree_maps_onto_the_context(tiny_config, monkeypatch):
    """PaddleNLP's `config.tensor_parallel_degree` is the same context: it needs fleet's group, and must agree
    with a context that is passed."""
    from paddle.distributed.collective import Group

    from paddle_pangu.errors import ConfigError
    from paddle_pangu.parallel.context import ParallelContext

    tiny_config.tensor_parallel_degree = 2
    with pytest.raises(ConfigError, match="tensor_parallel_degree=2: fleet is not initialised"):
        PanGuForCausalLM(tiny_config)
    tiny_config.tensor_parallel_degree = 4
    with pytest.raises(ConfigError, match="tensor_parallel_degree=4 disagrees with the parallel context"):
        PanGuForCausalLM(tiny_config, parallel=ParallelContext(mp_degree=2, mp_group=Group(0, 4243, [0, 1])))
    with pytest.raises(ConfigError, match="needs its process group"):
        ParallelContext(mp_degree=2)
