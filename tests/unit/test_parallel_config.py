"""ParallelConfig validation, vocab padding, pipeline split, and the tensor-parallel weight table."""
import warnings

import numpy as np
import pytest

from paddle_pangu.config import get_preset
from paddle_pangu.config.parallel_config import (
    ParallelConfig,
    ParallelConfigError,
    pad_vocab_for_mp,
    padded_vocab_size,
    pipeline_layer_counts,
)
from paddle_pangu.model import weight_tables as wt


@pytest.fixture
def cfg_2p6b():
    return get_preset("2.6b")


def test_defaults_are_single_process(cfg_2p6b):
    pc = ParallelConfig()
    assert pc.world_size == 1 and pc.accumulate_steps == 1 and pc.global_batch_size == 1
    assert pc.validate(cfg_2p6b, world_size=1) is pc


def test_reference_layouts_validate():
    # REF "Parallelism used": 2.6B mp8 + sharding; 200B pp16 x mp8 x dp16
    ParallelConfig(mp_degree=8, sharding_degree=4, micro_batch_size=2, global_batch_size=64).validate(
        get_preset("2.6b"), world_size=32)
    pc = ParallelConfig(mp_degree=8, pp_degree=16, dp_degree=16, micro_batch_size=1, accumulate_steps=16)
    pc.validate(get_preset("200b"), world_size=2048)
    assert pc.global_batch_size == 256
    assert pipeline_layer_counts(64, 16) == [4] * 16


def test_batch_derivation_both_ways():
    pc = ParallelConfig(dp_degree=2, sharding_degree=2, micro_batch_size=3, global_batch_size=24)
    assert pc.accumulate_steps == 2
    pc = ParallelConfig(dp_degree=2, micro_batch_size=3, accumulate_steps=5)
    assert pc.global_batch_size == 30


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(micro_batch_size=3, dp_degree=2, global_batch_size=10), "global_batch_size=10 is not a multiple"),
        (dict(micro_batch_size=2, global_batch_size=8, accumulate_steps=3), "accumulate_steps=3 contradicts"),
        (dict(sharding_stage=3), "sharding_stage=3"),
        (dict(mp_degree=0), "mp_degree=0"),
        (dict(recompute_interval=-1), "recompute_interval=-1"),
        (dict(accumulate_steps=0), "accumulate_steps=0"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ParallelConfigError, match=match):
        ParallelConfig(**kwargs)


def test_world_size_mismatch(cfg_2p6b):
    with pytest.raises(ParallelConfigError, match=r"= 4 but the job has world_size=8"):
        ParallelConfig(dp_degree=2, mp_degree=2).validate(cfg_2p6b, world_size=8)


@pytest.mark.parametrize(
    "overrides, mp, match",
    [
        (dict(hidden_size=96, num_attention_heads=3, ffn_hidden_size=128), 2, "num_attention_heads=3"),
        (dict(hidden_size=96, num_attention_heads=6, ffn_hidden_size=128), 4, "num_attention_heads=6"),
        (dict(hidden_size=64, num_attention_heads=4, ffn_hidden_size=130), 4, "ffn_hidden_size=130"),
        (dict(hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, vocab_size=40001), 2, "vocab_size=40001"),
    ],
)
def test_tensor_parallel_divisibility(overrides, mp, match):
    cfg = get_preset("tiny", **overrides)
    with pytest.raises(ParallelConfigError, match=match):
        ParallelConfig(mp_degree=mp).validate(cfg)


def test_pipeline_split_errors():
    tiny = get_preset("tiny")  # 3 layers incl. query layer
    with pytest.raises(ParallelConfigError, match="num_layers=3"):
        ParallelConfig(pp_degree=2, accumulate_steps=2).validate(tiny)
    with pytest.raises(ParallelConfigError, match="num_layers=3"):
        ParallelConfig(pp_degree=4, accumulate_steps=4).validate(tiny)
    ParallelConfig(pp_degree=2, accumulate_steps=2).validate(get_preset("tiny", num_layers=4))


def test_pipeline_underfilled_warns():
    cfg = get_preset("tiny", num_layers=4)
    with pytest.warns(UserWarning, match="accumulate_steps=1 < pp_degree=2"):
        ParallelConfig(pp_degree=2).validate(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ParallelConfig(pp_degree=2, accumulate_steps=2).validate(cfg)


def test_recompute_and_sequence_checks():
    cfg = get_preset("tiny", num_layers=4)
    with pytest.raises(ParallelConfigError, match="recompute_interval=3"):
        ParallelConfig(pp_degree=2, accumulate_steps=2, recompute_interval=3).validate(cfg)
    with pytest.raises(ParallelConfigError, match="seq_length=129"):
        ParallelConfig(seq_length=129).validate(cfg)


def test_vocab_padding():
    assert padded_vocab_size(40000, 8) == 40000  # REF: no padding for mp <= 8
    assert padded_vocab_size(40000, 3) == 40002
    assert padded_vocab_size(40000, 48) == 40032  # 834 rows per rank
    cfg = get_preset("tiny")
    padded = pad_vocab_for_mp(cfg, 3)
    assert padded.vocab_size == 40002 and cfg.vocab_size == 40000
    assert pad_vocab_for_mp(cfg, 2) is cfg
    with pytest.raises(ParallelConfigError):
        padded_vocab_size(40000, 0)


def test_hybrid_configs_and_from_dict():
    pc = ParallelConfig.from_dict(dict(dp_degree=2, pp_degree=2, micro_batch_size=2, accumulate_steps=4))
    hc = pc.hybrid_configs()
    assert hc["dp_degree"] == 2 and hc["pp_degree"] == 2 and hc["mp_degree"] == 1
    assert hc["pp_configs"] == {"micro_batch_size": 2, "accumulate_steps": 4}
    with pytest.raises(ParallelConfigError, match=r"unknown field\(s\) \['tp_degree'\]"):
        ParallelConfig.from_dict(dict(tp_degree=2), source="run.yaml:parallel")


# ---- tensor-parallel weight table -----------------------------------------

def test_rules_cover_the_real_model_exactly(tiny_model, tiny_config):
    rules = wt.tensor_parallel_rules(tiny_config)
    assert sorted(rules) == sorted(tiny_model.state_dict())
    split = {k for k, v in rules.items() if v is not None}
    # per block/query layer: q,k,v,fc_in weight+bias (8) and out_proj, fc_out weight (2); plus word embedding
    assert len(split) == 10 * tiny_config.num_layers + 1
    assert rules["pangu.layers.0.attention.q_proj.weight"] == 1
    assert rules["pangu.query_layer.mlp.fc_in.bias"] == 0
    assert rules["pangu.layers.1.mlp.fc_out.weight"] == 0
    assert rules["pangu.layers.1.mlp.fc_out.bias"] is None
    assert rules["pangu.query_layer.top_query_embedding.weight"] is None
    assert rules["pangu.embeddings.position_embeddings.weight"] is None


def test_split_merge_round_trip(tiny_model, tiny_config):
    sd = {k: v.numpy() for k, v in tiny_model.state_dict().items()}
    shards = [wt.split_state_dict(sd, 2, r) for r in range(2)]
    h, f = tiny_config.hidden_size, tiny_config.ffn_hidden_size
    assert shards[1]["pangu.layers.0.attention.k_proj.weight"].shape == (h, h // 2)
    assert shards[0]["pangu.layers.0.mlp.fc_out.weight"].shape == (f // 2, h)
    assert shards[0]["pangu.embeddings.word_embeddings.weight"].shape == (tiny_config.vocab_size // 2, h)
    np.testing.assert_array_equal(
        shards[1]["pangu.layers.0.mlp.fc_in.weight"], sd["pangu.layers.0.mlp.fc_in.weight"][:, f // 2:])
    merged = wt.merge_state_dicts(shards)
    assert list(merged) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(merged[k], sd[k])


def test_split_errors(tiny_model):
    sd = {k: v.numpy() for k, v in tiny_model.state_dict().items()}
    with pytest.raises(ValueError, match="word_embeddings.weight: dimension 0"):
        wt.split_state_dict(sd, 3, 0)
    with pytest.raises(ValueError, match="mp_rank=2 out of range"):
        wt.split_state_dict(sd, 2, 2)
    shards = [wt.split_state_dict(sd, 2, r) for r in range(2)]
    del shards[1]["pangu.final_layernorm.bias"]
    with pytest.raises(ValueError, match="shard 1 names differ"):
        wt.merge_state_dicts(shards)
