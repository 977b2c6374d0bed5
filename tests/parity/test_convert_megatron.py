"""Megatron .pt -> model directory: nested language_model dict, padded vocab, fp16, mp_rank_XX shards merged."""
import argparse

import numpy as np
import pytest
from convert_fixtures import (HEADS, SHAPE, assert_reads_back, config_overrides, make_params, paddle_logits, sample_ids,
                              to_megatron)
from reference_numpy import assert_fp32_logits_match, forward

from paddle_pangu.convert.api import convert_checkpoint
from paddle_pangu.convert.common import ConversionError

torch = pytest.importorskip("torch")


def _to_torch(node, dtype):
    if isinstance(node, dict):
        return {k: _to_torch(v, dtype) for k, v in node.items()}
    if isinstance(node, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(node)).to(dtype)
    return node


def _write(root, ranks, dtype=torch.float32, iteration=10):
    """Megatron's on-disk layout: latest_checkpointed_iteration.txt + iter_XXXXXXX/mp_rank_XX/model_optim_rng.pt."""
    root.mkdir()
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    args = argparse.Namespace(num_attention_heads=HEADS, hidden_size=SHAPE["hidden"], num_layers=SHAPE["num_layers"] - 1)
    for r, sd in enumerate(ranks):
        d = root / f"iter_{iteration:07d}" / f"mp_rank_{r:02d}"
        d.mkdir(parents=True)
        torch.save({**_to_torch(sd, dtype), "args": args}, d / "model_optim_rng.pt")


def _check(out, params):
    ids = sample_ids(seed=3)
    ids[1, 4] = 9  # end of document (REF eod_reset)
    assert_fp32_logits_match(paddle_logits(out, ids), forward(params, ids, HEADS, eod_token_id=9))


def test_megatron_mp1_padded_vocab(tmp_path):
    params = make_params(seed=4)
    _write(tmp_path / "ckpt", to_megatron(params, mp=1, padded_vocab=384))
    out = str(tmp_path / "out")
    overrides = {k: v for k, v in config_overrides().items() if k != "num_attention_heads"}  # heads come from args
    config = convert_checkpoint("megatron", str(tmp_path / "ckpt"), out, overrides=overrides)
    assert config.vocab_size == SHAPE["vocab"] and config.num_attention_heads == HEADS
    _check(out, params)
    assert_reads_back(out, params, "float32")


def test_megatron_fp16_mp2_shards_merged(tmp_path):
    params = make_params(seed=5, dtype=np.float16)
    _write(tmp_path / "ckpt", to_megatron(params, mp=2, padded_vocab=384), dtype=torch.float16)
    out = str(tmp_path / "out")
    convert_checkpoint("megatron", str(tmp_path / "ckpt"), out, overrides=config_overrides())
    _check(out, params)
    assert_reads_back(out, params, "float32", source_dtype=np.float16)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cli_megatron_dtype_is_what_is_written(tmp_path, dtype):
    """`pangu convert --from megatron --dtype D`: the files and the loaded model hold D, values by name."""
    from paddle_pangu.cli import main

    params = make_params(seed=14)
    _write(tmp_path / "ckpt", to_megatron(params, mp=2, padded_vocab=384))
    out = tmp_path / "out"
    assert main(["convert", "--from", "megatron", str(tmp_path / "ckpt"), "-o", str(out), "--dtype", dtype,
                 "--vocab-size", str(SHAPE["vocab"])]) == 0
    assert_reads_back(out, params, dtype)


def test_megatron_single_file_missing_layer(tmp_path):
    params = make_params(seed=6)
    sd = to_megatron(params)[0]
    del sd["model"]["language_model"]["transformer"]["topQueryLayer.attention.key.weight"]
    torch.save(_to_torch(sd, torch.float32), tmp_path / "model_optim_rng.pt")
    with pytest.raises(ConversionError, match=r"missing 1 tensor\(s\): transformer\.topQueryLayer\.attention\.key\.weight"):
        convert_checkpoint("megatron", str(tmp_path / "model_optim_rng.pt"), str(tmp_path / "out"),
                           overrides=config_overrides())


def test_megatron_pickled_objects_need_trust(tmp_path):
    """Files with arbitrary Python objects are refused unless --trust-pickle (weights_only loading)."""
    params = make_params(seed=7)
    sd = _to_torch(to_megatron(params)[0], torch.float32)
    sd["rng_state"] = [{"random_rng_state": _Opaque()}]
    torch.save(sd, tmp_path / "model_optim_rng.pt")
    src = str(tmp_path / "model_optim_rng.pt")
    with pytest.raises(ConversionError, match="--trust-pickle"):
        convert_checkpoint("megatron", src, str(tmp_path / "out"), overrides=config_overrides())
    convert_checkpoint("megatron", src, str(tmp_path / "out"), overrides=config_overrides(), trust_pickle=True)
    _check(str(tmp_path / "out"), params)


class _Opaque:
    """Stands for the non-tensor objects (RNG states, optimizer classes) old Megatron files pickle."""
