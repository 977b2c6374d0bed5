"""MindSpore .ckpt -> model directory: real protobuf layout, sliced tensors, fp16, .npy tables, errors."""
import os

import numpy as np
import pytest
from convert_fixtures import (HEADS, assert_reads_back, config_overrides, make_params, paddle_logits, sample_ids,
                              to_mindspore)
from reference_numpy import assert_fp32_logits_match, forward

from paddle_pangu.convert.api import convert_checkpoint
from paddle_pangu.convert.common import ConversionError
from paddle_pangu.convert.mindspore import CkptReader, checkpoint_message_class, save_mindspore_ckpt


def _ids():
    ids = sample_ids()
    ids[0, 5] = 9  # an end-of-document token: exercises eod_reset positions / mask (REF)
    return ids


def _check_logits(out_dir, params, act="gelu_tanh"):
    ids = _ids()
    expected = forward(params, ids, HEADS, act=act, eod_token_id=9)
    assert_fp32_logits_match(paddle_logits(out_dir, ids), expected)


def test_ckpt_protobuf_roundtrip_and_slices(tmp_path):
    """Our wire-format scanner agrees with protobuf's own parser, including MindSpore's 512MB-style slicing."""
    tensors = {"a": np.arange(40, dtype=np.float32).reshape(10, 4), "b": np.ones(3, np.float16),
               "global_step": np.array([7], np.int32)}
    path = str(tmp_path / "x.ckpt")
    save_mindspore_ckpt(path, tensors, slice_bytes=48)  # forces "a" into 4 slices
    msg = checkpoint_message_class()()
    with open(path, "rb") as f:
        msg.ParseFromString(f.read())
    assert [v.tag for v in msg.value].count("a") == 4
    reader = CkptReader(path)
    for name, arr in tensors.items():
        got = reader.read(name)
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)


def test_mindspore_fp32_matches_reference(tmp_path):
    params = make_params(seed=0)
    src = str(tmp_path / "PanGu-alpha_tiny.ckpt")
    ms = to_mindspore(params)
    ms["adam_m.backbone.layernorm.gamma"] = params["ln_f_g"]  # optimizer state is skipped
    save_mindspore_ckpt(src, ms, slice_bytes=4096)
    out = str(tmp_path / "out")
    convert_checkpoint("mindspore", src, out, overrides=config_overrides(), max_shard_bytes=100_000)
    assert len([f for f in os.listdir(out) if f.startswith("model-")]) > 1  # sharded + index, loaded by from_pretrained
    _check_logits(out, params)
    assert_reads_back(out, params, "float32")


def test_mindspore_fp16_with_npy_embeddings(tmp_path):
    """fp16 release with separate *_embedding.npy tables and the newer embedding names: upcast to fp32."""
    params = make_params(seed=1, dtype=np.float16)
    ms = to_mindspore(params)
    src = tmp_path / "release"
    src.mkdir()
    np.save(src / "word_embedding.npy", ms.pop("backbone.word_embedding.embedding_table"))
    np.save(src / "top_query_embedding.npy", ms.pop("backbone.top_query_embedding.embedding_table"))
    ms["backbone.embedding.position_embedding.embedding_table"] = ms.pop("backbone.position_embedding.embedding_table")
    save_mindspore_ckpt(str(src / "merged.ckpt"), ms)
    out = str(tmp_path / "out")
    config = convert_checkpoint("mindspore", str(src), out, overrides=config_overrides(), dtype="float32")
    assert config.hidden_act == "gelu_tanh"
    _check_logits(out, params)
    assert_reads_back(out, params, "float32", source_dtype=np.float16)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cli_mindspore_dtype_is_what_is_written(tmp_path, dtype):
    """`pangu convert --from mindspore --dtype D` writes D (it once wrote float32 whatever was asked)."""
    from paddle_pangu.cli import main

    params = make_params(seed=2)
    src = str(tmp_path / "PanGu-alpha_tiny.ckpt")
    save_mindspore_ckpt(src, to_mindspore(params))
    out = tmp_path / "out"
    assert main(["convert", "--from", "mindspore", src, "-o", str(out), "--dtype", dtype,
                 "--num-heads", str(HEADS)]) == 0
    assert_reads_back(out, params, dtype)


def test_mindspore_errors_list_every_problem(tmp_path):
    params = make_params(seed=2)
    ms = to_mindspore(params)
    del ms["backbone.blocks.1.attention.dense2.bias"]
    ms["backbone.blocks.0.extra.weight"] = np.zeros(3, np.float32)
    src = str(tmp_path / "bad.ckpt")
    save_mindspore_ckpt(src, ms)
    with pytest.raises(ConversionError) as err:
        convert_checkpoint("mindspore", src, str(tmp_path / "out"), overrides=config_overrides())
    msg = str(err.value)
    assert "missing 1" in msg and "backbone.blocks.1.attention.dense2.bias" in msg
    assert "unexpected 1" in msg and "backbone.blocks.0.extra.weight" in msg
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")  # nothing half-written


def test_mindspore_shape_mismatch_with_preset(tmp_path):
    params = make_params(seed=3)
    src = str(tmp_path / "m.ckpt")
    save_mindspore_ckpt(src, to_mindspore(params))
    overrides = {**config_overrides(), "ffn_hidden_size": 64}
    with pytest.raises(ConversionError, match=r"shape mismatch.*mlp\.fc_in\.weight: got \(32, 128\), expected \(32, 64\)"):
        convert_checkpoint("mindspore", src, str(tmp_path / "out"), overrides=overrides)


def test_mindspore_sharded_set_is_refused_with_instructions(tmp_path):
    src = tmp_path / "shards"  # the output beside the input, not inside it (that is refused on its own)
    src.mkdir()
    for i in range(2):
        save_mindspore_ckpt(str(src / f"filerted_{i}.ckpt"), {"x": np.zeros(2, np.float32)})
    with pytest.raises(ConversionError, match="transform_checkpoints"):
        convert_checkpoint("mindspore", str(src), str(tmp_path / "out"))


def test_cli_convert_and_error_exit_code(tmp_path, capsys):
    from paddle_pangu.cli import main

    params = make_params(seed=4)
    src = str(tmp_path / "m.ckpt")
    save_mindspore_ckpt(src, to_mindspore(params))
    assert main(["convert", "--from", "mindspore", src, "--output", str(tmp_path / "out"), "--num-heads", "4",
                 "--dtype", "float16"]) == 0
    assert "converted" in capsys.readouterr().out
    assert main(["convert", "--from", "mindspore", src, "--output", str(tmp_path / "bad"), "--preset", "tiny"]) == 2
    assert "shape mismatch" in capsys.readouterr().err


def test_not_a_checkpoint_is_reported(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"\x12\x05hello" * 3)  # field 2, length-delimited: not a Checkpoint
    with pytest.raises(ConversionError, match="not a MindSpore checkpoint"):
        convert_checkpoint("mindspore", str(path), str(tmp_path / "out"))
