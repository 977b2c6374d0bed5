"""`pangu finetune --nproc 2` with tensor_parallel_degree 2 and PaddleNLP's `unified_checkpoint`, as a user
runs it (a YAML args file): the launched job trains and saves PaddleNLP's own checkpoint format; a second
`--nproc 2` run resumes from it with the same losses (the Trainer's rng_state_2.pth holds paddle
GeneratorStates: loaded without --trust-pickle), and the console of the resumed run shows only its own
steps although the launcher appends to the same worker log; one process (tp1) resumes the same tp2
checkpoint; PaddleNLP's Auto class opens the checkpoint and the output directory.

tp2 -> tp1 bound: the weights and optimizer moments are loaded exactly (the checkpoint holds the merged
fp32 tensors), so the step-4 loss differs from the tp2 run's only by the order of fp32 sums: each
row-parallel GEMM adds two half contractions (length F/2 or H/2) and the vocab-parallel log-sum-exp two
half sums over V. With round-off growing like sqrt(n) * u for a reordered sum of n terms (u = 2^-24), the
loss' relative difference is at most (sqrt(V) + 6 * L * sqrt(F)) * u: the head's sum over the vocabulary
plus 6 GEMMs per layer (Q, K, V, out, fc_in, fc_out) with contraction at most F. The later steps add
lr x that relative gradient error to each weight (Adam's update is about lr per weight), which changes the
loss by far less than the bound (lr = 1e-3), so steps 5 and 6 are held to the same bound. Zeroing the
loaded moments moves step 5 by ~3e-4 relative (measured once, docs/FINETUNE.md), well outside it."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.distributed


def pangu(*args):
    proc = subprocess.run([sys.executable, "-m", "paddle_pangu.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def steps_shown(stdout):
    return [int(m) for m in re.findall(r"^step (\d+)/6: loss", stdout, re.M)]


def history(out):
    with open(os.path.join(out, "finetune_history.json"), encoding="utf-8") as fh:
        return {h["step"]: h["loss"] for h in json.load(fh) if "loss" in h}


def write_yaml(path, fields):
    path.write_text("".join(f"{k}: {json.dumps(str(v) if isinstance(v, os.PathLike) else v)}\n"
                            for k, v in fields.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tp2(tmp_path_factory, base_dir):
    """One uninterrupted `pangu finetune tp2.yaml --nproc 2` (6 steps, unified checkpoints at 3 and 6):
    the reference of the tp2 and tp1 resumes and the directory the format checks open."""
    root = tmp_path_factory.mktemp("ft_nproc")
    data = root / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"评论：{t}\n顾客对商品", "response": r}, ensure_ascii=False)
                              for t, r in [("很好用", "满意"), ("质量太差", "不满意")] * 8) + "\n", encoding="utf-8")
    fields = dict(model_name_or_path=base_dir, train_file=data, max_steps=6, per_device_train_batch_size=4,
                  learning_rate=1e-3, logging_steps=1, save_steps=3, unified_checkpoint=True)
    out = root / "out"
    config = write_yaml(root / "tp2.yaml", dict(fields, output_dir=out, tensor_parallel_degree=2))
    stdout = pangu("finetune", config, "--nproc", "2")
    return dict(root=root, out=out, config=config, fields=fields, stdout=stdout, history=history(out))


def test_nproc_tp2_unified_checkpoint_resumes_and_shows_only_this_runs_steps(tp2):
    out = tp2["out"]
    assert steps_shown(tp2["stdout"]) == [1, 2, 3, 4, 5, 6], tp2["stdout"][-2000:]
    full = tp2["history"]
    assert (out / "checkpoint-3" / "rng_state_2.pth").is_file() and (out / "model.safetensors").is_file()
    assert (out / "checkpoint-3" / "model.safetensors.index.json").is_file()  # PaddleNLP's unified format

    resumed = pangu("finetune", tp2["config"], "--nproc", "2", "--resume_from_checkpoint", out / "checkpoint-3")
    assert steps_shown(resumed) == [4, 5, 6], resumed[-2000:]  # not the first run's lines again
    log = (out / "launch_logs" / "workerlog.0").read_text(encoding="utf-8", errors="replace")
    assert "step 1/6: loss" in log  # the launcher did append: the first run's lines are still in the file
    again = history(out)
    assert sorted(again) == [4, 5, 6]
    # the same two processes, kernels and batches: the resumed steps are the same computation
    np.testing.assert_array_equal([again[s] for s in (4, 5, 6)], [full[s] for s in (4, 5, 6)])


def test_a_tp2_unified_checkpoint_resumes_on_one_process(tp2):
    """PaddleNLP 3.0.0b4 alone loads only the first of the checkpoint's two model files on one process
    (the rest kept its initial values) and then dies in AdamW (finetune/unified.py)."""
    from paddle_pangu.config import PanGuConfig

    out1 = tp2["root"] / "tp1"
    config = write_yaml(tp2["root"] / "tp1.yaml", dict(tp2["fields"], output_dir=out1,
                                                       resume_from_checkpoint=tp2["out"] / "checkpoint-3"))
    stdout = pangu("finetune", config)
    assert "loaded the unified checkpoint" in stdout and steps_shown(stdout) == [4, 5, 6], stdout[-2000:]
    assert "no one-process RNG state (rng_state_2.pth)" in stdout, stdout[-2000:]
    cfg = PanGuConfig.from_pretrained(str(tp2["out"]))
    rtol = (math.sqrt(cfg.vocab_size) + 6 * cfg.num_layers * math.sqrt(cfg.ffn_hidden_size)) * 2.0 ** -24
    one, ref = history(out1), tp2["history"]
    np.testing.assert_allclose([one[s] for s in (4, 5, 6)], [ref[s] for s in (4, 5, 6)], rtol=rtol, atol=0)


def test_the_unified_checkpoint_is_paddlenlps_format_and_opens_with_the_auto_class(tp2):
    """What a PaddleNLP user opens: the index files name every tensor and its file, the optimizer holds
    Adam's 4 states of every parameter at the plain (merged) shape, and AutoModelForCausalLM loads the
    checkpoint to exactly the weights `save_pretrained` merged into the output directory."""
    from paddlenlp.transformers import AutoModelForCausalLM
    from safetensors import safe_open

    from paddle_pangu.config import PanGuConfig
    from paddle_pangu.model.weight_tables import plain_param_shapes

    ckpt = tp2["out"] / "checkpoint-6"
    shapes = plain_param_shapes(PanGuConfig.from_pretrained(str(tp2["out"])))
    for index_name, prefix, keys in (
            ("model.safetensors.index.json", "model", {n: s for n, s in shapes.items()}),
            ("optimizer.safetensors.index.json", "optimizer",
             {f"{n}/{acc}": (s if acc.startswith("moment") else (1,)) for n, s in shapes.items()
              for acc in ("moment1_0", "moment2_0", "beta1_pow_acc_0", "beta2_pow_acc_0")})):
        weight_map = json.loads((ckpt / index_name).read_text(encoding="utf-8"))["weight_map"]
        assert set(weight_map) == set(keys), index_name
        files = sorted(set(weight_map.values()))
        assert files == [f"{prefix}-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
        for file in files:
            with safe_open(str(ckpt / file), framework="np") as fh:
                for key in fh.keys():
                    assert weight_map[key] == file, key
                    assert tuple(fh.get_slice(key).get_shape()) == tuple(keys[key]), key
    saved = AutoModelForCausalLM.from_pretrained(str(ckpt)).state_dict()
    final = AutoModelForCausalLM.from_pretrained(str(tp2["out"]))
    assert type(final).__name__ == "PanGuForCausalLM"
    final = final.state_dict()
    assert set(saved) == set(final)
    for name in final:
        np.testing.assert_array_equal(saved[name].numpy(), final[name].numpy(), err_msg=name)


def test_a_pp2_finetune_output_loads_in_generate(tmp_path):
    """A pipeline-parallel fine-tune saves model_state.pp00/pp01.pdparams; `pangu generate` merges the
    stages (it died with a raw OSError): same text as a plain directory holding the stages' union."""
    import paddle

    from paddle_pangu.config import PanGuConfig, get_preset
    from paddle_pangu.io.safe_load import load_pdparams
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    base = tmp_path / "base"
    paddle.seed(5)
    # 4 = 3 blocks + the query layer: two stages of two
    PanGuForCausalLM(get_preset("tiny", num_layers=4, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)).save_pretrained(str(base), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(base))
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"评论：{t}\n顾客对商品", "response": r}, ensure_ascii=False)
                              for t, r in [("很好用", "满意"), ("质量太差", "不满意")] * 4) + "\n", encoding="utf-8")
    out = tmp_path / "pp2"
    pangu("finetune", "--model_name_or_path", base, "--train_file", data, "--output_dir", out, "--max_steps", "2",
          "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-2",
          "--save_steps", "100", "--pipeline_parallel_degree", "2", "--nproc", "2")
    stages = [load_pdparams(str(out / f"model_state.pp0{s}.pdparams")) for s in (0, 1)]
    emb = "pangu.embeddings.word_embeddings.weight"  # tied: on the first and the last stage
    np.testing.assert_array_equal(stages[0][emb], stages[1][emb])
    union = {**stages[0], **stages[1]}
    plain = PanGuForCausalLM(PanGuConfig.from_pretrained(str(out)))
    missing, unexpected = plain.set_state_dict(union)
    assert not missing and not unexpected, (missing, unexpected)
    assert not np.array_equal(union[emb], PanGuForCausalLM.from_pretrained(str(base)).state_dict()[emb].numpy())
    plain.save_pretrained(str(tmp_path / "plain"), safe_serialization=True)
    texts = [pangu("generate", "--model", d, "--prompt", "北京", "--max-new-tokens", "6").splitlines()[-1]
             for d in (out, tmp_path / "plain")]
    assert texts[0] == texts[1] and texts[0].startswith("北京") and len(texts[0]) > 2, texts
