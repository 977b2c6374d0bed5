"""LoRA through PaddleNLP PEFT on PanGu's Q/K/V/out and FFN in/out: only adapters train, the merged
plain model gives the adapted model's logits, `pangu merge-lora` writes a loadable directory."""
import json

import numpy as np
import paddle
import pytest

from paddle_pangu.finetune import parse_finetune_args, run_finetune

TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    root = tmp_path_factory.mktemp("lora")
    paddle.seed(5)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.save_pretrained(str(root / "base"), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(root / "base"))
    rows = [{"prompt": f"问题：{q}\n回答：", "response": a} for q, a in [("天空", "蓝色"), ("草地", "绿色")] * 4]
    (root / "sft.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return root


def test_lora_trains_only_adapters_and_merges_to_the_adapted_logits(setup):
    from paddle_pangu.cli import main
    from paddle_pangu.model import PanGuForCausalLM

    fields = dict(model_name_or_path=str(setup / "base"), train_file=str(setup / "sft.jsonl"),
                  output_dir=str(setup / "adapters"), lora=True, lora_rank=4, lora_alpha=8, max_steps=4,
                  per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, report_to="none",
                  max_length=16, disable_tqdm=True)
    adapted = {}

    from paddlenlp.trainer import TrainerCallback

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            ids = paddle.to_tensor([[11, 230, 57, 900, 4, 31]])
            model.eval()
            adapted["logits"] = model(ids).numpy()
            plain = model.model  # LoRAModel wraps the PanGu model; names below are the plain ones
            adapted["state"] = {k: v.numpy() for k, v in plain.state_dict().items()}
            adapted["trainable"] = sorted(n for n, p in plain.named_parameters() if not p.stop_gradient)

    metrics = run_finetune(*parse_finetune_args(None, fields), callbacks=[Keep()])
    history = [h["loss"] for h in metrics["history"] if "loss" in h]
    assert history[-1] < history[0], history
    base = {k: v.numpy() for k, v in PanGuForCausalLM.from_pretrained(str(setup / "base")).state_dict().items()}
    lora_names = [n for n in adapted["state"] if "lora_" in n]
    assert adapted["trainable"] and all("lora_" in n for n in adapted["trainable"])
    for target in TARGETS:  # every block and the query layer carry adapters on every target
        assert sum(f".{target}.lora_A" in n for n in lora_names) == 3, target
    for name, value in base.items():  # the base weights did not move
        np.testing.assert_array_equal(adapted["state"][name], value, err_msg=name)
    assert any(np.abs(adapted["state"][n]).max() > 0 for n in lora_names if "lora_B" in n)  # B starts at 0

    assert main(["merge-lora", "--base", str(setup / "base"), "--lora", str(setup / "adapters"),
                 "--output", str(setup / "merged")]) == 0
    merged = PanGuForCausalLM.from_pretrained(str(setup / "merged"))
    merged.eval()
    logits = merged(paddle.to_tensor([[11, 230, 57, 900, 4, 31]])).numpy()
    # merged W + s*A@B in fp32 vs x@W + s*(x@A)@B: float32 re-association only
    np.testing.assert_allclose(logits, adapted["logits"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(logits, PanGuForCausalLM.from_pretrained(str(setup / "base"))(
        paddle.to_tensor([[11, 230, 57, 900, 4, 31]])).numpy(), atol=1e-4)
    assert (setup / "merged" / "model.safetensors").exists() and (setup / "merged" / "vocab.model").exists()


def test_merge_lora_names_a_missing_adapter_dir(tmp_path, setup, capsys):
    from paddle_pangu.cli import main

    assert main(["merge-lora", "--base", str(setup / "base"), "--lora", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "no lora_config.json" in capsys.readouterr().err
