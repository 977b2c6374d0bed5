"""The `pangu` command table: every subcommand module exists and follows the add_arguments/run contract."""
import argparse
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from paddle_pangu.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_module_has_the_contract(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # arguments register without clashes
    assert build_parser(only=name).format_help()


def test_unknown_command_is_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "prepare-data" in capsys.readouterr().out


# ---- every cheap subcommand once, through cli.main, on the tiny preset --------------------------------
# (evaluate and finetune are run end to end by their own tests; serve and bench by theirs)
REPO = Path(__file__).resolve().parents[2]
DOCS = ["北京是中华人民共和国的首都，是全国的政治中心、文化中心。北京历史悠久，文化灿烂，是首批国家历史文化名城。",
        "上海是中国的经济中心之一，位于长江入海口，是重要的港口城市。上海的金融业和制造业都非常发达。",
        "杭州是浙江省的省会，以西湖闻名于世。杭州风景秀丽，自古以来就有人间天堂的美誉，吸引了无数游客。",
        "广州是广东省的省会，是华南地区的中心城市。广州有两千多年的历史，是海上丝绸之路的起点之一。"]


def _run(capsys, *argv) -> str:
    """`pangu ARGV` in this process; asserts exit code 0 and returns what it printed."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, f"pangu {' '.join(map(str, argv))} -> {code}\n{out.out[-2000:]}\n{out.err[-2000:]}"
    return out.out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`pangu train` on configs/pretrain/tiny_cpu_single.yaml for 2 steps (the README's smoke config)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--config", str(REPO / "configs" / "pretrain" / "tiny_cpu_single.yaml"), "--max-steps", "2",
                 "--output-dir", str(out), "--set", "logging.progress_bar=false", "--set", "logging.visualdl=false",
                 "--set", "train.eval_iters=1", "--set", "logging.log_interval=1"])
    assert code == 0
    return out


def test_info_and_tokenize(capsys):
    from paddle_pangu.tokenizer import PanGuTokenizer

    assert "40000" in _run(capsys, "info")
    out = _run(capsys, "tokenize", "中国科学院计算技术研究所")
    ids = PanGuTokenizer.from_default().encode("中国科学院计算技术研究所")["input_ids"]
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]  # pos  id  piece
    assert [int(r[1]) for r in rows] == ids


def test_prepare_data_on_a_tiny_corpus(capsys, tmp_path):
    from paddle_pangu.data.indexed_dataset import IndexedDataset
    from paddle_pangu.data.manifest import read_manifest

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in DOCS),
                                      encoding="utf-8")
    (tmp_path / "c.yaml").write_text("cleaning:\n  min_chars: 20\nsplit: [2, 1, 1]\n", encoding="utf-8")
    _run(capsys, "prepare-data", "--input", tmp_path / "d.jsonl", "--output", tmp_path / "ds", "--name", "tiny",
         "--config", tmp_path / "c.yaml", "--workers", "1", "--no-progress")
    manifest = read_manifest(tmp_path / "ds", verify_checksums=True)
    ds = IndexedDataset(tmp_path / "ds" / "tiny")
    assert manifest["num_documents"] == len(ds) == 4 and ds.num_tokens == manifest["num_tokens"]
    assert all(ds[i][-1] == 9 for i in range(len(ds)))  # docs/REFERENCE.md: end-of-document id 9


def test_train_two_steps(trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (trained / "final_model" / "config.json").is_file()
    assert (trained / "checkpoints" / "step_00000002" / "COMPLETE").is_file()


def _greedy_text(model_dir, prompt: str, n: int) -> str:
    """What greedy decoding of `n` tokens gives, computed here with full forwards (no KV cache)."""
    import paddle

    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    model = PanGuForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    tok = PanGuTokenizer.from_default()
    ids = tok.encode(prompt)["input_ids"]
    prompt_len = len(ids)
    with paddle.no_grad():
        for _ in range(n):
            logits = model(paddle.to_tensor([ids]))
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            ids.append(int(paddle.argmax(logits[0, -1]).item()))
    return tok.decode(ids[prompt_len:])


def test_generate_and_export_then_generate_from_the_export(capsys, trained, tmp_path):
    final = trained / "final_model"
    argv = ["--prompt", "北京是", "--max-new-tokens", "6", "--no-stream", "--seed", "1"]
    from_model = _run(capsys, "generate", "--model", final, *argv)
    expected = _greedy_text(final, "北京是", 6)
    assert expected.strip() and expected.strip() in from_model
    _run(capsys, "export", "--model", final, "--output", tmp_path / "served")
    assert list((tmp_path / "served").glob("*.pdiparams"))
    assert _run(capsys, "generate", "--model", tmp_path / "served", *argv) == from_model  # Paddle Inference path


# gpt_pangu (HF) name of each PanGu layer parameter, written from REF's HF port, not from the converter's table
HF_LAYER_NAMES = {"input_layernorm.weight": "ln_1.weight", "input_layernorm.bias": "ln_1.bias",
                  "attention.q_proj.weight": "attn.q_proj.weight", "attention.q_proj.bias": "attn.q_proj.bias",
                  "attention.k_proj.weight": "attn.k_proj.weight", "attention.k_proj.bias": "attn.k_proj.bias",
                  "attention.v_proj.weight": "attn.v_proj.weight", "attention.v_proj.bias": "attn.v_proj.bias",
                  "attention.out_proj.weight": "attn.c_proj.weight", "attention.out_proj.bias": "attn.c_proj.bias",
                  "post_attention_layernorm.weight": "ln_2.weight", "post_attention_layernorm.bias": "ln_2.bias",
                  "mlp.fc_in.weight": "mlp.c_fc.weight", "mlp.fc_in.bias": "mlp.c_fc.bias",
                  "mlp.fc_out.weight": "mlp.c_proj.weight", "mlp.fc_out.bias": "mlp.c_proj.bias"}


def _hf_name(name: str, num_layers: int) -> tuple[str, bool]:
    """(HF name, transposed?) of a PanGu parameter: blocks are h.0..h.L-2, the query layer h.L-1; dense
    weights are torch Linear [out, in] there, Paddle Linear [in, out] here."""
    fixed = {"pangu.embeddings.word_embeddings.weight": "transformer.wte.weight",
             "pangu.embeddings.position_embeddings.weight": "transformer.wpe.weight",
             "pangu.query_layer.top_query_embedding.weight": "transformer.wqe.weight",
             "pangu.final_layernorm.weight": "transformer.ln_f.weight",
             "pangu.final_layernorm.bias": "transformer.ln_f.bias"}
    if name in fixed:
        return fixed[name], False
    if name.startswith("pangu.query_layer."):
        index, rest = num_layers - 1, name[len("pangu.query_layer."):]
    else:
        _, _, index, rest = name.split(".", 3)
    return f"transformer.h.{index}.{HF_LAYER_NAMES[rest]}", rest.endswith("weight") and "layernorm" not in rest


def test_convert_to_hf(capsys, trained, tmp_path):
    """Every trained tensor is in the HF files under its own name, with its values (transposed where HF is)."""
    import paddle
    from safetensors.numpy import load_file

    final = trained / "final_model"
    _run(capsys, "convert", "--to", "hf", final, "--output", tmp_path / "hf")
    tensors = {}
    for f in sorted((tmp_path / "hf").glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    plain = {k: v.numpy() for k, v in paddle.load(str(final / "model_state.pdparams")).items()}
    num_layers = json.loads((final / "config.json").read_text())["num_layers"]
    expected = {}
    for name, value in plain.items():
        hf, transposed = _hf_name(name, num_layers)
        expected[hf] = value.T if transposed else value
    expected["lm_head.weight"] = plain["pangu.embeddings.word_embeddings.weight"]  # the tied head, as HF stores it
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        assert tensors[name].dtype == np.float32, name
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def test_reshard_split_and_merge_roundtrip(capsys, trained, tmp_path):
    import paddle

    from paddle_pangu.convert.reshard import detect_layout, merge_to_plain

    final = trained / "final_model"
    _run(capsys, "reshard", final, "--output", tmp_path / "mp2", "--mp", "2")
    assert detect_layout(str(tmp_path / "mp2"))[:2] == (2, 1)
    _run(capsys, "reshard", tmp_path / "mp2", "--output", tmp_path / "mp1", "--mp", "1")
    _, merged = merge_to_plain(str(tmp_path / "mp1"))
    plain = {k: v.numpy() for k, v in paddle.load(str(final / "model_state.pdparams")).items()}
    assert sorted(merged) == sorted(plain)
    for name, value in plain.items():
        np.testing.assert_array_equal(merged[name], value, err_msg=name)  # a split and a merge are exact copies


def test_plan_prints_a_valid_layout(capsys):
    out = _run(capsys, "plan", "--preset", "200b", "--devices", "2048", "--memory-gb", "32", "--global-batch", "1536")
    assert "mp" in out and "pp" in out and "2048" in out
