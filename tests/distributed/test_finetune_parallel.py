"""Fine-tuning through the real PaddleNLP Trainer on 2 real CPU processes (gloo) equals one process:
tensor parallel 2 (checkpoint split at load, merged at save), a second tp2 run resumed from the
first one's checkpoint with resume_from_checkpoint, pp2, sharding stage 1 and LoRA under tp2, the
last two also with PaddleNLP's unified_checkpoint (docs/FINETUNE.md).

Tolerances: the same fp32 math with the mp all-reduce summing partial products in a different
order; the per-token loss differences are float32 rounding (~1e-6 relative), and over 4 AdamW steps
at lr 1e-3 they stay below 1e-5 relative in the logged losses."""
import json

import numpy as np
import paddle
import pytest

from launch_utils import launch

from paddle_pangu.finetune import parse_finetune_args, run_finetune

pytestmark = pytest.mark.distributed
WORKER = __file__.replace("test_finetune_parallel.py", "finetune_worker.py")
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    root = tmp_path_factory.mktemp("ft_parallel")
    paddle.seed(11)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.save_pretrained(str(root / "base"), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(root / "base"))
    paddle.seed(12)  # 4 layers (3 blocks + query layer): two per pipeline stage
    model = PanGuForCausalLM(get_preset("tiny", num_layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.save_pretrained(str(root / "base4"), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(root / "base4"))
    rows = [{"prompt": f"评论：{t}\n顾客对商品", "response": r} for t, r in
            [("很好用", "满意"), ("质量太差了", "不满意"), ("物流很快", "满意"), ("坏了", "不满意")] * 3]
    (root / "sft.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return root


def fields(root, out, **extra):
    base = dict(model_name_or_path=str(root / "base"), train_file=str(root / "sft.jsonl"), output_dir=str(out),
                max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, seed=3,
                max_length=24, report_to="none", save_steps=2, warmup_steps=0, disable_tqdm=True)
    base.update(extra)
    return base


def losses(history):
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def single(setup):
    return run_finetune(*parse_finetune_args(None, fields(setup, setup / "single")))


@pytest.fixture(scope="module")
def tp2_outputs(setup):
    """One tp2 run (4 steps, Trainer checkpoints at 2 and 4): checked against one process, and the
    checkpoint-2 a second tp2 run resumes from."""
    return launch(WORKER, nproc=2, args=[json.dumps(fields(setup, setup / "tp2", tensor_parallel_degree=2))],
                  timeout=600).outputs()


def test_tp2_trainer_equals_one_process_and_round_trips_the_checkpoint(setup, single, tp2_outputs):
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.model.weight_tables import split_state_dict

    outs = tp2_outputs
    ref = losses(single["history"])
    assert len(ref) == 4
    for out in outs:
        np.testing.assert_allclose(losses(out["history"]), ref, rtol=LOSS_RTOL)
    # from_pretrained split the full checkpoint: each rank holds its weight-table shard
    full = {k: v.numpy() for k, v in PanGuForCausalLM.from_pretrained(str(setup / "base")).state_dict().items()}
    for out in outs:
        shard = split_state_dict(full, 2, out["tp_rank"])
        np.testing.assert_array_equal(out["shards"]["q_proj"], shard["pangu.layers.0.attention.q_proj.weight"])
        np.testing.assert_array_equal(out["shards"]["fc_out"], shard["pangu.layers.0.mlp.fc_out.weight"])
        np.testing.assert_array_equal(out["shards"]["word"], shard["pangu.embeddings.word_embeddings.weight"])
    assert outs[0]["shards"]["q_proj"].shape[1] * 2 == full["pangu.layers.0.attention.q_proj.weight"].shape[1]
    # save_pretrained merged the trained shards back into one plain directory, exactly
    merged = {k: v.numpy() for k, v in PanGuForCausalLM.from_pretrained(str(setup / "tp2")).state_dict().items()}
    assert set(merged) == set(full)
    for out in outs:
        split = split_state_dict(merged, 2, out["tp_rank"])
        for name, value in out["final"].items():
            np.testing.assert_array_equal(split[name], value, err_msg=name)


def test_tp2_run_resumed_from_its_checkpoint_gives_the_same_losses(setup, single, tp2_outputs):
    """A second tp2 job resumes from the first one's checkpoint-2 (the Trainer's own format, not unified;
    what a job stopped after step 2 leaves: nothing after the save reaches the checkpoint)."""
    ckpt = setup / "tp2" / "checkpoint-2"
    assert ckpt.is_dir() and not (ckpt / "model.safetensors.index.json").exists()
    run = launch(WORKER, nproc=2, args=[json.dumps(fields(setup, setup / "tp2_resume", tensor_parallel_degree=2,
                                                          resume_from_checkpoint=str(ckpt)))],
                 timeout=600)
    for rank_out in run.outputs():
        np.testing.assert_allclose(losses(rank_out["history"]), losses(single["history"])[2:], rtol=LOSS_RTOL)


@pytest.fixture(scope="module")
def ref_acc2(setup):
    """One process with batch 2 x gradient_accumulation_steps 2: the reference of pp2 and sharding stage1."""
    ref_fields = fields(setup, setup / "ref_acc2", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                        model_name_or_path=str(setup / "base4"))
    return run_finetune(*parse_finetune_args(None, ref_fields))


def test_pp2_trainer_equals_one_process(setup, ref_acc2):
    """2 micro-batches of 2 (accumulate_steps): the same 4 rows per step as the reference."""
    extra = dict(pipeline_parallel_degree=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                 model_name_or_path=str(setup / "base4"))
    run = launch(WORKER, nproc=2, args=[json.dumps(fields(setup, setup / "pp2", **extra))], timeout=600)
    for out in run.outputs():
        np.testing.assert_allclose(losses(out["history"]), losses(ref_acc2["history"]), rtol=LOSS_RTOL)


def test_sharding_stage1_equals_one_process_and_resumes_from_its_unified_checkpoint(setup, ref_acc2):
    """2 replicas of batch 2 = the reference's 4 rows per step; with unified_checkpoint the run saves
    PaddleNLP's merged format (the optimizer states of both sharding ranks in one index) and a second
    2-process run resumed from checkpoint-2 repeats steps 3-4 exactly (same processes, same math)."""
    from paddle_pangu.config import PanGuConfig
    from paddle_pangu.model.weight_tables import plain_parameter_names

    out = setup / "sharding2"
    extra = dict(sharding="stage1", sharding_parallel_degree=2, per_device_train_batch_size=2,
                 model_name_or_path=str(setup / "base4"), unified_checkpoint=True)
    first = [r["history"] for r in launch(WORKER, nproc=2, args=[json.dumps(fields(setup, out, **extra))],
                                          timeout=600).outputs()]
    for history in first:
        np.testing.assert_allclose(losses(history), losses(ref_acc2["history"]), rtol=LOSS_RTOL)
    ckpt = out / "checkpoint-2"
    index = json.loads((ckpt / "optimizer.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
    names = set(plain_parameter_names(PanGuConfig.from_pretrained(str(setup / "base4"))))
    assert set(json.loads((ckpt / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]) == names
    assert {k.split("/")[0] for k in index} == names  # every parameter's moments, whichever rank held them
    resumed = launch(WORKER, nproc=2, args=[json.dumps(fields(setup, out, **extra, resume_from_checkpoint=str(ckpt)))],
                     timeout=600).outputs()
    for history, again in zip(first, resumed):
        np.testing.assert_array_equal(losses(again["history"]), losses(history)[2:])


def test_lora_under_tp2_trains_only_the_adapters_and_its_unified_checkpoint_resumes_on_one_process(setup, tmp_path):
    """With unified_checkpoint the tp2 LoRA run writes PaddleNLP's peft_model-* files with each adapter
    merged from the two ranks' shards (exactly); one process resumes from its checkpoint-2 (steps 3-4
    within LOSS_RTOL of tp2, as everywhere in this module) and `pangu merge-lora` folds the output in."""
    from safetensors import safe_open

    from paddle_pangu.finetune.lora import merge_lora

    out_dir = setup / "tp2_lora"
    lora = dict(lora=True, lora_rank=4, learning_rate=1e-2, unified_checkpoint=True)
    run = launch(WORKER, nproc=2, args=[json.dumps(fields(setup, out_dir, tensor_parallel_degree=2, **lora))],
                 timeout=600)
    outs = run.outputs()
    for out in outs:
        history = losses(out["history"])
        assert len(history) == 4 and history[-1] < history[0], history
        final = out["final"]
        assert any("lora_A" in k for k in final) and any("lora_B" in k and abs(v).max() > 0 for k, v in final.items())
        q_proj = next(v for k, v in final.items() if k.endswith("layers.0.attention.q_proj.weight"))
        np.testing.assert_array_equal(q_proj, out["shards"]["q_proj"])  # the base shard did not move
    assert (out_dir / "lora_config.json").exists()
    index = json.loads((out_dir / "peft_model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
    saved = {}
    for file in set(index.values()):
        with safe_open(str(out_dir / file), framework="np") as fh:
            saved.update({k: fh.get_tensor(k) for k in fh.keys()})
    # column-parallel q_proj: lora_B holds the rank's output columns; row-parallel out_proj: lora_A its input rows
    for name, axis in (("layers.0.attention.q_proj.lora_B", 1), ("layers.0.attention.out_proj.lora_A", 0),
                       ("layers.0.attention.q_proj.lora_A", None)):
        for out in outs:
            local = next(v for k, v in out["final"].items() if k.endswith(name))
            full = saved[f"pangu.{name}"]
            part = full if axis is None else np.split(full, 2, axis=axis)[out["tp_rank"]]
            np.testing.assert_array_equal(part, local, err_msg=name)

    one = run_finetune(*parse_finetune_args(None, fields(setup, tmp_path / "tp1_lora", **lora,
                                                         resume_from_checkpoint=str(out_dir / "checkpoint-2"))))
    np.testing.assert_allclose(losses(one["history"]), losses(outs[0]["history"])[2:], rtol=LOSS_RTOL)
    merged = merge_lora(str(setup / "base"), str(out_dir), str(tmp_path / "merged"))
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="np") as fh, \
            safe_open(str(setup / "base" / "model.safetensors"), framework="np") as base:
        w = "pangu.layers.0.attention.q_proj.weight"
        a, b = saved["pangu.layers.0.attention.q_proj.lora_A"], saved["pangu.layers.0.attention.q_proj.lora_B"]
        scale = 16 / 4  # lora_alpha default 16 / lora_rank 4
        expected = base.get_tensor(w) + scale * (a @ b)
        # fp32: a length-4 dot product, a scale and an add, rounded in paddle and again here: 2 x (4 + 2) u
        # of the magnitudes involved
        bound = 12 * 2.0 ** -24 * (np.abs(base.get_tensor(w)) + scale * (np.abs(a) @ np.abs(b)))
        assert (np.abs(fh.get_tensor(w) - expected) <= bound).all(), merged
        assert not np.array_equal(fh.get_tensor(w), base.get_tensor(w))
