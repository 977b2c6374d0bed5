"""Masks and attention checked on weights that can tell: every position's logits against a full causal
recompute of each sequence alone (tests/parity/reference_numpy.py: float64, no cache, no padding, written
from REF only) for batched left-padded prefill, KV-cache decode steps (rows joining a running batch),
packed documents (eod_reset), candidate scoring, perplexity and the exported graphs on the Paddle
Inference predictor.

Why scaled weights: at the tiny model's init (std 0.02) attention is close to uniform, so a mask that
lets a query see one future key moved no greedy token and passed 39 tests (TEST_AUDIT). Here the Q and
K weights are scaled x4 (scores x16) and the query layer's position table x4, and
`test_attention_is_far_from_uniform` proves the point: the mean attention entropy is a small fraction
of the uniform one, so each key a mask wrongly shows or hides moves the logits by O(1).

Tolerance (fp32 rounding, Higham): each of the G = 6L + 1 GEMM-like reductions on a logit's path (q, k,
v, QK^T, PV, out, fc_in, fc_out per layer, + the head) of length <= K = max(H, F) is exact to gamma_K ~
K u (u = 2^-24) relative to its output's scale. Softmax turns a relative error e of the scores s into
an absolute error of its probabilities of at most 2 e max|s| (||dp||_1 <= 2 ||ds||_inf for softmax), so
each attention amplifies by (1 + 2 max|s|) with max|s| read off the reference. Together:
|logit - ref| <= G K u (1 + 2 max|s|) max|logit|. A loss (log-sum-exp minus a logit) carries twice
that. The bound is loose (rounding adds up far below it), yet a mask that shows each query one future
key, or a query layer that ignores the document-reset positions, moves logits by 5-18 (max |logit| ~25),
more than ten times the bound; each of those mutations fails tests here (issue 28's closing note).
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
from convert_fixtures import to_paddle
from reference_numpy import forward, init_params

from paddle_pangu.config import get_preset
from paddle_pangu.inference.decoding import BatchDecoder, Row, left_pad
from paddle_pangu.inference.generation import DygraphStepper
from paddle_pangu.inference.sampling import SamplingConfig
from paddle_pangu.model import PanGuForCausalLM

V, H, L, F, S, NH = 512, 64, 3, 256, 64, 4
EOD, PAD = 9, 6
U = 2.0 ** -24
SCALE_QK, SCALE_QUERY_TABLE = 4.0, 4.0


def sharp_params(seed: int = 3) -> dict:
    p = init_params(V, H, L, F, S, seed)
    for layer in p["blocks"] + [p["query"]]:
        layer["wq"] *= SCALE_QK
        layer["wk"] *= SCALE_QK
    p["wqe"] *= SCALE_QUERY_TABLE
    return p


def build_model(params: dict, eod_reset: bool) -> PanGuForCausalLM:
    config = get_preset("tiny", vocab_size=V, hidden_size=H, num_layers=L, ffn_hidden_size=F,
                        max_position_embeddings=S, num_attention_heads=NH, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, eod_reset=eod_reset)
    model = PanGuForCausalLM(config)
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in to_paddle(params).items()})
    assert not missing and not unexpected
    model.eval()
    return model


def ids(rng, n) -> list[int]:
    """Ordinary tokens: never pad (6) or the separator (9)."""
    return [int(t) for t in rng.integers(10, V, n)]


def ref_logits(params, seq, eod: bool = False) -> np.ndarray:
    """[len(seq), V] float64: the sequence alone, full causal (document-reset when eod)."""
    return forward(params, np.asarray([seq]), NH, eod_token_id=EOD if eod else None)[0]


def logit_bound(params, seqs, eod: bool = False) -> float:
    """G K u (1 + 2 max|score|) max|logit| over `seqs` (module docstring)."""
    record, top = [], 0.0
    for seq in seqs:
        top = max(top, float(np.abs(forward(params, np.asarray([seq]), NH, eod_token_id=EOD if eod else None,
                                            record=record)).max()))
    smax = max(float(np.abs(np.where(m[:, None], s, 0.0)).max()) for s, _, m in record)
    return (6 * L + 1) * max(H, F) * U * (1 + 2 * smax) * top


@pytest.fixture(scope="module")
def params():
    return sharp_params()


@pytest.fixture(scope="module")
def model(params):
    return build_model(params, eod_reset=False)


def assert_rows_match(got: np.ndarray, want: np.ndarray, tol: float, what: str):
    diff = np.abs(np.asarray(got, np.float64) - want).max(axis=-1)  # per position
    bad = np.flatnonzero(diff > tol)
    assert bad.size == 0, f"{what}: positions {bad.tolist()} differ by up to {diff.max():.3g} > bound {tol:.3g}"


def test_attention_is_far_from_uniform(params):
    """The premise of this file: with these weights attention picks few keys, in every layer."""
    record = []
    forward(params, np.asarray([ids(np.random.default_rng(0), 40)]), NH, record=record)
    assert len(record) == L
    for _, probs, mask in record:
        keys = mask.sum(-1)[:, None, :]  # [B, 1, S] visible keys per query
        entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(-1)  # [B, nh, S]
        uniform = np.log(keys) * np.ones_like(entropy)
        rows = uniform > 0
        assert entropy[rows].mean() < 0.25 * uniform[rows].mean()


def test_left_padded_prefill_every_position(params, model):
    """The batch the decoder builds (left padding, [B, T] mask, positions from 0 at each row's first token)."""
    rng = np.random.default_rng(1)
    prompts = [ids(rng, 30), ids(rng, 12), ids(rng, 1), ids(rng, 21)]
    tol = logit_bound(params, prompts)
    batch, mask, positions = left_pad(prompts, PAD)
    with paddle.no_grad():
        logits, _ = model(paddle.to_tensor(batch), position_ids=paddle.to_tensor(positions),
                          attention_mask=paddle.to_tensor(mask), use_cache=True)
    logits = logits.numpy()
    for r, prompt in enumerate(prompts):
        assert_rows_match(logits[r, -len(prompt):], ref_logits(params, prompt), tol, f"row {r}")


class Recording:
    """A stepper that keeps the last-token logits it returns, per decoder row, in row order."""

    def __init__(self, inner):
        self.inner = inner
        self.select, self.pad_left = inner.select, inner.pad_left
        self.concat, self.trim_left = inner.concat, inner.trim_left
        self.decoder = None
        self.seen: dict[int, list[np.ndarray]] = {}

    def __call__(self, batch, positions, mask, cache):
        return self.inner(batch, positions, mask, cache)

    def attach(self, decoder: BatchDecoder):
        self.decoder = decoder

    def record(self, rows: list[Row], logits: np.ndarray):
        for row, logits in zip(rows, logits):
            self.seen.setdefault(id(row), []).append(np.array(logits, np.float64))


def decode_and_check(params, stepper, config, tol_seqs_rng=7):
    """Greedy-decode three prompts (two at once, a third joining after two steps) and check the logits
    that chose every token against the reference run of prompt + chosen tokens."""
    rng = np.random.default_rng(tol_seqs_rng)
    cfg = SamplingConfig(max_new_tokens=6, eos_token_id=EOD)
    first = [Row(ids(rng, 17), cfg), Row(ids(rng, 5), cfg)]
    late = Row(ids(rng, 11), cfg)
    rec = Recording(stepper)
    decoder = BatchDecoder(rec, config)
    rec.attach(decoder)
    decoder.add(first)
    rec.record(decoder.rows, decoder.logits)
    for step in range(20):
        if step == 2:
            decoder.add([late])  # its own prefill, cache left-padded into the running batch
            rec.record(decoder.rows[-1:], decoder.logits[-1:])
        if not decoder.rows:
            break
        decoder.step()
        if decoder.rows:
            rec.record(decoder.rows, decoder.logits)
    rows = first + [late]
    full = [row.prompt + row.tokens for row in rows]
    tol = logit_bound(params, full)
    checked = 0
    for row, seq in zip(rows, full):
        got = np.stack(rec.seen[id(row)])  # [steps, V]: the logits at positions len(prompt)-1 ...
        want = ref_logits(params, seq)[len(row.prompt) - 1: len(row.prompt) - 1 + len(got)]
        assert len(got) >= len(row.tokens)  # one set of logits per chosen token
        assert_rows_match(got[: len(want)], want, tol, f"prompt of {len(row.prompt)} tokens")
        checked += len(want)
    assert checked >= 15


def test_kv_cache_decode_steps_and_a_row_joining(params, model):
    decode_and_check(params, DygraphStepper(model, frozen=True), model.config)


def test_packed_documents_each_equal_alone(params):
    """eod_reset (REF "document boundaries"): positions restart and no key of another document is seen;
    each packed document's logits equal the document run alone, the separator ending its document."""
    model = build_model(params, eod_reset=True)
    rng = np.random.default_rng(2)
    docs = [ids(rng, 9) + [EOD], ids(rng, 14) + [EOD], ids(rng, 7)]
    packed = sum(docs, [])
    tol = logit_bound(params, docs)
    with paddle.no_grad():
        logits = model(paddle.to_tensor([packed])).numpy()[0]
    start = 0
    for i, doc in enumerate(docs):
        assert_rows_match(logits[start: start + len(doc)], ref_logits(params, doc), tol, f"document {i}")
        start += len(doc)
    # and the reference's own document reset agrees on the packed row
    assert_rows_match(logits, ref_logits(params, packed, eod=True), logit_bound(params, [packed], eod=True),
                      "packed row")


def _ref_nll(params, seq) -> np.ndarray:
    """Next-token NLL [len(seq) - 1] of the sequence alone (float64)."""
    logits = ref_logits(params, seq)[:-1]
    top = logits.max(-1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
    return lse - logits[np.arange(len(seq) - 1), np.asarray(seq[1:])]


def test_candidate_scoring_equals_reference(params, model):
    """Evaluation's batched shared-prefix scoring (right padding, several examples per pass)."""
    from paddle_pangu.evaluation.scoring import batched_candidate_losses, score_start

    rng = np.random.default_rng(3)
    groups = []
    for n in (13, 6, 20):
        prefix = ids(rng, n)
        groups.append([prefix + ids(rng, k) for k in (2, 5, 3)])
    got = batched_candidate_losses(model, groups, batch_size=6)
    tol = 2 * logit_bound(params, [s for g in groups for s in g])
    for g, losses in zip(groups, got):
        start = score_start(g)
        want = np.array([_ref_nll(params, s)[start - 1:].mean() for s in g])
        assert np.abs(losses - want).max() <= tol, (losses, want, tol)


def test_perplexity_equals_reference(params, model):
    """Windows of 5 tokens: all at once (the token-weighted mean over batches), then each window alone
    (a mean over many tokens lets opposite errors cancel; one short window does not)."""
    from paddle_pangu.evaluation.scoring import perplexity

    rng = np.random.default_rng(4)
    samples = [np.asarray(ids(rng, 5)) for _ in range(6)]
    nll = [_ref_nll(params, list(s)) for s in samples]
    tol = 2 * logit_bound(params, [list(s) for s in samples])
    out = perplexity(model, samples, batch_size=4)  # a batch of 4 and one of 2
    mean = float(np.concatenate(nll).mean())
    assert out["tokens"] == 4 * len(samples)
    assert abs(out["loss"] - mean) <= tol
    assert abs(out["perplexity"] / math.exp(mean) - 1) <= math.expm1(tol)
    for i, (sample, want) in enumerate(zip(samples, nll)):
        assert abs(perplexity(model, [sample])["loss"] - want.mean()) <= tol, f"window {i}"


def test_exported_prefill_and_decode_graphs_on_the_predictor(params, model, tmp_path):
    """`pangu export`'s two graphs through the real Paddle Inference predictor, rows joining included."""
    from paddle_pangu.inference.export import InferenceStepper, export_model

    export_model(model, str(tmp_path / "export"))
    stepper = InferenceStepper(str(tmp_path / "export"))
    decode_and_check(params, stepper, stepper.config)
