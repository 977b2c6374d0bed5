"""`pangu finetune` the way a user drives it: the command in a subprocess, the files it writes
opened as a user would (resume from its checkpoints, generate / evaluate on its outputs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def pangu(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "paddle_pangu.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc, command):
    """The process failed with exit 2 and exactly one `pangu <command>: error:` line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith(f"pangu {command}: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def config(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("ft")
    rows = [{"prompt": f"评论：{t}\n顾客对商品", "response": r} for t, r in
            [("很好用", "满意"), ("质量太差", "不满意"), ("物流很快", "满意"), ("坏了", "不满意")] * 4]
    data = root / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    cfg = root / "ft.yaml"
    cfg.write_text(f"model_name_or_path: {base_dir}\ntrain_file: {data}\nmax_steps: 6\n"
                   "per_device_train_batch_size: 4\nlearning_rate: 1.0e-3\nlogging_steps: 1\nsave_steps: 3\n"
                   "seed: 42\n", encoding="utf-8")
    return str(cfg)


def losses(out_dir):
    with open(os.path.join(out_dir, "finetune_history.json"), encoding="utf-8") as fh:
        return {h["step"]: h["loss"] for h in json.load(fh) if "loss" in h}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, config):
    out = tmp_path_factory.mktemp("full")
    ok(pangu("finetune", config, "--output_dir", out))
    return str(out)


def test_cli_resume_from_a_checkpoint_continues_the_same_losses(full_run, config, tmp_path):
    """The Trainer's rng_state.pth (paddle GeneratorState inside) loads without --trust-pickle."""
    full = losses(full_run)
    assert sorted(full) == [1, 2, 3, 4, 5, 6] and os.path.isfile(f"{full_run}/checkpoint-3/rng_state.pth")
    resumed_dir = tmp_path / "resumed"
    ok(pangu("finetune", config, "--output_dir", resumed_dir, "--resume_from_checkpoint", f"{full_run}/checkpoint-3"))
    resumed = losses(resumed_dir)
    assert sorted(resumed) == [4, 5, 6]
    # same process count, same kernels, same batches: the resumed steps are the same computation
    np.testing.assert_array_equal([resumed[s] for s in (4, 5, 6)], [full[s] for s in (4, 5, 6)])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, config):
    out = tmp_path_factory.mktemp("lora")
    ok(pangu("finetune", config, "--output_dir", out, "--lora", "true", "--max_steps", "2", "--save_steps", "100",
             "--learning_rate", "1e-2"))
    return str(out)


@pytest.fixture(scope="module")
def train_final(tmp_path_factory):
    """`pangu train` on synthetic tokens (tiny preset): the final_model a first run ends with."""
    out = tmp_path_factory.mktemp("train")
    ok(pangu("train", "--config", ROOT / "configs" / "pretrain" / "tiny_cpu_single.yaml", "--output-dir", out,
             "--max-steps", "1", "--set", "data.synthetic.num_samples=16", "--set", "data.seq_len=16"))
    return str(out / "final_model")


AUTO_CHECK = r"""
import json, sys
import numpy as np
import paddle_pangu  # only this and paddlenlp: registration must not need paddle_pangu.model imported by hand
from paddlenlp.transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
import paddle
out = {}
for d in sys.argv[1:]:
    config, model, tok = AutoConfig.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    model.eval()
    ids = tok.encode_ids("中国科学院")
    result = model(paddle.to_tensor([ids]))
    logits = result.logits if hasattr(result, "logits") else result
    out[d] = [type(config).__name__, type(model).__name__, type(tok).__name__, ids, logits.numpy().tolist()]
print("AUTO" + json.dumps(out))
"""


def plain_logits(model_dir, ids):
    import paddle

    from paddle_pangu.model import PanGuForCausalLM

    model = PanGuForCausalLM.from_pretrained(model_dir)
    model.eval()
    out = model(paddle.to_tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out).numpy()


def test_every_model_directory_opens_with_the_auto_classes_and_generate(full_run, lora_run, train_final, base_dir,
                                                                        tmp_path):
    from paddle_pangu.tokenizer import PanGuTokenizer

    from paddle_pangu.cli import main

    merged, resharded, hf, converted = (tmp_path / n for n in ("merged", "resharded", "hf", "converted"))
    # the same commands in this process (their own subprocess paths are tested in test_convert / test_reshard /
    # test_lora): what is checked here is the directories they write, opened the way a PaddleNLP user opens them
    for argv in (["merge-lora", "--base", base_dir, "--lora", lora_run, "--output", merged],
                 ["reshard", train_final, "--output", resharded, "--mp", "1"],
                 ["convert", "--to", "hf", train_final, "--output", hf],
                 ["convert", "--from", "hf", hf, "--output", converted]):
        assert main([str(a) for a in argv]) == 0, argv
    dirs = [train_final, full_run, str(merged), str(resharded), str(converted)]
    for d in dirs:
        assert json.load(open(os.path.join(d, "config.json")))["architectures"] == ["PanGuForCausalLM"], d
    proc = ok(subprocess.run([sys.executable, "-c", AUTO_CHECK, *dirs], capture_output=True, text=True, timeout=600))
    opened = json.loads(proc.stdout.split("AUTO", 1)[1])
    expected_ids = PanGuTokenizer.from_default().encode_ids("中国科学院")
    for d in dirs:
        config_cls, model_cls, tok_cls, ids, logits = opened[d]
        assert (config_cls, model_cls, tok_cls) == ("PanGuConfig", "PanGuForCausalLM", "PanGuTokenizer"), d
        assert ids == expected_ids, d
        # the Auto class loaded this directory's weights (a fresh init would differ in every logit)
        np.testing.assert_array_equal(np.asarray(logits, "float32"), plain_logits(d, ids), err_msg=d)
    # `pangu generate` loads the round-tripped directory (the trainer's own final model is generated from in
    # test_readme_commands)
    gen = ok(pangu("generate", "--model", converted, "--prompt", "北京", "--max-new-tokens", "2"))
    assert gen.stdout.strip(), converted


def test_a_layout_needing_more_processes_is_refused_with_the_nproc_command(config, tmp_path):
    """tensor_parallel_degree 2 on one process used to train without tensor parallelism, silently."""
    proc = pangu("finetune", config, "--tensor_parallel_degree", "2", "--learning_rate", "1e-4",
                 "--output_dir", tmp_path / "out")
    line = one_line_error(proc, "finetune")
    assert "tensor_parallel_degree=2 needs 2 processes" in line and config in line, line
    suggested = line.split("run `", 1)[1].rstrip("`")
    assert suggested == (f"pangu finetune {config} --tensor_parallel_degree 2 --learning_rate 0.0001 "
                         f"--output_dir {tmp_path / 'out'} --nproc 2"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["do_export", "do_predict", "sequence_parallel"])
def test_fields_pangu_finetune_would_ignore_are_refused(config, tmp_path, capsys, field):
    from paddle_pangu.cli import main

    code = main(["finetune", config, f"--{field}", "true", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert f"pangu finetune: error: {config}: {field}=True is not supported" in err, err[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["generate", "--prompt", "北京"], ["evaluate", "--task", "reviews", "--limit", "2"]],
                         ids=lambda c: c[0])
def test_a_lora_output_directory_names_merge_lora(lora_run, base_dir, command):
    """A LoRA fine-tune's output holds adapters only: the error names the merge-lora command (with the
    base the adapters were trained on, from lora_config.json) instead of a raw OSError traceback."""
    line = one_line_error(pangu(command[0], "--model", lora_run, *command[1:]), command[0])
    assert f"`pangu merge-lora --base {base_dir} --lora {lora_run} --output {lora_run}_merged`" in line, line
