"""Evaluation: shared-prefix candidate scoring, perplexity, few-shot prompts on real reviews."""
import math

import numpy as np
import paddle
import pytest

from paddle_pangu.evaluation import ClassificationTask, candidate_losses, perplexity, reviews_task
from paddle_pangu.evaluation.classification import as_task_spec
from paddle_pangu.evaluation.prompting import build_prompt
from paddle_pangu.evaluation.runner import evaluate_task
from paddle_pangu.evaluation.scoring import shared_prefix_len
from paddle_pangu.evaluation.tasks.base import Example
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
    """A reviews / JSONL task goes through the runner's prompting: demonstrations, each with its gold label,
    joined by newlines before the query (REF "Zero/one/few-shot")."""
    from paddle_pangu.tokenizer import PanGuTokenizer

    task = ClassificationTask("t", ["好", "坏"], "文：{text}\n评：{label}", [("甲", 0), ("乙", 1), ("丙", 1)])
    spec, _, _ = as_task_spec(task, 2, seed=0)
    demos = [Example({"text": "甲"}, task.labels, 0, uid="a"), Example({"text": "乙"}, task.labels, 1, uid="b")]
    prompt = build_prompt(spec, Example({"text": "丙"}, task.labels, 1, uid="c"), demos, PanGuTokenizer.from_default(), 1024)
    assert prompt.texts == ["文：甲\n评：好\n文：乙\n评：坏\n文：丙\n评：好", "文：甲\n评：好\n文：乙\n评：坏\n文：丙\n评：坏"]
    with pytest.raises(ValueError, match="end with"):
        ClassificationTask("t", ["a", "b"], "{label}{text}", [])


def test_few_shot_accuracy_counts_correct_picks(tiny_model):
    """One-shot accuracy of a reviews-style task run by the runner = the fraction of evaluated examples whose
    lowest-loss candidate is the gold label.

    Built so that nothing random needs re-deriving: 3 evaluated examples per label and a pool left with
    one demonstration (returned by the split), so the one shot is known whatever the draws. Each pick is
    then recomputed with an independent float64 loss (_nll)."""
    from paddle_pangu.tokenizer import PanGuTokenizer

    tok = PanGuTokenizer.from_default()
    good = ["物流很快，包装完好，非常满意", "东西不错，价格实惠", "做工精细，朋友都说好", "发货及时，质量很好"]
    bad = ["质量太差了，用了两天就坏", "客服态度恶劣，再也不买", "颜色和图片完全不一样"]
    task = ClassificationTask("picks", labels=["好评", "差评"], template="评论：{text}\n这是一条{label}",
                              examples=[(t, 0) for t in good] + [(t, 1) for t in bad])
    spec, pool, examples = as_task_spec(task, 6, seed=3)
    assert len(pool) == 1 and len(examples) == 6
    res = evaluate_task(tiny_model, tok, spec, examples, pool, shots=1, seed=3, progress=False)
    assert res["n"] == 6 and res["chance"] == 0.5
    demo = task.render(pool[0].fields["text"], pool[0].gold)
    correct = 0
    for ex in examples:
        cands = [tok.encode_ids(demo + "\n" + task.render(ex.fields["text"], c)) for c in (0, 1)]
        start = shared_prefix_len(cands)
        losses = [_nll(tiny_model, c)[start - 1:].mean() for c in cands]
        # premise: no near-tie, so fp32 scoring (rounding ~1e-5 of a ~10 loss) picks the same candidate
        assert abs(losses[0] - losses[1]) > 1e-3
        correct += int(np.argmin(losses) == ex.gold)
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
