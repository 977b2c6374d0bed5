"""Decode benchmark: PanGu with its KV cache (dygraph), the exported Paddle Inference predictor, both again
with weight-only int8 weights (`--weights int8`) and with bf16-stored weights (`--weights bf16`: fp32
arithmetic, half the bytes; any x86 CPU), and PyTorch + HF `GPT2LMHeadModel.generate` (fp32, and bf16
weights where the CPU has AVX512_BF16) — greedy, same size, same prompt, same new-token count.

Roofline (issue 25): batch-1 decode reads every weight once per step, so a step cannot beat weight bytes /
memory bandwidth. Per system: `weight_bytes` read per decode step (the linear layers, layernorms and the
head; the embedding lookups read B rows and are left out), the achieved GB/s = weight_bytes x steps / call
time (prefill included, so it is a lower bound), and that as a fraction of the machine's read bandwidth
measured in the same run (`bandwidth`: a multi-threaded sum over a buffer far larger than the caches, and
a numpy copy, read + written bytes).

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


def pangu_weight_bytes(model) -> int:
    """Bytes of weights a PanGu decode step reads: every parameter and int8 buffer except the embedding
    tables used as lookups (word, position, top query), plus the tied head: its int8 copy (a buffer, counted)
    or the fp32 word embedding (read as the head, or as its [H, V] copy: the same bytes)."""
    import paddle

    lookups = {id(m.weight) for m in model.sublayers() if isinstance(m, paddle.nn.Embedding)}
    lookups |= {id(model.get_input_embeddings().weight)}
    total = sum(p.numel().item() * p.element_size() for p in model.parameters() if id(p) not in lookups)
    total += sum(b.numel().item() * b.element_size() for _, b in model.named_buffers())
    if getattr(model, "quantized_head", None) is None:
        w = model.get_input_embeddings().weight
        total += w.numel().item() * w.element_size()
    return int(total)


def hf_weight_bytes(model) -> int:
    """The same count for HF GPT-2: everything but the wte / wpe lookups, plus lm_head (tied to wte)."""
    import torch

    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in lookups)
    return int(total + model.lm_head.weight.numel() * model.lm_head.weight.element_size())


def measure_bandwidth(mb: int = 512, calls: int = 3) -> dict:
    """Read GB/s of a multi-threaded sum over `mb` MB (bench threads) and copy GB/s of numpy (one thread,
    read + written bytes); best of `calls` (the least disturbed by the other load on the machine)."""
    import os
    import time

    import paddle

    from .. import kernels

    n = mb * (1 << 20) // 4
    src = paddle.ones([n], "float32")
    a, b = np.ones(n, "float32"), np.empty(n, "float32")
    read, copy = [], []
    for _ in range(calls + 1):  # the first call pages the buffers in
        t = time.perf_counter()
        kernels.stream_read(src, bench_threads())
        read.append(4 * n / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        np.copyto(b, a)
        copy.append(8 * n / (time.perf_counter() - t) / 1e9)
    return {"read_gb_s": max(read[1:]), "copy_gb_s": max(copy[1:]), "mb": mb, "threads": bench_threads(),
            "load": round(os.getloadavg()[0], 2)}


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


CONVERTED = ("int8", "bf16")  # --weights modes measured beside fp32: systems pangu_<mode>, pangu_predictor_<mode>


def _backends(shape: Shape, max_len: int, compare: bool, predictor: bool, tmp: str, converted=CONVERTED):
    """({name: (make_fn, object)}, {name: weight bytes per decode step})."""
    import os

    from ..inference.generation import DygraphStepper
    from ..inference.quantize import cpu_has_bf16, quantize_model

    model = pangu_model(shape, max_len)
    backends = {"pangu_dynamic": (stepper_fn, DygraphStepper(model, frozen=True))}
    nbytes = {"pangu_dynamic": pangu_weight_bytes(model)}
    quantized = {}
    for mode in converted:  # the same weights (same seed), converted once
        quantized[mode] = quantize_model(pangu_model(shape, max_len), mode)
        backends[f"pangu_{mode}"] = (stepper_fn, DygraphStepper(quantized[mode], frozen=True))
        nbytes[f"pangu_{mode}"] = pangu_weight_bytes(quantized[mode])
    if predictor:
        from ..inference.export import InferenceStepper, export_model

        export_model(model, tmp)
        backends["pangu_predictor"] = (stepper_fn, InferenceStepper(tmp, threads=bench_threads()))
        backends["predictor_onednn"] = (stepper_fn, _with_onednn(InferenceStepper(tmp, threads=bench_threads()), tmp))
        nbytes["pangu_predictor"] = nbytes["predictor_onednn"] = nbytes["pangu_dynamic"]
        for mode, q in quantized.items():
            export_model(q, os.path.join(tmp, mode), weights=mode)
            backends[f"pangu_predictor_{mode}"] = (stepper_fn, InferenceStepper(os.path.join(tmp, mode),
                                                                                threads=bench_threads()))
            nbytes[f"pangu_predictor_{mode}"] = nbytes[f"pangu_{mode}"]
    if compare:
        hf = hf_model(shape, max_len)
        if hf is not None:
            backends["hf_generate"] = (hf_fn, hf)
            nbytes["hf_generate"] = hf_weight_bytes(hf)
            if cpu_has_bf16():  # what a PyTorch user would pick on a CPU with bf16 instructions
                import copy

                import torch

                hf16 = copy.deepcopy(hf).to(torch.bfloat16)
                backends["hf_generate_bf16"] = (hf_fn, hf16)
                nbytes["hf_generate_bf16"] = hf_weight_bytes(hf16)
    return backends, nbytes


def _one_batch(backends: dict, shape: Shape, batch: int, prompt_len: int, new_tokens: int, rounds: int,
               nbytes: dict | None = None, bandwidth: dict | None = None) -> dict:
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
        if nbytes and name in nbytes:  # the roofline: weights read per step x steps per second
            s["weight_bytes"] = nbytes[name]
            s["achieved_gb_s"] = nbytes[name] * new_tokens / s["wall_s"]["median"] / 1e9
            if bandwidth:
                s["roofline_fraction"] = s["achieved_gb_s"] / bandwidth["read_gb_s"]
        systems[name] = s
    ratios = {f"pangu_dynamic/{b}": pair_ratio(full_runs["pangu_dynamic"], full_runs[b]) for b in backends
              if b != "pangu_dynamic"}
    for pred in ("pangu_predictor", "predictor_onednn") + tuple(f"pangu{p}_{m}" for m in CONVERTED
                                                               for p in ("", "_predictor")):
        if pred in backends:  # against the fp32 dynamic model and HF
            ratios[f"{pred}/pangu_dynamic"] = pair_ratio(full_runs[pred], full_runs["pangu_dynamic"])
            for hf in ("hf_generate", "hf_generate_bf16"):
                if hf in backends:
                    ratios[f"{pred}/{hf}"] = pair_ratio(full_runs[pred], full_runs[hf])
    return {"batch": batch, "systems": systems, "ratios": ratios}


def bench_generate(shape: Shape, batches=(1, 8), prompt_len: int = 32, new_tokens: int = 64, rounds: int = 3,
                   compare: bool = True, predictor: bool = True) -> dict:
    """Interleaved greedy decode per batch size; see the module docstring."""
    max_len = max(shape.seq, prompt_len + new_tokens)
    with tempfile.TemporaryDirectory(prefix="pangu_bench_export_") as tmp:
        backends, nbytes = _backends(shape, max_len, compare, predictor, tmp)
        bandwidth = measure_bandwidth()
        per_batch = [_one_batch(backends, shape, b, prompt_len, new_tokens, rounds, nbytes, bandwidth)
                     for b in batches]
    return {"name": "generate", "config": f"{shape.label()} prompt{prompt_len} +{new_tokens} greedy",
            "threads": bench_threads(), "rounds": rounds, "bandwidth": bandwidth, "batches": per_batch}
