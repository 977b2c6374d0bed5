"""Decode benchmark: PanGu with its KV cache (dygraph), the exported Paddle Inference predictor, and
PyTorch + HF `GPT2LMHeadModel.generate` — greedy, same size, same prompt, same new-token count.

Per batch size: first-token latency (a generate call asking for one new token: prefill and the first
pick) and tokens/s over the whole call (batch x new tokens / time). No stop token can end a row early
(PanGu's stop id is set outside the vocabulary; HF's default eos 50256 lies outside a 40k vocabulary).
"""
from __future__ import annotations

import tempfile

import numpy as np

from .harness import bench_threads, interleave, pair_ratio, set_torch_threads, summarize
from .train_bench import Shape


def _prompts(shape: Shape, batch: int, prompt_len: int) -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [list(map(int, rng.integers(10, shape.vocab, prompt_len))) for _ in range(batch)]


def pangu_model(shape: Shape, max_len: int):
    import paddle

    from ..config import get_preset
    from ..model import PanGuForCausalLM

    cfg = get_preset("tiny", hidden_size=shape.hidden, num_layers=shape.layers, num_attention_heads=shape.heads,
                     ffn_hidden_size=shape.ffn, vocab_size=shape.vocab, max_position_embeddings=max_len)
    paddle.seed(0)
    model = PanGuForCausalLM(cfg)
    model.eval()
    return model


def _sampling(new_tokens: int):
    from ..inference import SamplingConfig

    return SamplingConfig(max_new_tokens=new_tokens, eos_token_id=-1)


def stepper_fn(stepper, prompts, new_tokens):
    """Decode through a stepper made once: the dygraph one `pangu generate` / `pangu serve` build for a model
    directory (frozen weights: the head in the [H, V] layout), or the Paddle Inference one."""
    from ..inference.generation import decode_loop

    cfg = _sampling(new_tokens)
    return lambda: decode_loop(stepper, stepper.config, prompts, cfg)


def hf_model(shape: Shape, max_len: int):
    torch = set_torch_threads()
    if torch is None:
        return None
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=shape.vocab, n_embd=shape.hidden, n_layer=shape.layers,
                                       n_head=shape.heads, n_inner=shape.ffn, n_positions=max_len,
                                       activation_function="gelu_new", attn_implementation="sdpa"))
    return model.eval()


def hf_fn(model, prompts, new_tokens):
    import torch

    ids = torch.tensor(prompts, dtype=torch.int64)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return run


def _with_onednn(stepper, export_dir: str):
    """The same predictors with oneDNN on, the alternative to the fp32 CPU default (off: oneDNN re-plans its
    kernels for every new sequence length, and in decode every step has one)."""
    import os

    import paddle

    from ..inference.export import predictor_config

    for name in list(stepper.predictors):
        cfg = predictor_config(os.path.join(export_dir, name + ".json"), os.path.join(export_dir, name + ".pdiparams"),
                               "cpu", bench_threads())
        cfg.enable_mkldnn()
        stepper.predictors[name] = paddle.inference.create_predictor(cfg)
    return stepper


def _backends(shape: Shape, max_len: int, compare: bool, predictor: bool, tmp: str) -> dict:
    from ..inference.generation import DygraphStepper

    model = pangu_model(shape, max_len)
    backends = {"pangu_dynamic": (stepper_fn, DygraphStepper(model, frozen=True))}
    if predictor:
        from ..inference.export import InferenceStepper, export_model

        export_model(model, tmp)
        backends["pangu_predictor"] = (stepper_fn, InferenceStepper(tmp, threads=bench_threads()))
        backends["predictor_onednn"] = (stepper_fn, _with_onednn(InferenceStepper(tmp, threads=bench_threads()), tmp))
    if compare:
        hf = hf_model(shape, max_len)
        if hf is not None:
            backends["hf_generate"] = (hf_fn, hf)
    return backends


def _one_batch(backends: dict, shape: Shape, batch: int, prompt_len: int, new_tokens: int, rounds: int) -> dict:
    prompts = _prompts(shape, batch, prompt_len)
    first = {n: make(obj, prompts, 1) for n, (make, obj) in backends.items()}
    full = {n: make(obj, prompts, new_tokens) for n, (make, obj) in backends.items()}
    for fn in full.values():
        fn()  # warm-up
    first_runs, full_runs = interleave(first, rounds), interleave(full, rounds)
    systems = {}
    for name in backends:
        s = summarize(full_runs[name], batch * new_tokens)
        s["first_token_s"] = summarize(first_runs[name])["wall_s"]
        systems[name] = s
    ratios = {f"pangu_dynamic/{b}": pair_ratio(full_runs["pangu_dynamic"], full_runs[b]) for b in backends
              if b != "pangu_dynamic"}
    for pred in ("pangu_predictor", "predictor_onednn"):  # the predictor against the dynamic model
        if pred in backends:
            ratios[f"{pred}/pangu_dynamic"] = pair_ratio(full_runs[pred], full_runs["pangu_dynamic"])
            if "hf_generate" in backends:
                ratios[f"{pred}/hf_generate"] = pair_ratio(full_runs[pred], full_runs["hf_generate"])
    return {"batch": batch, "systems": systems, "ratios": ratios}


def bench_generate(shape: Shape, batches=(1, 8), prompt_len: int = 32, new_tokens: int = 64, rounds: int = 3,
                   compare: bool = True, predictor: bool = True) -> dict:
    """Interleaved greedy decode per batch size; see the module docstring."""
    max_len = max(shape.seq, prompt_len + new_tokens)
    with tempfile.TemporaryDirectory(prefix="pangu_bench_export_") as tmp:
        backends = _backends(shape, max_len, compare, predictor, tmp)
        per_batch = [_one_batch(backends, shape, b, prompt_len, new_tokens, rounds) for b in batches]
    return {"name": "generate", "config": f"{shape.label()} prompt{prompt_len} +{new_tokens} greedy",
            "threads": bench_threads(), "rounds": rounds, "batches": per_batch}
