"""`pangu finetune --device npu` on the simulated Ascend device (PANGU_TEST_NPU=1 loads devices/sim_npu in
every `pangu` process and in the ranks `--nproc 2` launches), driven as a user runs it, against the CPU run.

fp32 bound (npu one process, npu tp2 over xccl, LoRA on npu, each against the one-process CPU run). At fp32
the npu runs Paddle's own CPU kernels through the custom-device fallback, or plugin kernels that compute the
same exactly (copies, fills, one-rounding products), except the AdamW update (the plugin's fp32 adamw rounds
in `pangu_adamw_`'s order, the Trainer's CPU run uses Paddle's jit adamw: per step a few roundings of
|w| + lr per weight, i.e. a relative weight perturbation of order u, less than one GEMM's rounding below)
and the order of fp32 sums: the attention is the plugin's `flash_attention_npu` op
(reference attention in its own loops: the q.k dot products over head_dim D, the softmax denominator and
the probabilities x values over the S keys) instead of the CPU path's MKL GEMMs, and under tp2 each
row-parallel GEMM adds two half contractions (length F/2 or H/2) and the vocab-parallel log-sum-exp adds
two half sums over V. With the round-off of a reordered sum of n terms growing like sqrt(n) u (u = 2^-24),
the loss' relative difference is at most (sqrt(V) + L (6 sqrt(F) + sqrt(D) + 2 sqrt(S))) u: the head's sum
over the vocabulary, 6 GEMMs per layer (Q, K, V, out, fc_in, fc_out) with contraction at most F, and the
three attention sums per layer (tests/distributed/test_finetune_nproc.py has the same argument for tp2 ->
tp1). Later steps add lr x that relative gradient error to each weight (AdamW moves a weight by about lr),
which moves the loss by far less than the bound (lr = 1e-3), so every step is held to it.

bf16 bound (O2 through the Trainer's AMP on npu, against the npu fp32 run): tests/unit/test_npu_amp.py's
first-order argument. The plugin's half kernels compute in fp32 and round once, so at step 1 (same weights)
|loss_bf16 - loss_fp32| <= 2 (13 L + 5) u_bf16 S, with u_bf16 = 2^-8, c = 13 L + 5 roundings on the path
from the embedding to a logit, and S = sum_v |p_v - y_v| (|h| . |E_v|) the token's sensitivity of its
loss to relative errors in the logits' factors (Higham's dot-product bound; dLoss/dz = p - y), here the
largest over every loss token of the data set (the batch's loss is a mean over some of them), computed
from the base model in fp32; the factor 2 covers second-order terms. Step k is held to k times that.
A run resumed from the bf16 run's checkpoint repeats its later steps exactly (same kernels, same batches).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.distributed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from npu_run import pangu as _npu_pangu  # noqa: E402  (tests/npu_run.py)


def pangu(*args, npu=True, timeout=900):
    return _npu_pangu(*args, npu=npu, timeout=timeout)


STEPS = 4
U32, UBF16 = 2.0 ** -24, 2.0 ** -8
PROMPT = "评论：很好用\n顾客对商品"


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def history(out):
    with open(os.path.join(out, "finetune_history.json"), encoding="utf-8") as fh:
        losses = {h["step"]: h["loss"] for h in json.load(fh) if "loss" in h}
    assert sorted(losses) == list(range(1, STEPS + 1)), losses
    return np.array([losses[s] for s in range(1, STEPS + 1)])


def metrics(stdout):
    """The metrics JSON `pangu finetune` prints last (rank 0's, in a worker log under --nproc)."""
    return json.loads(stdout[stdout.rindex("\n{") + 1:stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("ft_npu")
    rows = [{"prompt": f"评论：{t}\n顾客对商品", "response": r} for t, r in
            [("很好用", "满意"), ("质量太差", "不满意"), ("物流很快", "满意"), ("坏了", "不满意")] * 4]
    data = root / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    cfg = root / "ft.yaml"
    cfg.write_text(f"model_name_or_path: {base_dir}\ntrain_file: {data}\nmax_steps: {STEPS}\n"
                   "per_device_train_batch_size: 4\nlearning_rate: 1.0e-3\nlogging_steps: 1\nsave_steps: 100\n"
                   "seed: 42\n", encoding="utf-8")
    return root, str(cfg)


def _finetune(setup, name, *flags, npu=True):
    root, cfg = setup
    out = root / name
    proc = ok(pangu("finetune", cfg, "--output_dir", out, *flags, npu=npu))
    return out, proc


def finetune_on_cpu(setup, name, **fields):
    """The CPU reference, in this process (PANGU_TEST_NPU is not set here): the same parse_finetune_args +
    run_finetune the `pangu finetune` command runs, without one more process start-up."""
    from paddle_pangu.finetune.arguments import parse_finetune_args
    from paddle_pangu.finetune.trainer import run_finetune

    root, cfg = setup
    m = run_finetune(*parse_finetune_args(cfg, {"output_dir": str(root / name), "device": "cpu", **fields}))
    assert m["device"] == "cpu"
    return root / name


@pytest.fixture(scope="module")
def cpu_run(setup):
    return finetune_on_cpu(setup, "cpu")


@pytest.fixture(scope="module")
def npu_run(setup):
    out, proc = _finetune(setup, "npu", "--device", "npu")
    m = metrics(proc.stdout)
    assert m["device"] == "npu:0" and m["attention_impl"] == ["npu"], m  # the Ascend attention op ran
    return out


def fp32_bound(config_path):
    with open(config_path, encoding="utf-8") as fh:
        c = json.load(fh)
    d = c["hidden_size"] // c["num_attention_heads"]
    s = c["max_position_embeddings"]  # the keys one query sums over, at most
    return (math.sqrt(c["vocab_size"]) + c["num_layers"] * (6 * math.sqrt(c["ffn_hidden_size"]) + math.sqrt(d)
                                                          + 2 * math.sqrt(s))) * U32


def test_finetune_on_npu_gives_the_cpu_losses_and_its_model_the_cpu_greedy_tokens(cpu_run, npu_run, base_dir):
    cpu, npu = history(cpu_run), history(npu_run)
    rel = fp32_bound(os.path.join(base_dir, "config.json"))
    assert (np.abs(npu - cpu) <= rel * np.abs(cpu)).all(), (npu, cpu, rel)
    assert cpu[-1] < cpu[0]  # it trained
    # the npu run's output directory in `pangu generate --device npu` against the CPU run's model, greedy
    from paddle_pangu.inference.generation import generate_text
    from paddle_pangu.inference.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(cpu_run))
    on_cpu = generate_text(model, tok, [PROMPT], max_new_tokens=4)[0]
    proc = ok(pangu("generate", "--model", npu_run, "--prompt", PROMPT, "--max-new-tokens", "4", "--no-stream",
                    "--device", "npu"))
    assert on_cpu and proc.stdout.strip().splitlines()[-1] == (PROMPT + on_cpu).splitlines()[-1], (proc.stdout, on_cpu)


def test_tensor_parallel_2_on_npu_over_xccl_gives_the_one_process_cpu_losses(setup, cpu_run, base_dir):
    out, _ = _finetune(setup, "npu_tp2", "--device", "npu", "--nproc", "2", "--tensor_parallel_degree", "2")
    for rank in (0, 1):  # each rank on its own npu, the process group xccl through the plugin
        log = (out / "launch_logs" / f"workerlog.{rank}").read_text(errors="replace")
        assert "pangu runtime:" in log and "simulated npu plugin" in log, log[-2000:]
    assert metrics((out / "launch_logs" / "workerlog.0").read_text(errors="replace"))["device"] == "npu:0"
    cpu, tp2 = history(cpu_run), history(out)
    rel = fp32_bound(os.path.join(base_dir, "config.json"))
    assert (np.abs(tp2 - cpu) <= rel * np.abs(cpu)).all(), (tp2, cpu, rel)


def test_lora_on_npu_gives_the_cpu_lora_losses(setup, base_dir):
    cpu = finetune_on_cpu(setup, "lora_cpu", lora=True)
    npu, proc = _finetune(setup, "lora_npu", "--device", "npu", "--lora", "true")
    assert metrics(proc.stdout)["device"] == "npu:0"
    assert os.path.isfile(npu / "lora_config.json")
    cpu, npu = history(cpu), history(npu)
    rel = fp32_bound(os.path.join(base_dir, "config.json"))
    assert (np.abs(npu - cpu) <= rel * np.abs(cpu)).all(), (npu, cpu, rel)
    assert cpu[-1] < cpu[0]


def max_token_sensitivity(base_dir, data_path):
    """max over the loss tokens of sum_v |p_v - y_v| (|h| . |E_v|), base model in fp32 (module docstring)."""
    import paddle

    from paddle_pangu.finetune.examples import build_examples
    from paddle_pangu.inference.loading import load_tokenizer
    from paddle_pangu.model import PanGuForCausalLM

    paddle.set_device("cpu")
    model = PanGuForCausalLM.from_pretrained(base_dir)
    model.eval()
    rows = [json.loads(line) for line in open(data_path, encoding="utf-8")]
    examples = build_examples([(r["prompt"], r["response"]) for r in rows], load_tokenizer(base_dir),
                              model.config.max_position_embeddings, model.config.eod_token_id)
    worst = 0.0
    emb = model.pangu.embeddings.word_embeddings.weight  # [V, H]
    with paddle.no_grad():
        for ex in examples:
            hidden = model.pangu(paddle.to_tensor([ex.input_ids]))  # [1, S, H] after the final layer norm
            logits = paddle.matmul(hidden, emb, transpose_y=True)  # [1, S, V]
            probs = paddle.nn.functional.softmax(logits, axis=-1)
            onehot = paddle.nn.functional.one_hot(paddle.to_tensor([ex.labels]), logits.shape[-1])
            scale = paddle.matmul(hidden.abs(), emb.abs(), transpose_y=True)
            per_token = ((probs - onehot).abs() * scale).sum(-1).numpy()[0]  # [S]
            worst = max(worst, float(per_token[np.array(ex.loss_mask) > 0].max()))
    return worst


def test_bf16_o2_on_npu_within_the_bf16_rounding_bound_of_the_fp32_run(setup, npu_run, base_dir):
    out, proc = _finetune(setup, "npu_bf16", "--device", "npu", "--bf16", "true", "--fp16_opt_level", "O2",
                          "--save_steps", "2")
    assert metrics(proc.stdout)["device"] == "npu:0"
    # the checkpoint of bf16 parameters on npu was written (paddle.save's npu_identity, a plugin kernel)
    assert os.path.getsize(out / "checkpoint-2" / "model_state.pdparams") > 0
    with open(os.path.join(base_dir, "config.json"), encoding="utf-8") as fh:
        layers = json.load(fh)["num_layers"]
    fp32, bf16 = history(npu_run), history(out)
    step1 = 2 * (13 * layers + 5) * UBF16 * max_token_sensitivity(base_dir, setup[0] / "sft.jsonl")
    bounds = step1 * np.arange(1, STEPS + 1)
    assert np.isfinite(bf16).all() and (np.abs(bf16 - fp32) <= bounds).all(), (bf16, fp32, bounds)
    assert not np.array_equal(bf16, fp32), "bf16 changed nothing: the run did not compute in bf16"
    # resumed from checkpoint-2 (bf16 parameters, fp32 master weights, npu rng state) by a new process, the way a
    # user resumes (the safe loader: no --trust-pickle): the same computation, so the same steps 3 and 4
    resumed = setup[0] / "npu_bf16_resumed"
    ok(pangu("finetune", setup[1], "--output_dir", resumed, "--device", "npu", "--bf16", "true", "--fp16_opt_level",
             "O2", "--resume_from_checkpoint", out / "checkpoint-2"))
    with open(resumed / "finetune_history.json", encoding="utf-8") as fh:
        again = {h["step"]: h["loss"] for h in json.load(fh) if "loss" in h}
    assert sorted(again) == [3, 4] and [again[3], again[4]] == list(bf16[2:]), (again, bf16)


def test_npu_without_the_plugin_is_refused_before_anything_is_written(setup):
    """This process has no plugin loaded; the CLI turns the DeviceError into its one `pangu finetune: error:`
    line (the same select_device error tests/integration/test_npu_inference.py checks through the command)."""
    from paddle_pangu.errors import PanGuError
    from paddle_pangu.finetune.arguments import parse_finetune_args

    root, cfg = setup
    with pytest.raises(PanGuError, match=r"device='npu' requested but Paddle has no 'npu' custom device"):
        parse_finetune_args(cfg, {"output_dir": str(root / "refused"), "device": "npu"})
    assert not (root / "refused").exists()
