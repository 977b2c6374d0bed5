"""K-shot prompts: exactly K demonstrations, seeded, never the query; the over-long policy, counted."""
import pytest

from paddle_pangu.errors import UsageError
from paddle_pangu.evaluation.prompting import DEMO_SEPARATOR, build_prompt, render_demo, sample_demos
from paddle_pangu.evaluation.tasks import TASKS
from paddle_pangu.tokenizer import PanGuTokenizer

NLI = TASKS["ocnli"]


@pytest.fixture(scope="module")
def tok():
    return PanGuTokenizer.from_default()


def _pool():
    rows = [{"id": i, "sentence1": f"第{i}个前提句子", "sentence2": f"第{i}个假设", "label": lab}
            for i, lab in enumerate(["entailment", "neutral", "contradiction"] * 3)]
    return NLI.build(rows, 0)


def test_k_demonstrations_seeded_and_never_the_query(tok):
    pool = _pool()
    query = pool[4]
    twin = NLI.build([{"id": 99, "sentence1": "第4个前提句子", "sentence2": "第4个假设", "label": "neutral"}], 0)[0]
    for k in (0, 1, 3, 7):
        demos = sample_demos(pool + [twin], query, k, seed=5, index=0, task=NLI)
        assert len(demos) == k and all(d.uid != query.uid for d in demos)
        assert all(render_demo(NLI, d) != render_demo(NLI, query) for d in demos)  # the same text under another id
        prompt = build_prompt(NLI, query, demos, tok, max_tokens=1024)
        own = render_demo(NLI, query)
        for c, text in enumerate(prompt.texts):
            assert text == "".join(render_demo(NLI, d) + DEMO_SEPARATOR for d in demos) + NLI.render(query, c)
            assert text.count(own) == (1 if c == query.gold else 0)  # the answer appears only as its own candidate
        assert prompt.shots == k and prompt.demos_dropped == 0 and prompt.token_ids[0] == tok.encode_ids(prompt.texts[0])
    assert sample_demos(pool, query, 3, 5, 0, NLI) == sample_demos(pool, query, 3, 5, 0, NLI)
    assert [sample_demos(pool, query, 3, 5, i, NLI) for i in range(4)] != [sample_demos(pool, query, 3, 5, 0, NLI)] * 4
    with pytest.raises(UsageError, match="9 shots requested but the train file has only 8"):
        sample_demos(pool, query, 9, 5, 0, NLI)


def test_over_long_prompt_drops_demonstrations_first_then_cuts_the_passage_left(tok):
    pool = _pool()
    long_query = NLI.build([{"id": "q", "sentence1": "很长的前提" * 12 + "结尾部分", "sentence2": "假设",
                             "label": "neutral"}], 0)[0]
    demos = pool[:3]
    one_demo = build_prompt(NLI, long_query, demos[-1:], tok, 1024)
    budget = max(map(len, one_demo.token_ids))
    fitted = build_prompt(NLI, long_query, demos, tok, budget)
    assert (fitted.shots, fitted.demos_dropped, fitted.passage_chars_cut, fitted.tokens_cut) == (1, 2, 0, 0)
    assert fitted.demo_ids == [demos[-1].uid]  # the demonstration nearest the query is kept
    assert fitted.texts == one_demo.texts

    zero = build_prompt(NLI, long_query, [], tok, 1024)
    budget = max(map(len, zero.token_ids)) - 10
    cut = build_prompt(NLI, long_query, demos, tok, budget)
    assert cut.shots == 0 and cut.demos_dropped == 3 and cut.passage_chars_cut > 0 and cut.tokens_cut == 0
    assert max(map(len, cut.token_ids)) <= budget
    passage = long_query.fields["passage"]
    for c, text in enumerate(cut.texts):  # the left of the passage is gone, its end and the rest are intact
        assert text == passage[cut.passage_chars_cut:] + "?" + long_query.candidates[c] + "，假设"
