"""Evaluation: shared-prefix candidate scoring, perplexity, few-shot prompts on real reviews."""
import math

import numpy as np
import paddle
import pytest

from paddle_pangu.evaluation import ClassificationTask, candidate_losses, perplexity, reviews_task
from paddle_pangu.evaluation.fewshot import build_prompt, evaluate_classification
from paddle_pangu.evaluation.scoring import shared_prefix_len
from paddle_pangu.model.losses import token_losses


def _nll(model, seq):
    logits = model(paddle.to_tensor([seq[:-1]]))
    z = logits.numpy()[0].astype("float64")  # numpy log-softmax: independent of the code under test
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -np.array([logp[t, seq[t + 1]] for t in range(len(seq) - 1)])


def test_shared_prefix_len():
    assert shared_prefix_len([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix_len([[1, 2], [1, 2, 3]]) == 2


def test_candidate_losses_score_only_tokens_after_the_prefix(tiny_model):
    prefix = [101, 102, 103, 104]
    cands = [prefix + [201, 202], prefix + [301], prefix + [401, 402, 403]]
    got = candidate_losses(tiny_model, cands)
    for c, g in zip(cands, got):
        np.testing.assert_allclose(g, _nll(tiny_model, c)[3:].mean(), rtol=1e-5)


def test_token_losses_ignore_right_padding(tiny_model):
    a, b = [11, 12, 13, 14, 15], [21, 22]
    la, lb = token_losses(tiny_model, [a, b])
    np.testing.assert_allclose(lb, _nll(tiny_model, b), rtol=1e-5)
    np.testing.assert_allclose(la, _nll(tiny_model, a), rtol=1e-5)


def test_perplexity_is_exp_token_mean(tiny_model):
    rng = np.random.default_rng(0)
    samples = [rng.integers(10, 40000, 9) for _ in range(5)]
    samples[4][5:] = tiny_model.config.pad_token_id  # padding excluded from the mean
    res = perplexity(tiny_model, samples, batch_size=2)
    tiny_model.config.eod_reset = True
    all_nll = np.concatenate([_nll(tiny_model, list(s))[: (4 if i == 4 else 8)] for i, s in enumerate(samples)])
    assert res["tokens"] == 36
    np.testing.assert_allclose(res["perplexity"], math.exp(all_nll.mean()), rtol=1e-4)


def test_reviews_task_reads_real_reviews_balanced():
    task = reviews_task()
    labels = [l for _, l in task.examples]
    assert labels.count(0) > 5000 and labels.count(1) > 5000  # unique real reviews of each polarity
    assert len({t for t, _ in task.examples}) == len(task.examples)
    demos, eval_set = task.split(40, seed=0)
    assert sorted(l for _, l in eval_set) == [0] * 20 + [1] * 20
    assert not set(eval_set) & set(demos[:100])
    assert task.split(40, seed=0)[1] == eval_set


def test_prompt_puts_demonstrations_before_query():
    task = ClassificationTask("t", ["好", "坏"], "文：{text}\n评：{label}", [])
    prompt = build_prompt(task, [("甲", 0), ("乙", 1)], "丙", 1)
    assert prompt == "文：甲\n评：好\n文：乙\n评：坏\n文：丙\n评：坏"
    with pytest.raises(ValueError, match="end with"):
        ClassificationTask("t", ["a", "b"], "{label}{text}", [])


def test_few_shot_accuracy_counts_correct_picks(tiny_model):
    from paddle_pangu.tokenizer import PanGuTokenizer

    tok = PanGuTokenizer.from_default()
    task = reviews_task(max_chars=30)
    res = evaluate_classification(tiny_model, tok, task, shots=1, num_eval=6, seed=3, progress=False)
    assert res["examples"] == 6 and res["chance"] == 0.5
    # re-derive: same demonstrations (same seeded draw), lowest candidate loss vs gold
    import random

    demos_pool, eval_set = task.split(6, 3)
    rng, correct = random.Random(4), 0
    for text, gold in eval_set:
        demos = rng.sample(demos_pool, 1)
        cands = [tok.encode_ids(build_prompt(task, demos, text, c)) for c in (0, 1)]
        correct += int(np.argmin(candidate_losses(tiny_model, cands)) == gold)
    assert res["accuracy"] == correct / 6


def test_jsonl_task_reads_labels_and_names_bad_lines(tmp_path):
    from paddle_pangu.evaluation import jsonl_task

    good = tmp_path / "t.jsonl"
    good.write_text('{"text": "很好", "label": "好"}\n\n{"text": "很差", "label": 1}\n', encoding="utf-8")
    task = jsonl_task(str(good), ["好", "坏"], "{text}。{label}")
    assert task.examples == [("很好", 0), ("很差", 1)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "很好", "label": "好"}\n{"text": "x", "label": "中"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        jsonl_task(str(bad), ["好", "坏"], "{text}。{label}")
    bad.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object"):
        jsonl_task(str(bad), ["好", "坏"], "{text}。{label}")
