"""Model benchmarks, each a ratio against a baseline measured in the same run (the machines are noisy).

- train: tokens/s of one PanGu training step (forward, backward, AdamW) vs PaddleNLP's own
  `GPTForCausalLM` at the same width, depth, heads, vocabulary and sequence length. PanGu does
  one more layer's worth of work per step (its query layer counts in num_layers but it also has
  the top-query lookup), so parity is the goal, not a win.
- generate: new tokens/s of `generate` with the KV cache vs recomputing the whole prefix every step.
"""
from __future__ import annotations

import time

import numpy as np
import paddle


def _timed(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _train_step_fn(model, ids, labels):
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters())

    def step():
        out = model(ids, labels=labels)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        loss.backward()
        opt.step()
        opt.clear_grad()

    return step


def bench_train(preset: str = "mini", batch: int = 4, seq: int = 256, steps: int = 3) -> dict:
    from paddlenlp.transformers import GPTConfig, GPTForCausalLM

    from ..config import get_preset
    from ..model import PanGuForCausalLM

    cfg = get_preset(preset, max_position_embeddings=max(seq, 1), hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(rng.integers(10, cfg.vocab_size, [batch, seq]), dtype="int64")
    paddle.seed(0)
    ours = PanGuForCausalLM(cfg)
    base = GPTForCausalLM(GPTConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.ffn_hidden_size,
        max_position_embeddings=seq, seq_length=seq, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ))
    t_ours = _timed(_train_step_fn(ours, ids, ids), steps)
    t_base = _timed(_train_step_fn(base, ids, ids), steps)
    tokens = batch * seq
    return {"name": "train_step", "config": f"{preset} b{batch} s{seq}", "ours_tokens_per_s": tokens / t_ours,
            "baseline": "paddlenlp GPTForCausalLM", "baseline_tokens_per_s": tokens / t_base,
            "ratio": t_base / t_ours}


def bench_generate(preset: str = "mini", prompt_len: int = 32, new_tokens: int = 32) -> dict:
    from ..config import get_preset
    from ..inference import SamplingConfig, generate
    from ..model import PanGuForCausalLM

    paddle.seed(0)
    model = PanGuForCausalLM(get_preset(preset))
    model.eval()
    prompt = list(np.random.default_rng(1).integers(10, 40000, prompt_len))
    cfg = SamplingConfig(max_new_tokens=new_tokens, eos_token_id=-1)

    @paddle.no_grad()
    def no_cache():
        ids = list(prompt)
        for _ in range(new_tokens):
            ids.append(int(model(paddle.to_tensor([ids]))[0, -1].argmax()))

    t_cache = _timed(lambda: generate(model, [prompt], cfg), 1)
    t_plain = _timed(no_cache, 1)
    return {"name": "generate", "config": f"{preset} prompt{prompt_len} +{new_tokens}",
            "ours_tokens_per_s": new_tokens / t_cache, "baseline": "no KV cache (full recompute)",
            "baseline_tokens_per_s": new_tokens / t_plain, "ratio": t_plain / t_cache}
