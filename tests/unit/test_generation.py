"""Generation: cached greedy == uncached greedy, left padding, sampling filters."""
import numpy as np
import paddle
import pytest

from paddle_pangu.inference.generation import SamplingConfig, _filter_logits, generate, left_pad


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


def test_stops_at_eos(model):
    prompt = [101, 2002, 303]
    first = generate(model, [prompt], SamplingConfig(max_new_tokens=1, eos_token_id=-1))[0][0]
    assert generate(model, [prompt], SamplingConfig(max_new_tokens=5, eos_token_id=first))[0] == []


def test_top_k_one_sampling_is_greedy(model):
    prompt = [11, 12, 13, 14]
    greedy = generate(model, [prompt], SamplingConfig(max_new_tokens=5, eos_token_id=-1))
    sampled = generate(model, [prompt], SamplingConfig(max_new_tokens=5, eos_token_id=-1, do_sample=True, top_k=1,
                                                        seed=3))
    assert sampled == greedy


def test_sampling_is_seeded(model):
    cfg = SamplingConfig(max_new_tokens=6, eos_token_id=-1, do_sample=True, top_p=0.9, temperature=1.5, seed=11)
    assert generate(model, [[11, 12]], cfg) == generate(model, [[11, 12]], cfg)


def test_filters_top_p_top_k_and_penalties():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype="float32"))
    counts = np.zeros_like(logits)
    kept = np.isfinite(_filter_logits(logits, counts, SamplingConfig(top_p=0.7)))
    assert kept.tolist() == [[True, True, False, False]]
    kept = np.isfinite(_filter_logits(logits, counts, SamplingConfig(top_k=3)))
    assert kept.tolist() == [[True, True, True, False]]
    counts[0, 0] = 2
    pen = _filter_logits(logits, counts, SamplingConfig(frequency_penalty=1.0, presence_penalty=0.5))
    np.testing.assert_allclose(pen[0, 0], logits[0, 0] - 2.5, rtol=1e-6)
    np.testing.assert_allclose(pen[0, 1:], logits[0, 1:], rtol=1e-6)


def test_bad_sampling_config():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)


def test_too_long_prompt_is_rejected(model):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, [[5] * 120], SamplingConfig(max_new_tokens=20))
