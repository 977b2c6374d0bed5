"""HF gpt_pangu <-> model directory: safetensors without torch, pytorch_model.bin with torch, exact round trip."""
import json

import numpy as np
import pytest
from convert_fixtures import (HEADS, ST_DTYPE, assert_reads_back, config_overrides, hf_config, make_params, paddle_logits,
                              rounded, safetensors_dtypes, sample_ids, to_hf, to_paddle)
from reference_numpy import assert_fp32_logits_match, forward
from safetensors.numpy import load_file, save_file

from paddle_pangu.convert.api import convert_checkpoint
from paddle_pangu.convert.common import ConversionError, read_weight_files
from paddle_pangu.convert.hf import export_hf


def _write_hf_safetensors(d, params, activation="gelu"):
    d.mkdir()
    save_file(to_hf(params), str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(hf_config(params, activation)))


def _check(out, params, act):
    ids = sample_ids(seed=7)
    ids[0, 3] = 9
    assert_fp32_logits_match(paddle_logits(out, ids), forward(params, ids, HEADS, act=act, eod_token_id=9))


def test_hf_safetensors_no_preset(tmp_path):
    """Shapes and heads come from the files; the port's "gelu" label keeps REF's gelu_tanh default."""
    params = make_params(seed=8)
    _write_hf_safetensors(tmp_path / "hf", params)
    out = str(tmp_path / "out")
    config = convert_checkpoint("hf", str(tmp_path / "hf"), out, overrides={"hidden_dropout_prob": 0.0,
                                                                          "attention_probs_dropout_prob": 0.0})
    assert config.num_attention_heads == HEADS and config.num_layers == 3 and config.hidden_act == "gelu_tanh"
    _check(out, params, "gelu_tanh")
    assert_reads_back(out, params, "float32")


def test_hf_bin_with_torch_exact_gelu_override(tmp_path):
    torch = pytest.importorskip("torch")
    params = make_params(seed=9)
    d = tmp_path / "hf"
    d.mkdir()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_hf(params).items()}, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(hf_config(params)))
    out = str(tmp_path / "out")
    convert_checkpoint("hf", str(d), out, overrides=config_overrides(hidden_act="gelu"))
    _check(out, params, "gelu")


def test_hf_untied_head_is_refused(tmp_path):
    params = make_params(seed=10)
    sd = to_hf(params)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    (tmp_path / "hf").mkdir()
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ConversionError, match="lm_head.weight differs"):
        convert_checkpoint("hf", str(tmp_path / "hf"), str(tmp_path / "out"), overrides=config_overrides())


def test_paddle_hf_paddle_roundtrip_is_exact(tmp_path):
    """Paddle dir -> HF safetensors (sharded) -> Paddle dir gives bit-identical tensors and the same config."""
    params = make_params(seed=11)
    _write_hf_safetensors(tmp_path / "hf0", params)
    first = str(tmp_path / "p1")
    c1 = convert_checkpoint("hf", str(tmp_path / "hf0"), first, overrides=config_overrides(hidden_act="fast_gelu"))
    export_hf(first, str(tmp_path / "hf1"), max_shard_bytes=20_000)
    index = json.loads((tmp_path / "hf1" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    exported = {}
    for f in set(index["weight_map"].values()):
        exported.update(load_file(str(tmp_path / "hf1" / f)))
    reference = {k: v for k, v in to_hf(params).items() if not k.endswith("attn.bias")}  # hand-written layout
    assert set(exported) == set(reference)
    for name, arr in reference.items():
        np.testing.assert_array_equal(exported[name], arr, err_msg=name)
    second = str(tmp_path / "p2")
    c2 = convert_checkpoint("hf", str(tmp_path / "hf1"), second)
    assert c2.hidden_act == "fast_gelu" and c2.to_dict()["num_layers"] == c1.num_layers
    a, b = read_weight_files(first), read_weight_files(second)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name].load(), b[name].load(), err_msg=name)


def test_reference_adapter_matches_converted_weights(tmp_path):
    """The hand-written Paddle adapter of the fixtures agrees with what the HF converter produced."""
    from convert_fixtures import to_paddle

    params = make_params(seed=12)
    _write_hf_safetensors(tmp_path / "hf", params)
    convert_checkpoint("hf", str(tmp_path / "hf"), str(tmp_path / "out"), overrides=config_overrides())
    converted = {k: v.load() for k, v in read_weight_files(str(tmp_path / "out")).items()}
    expected = to_paddle(params)
    assert set(converted) == set(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(converted[name], arr, err_msg=name)


def test_cli_export_and_reshard(tmp_path, capsys):
    from paddle_pangu.cli import main

    params = make_params(seed=13)
    _write_hf_safetensors(tmp_path / "hf", params)
    model_dir = str(tmp_path / "model")
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "-o", model_dir]) == 0
    assert main(["convert", "--to", "hf", model_dir, "-o", str(tmp_path / "hf2")]) == 0
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["num_heads"] == HEADS
    assert main(["reshard", model_dir, "-o", str(tmp_path / "mp2"), "--mp", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "mp2").glob("model.tp*.safetensors")) == [
        "model.tp00.safetensors", "model.tp01.safetensors"]
    assert main(["convert", "--to", "hf", str(tmp_path / "mp2"), "-o", str(tmp_path / "hf3")]) == 0  # from rank files
    a, b = load_file(str(tmp_path / "hf2" / "model.safetensors")), load_file(str(tmp_path / "hf3" / "model.safetensors"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert main(["reshard", model_dir, "-o", str(tmp_path / "mp3"), "--mp", "3"]) == 2
    assert "not divisible by mp=3" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cli_dtype_in_out_and_reshard_is_what_is_written(tmp_path, dtype):
    """`--dtype D` on each writer: `convert --from hf`, `convert --to hf` and `reshard` store D, and each
    output is read back by name (the loader for a model directory, safetensors for HF, the merge for ranks)."""
    from paddle_pangu.cli import main
    from paddle_pangu.convert.reshard import detect_layout, merge_to_plain

    params = make_params(seed=15)
    _write_hf_safetensors(tmp_path / "hf", params)
    model_dir = tmp_path / "model"
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "-o", str(model_dir), "--dtype", dtype]) == 0
    assert_reads_back(model_dir, params, dtype)

    fp32_dir = str(tmp_path / "fp32")  # exporting or resharding a float32 model to D rounds once
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "-o", fp32_dir]) == 0
    assert main(["convert", "--to", "hf", fp32_dir, "-o", str(tmp_path / "hf2"), "--dtype", dtype]) == 0
    reference = {k: v for k, v in to_hf(params).items() if not k.endswith("attn.bias")}
    assert safetensors_dtypes(tmp_path / "hf2") == {k: ST_DTYPE[dtype] for k in reference}
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["torch_dtype"] == dtype
    exported = {k: v.load() for k, v in read_weight_files(str(tmp_path / "hf2")).items()}
    assert set(exported) == set(reference)
    for name, arr in reference.items():
        np.testing.assert_array_equal(exported[name], rounded(arr, dtype), err_msg=name)

    assert main(["reshard", fp32_dir, "-o", str(tmp_path / "mp2"), "--mp", "2", "--dtype", dtype]) == 0
    assert detect_layout(str(tmp_path / "mp2"))[:2] == (2, 1)
    assert set(safetensors_dtypes(tmp_path / "mp2").values()) == {ST_DTYPE[dtype]}
    _, merged = merge_to_plain(str(tmp_path / "mp2"))
    expected = to_paddle(params)
    assert set(merged) == set(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(np.asarray(merged[name], np.float32), rounded(arr, dtype), err_msg=name)
