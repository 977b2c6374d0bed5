"""Generation: cached greedy == uncached greedy, left padding, batches that lose and gain rows, per-row
seeded RNG, the sampling distribution (chi-square), penalties, stop ids / stop strings, prompt policy."""
import numpy as np
import paddle
import pytest
from scipy.stats import chisquare

from paddle_pangu.errors import UsageError
from paddle_pangu.inference.decoding import BatchDecoder, Row, left_pad
from paddle_pangu.inference.generation import DygraphStepper, generate, generate_text
from paddle_pangu.inference.sampling import SamplingConfig, choose_token, filter_logits
from paddle_pangu.inference.streaming import TextStream


def _naive_greedy(model, prompt, steps, eos):
    ids = list(prompt)
    out = []
    for _ in range(steps):
        logits = model(paddle.to_tensor([ids]))
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        out.append(token)
        ids.append(token)
    return out


@pytest.fixture
def model(tiny_model):
    tiny_model.config.eod_reset = False  # prompts here hold no separators; compare against plain causal
    return tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    from paddle_pangu.tokenizer import PanGuTokenizer

    return PanGuTokenizer.from_default()


def _decode_rows(model, rows, join_later=()):
    """Run a BatchDecoder; rows in join_later are added after the first step (continuous batching)."""
    decoder = BatchDecoder(DygraphStepper(model), model.config)
    decoder.add(list(rows))
    decoder.step()
    decoder.add(list(join_later))
    while decoder.rows:
        decoder.step()
    return [r.tokens for r in (*rows, *join_later)]


def test_cached_greedy_equals_full_recompute(model):
    prompt = [101, 2002, 303, 4004, 55]
    got = generate(model, [prompt], SamplingConfig(max_new_tokens=8, eos_token_id=-1))[0]
    assert got == _naive_greedy(model, prompt, 8, eos=-1)
    assert len(got) == 8


def test_left_padded_batch_equals_one_by_one(model):
    prompts = [[101, 2002, 303, 4004, 55], [77, 88], [5000, 6000, 7000]]
    cfg = SamplingConfig(max_new_tokens=6, eos_token_id=-1)
    batched = generate(model, prompts, cfg)
    for p, b in zip(prompts, batched):
        assert generate(model, [p], cfg)[0] == b


def test_left_pad_positions():
    ids, mask, pos = left_pad([[1, 2, 3], [4]], pad_token_id=6)
    assert ids.tolist() == [[1, 2, 3], [6, 6, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_one_row_stops_mid_batch_while_the_others_continue(model):
    prompts = [[1, 2, 3, 4, 5, 6, 7], [101, 2002, 303], [11, 12, 13, 14]]
    free = generate(model, prompts, max_new_tokens=6, eos_token_id=-1)
    first_new = [i for i in range(2, 6) if free[0][i] not in free[0][:i]]
    assert first_new, free[0]  # the tiny random model repeats tokens; these prompts change token mid-way
    stop_at = free[0][first_new[0]]
    got = generate(model, prompts, max_new_tokens=6, eos_token_id=-1, stop_token_ids=[12345, stop_at])
    assert got[0] == free[0][:first_new[0]]
    for row in (1, 2):  # the others run to their full length unless they hit the same id
        expected = free[row][:free[row].index(stop_at)] if stop_at in free[row] else free[row]
        assert got[row] == expected
    assert max(len(g) for g in got) == 6


def test_rows_joining_a_running_batch_equal_their_solo_greedy(model):
    cfg = SamplingConfig(max_new_tokens=5, eos_token_id=-1)
    solo = [generate(model, [p], cfg)[0] for p in ([101, 2002, 303], [77, 88, 99, 100, 1, 2, 3], [5])]
    rows = [Row([101, 2002, 303], cfg)]
    late = [Row([77, 88, 99, 100, 1, 2, 3], cfg), Row([5], cfg)]
    assert _decode_rows(model, rows, late) == solo


def test_seeded_row_is_independent_of_its_batch_companions(model):
    def sampled(seed):
        return SamplingConfig(max_new_tokens=8, eos_token_id=-1, do_sample=True, temperature=1.3, seed=seed)

    target = [101, 2002, 303]
    alone = _decode_rows(model, [Row(target, sampled(7))])[0]
    with_companions = _decode_rows(model, [Row([5, 6, 7, 8, 9, 10], sampled(1)), Row(target, sampled(7)),
                                           Row([3], sampled(None))])[1]
    joined_later = _decode_rows(model, [Row([44, 55], sampled(2))], [Row(target, sampled(7))])[1]
    assert alone == with_companions == joined_later
    assert _decode_rows(model, [Row(target, sampled(8))])[0] != alone  # the seed matters


def test_top_k_one_sampling_is_greedy_and_seeds_differ(model):
    prompt = [11, 12, 13, 14]
    greedy = generate(model, [prompt], max_new_tokens=5, eos_token_id=-1)
    assert generate(model, [prompt], max_new_tokens=5, eos_token_id=-1, do_sample=True, top_k=1, seed=3) == greedy
    assert generate(model, [prompt], max_new_tokens=5, eos_token_id=-1, do_sample=True, temperature=0) == greedy
    draws = {tuple(generate(model, [prompt], max_new_tokens=5, eos_token_id=-1, do_sample=True, temperature=2.0,
                            seed=s)[0]) for s in range(4)}
    assert len(draws) > 1


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 1.0), (1.5, 0, 0.8), (1.0, 4, 0.9)])
def test_draws_follow_softmax_over_the_kept_tokens(temperature, top_k, top_p):
    logits = np.array([2.0, 1.5, 1.2, 0.9, 0.5, 0.1, -0.3, -1.0], dtype="float32")
    cfg = SamplingConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    filtered = filter_logits(logits, np.zeros_like(logits), cfg)
    # the expected distribution, computed independently: softmax(l / T), keep top-k, then the top-p nucleus
    p = np.exp(logits / temperature - (logits / temperature).max())
    p /= p.sum()
    keep = np.arange(len(p)) < (top_k or len(p))  # logits are sorted descending
    q = np.where(keep, p, 0) / p[keep].sum()
    keep &= (np.cumsum(q) - q) < top_p
    expected = np.where(keep, p, 0) / p[keep].sum()
    assert np.isfinite(filtered).tolist() == keep.tolist()
    rng = np.random.default_rng(0)
    n = 20000
    counts = np.bincount([choose_token(filtered, cfg, rng) for _ in range(n)], minlength=len(p))
    assert counts[~keep].sum() == 0
    assert chisquare(counts[keep], expected[keep] * n).pvalue > 1e-3


def test_penalties_exact_values():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype="float32")
    counts = np.array([2, 1, 0, 0], dtype="float64")
    seen = np.array([True, True, True, False])
    out = filter_logits(logits, counts, SamplingConfig(frequency_penalty=0.5, presence_penalty=0.25,
                                                       repetition_penalty=2.0), seen)
    # frequency/presence first, then CTRL: positive / 2, negative * 2, unseen unchanged
    np.testing.assert_allclose(out, [(2.0 - 1.0 - 0.25) / 2, (-1.0 - 0.5 - 0.25) * 2, 0.5 / 2, 3.0], rtol=1e-6)


def test_repetition_penalty_changes_greedy_output(model):
    prompt = [101, 2002, 303]
    plain = generate(model, [prompt], max_new_tokens=12, eos_token_id=-1)[0]
    penalised = generate(model, [prompt], max_new_tokens=12, eos_token_id=-1, repetition_penalty=100.0)[0]
    assert len(set(penalised)) == len(penalised)  # a huge penalty forbids every repeat
    assert len(set(plain)) < len(plain) or plain != penalised


def test_bad_sampling_config_names_the_field():
    for kwargs, field in [({"top_p": 0.0}, "top_p"), ({"temperature": -1}, "temperature"),
                          ({"truncate": "right"}, "truncate"), ({"max_new_tokens": 0}, "max_new_tokens")]:
        with pytest.raises(UsageError, match=field):
            SamplingConfig(**kwargs)
    with pytest.raises(UsageError, match="unknown sampling"):
        SamplingConfig.build(top_z=3)


def test_cli_flags_and_http_request_become_the_same_sampling_config():
    """`pangu generate` flags and an OpenAI request go through SamplingConfig.from_options: same values,
    the model's own eos / pad ids (not the defaults), and the same one-line error for a bad value."""
    import argparse
    from types import SimpleNamespace

    from paddle_pangu.cli.generate import add_sampling_arguments
    from paddle_pangu.inference.server.protocol import CompletionRequest

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    flags = ["--max-new-tokens", "7", "--do-sample", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9",
             "--frequency-penalty", "0.5", "--presence-penalty", "0.25", "--repetition-penalty", "1.2",
             "--stop-id", "11", "--seed", "3"]
    model_config = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    args = parser.parse_args(flags)
    cli = SamplingConfig.from_options(args, model_config, stop_token_ids=tuple(args.stop_id))
    http = CompletionRequest(prompt="x", max_tokens=7, temperature=0.7, top_k=5, top_p=0.9, frequency_penalty=0.5,
                             presence_penalty=0.25, repetition_penalty=1.2, stop_token_ids=[11], seed=3)
    assert cli == http.sampling(model_config) == SamplingConfig(
        max_new_tokens=7, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, frequency_penalty=0.5,
        presence_penalty=0.25, repetition_penalty=1.2, eos_token_id=2, stop_token_ids=(11,), pad_token_id=0, seed=3)
    with pytest.raises(UsageError, match=r"^max_new_tokens must be an integer >= 1, got 0$"):
        SamplingConfig.from_options(parser.parse_args(["--max-new-tokens", "0"]), model_config)


def test_too_long_prompt_is_an_error_or_truncated_left(model):
    with pytest.raises(UsageError, match="max_position_embeddings"):
        generate(model, [[5] * 120], SamplingConfig(max_new_tokens=20))
    prompt = list(range(100, 220))  # 120 tokens; 128 positions - 20 new leaves room for the last 108
    got = generate(model, [prompt], max_new_tokens=20, eos_token_id=-1, truncate="left")[0]
    assert got == generate(model, [prompt[-108:]], max_new_tokens=20, eos_token_id=-1)[0]


def test_stop_strings_cut_the_text(model, tokenizer):
    prompt = "今天天气很好"
    full = generate_text(model, tokenizer, [prompt], max_new_tokens=10, eos_token_id=-1)[0]
    assert len(full) >= 6
    stop = full[3:5]
    cut = generate_text(model, tokenizer, [prompt], max_new_tokens=10, eos_token_id=-1, stop=[stop])[0]
    assert cut == full[:full.index(stop)]


def test_text_stream_deltas_hold_back_stop_prefixes(tokenizer):
    ids = tokenizer.encode_ids("北京是中国的首都")
    text = tokenizer.decode_ids(ids)
    stream = TextStream(tokenizer, stop=[text[-2:] + "X"])  # never matches, but its prefix trails the text
    deltas = [stream.push(t) for t in ids]
    assert "".join(deltas) == text[:-2]
    assert stream.flush() == text[-2:] and not stream.stopped
    stopping = TextStream(tokenizer, stop=[text[2:4]])
    out = "".join(stopping.push(t) for t in ids if not stopping.stopped)
    assert stopping.stopped and out == text[:2] == stopping.text


def test_generate_command_streams_and_applies_the_prompt_policy(tokenizer, capsys):
    from paddle_pangu.cli import main
    from paddle_pangu.inference.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("preset:tiny", seed=0)
    expected = generate_text(model, tokenizer, ["北京是"], max_new_tokens=6, frequency_penalty=2.0)[0]
    args = ["generate", "--model", "preset:tiny", "--max-new-tokens", "6", "--frequency-penalty", "2"]
    assert main(args + ["--prompt", "北京是"]) == 0
    assert capsys.readouterr().out == "北京是" + expected + "\n"
    long_prompt = "，".join(["北京是中国的首都", "上海的夜景很美", "今天天气很好"] * 12)
    assert len(tokenizer.encode_ids(long_prompt)) > 128
    assert main(args + ["--prompt", long_prompt]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pangu generate: error: prompt of") and "--truncate left" in err and "\n" not in err
    assert main(args + ["--prompt", long_prompt, "--truncate", "left"]) == 0
    assert capsys.readouterr().out.startswith(long_prompt)
