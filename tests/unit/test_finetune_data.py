"""Fine-tuning data: rows, chat template, response-only loss, truncation policy, packing, bad rows."""
import json
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from paddle_pangu.errors import ConfigError, DataError
from paddle_pangu.finetune import SFTCollator, TruncationStats, build_examples, pack_examples, read_rows, render_chat
from paddle_pangu.finetune.arguments import DataArguments
from paddle_pangu.finetune.trainer import build_datasets, resolve_max_length, split_eval


@pytest.fixture(scope="module")
def tok():
    from paddle_pangu.tokenizer import PanGuTokenizer

    return PanGuTokenizer.from_default()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def test_loss_mask_covers_response_and_separator(tok):
    ex = build_examples([("问：你好", "答：很好")], tok, max_length=64)[0]
    p, r = tok.encode_ids("问：你好"), tok.encode_ids("答：很好")
    assert ex.input_ids == (p + r + [9])[:-1] and ex.labels == (p + r + [9])[1:]
    assert ex.loss_mask == [0] * (len(p) - 1) + [1] * (len(r) + 1)


def test_full_sequence_loss_when_response_only_is_off(tok):
    ex = build_examples([("问：你好", "答：很好")], tok, max_length=64, response_only_loss=False)[0]
    assert ex.loss_mask == [1] * len(ex.labels)


def test_chat_template_trains_only_assistant_turns(tok):
    msgs = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "再见"},
            {"role": "assistant", "content": "再见！"}]
    segments = render_chat(msgs)
    assert "".join(t for t, _ in segments) == "你是助手\n用户：你好\n助手：你好！\n用户：再见\n助手：再见！"
    assert [t for t, trainable in segments if trainable] == ["你好！", "\n", "再见！"]
    ex = build_examples([SimpleNamespace(segments=segments, where="x")], tok, 64)[0]
    trained = [lab for lab, m in zip(ex.labels, ex.loss_mask) if m]
    expected = tok.encode_ids("你好！") + tok.encode_ids("\n") + tok.encode_ids("再见！") + [9]
    assert trained == expected and 9 not in ex.input_ids  # turns are not split by <eot> (document reset)


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "a", "response": "b"}, {"question": "x"}, "{not json", {"messages": [{"role": "user", "content": "q"}]},
        {"prompt": "a", "response": "c"}, {"prompt": 3, "response": "d"}])
    with pytest.raises(DataError) as err:
        read_rows(path, DataArguments())
    msg = str(err.value)
    assert "4 bad row(s) of 6" in msg
    for line in (2, 3, 4, 6):
        assert f"bad.jsonl:{line}:" in msg
    assert "bad.jsonl:1:" not in msg and "bad.jsonl:5:" not in msg
    assert "last message must be the assistant" in msg


def test_long_response_keeps_eot_and_part_of_the_prompt(tok):
    """Bug: a response longer than max_length used to lose its <eot> and its whole prompt."""
    prompt, response = "请概括下面的新闻", "今天北京天气晴朗" * 20
    stats = TruncationStats("left")
    ex = build_examples([(prompt, response)], tok, max_length=16, stats=stats)[0]
    tokens = [ex.input_ids[0]] + ex.labels
    p = tok.encode_ids(prompt)
    assert len(ex.input_ids) == 16 and tokens[-1] == 9 and ex.loss_mask[-1] == 1
    assert tokens[: len(p)] == p[-len(p):] and ex.loss_mask[: len(p) - 1] == [0] * (len(p) - 1)
    assert stats.response_cut == 1 and stats.kept == 1


def test_long_prompt_is_shortened_from_the_left(tok):
    stats = TruncationStats("left")
    ex = build_examples([("很长的问题" * 20, "短答")], tok, max_length=8, stats=stats)[0]
    assert len(ex.input_ids) == 8 and ex.labels[-1] == 9 and sum(ex.loss_mask) == len(tok.encode_ids("短答")) + 1
    assert stats.prompt_shortened == 1 and stats.response_cut == 0


def test_drop_policy_counts_what_it_drops(tok):
    stats = TruncationStats("drop")
    rows = [("问", "答"), ("问" * 40, "答"), ("问", "答" * 40)]
    examples = build_examples(rows, tok, max_length=12, policy="drop", stats=stats)
    assert len(examples) == 1 and stats.dropped == 2 and stats.examples == 3
    assert "1 of 3 examples kept" in stats.summary()


def test_max_length_above_the_model_positions_is_rejected(tiny_config):
    with pytest.raises(ConfigError, match="max_length=129 exceeds the model's max_position_embeddings=128"):
        resolve_max_length(DataArguments(max_length=129), tiny_config)
    assert resolve_max_length(DataArguments(), tiny_config) == 128


def _sharpen(model, scale=8.0, table_scale=100.0, value_scale=16.0):
    """Q/K weights x`scale` (scores x scale^2), the query layer's position table x`table_scale` (its query
    has no layernorm and would stay tiny) and V / attention-out x`value_scale` (at init they are small
    enough to hide what attention picks): attention far from uniform and felt in the logits, so a key
    shown or hidden by mistake, or a query built from the wrong position, moves the logits by O(1)
    (measured: the query layer reading positions that do not restart moves them by up to 1.8, 100x the bound)."""
    with paddle.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.set_value(p * scale)
            elif name.endswith(("v_proj.weight", "out_proj.weight")):
                p.set_value(p * value_scale)
            elif name.endswith("top_query_embedding.weight"):
                p.set_value(p * table_scale)


def _max_visible_score(model, ids):
    """max |q.k| / sqrt(hd) over the visible (query, key) pairs of every attention in one forward."""
    from paddle_pangu.model.layers import PanGuAttention

    seen, hooks = [0.0], []

    def hook(layer, inputs):
        hidden, mask, query = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
        q = layer._split_heads(layer.q_proj(hidden if query is None else query))
        k = layer._split_heads(layer.k_proj(hidden))
        scores = paddle.matmul(q, k, transpose_y=True).numpy() / np.sqrt(layer.head_dim)  # [B, nh, S, T]
        seen[0] = max(seen[0], float(np.abs(np.where(mask.numpy() == 0, scores, 0.0)).max()))

    for layer in model.sublayers():
        if isinstance(layer, PanGuAttention):
            hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with paddle.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen[0]


def test_packing_keeps_attention_inside_each_example(tok, tiny_model):
    rows = [("问：你好", "答：很好"), ("天气", "晴朗"), ("中国的首都是", "北京")]
    single = build_examples(rows, tok, 64)
    packed = pack_examples(single, 64)
    assert len(packed) == 1
    batch = SFTCollator(6)(packed)
    _sharpen(tiny_model)
    with paddle.no_grad():
        logits = tiny_model(batch["input_ids"]).numpy()[0]  # [S, V]
    # fp32 rounding (tests/parity/test_attention_masks.py): (6L + 1) reductions of length <= F per logit,
    # each attention amplifying a relative score error by (1 + 2 max|score|)
    cfg = tiny_model.config
    smax = _max_visible_score(tiny_model, batch["input_ids"])
    assert smax > 5  # the premise: attention is sharp
    tol = (6 * cfg.num_layers + 1) * cfg.ffn_hidden_size * 2.0 ** -24 * (1 + 2 * smax) * np.abs(logits).max()
    start = 0
    for ex in single:  # each example's logits inside the pack equal its logits alone
        with paddle.no_grad():
            alone = tiny_model(paddle.to_tensor([ex.input_ids])).numpy()[0]
        assert np.abs(logits[start: start + len(ex.input_ids)] - alone).max() <= tol
        start += len(ex.input_ids) + 1
    mask, labels = packed[0].loss_mask, packed[0].labels
    assert sum(mask) == sum(sum(e.loss_mask) for e in single)  # boundary labels never count
    assert [lab for lab, m in zip(labels, mask) if m] == [lab for e in single for lab, m in zip(e.labels, e.loss_mask) if m]


def test_eval_split_by_ratio_is_seeded_and_disjoint():
    rows = list(range(20))
    train, held = split_eval(rows, 0.2, seed=3)
    assert len(held) == 4 and sorted(train + held) == rows
    assert split_eval(rows, 0.2, seed=3) == (train, held)


def test_build_datasets_from_a_file_with_eval_ratio(tmp_path, tok, tiny_config, capsys):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"问题{i}", "response": "答案"} for i in range(10)])
    args = DataArguments(train_file=path, eval_ratio=0.3, max_length=8)
    train, evals = build_datasets(args, tok, tiny_config, seed=0)
    assert (len(train), len(evals)) == (7, 3)
    assert "finetune train data: 7 of 7 examples" in capsys.readouterr().out


def test_builtin_instructions_are_balanced_and_never_the_evaluated_reviews():
    from paddle_pangu.evaluation.tasks import reviews_task
    from paddle_pangu.finetune.builtin import EVAL_SPLIT, builtin_rows

    rows = builtin_rows("builtin:instructions", 12)
    reviews = [r for r in rows if r.where.startswith("builtin:reviews")]
    headlines = [r for r in rows if not r.where.startswith("builtin:reviews")]
    assert len(reviews) == len(headlines) == 6
    assert sorted(r.segments[1][0] for r in reviews) == ["不满意"] * 3 + ["满意"] * 3
    task = reviews_task()
    _, evaluated = task.split(*EVAL_SPLIT)
    prompts = {r.segments[0][0] for r in builtin_rows("builtin:reviews", 400)}
    assert not prompts & {task.template.split("{label}")[0].format(text=t) for t, _ in evaluated}
    for r in headlines:
        prompt, title = r.segments[0][0], r.segments[1][0]
        assert prompt.startswith("为这条新闻写一个标题：\n") and prompt.endswith("\n标题：") and 4 <= len(title) <= 30
        assert "！。" not in prompt and "199801.txt:" in r.where
