"""Fine-tuning with the real PaddleNLP Trainer on real reviews: loss falls, the saved model reloads."""
import json

import numpy as np
import paddle
import pytest

from paddle_pangu.finetune import FinetuneArgs, SFTCollator, build_examples, finetune, read_jsonl


@pytest.fixture(scope="module")
def tok():
    from paddle_pangu.tokenizer import PanGuTokenizer

    return PanGuTokenizer.from_default()


def test_loss_mask_covers_response_and_separator(tok):
    ex = build_examples([("问：你好", "答：很好")], tok, max_length=64)[0]
    p, r = tok.encode_ids("问：你好"), tok.encode_ids("答：很好")
    assert ex.input_ids == (p + r + [9])[:-1] and ex.labels == (p + r + [9])[1:]
    assert ex.loss_mask == [0] * (len(p) - 1) + [1] * (len(r) + 1)


def test_truncation_keeps_the_response(tok):
    ex = build_examples([("很长的问题" * 20, "短答")], tok, max_length=8)[0]
    assert len(ex.input_ids) == 8 and ex.labels[-1] == 9 and sum(ex.loss_mask) == len(tok.encode_ids("短答")) + 1


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"question": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a 'response'"):
        list(read_jsonl(str(path)))


def test_collator_pads_labels_out_of_the_loss(tok):
    batch = SFTCollator(6)(build_examples([("甲", "乙丙"), ("", "丁")], tok, 16))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["loss_mask"].shape
    assert int(batch["loss_mask"][1, -1]) == 0


def test_trainer_fine_tuning_lowers_loss_and_saves(tmp_path, tok):
    from paddle_pangu.config import get_preset
    from paddle_pangu.evaluation import reviews_task
    from paddle_pangu.model import PanGuForCausalLM

    task = reviews_task(max_chars=24)
    demos, _ = task.split(2, seed=0)
    pairs = [(f"评论：{t}\n态度：", ["好评", "差评"][l]) for t, l in demos[:32]]
    examples = build_examples(pairs, tok, 48)
    paddle.seed(0)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))

    def response_loss():
        model.eval()
        batch = SFTCollator(6)(examples)
        loss, _ = model(**batch)
        return float(loss)

    before = response_loss()
    args = FinetuneArgs(output_dir=str(tmp_path / "ft"), max_steps=24, learning_rate=3e-3, batch_size=8,
                        logging_steps=8, report_to="visualdl")
    metrics = finetune(model, tok, examples, examples[:8], args)
    after = response_loss()
    assert after < before - 1.0, (before, after)
    assert "eval_loss" in metrics and metrics["train_loss"] > 0
    loaded = PanGuForCausalLM.from_pretrained(str(tmp_path / "ft"))
    loaded.eval()
    ids = paddle.to_tensor([examples[0].input_ids])
    np.testing.assert_allclose(loaded(ids).numpy(), model(ids).numpy(), rtol=1e-6, atol=1e-6)
    assert (tmp_path / "ft" / "vocab.model").exists()
    assert list((tmp_path / "ft" / "visualdl").rglob("vdlrecords*"))
