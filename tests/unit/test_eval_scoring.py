"""Candidate scoring: batched == one example at a time == a direct masked-loss computation."""
import numpy as np
import pytest
import paddle

from paddle_pangu.evaluation.scoring import batched_candidate_losses, candidate_losses, score_start

PAD = 6


def _numpy_nll(model, seq):
    """Per-token NLL of one unpadded sequence from the model's logits, log-softmax in float64 numpy."""
    z = model(paddle.to_tensor([seq[:-1]])).numpy()[0].astype("float64")
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(seq) - 1), seq[1:]]


def _masked_model_loss(model, seq, start):
    """The model's own loss with every label before `start` set to the pad id (masked out of the mean)."""
    labels = np.array(seq[1:], dtype="int64")
    labels[: start - 1] = PAD
    loss, _ = model(paddle.to_tensor([seq[:-1]]), labels=paddle.to_tensor([labels]))
    return float(loss)


class CountingModel(paddle.nn.Layer):
    """The tiny model, counting forward passes and the batch sizes it was given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.batches = inner, inner.config, []

    def forward(self, ids, **kw):
        self.batches.append(int(ids.shape[0]))
        return self.inner(ids, **kw)


def _groups():
    rng = np.random.default_rng(7)
    groups = []
    for n_cands, prefix_len in ((4, 9), (2, 3), (3, 12), (7, 5), (2, 20)):
        prefix = list(rng.integers(10, 40000, prefix_len))
        groups.append([prefix + list(rng.integers(10, 40000, rng.integers(1, 6))) for _ in range(n_cands)])
    return groups


def test_score_start_is_the_first_token_after_the_shared_prefix():
    assert score_start([[5, 6, 7, 8], [5, 6, 9]]) == 2
    assert score_start([[1, 2], [1, 2, 3]]) == 1  # every candidate keeps one scored token
    assert score_start([[4, 5], [7, 8]]) == 1  # token 0 has no prediction


def test_candidate_score_equals_direct_masked_loss(tiny_model):
    for group in _groups()[:3]:
        start = score_start(group)
        got = candidate_losses(tiny_model, group)
        want_np = [_numpy_nll(tiny_model, c)[start - 1:].mean() for c in group]
        want_model = [_masked_model_loss(tiny_model, c, start) for c in group]
        # fp32 logits (|z| ~ 10) through fp32 vs float64 log-softmax: agreement to a few fp32 ulps of the loss
        np.testing.assert_allclose(got, want_np, rtol=1e-5)
        np.testing.assert_allclose(got, want_model, rtol=1e-5)


def test_batched_equals_one_at_a_time_and_packs_examples(tiny_model):
    groups = _groups()
    one_by_one = [candidate_losses(tiny_model, g) for g in groups]  # one example per pass
    spy = CountingModel(tiny_model)  # no `.pangu`: token_losses from the full logits
    packed = batched_candidate_losses(spy, groups, batch_size=8)
    # whole examples per pass, at most 8 sequences: [4 + 2], [3] (3 + 7 > 8), [7] (7 + 2 > 8), [2]
    assert spy.batches == [6, 3, 7, 2]
    batched = batched_candidate_losses(tiny_model, groups, batch_size=8)  # head only on the scored positions
    for a, b, c in zip(batched, packed, one_by_one):
        # right padding never reaches a real token (causal mask); only GEMM blocking order differs
        np.testing.assert_allclose(a, c, rtol=1e-5)
        np.testing.assert_allclose(b, c, rtol=1e-5)
    assert [int(np.argmin(a)) for a in batched] == [int(np.argmin(b)) for b in one_by_one]


def test_bench_eval_measures_both_paths_on_the_same_scores():
    from paddle_pangu.bench.eval_bench import bench_eval, table

    r = bench_eval("tiny", rounds=1, examples=4, batch_size=8)
    assert r["examples"] == 4 and r["sequences"] == 8 and len(r["samples"]["batched"]) == 1
    assert r["same_predictions"] and r["max_abs_score_diff"] < 1e-4  # losses ~10, fp32
    assert r["batched_examples_per_s"] == 4 / r["samples"]["batched"][0]["seconds"]
    assert "examples/s" in table(r)


def test_perplexity_states_its_protocol_and_reports_character_level(tiny_model):
    import math

    from paddle_pangu.evaluation.scoring import perplexity
    from paddle_pangu.tokenizer import PanGuTokenizer

    tok = PanGuTokenizer.from_default()
    texts = ["今天北京天气很好，我们去公园散步吧，然后回家吃饭", "中国科学院计算技术研究所在北京海淀区的中关村"]
    samples = [np.array(tok.encode_ids(t)[:9]) for t in texts]
    assert [len(s) for s in samples] == [9, 9]
    res = perplexity(tiny_model, samples, batch_size=1, tokenizer=tok)
    nll = sum(_numpy_nll(tiny_model, list(s)).sum() for s in samples)
    chars = sum(len(tok.decode_ids([int(t) for t in s[1:]])) for s in samples)
    assert res["protocol"] == {"window": 9, "stride": 9, "windows": 2, "scored_tokens_per_window": 8}
    assert res["tokens"] == 16 and res["characters"] == chars
    np.testing.assert_allclose(res["perplexity"], math.exp(nll / 16), rtol=1e-4)
    np.testing.assert_allclose(res["char_perplexity"], math.exp(nll / chars), rtol=1e-4)


SEQS = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10]]  # equal lengths: no padding, one row read for the bound
STARTS = [2, 4]


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_head_only_scoring_reads_the_converted_head_like_the_forward(weights):
    """`pangu evaluate --weights int8|bf16` scores candidates through token_losses(starts=...), which runs
    the tied head on the scored positions only. It must read the same converted head as the model's
    forward (it read the fp32 embedding before: the body was int8 and the head fp32). The two paths then
    differ only by the summation order of the head's length-H dot products: per logit at most
    H u sum_h |x_h w_h| (u = 2^-24, w the dequantized head), and a loss ln-sum-exp(z) - z_t moves by at
    most twice the largest logit error. The fp32 head, the old defect, is outside that bound."""
    from paddle_pangu.inference.loading import load_model_and_tokenizer
    from paddle_pangu.inference.quantize import quantize_model
    from paddle_pangu.model.losses import token_losses

    model, _ = load_model_and_tokenizer("preset:tiny", seed=1)
    model.eval()
    fp32_head = token_losses(model, SEQS, starts=STARTS)
    quantize_model(model, weights)
    head_only = token_losses(model, SEQS, starts=STARTS)
    full = [row[s - 1:] for row, s in zip(token_losses(model, SEQS), STARTS)]
    with paddle.no_grad():
        hidden = model.pangu(paddle.to_tensor([s[:-1] for s in SEQS[:1]])).numpy()[0]  # [S-1, H]
        w = model.quantized_head(paddle.eye(hidden.shape[1], dtype="float32")[None])[0].numpy().T  # [V, H]
    bound = 2 * hidden.shape[1] * 2.0 ** -24 * (np.abs(hidden) @ np.abs(w).T).max()
    for a, b, c in zip(head_only, full, fp32_head):
        assert np.abs(a - b).max() <= bound
    assert max(np.abs(a - c).max() for a, c in zip(head_only, fp32_head)) > 10 * bound
