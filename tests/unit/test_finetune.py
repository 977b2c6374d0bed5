"""`pangu finetune` through the real PaddleNLP Trainer: config + overrides, checks at start, training
lowers the loss, checkpoints rotate, resume continues the same losses, the saved model reloads."""
import json

import numpy as np
import paddle
import pytest

from paddle_pangu.errors import ConfigError
from paddle_pangu.finetune import parse_finetune_args, run_finetune


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    rows = [{"prompt": f"评论：{t}\n顾客对商品", "response": r} for t, r in
            [("很好用", "满意"), ("质量太差", "不满意"), ("物流很快", "满意"), ("坏了", "不满意")] * 4]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_yaml_config_with_command_line_overrides(tmp_path, base_dir, sft_file):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"model_name_or_path: {base_dir}\ntrain_file: {sft_file}\noutput_dir: {tmp_path}/out\n"
                   "learning_rate: 1.0e-3\ntensor_parallel_degree: 1\nsave_steps: 3\nsave_total_limit: 2\n"
                   "recompute: true\nreport_to: [visualdl]\nmax_length: 32\ntruncation: drop\n", encoding="utf-8")
    m, d, t = parse_finetune_args(str(cfg), {"learning_rate": 5e-4, "eval_steps": 2, "eval_ratio": 0.25})
    assert (t.learning_rate, t.save_steps, t.save_total_limit, t.recompute) == (5e-4, 3, 2, True)
    assert t.report_to == ["visualdl"] and t.evaluation_strategy.value == "steps" and t.eval_steps == 2
    assert (m.model_name_or_path, d.max_length, d.truncation, d.eval_ratio) == (base_dir, 32, "drop", 0.25)


def test_help_lists_the_training_arguments():
    from paddle_pangu.cli import build_parser

    text = build_parser(only="finetune")._subparsers._group_actions[0].choices["finetune"].format_help()
    for flag in ("--tensor_parallel_degree", "--pipeline_parallel_degree", "--sharding_parallel_degree",
                 "--recompute", "--fp16_opt_level", "--save_total_limit", "--resume_from_checkpoint",
                 "--unified_checkpoint", "--lora_rank", "--truncation", "--packing", "--eval-steps"):
        assert flag in text, flag


@pytest.mark.parametrize("fields, message", [
    ({"no_such_field": 1}, r"unknown field\(s\) \['no_such_field'\]"),
    ({"eval_steps": 2}, "there is no eval data: set eval_file or eval_ratio"),
    ({"truncation": "right"}, "invalid value"),
])
def test_bad_arguments_are_rejected_at_start(tmp_path, base_dir, sft_file, fields, message):
    with pytest.raises(ConfigError, match=message):
        parse_finetune_args(None, {"model_name_or_path": base_dir, "train_file": sft_file,
                                   "output_dir": str(tmp_path), **fields})


def test_bf16_reaches_the_arguments_and_is_refused_on_cpu(tmp_path, base_dir, sft_file):
    m, d, t = parse_finetune_args(None, {"model_name_or_path": base_dir, "train_file": sft_file,
                                         "output_dir": str(tmp_path), "bf16": True, "fp16_opt_level": "O2"})
    assert t.bf16 and t.fp16_opt_level == "O2"
    with pytest.raises(ConfigError, match="bf16=True with fp16_opt_level='O2' on CPU"):
        run_finetune(m, d, t)


class StopAt:
    """A TrainerCallback that ends training after `step` (as if the job were killed there)."""

    def __new__(cls, step):
        from paddlenlp.trainer import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True

        return _Stop()


def _args(base_dir, sft_file, out, **extra):
    fields = dict(model_name_or_path=base_dir, train_file=sft_file, output_dir=str(out), max_steps=6,
                  per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, seed=1, max_length=24,
                  report_to="none", save_steps=2, warmup_steps=0, disable_tqdm=True)
    fields.update(extra)
    return parse_finetune_args(None, fields)


def test_finetune_lowers_loss_rotates_checkpoints_and_resumes_exactly(tmp_path, base_dir, sft_file):
    full = run_finetune(*_args(base_dir, sft_file, tmp_path / "full", save_total_limit=2, eval_ratio=0.25,
                               eval_steps=3, report_to="visualdl"))
    losses = [h["loss"] for h in full["history"] if "loss" in h]
    evals = [h["eval_loss"] for h in full["history"] if "eval_loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses
    assert evals[-1] < evals[0], evals
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert list((tmp_path / "full").rglob("vdlrecords*"))

    # a run stopped right after its step-4 checkpoint, then resumed from it to step 6
    part = tmp_path / "part"
    run_finetune(*_args(base_dir, sft_file, part, eval_ratio=0.25, eval_steps=3), callbacks=[StopAt(4)])
    assert (part / "checkpoint-4").is_dir()
    resumed = run_finetune(*_args(base_dir, sft_file, part, eval_ratio=0.25, eval_steps=3,
                                  resume_from_checkpoint=str(part / "checkpoint-4")))
    tail = [h["loss"] for h in resumed["history"] if "loss" in h]
    np.testing.assert_allclose(tail, losses[4:], rtol=1e-6, atol=1e-6)

    from paddle_pangu.model import PanGuForCausalLM

    loaded = PanGuForCausalLM.from_pretrained(str(tmp_path / "full"))
    loaded.eval()
    assert (tmp_path / "full" / "model.safetensors").exists() and (tmp_path / "full" / "vocab.model").exists()
    assert not np.allclose(loaded.pangu.layers[0].attention.q_proj.weight.numpy(),
                           PanGuForCausalLM.from_pretrained(base_dir).pangu.layers[0].attention.q_proj.weight.numpy())


def test_every_finetune_config_names_only_known_fields():
    import glob
    import os

    from paddle_pangu.finetune.arguments import dataclass_types, read_config_file

    known = {f.name for d in dataclass_types() for f in __import__("dataclasses").fields(d)}
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "finetune")
    files = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert len(files) >= 8
    for path in files:
        fields = read_config_file(path)
        assert set(fields) <= known, (path, set(fields) - known)
        degrees = fields.get("tensor_parallel_degree", 1) * fields.get("pipeline_parallel_degree", 1) * \
            fields.get("sharding_parallel_degree", 1)
        world = int(open(path, encoding="utf-8").read().split("# world_size: ")[1].split()[0])
        assert world % degrees == 0, (path, world, degrees)


def test_auto_classes_open_a_pangu_directory(base_dir):
    import paddle_pangu.model  # noqa: F401  (registers PanGu with the Auto classes)
    from paddlenlp.transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from paddle_pangu.config import PanGuConfig
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    config = AutoConfig.from_pretrained(base_dir)
    assert isinstance(config, PanGuConfig) and config.hidden_size == 64
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    assert type(model) is PanGuForCausalLM
    direct = PanGuForCausalLM.from_pretrained(base_dir)
    ids = paddle.to_tensor([[11, 230, 57, 900]])
    model.eval(), direct.eval()
    np.testing.assert_array_equal(model(ids).numpy(), direct(ids).numpy())
    tok = AutoTokenizer.from_pretrained(base_dir)
    assert type(tok) is PanGuTokenizer and tok.encode_ids("中国科学院") == PanGuTokenizer.from_default().encode_ids("中国科学院")
    assert json.load(open(f"{base_dir}/tokenizer_config.json"))["tokenizer_class"] == "PanGuTokenizer"


def test_a_preset_model_is_read_by_the_one_preset_reader(tmp_path, sft_file):
    """`model_name_or_path: preset:NAME` is read by config/presets.model_preset, as `--model` is: the preset's
    shape, seeded by the run's seed; an unknown name is one UsageError naming the field and the presets."""
    from paddle_pangu.config import get_preset
    from paddle_pangu.errors import UsageError
    from paddle_pangu.finetune.trainer import load_model

    args = {"train_file": sft_file, "output_dir": str(tmp_path), "seed": 7}
    m, _, t = parse_finetune_args(None, {"model_name_or_path": "preset:tiny", **args})
    model, tok = load_model(m, t)
    want = get_preset("tiny")
    assert (model.config.hidden_size, model.config.num_layers) == (want.hidden_size, want.num_layers)
    again, _ = load_model(m, t)  # the same seed gives the same initial weights
    name = "pangu.embeddings.word_embeddings.weight"
    assert np.array_equal(model.state_dict()[name].numpy(), again.state_dict()[name].numpy())
    m, _, t = parse_finetune_args(None, {"model_name_or_path": "preset:nope", **args})
    with pytest.raises(UsageError, match=r"model_name_or_path 'preset:nope': unknown PanGu preset 'nope'"):
        load_model(m, t)


def test_a_json_finetune_config_is_read_by_the_one_json_reader(tmp_path, base_dir, sft_file):
    """`pangu finetune X.json`: the fields of a JSON file (the format PaddleNLP's own scripts take), with the
    command line winning; a broken file is one ConfigError naming it, its line and column."""
    path = tmp_path / "ft.json"
    path.write_text(json.dumps({"model_name_or_path": base_dir, "train_file": sft_file, "output_dir": str(tmp_path),
                                "max_steps": 3, "learning_rate": 1e-3}))
    m, _, t = parse_finetune_args(str(path), {"max_steps": 5})
    assert m.model_name_or_path == base_dir and t.max_steps == 5 and t.learning_rate == 1e-3
    path.write_text('{"model_name_or_path": "x",\n "max_steps": }')
    with pytest.raises(ConfigError, match=r"ft\.json: not valid JSON \(Expecting value: line 2, column 15"):
        parse_finetune_args(str(path))
    path.write_text('["max_steps", 3]')
    with pytest.raises(ConfigError, match=r"ft\.json: expected a fine-tune config: a mapping of field: value as a "
                                          r"JSON object, got list"):
        parse_finetune_args(str(path))
