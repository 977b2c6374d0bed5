"""The conversion behind `pangu train --reshard` (training/checkpoint/reshard.py) on a hand-built checkpoint.

An old layout of dp1 mp2 sharding2 (4 ranks, fleet's rank order: mp fastest, no coordinates recorded):
every rank holds its mp shard of every weight (with fleet's `_layers.` prefix), and ZeRO stage 1
splits the optimizer state by parameter between the two sharding ranks. The converter must find
each accumulator by parameter name on whichever sharding rank holds it, merge the mp shards through
the weight table, and cut them for the new layout; beta powers stay [1]; fp32 master weights (AMP O2)
and the moments keyed by them are cut like their parameter. The expected tensors are
the full random tensors the checkpoint was cut from (np.split along the table's axis), so any
mix-up of ranks, axes or accumulators changes the numbers. The end-to-end runs with real processes
are tests/distributed/test_reshard_resume.py.
"""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from paddle_pangu.config import get_preset
from paddle_pangu.config.parallel_config import padded_vocab_size
from paddle_pangu.errors import CheckpointError
from paddle_pangu.model.weight_tables import WORD_EMBEDDING, plain_param_shapes, split_axis_for
from paddle_pangu.training.checkpoint.reshard import (check_reshardable, convert_rank_state, stage2_slice,
                                                      unflatten_slices)

CONFIG = get_preset("tiny", num_layers=2, vocab_size=1001, max_position_embeddings=16)
OLD = {"dp_degree": 1, "mp_degree": 2, "pp_degree": 1, "sharding_degree": 2, "sharding_stage": 1,
       "global_batch_size": 4}
ACCUMULATORS = ("_moment1_0", "_moment2_0")
POWERS = {"_beta1_pow_acc_0": 0.9 ** 4, "_beta2_pow_acc_0": 0.95 ** 4}
MASTER = ".fp32_master"


def _owner(i):
    """Every third parameter as under AMP O2: an fp32 master weight (`master_weights/<name>`) that owns the
    moments (`<name>.fp32_master_moment1_0`, rank_state._master_names); the others as in fp32."""
    return MASTER if i % 3 == 0 else ""


def _padded(name, arr, mp):
    if name == WORD_EMBEDDING and mp > 1:  # vocab-parallel: zero rows up to a size mp divides
        rows = padded_vocab_size(arr.shape[0], mp)
        arr = np.concatenate([arr, np.zeros((rows - arr.shape[0], arr.shape[1]), arr.dtype)])
    return arr


def _shard(name, arr, mp, rank):
    axis = split_axis_for(name)
    arr = _padded(name, arr, mp)
    return arr if axis is None or mp == 1 else np.split(arr, mp, axis=axis)[rank]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(0)
    names = list(plain_param_shapes(CONFIG))
    full = {}
    for name, shape in plain_param_shapes(CONFIG).items():
        full[name] = rng.standard_normal(shape).astype("float32")
        for acc in (*ACCUMULATORS, MASTER):
            full[name + acc] = rng.standard_normal(shape).astype("float32")
    step_dir = str(tmp_path_factory.mktemp("ckpt") / "step_00000004")
    for rank in range(4):
        sharding, mp = divmod(rank, 2)  # fleet's order dp, pp, sharding, mp: mp varies fastest
        rank_dir = os.path.join(step_dir, f"rank_{rank:05d}")
        os.makedirs(rank_dir)
        save_file({"_layers." + n: np.ascontiguousarray(_shard(n, full[n], 2, mp)) for n in names},
                  os.path.join(rank_dir, "model.safetensors"))
        optim = {}
        for i, name in enumerate(names):
            if i % 2 != sharding:  # ZeRO stage 1: this sharding rank does not own the parameter
                continue
            key = "_layers." + name + _owner(i)
            for acc in ACCUMULATORS:
                optim[key + acc] = np.ascontiguousarray(_shard(name, full[name + acc], 2, mp))
            for acc, value in POWERS.items():
                optim[key + acc] = np.array([value], "float32")
            if _owner(i):
                optim["master_weights/_layers." + name] = np.ascontiguousarray(_shard(name, full[name + MASTER],
                                                                                      2, mp))
        save_file(optim, os.path.join(rank_dir, "optimizer.safetensors"))
        with open(os.path.join(rank_dir, "state.json"), "w", encoding="utf-8") as f:
            json.dump({"step": 4, "extra": {"consumed_samples": 16}}, f)
    return step_dir, full, names


def _local_shapes(names, mp, rank):
    return {n: _shard(n, np.zeros(plain_param_shapes(CONFIG)[n], "float32"), mp, rank).shape for n in names}


@pytest.fixture(scope="module")
def checkpoint_stage2(checkpoint, tmp_path_factory):
    """The same tensors with the optimizer state as sharding stage 2 keeps it: per mp rank, the
    parameters' (mp-shard) accumulators laid end to end in a buffer, each zero-padded to a multiple of
    64 x 2 elements (float32, degree 2), the buffer halved between the sharding ranks; a rank stores the
    flat part of each parameter inside its half (beta powers and master weights alike)."""
    old_dir, full, names = checkpoint
    step_dir = str(tmp_path_factory.mktemp("ckpt2") / "step_00000004")
    for rank in range(4):
        sharding, mp = divmod(rank, 2)
        rank_dir = os.path.join(step_dir, f"rank_{rank:05d}")
        os.makedirs(rank_dir)
        for fn in ("model.safetensors", "state.json"):
            shutil.copy(os.path.join(old_dir, f"rank_{rank:05d}", fn), rank_dir)
        numels = [int(np.prod(_shard(n, full[n], 2, mp).shape)) for n in names]
        padded = [-(-n // 128) * 128 for n in numels]
        starts, half = np.cumsum([0] + padded[:-1]), sum(padded) // 2
        optim = {}
        for i, name in enumerate(names):
            lo = max(starts[i], sharding * half) - starts[i]
            hi = min(starts[i] + padded[i], (sharding + 1) * half) - starts[i]
            if lo >= hi:
                continue
            key = "_layers." + name + _owner(i)
            tensors = {key + acc: full[name + acc] for acc in ACCUMULATORS}
            if _owner(i):
                tensors["master_weights/_layers." + name] = full[name + MASTER]
            for k, arr in tensors.items():
                flat = np.zeros(padded[i], "float32")
                flat[:numels[i]] = _shard(name, arr, 2, mp).reshape(-1)
                optim[k] = flat[lo:hi].copy()
            for acc, value in POWERS.items():
                optim[key + acc] = np.array([value], "float32")
        save_file(optim, os.path.join(rank_dir, "optimizer.safetensors"))
    return step_dir, full, names


@pytest.mark.parametrize("mp,rank", [(1, 0), (2, 1)])  # merged and cut; the same mp: the old shard as it is
@pytest.mark.parametrize("stage", [1, 2])
def test_every_shard_and_accumulator_lands_where_the_weight_table_puts_it(checkpoint, checkpoint_stage2, stage,
                                                                          mp, rank):
    step_dir, full, names = checkpoint if stage == 1 else checkpoint_stage2
    old = {**OLD, "sharding_stage": stage}
    if stage == 2:  # the case this variant is about: some parameter is split between the sharding ranks
        from safetensors import safe_open
        with safe_open(os.path.join(step_dir, "rank_00000", "optimizer.safetensors"), "np") as f0, \
                safe_open(os.path.join(step_dir, "rank_00002", "optimizer.safetensors"), "np") as f2:
            assert set(k for k in f0.keys() if "moment1" in k) & set(k for k in f2.keys() if "moment1" in k)
    weights, moments, masters = convert_rank_state(step_dir, old, 4, CONFIG, _local_shapes(names, mp, rank), mp, rank)
    assert sorted(weights) == sorted(names)
    assert sorted(masters) == sorted(n for i, n in enumerate(names) if _owner(i))
    assert sorted(moments) == sorted(n + _owner(i) + a for i, n in enumerate(names) for a in (*ACCUMULATORS, *POWERS))
    for i, name in enumerate(names):
        np.testing.assert_array_equal(weights[name], _shard(name, full[name], mp, rank), err_msg=name)
        for acc in ACCUMULATORS:
            np.testing.assert_array_equal(moments[name + _owner(i) + acc], _shard(name, full[name + acc], mp, rank),
                                          err_msg=name + acc)
        for acc, value in POWERS.items():
            np.testing.assert_array_equal(moments[name + _owner(i) + acc], np.array([value], "float32"))
        if _owner(i):
            np.testing.assert_array_equal(masters[name], _shard(name, full[name + MASTER], mp, rank), err_msg=name)
    if mp == 1:  # the vocab padding of the mp2 shards is dropped
        assert weights[WORD_EMBEDDING].shape[0] == CONFIG.vocab_size


def test_an_accumulator_missing_on_an_old_rank_is_named(checkpoint, tmp_path):
    import shutil

    from safetensors.numpy import load_file

    step_dir, _, names = checkpoint
    broken = str(tmp_path / "step_00000004")
    shutil.copytree(step_dir, broken)
    path = os.path.join(broken, "rank_00003", "optimizer.safetensors")  # sharding 1, mp 1
    tensors = load_file(path)
    gone = next(k for k in tensors if k.endswith("_moment2_0"))
    del tensors[gone]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="missing for old mp rank") as err:
        convert_rank_state(broken, OLD, 4, CONFIG, _local_shapes(names, 1, 0), 1, 0)
    assert gone[len("_layers."):] in str(err.value)


@pytest.mark.parametrize("old,new,words", [
    ({"global_batch_size": 4}, {"dp_degree": 2, "global_batch_size": 8}, "global_batch_size 8"),
])
def test_changes_that_cannot_be_converted_are_refused_in_one_line(old, new, words):
    with pytest.raises(CheckpointError) as err:
        check_reshardable("ckpt/step_00000004", old, new, 4, 16)
    message = str(err.value)
    assert words in message and "\n" not in message and "ckpt/step_00000004" in message


def test_a_data_position_that_is_not_step_times_global_batch_is_refused():
    with pytest.raises(CheckpointError, match="consumed 12 samples"):
        check_reshardable("ckpt/step_00000004", {"global_batch_size": 4}, {"global_batch_size": 4}, 4, 12)
    check_reshardable("ckpt/step_00000004", {"mp_degree": 2, "global_batch_size": 4},
                      {"dp_degree": 2, "global_batch_size": 4}, 4, 16)  # a dp change at the same global batch
    check_reshardable("ckpt/step_00000004", {"pp_degree": 2, "dp_degree": 2, "global_batch_size": 4},
                      {"pp_degree": 2, "sharding_degree": 2, "global_batch_size": 4}, 4, 16)  # dp -> sharding at pp2
    check_reshardable("ckpt/step_00000004", {"pp_degree": 2, "mp_degree": 2, "global_batch_size": 4},
                      {"mp_degree": 4, "global_batch_size": 4}, 4, 16)  # pp and mp change together


def test_pipeline_names_map_to_plain_names_by_layer_index():
    """PipelineLayer names parameters by the global index of their layer description (modeling_pp.py:
    0 the shared embedding, 1..num_blocks the blocks, then the final layernorm and the query layer), the
    same on every stage of every pp layout: the names below are those of a pp2 checkpoint of a 4-layer
    model (stage 0: 1, 2 and the shared embeddings; stage 1: 3, 4, 5 and the tied word embedding)."""
    from paddle_pangu.model.weight_tables import TOP_QUERY_EMBEDDING
    from paddle_pangu.training.checkpoint.reshard import pipe_to_plain

    config = get_preset("tiny", num_layers=4)
    assert {k: pipe_to_plain(k, config) for k in (
        "1.attention.k_proj.bias", "3.mlp.fc_out.weight_moment2_0", "4.weight", "5.top_query_embedding.weight",
        "5.attention.q_proj.weight", "shared_layers.pangu_shared_weight.word_embeddings.weight",
        "shared_layers.pangu_shared_weight.position_embeddings.weight_beta1_pow_acc_0",
        "pangu.layers.1.attention.q_proj.bias")} == {
        "1.attention.k_proj.bias": "pangu.layers.0.attention.k_proj.bias",
        "3.mlp.fc_out.weight_moment2_0": "pangu.layers.2.mlp.fc_out.weight_moment2_0",
        "4.weight": "pangu.final_layernorm.weight",
        "5.top_query_embedding.weight": TOP_QUERY_EMBEDDING,
        "5.attention.q_proj.weight": "pangu.query_layer.attention.q_proj.weight",
        "shared_layers.pangu_shared_weight.word_embeddings.weight": WORD_EMBEDDING,
        "shared_layers.pangu_shared_weight.position_embeddings.weight_beta1_pow_acc_0":
            "pangu.embeddings.position_embeddings.weight_beta1_pow_acc_0",
        "pangu.layers.1.attention.q_proj.bias": "pangu.layers.1.attention.q_proj.bias",  # plain already
    }
    with pytest.raises(CheckpointError, match="layer index 6"):
        pipe_to_plain("6.weight", config)


def _stage2_slices(shapes, degree, align):
    """Cut random parameters the way fleet's DygraphShardingOptimizerV2 stores their optimizer state
    (tensor_fusion_helper.py): laid end to end in one buffer, each padded with zeros to a multiple of
    align x degree elements, the buffer split into `degree` equal ranges; sharding rank r keeps, per
    parameter, the 1-D part of the parameter's padded range inside its own range (nothing if empty)."""
    rng = np.random.default_rng(0)
    full = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    padded = [-(-int(np.prod(s)) // (align * degree)) * align * degree for s in shapes]
    buffer = np.zeros(sum(padded), np.float32)
    starts = np.cumsum([0] + padded[:-1])
    for x, start in zip(full, starts):
        buffer[start:start + x.size] = x.reshape(-1)
    size = buffer.size // degree
    slices, spans = [], []
    for x, start, pad in zip(full, starts, padded):
        own, span = {}, {}
        for r in range(degree):
            lo, hi = max(start, r * size), min(start + pad, (r + 1) * size)
            span[r] = (lo - start, hi - start, pad)  # what fleet_compat.sharding_stage2_ranges reports
            if lo < hi:
                own[r] = buffer[lo:hi].copy()
        slices.append(own)
        spans.append(span)
    return full, slices, spans


@pytest.mark.parametrize("degree", [2, 4])
def test_sharding_stage2_slices_rebuild_each_parameter(degree):
    """Parameters straddling rank boundaries, smaller than one alignment unit, and held by one rank only."""
    shapes = [(40, 64), (64,), (3, 5), (1000,), (7, 64, 3)]
    full, slices, spans = _stage2_slices(shapes, degree, align=64)
    assert any(len(s) > 1 for s in slices) and any(len(s) == 1 for s in slices)  # the cases this test is about
    for x, own, span in zip(full, slices, spans):
        np.testing.assert_array_equal(unflatten_slices(own, x.shape, degree, "ckpt"), x)
        for r in range(degree):  # and back: each rank's slice cut from the whole tensor (resuming into stage 2)
            got = stage2_slice(x, span[r], "ckpt")
            if r in own:
                np.testing.assert_array_equal(got, own[r])
            else:
                assert got is None


def test_a_missing_stage2_slice_is_refused_in_one_line():
    full, slices, _ = _stage2_slices([(40, 64)], 2, align=64)
    assert len(slices[0]) == 2
    del slices[0][1]
    with pytest.raises(CheckpointError, match="slices of ranks") as err:
        unflatten_slices(slices[0], full[0].shape, 2, "ckpt/step_00000004: pangu.x.weight_moment1_0")
    assert "\n" not in str(err.value) and "pangu.x.weight_moment1_0" in str(err.value)
