"""`pangu finetune --nproc 2` with tensor_parallel_degree 2, as a user runs it: the launched job
trains, a second `--nproc 2` run resumes from its checkpoint (the Trainer's rng_state_2.pth holds
paddle GeneratorStates: loaded without --trust-pickle) with the same losses, and the console of the
resumed run shows only its own steps although the launcher appends to the same worker log."""
import json
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


def test_nproc_tp2_finetune_resumes_and_shows_only_this_runs_steps(tmp_path):
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    base = tmp_path / "base"
    paddle.seed(7)
    PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(
        str(base), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(base))
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"评论：{t}\n顾客对商品", "response": r}, ensure_ascii=False)
                              for t, r in [("很好用", "满意"), ("质量太差", "不满意")] * 8) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    common = ["--model_name_or_path", base, "--train_file", data, "--output_dir", out, "--max_steps", "6",
              "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
              "--save_steps", "3", "--tensor_parallel_degree", "2", "--nproc", "2"]
    first = pangu("finetune", *common)
    assert steps_shown(first) == [1, 2, 3, 4, 5, 6], first[-2000:]
    full = history(out)
    assert (out / "checkpoint-3" / "rng_state_2.pth").is_file() and (out / "model.safetensors").is_file()

    resumed = pangu("finetune", *common, "--resume_from_checkpoint", out / "checkpoint-3")
    assert steps_shown(resumed) == [4, 5, 6], resumed[-2000:]  # not the first run's lines again
    log = (out / "launch_logs" / "workerlog.0").read_text(encoding="utf-8", errors="replace")
    assert "step 1/6: loss" in log  # the launcher did append: the first run's lines are still in the file
    again = history(out)
    assert sorted(again) == [4, 5, 6]
    # the same two processes, kernels and batches: the resumed steps are the same computation
    np.testing.assert_array_equal([again[s] for s in (4, 5, 6)], [full[s] for s in (4, 5, 6)])


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
