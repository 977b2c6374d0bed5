"""Training-step benchmark: PanGu vs PaddleNLP `GPTForCausalLM` vs PyTorch + HF `GPT2LMHeadModel`, and
PanGu with its fused CPU kernels off (`pangu_paddle_kernels`: what paddle_pangu/kernels buys).

All three are built at the same width, depth, heads, FFN width, vocabulary and sequence length, with
dropout off, fp32, AdamW (betas 0.9/0.95, weight decay 0.1) and a global-norm clip of 1.0, and run in
one process under the same runtime set-up (paddle_pangu.runtime; torch gets the same thread count).
PanGu's step is the project's own: its optimizer builder (decay groups, the recording clip).

FLOPs per step (stated, the same for the three: PanGu's num_layers counts its query layer, so it has
the same number of attention+FFN layers as a GPT of that depth):
    6 * N * tokens + 12 * L * S * H * tokens
with N = L * (4 H^2 + 2 H F) + V * H (the weight matrices every token multiplies, the tied head
included; embedding lookups and biases excluded) and the second term the attention scores and
weighted sum (QK^T and PV, forward 4 S H per token per layer, backward twice that).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from .harness import bench_threads, interleave, measure_matmul_peak, pair_ratio, set_torch_threads, summarize

FLOP_FORMULA = "6*N*tokens + 12*L*S*H*tokens, N = L*(4H^2 + 2HF) + V*H"


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    seq: int
    batch: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def flops_per_step(self) -> float:
        h, f, layers = self.hidden, self.ffn, self.layers
        n = layers * (4 * h * h + 2 * h * f) + self.vocab * h
        return 6.0 * n * self.tokens + 12.0 * layers * self.seq * h * self.tokens

    def label(self) -> str:
        return f"h{self.hidden} L{self.layers} nh{self.heads} V{self.vocab} b{self.batch} s{self.seq}"


def _ids(shape: Shape):
    return np.random.default_rng(0).integers(10, shape.vocab, [shape.batch, shape.seq]).astype("int64")


def pangu_step(shape: Shape):
    import paddle

    from ..config import get_preset
    from ..model import PanGuForCausalLM
    from ..training.optim import build_optimizer
    from ..training.run_config import OptimSection

    cfg = get_preset("tiny", hidden_size=shape.hidden, num_layers=shape.layers, num_attention_heads=shape.heads,
                     ffn_hidden_size=shape.ffn, vocab_size=shape.vocab, max_position_embeddings=shape.seq,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    paddle.seed(0)
    model = PanGuForCausalLM(cfg)
    model.train()
    opt = build_optimizer(model, OptimSection(), 1e-4)
    ids = paddle.to_tensor(_ids(shape))
    return _paddle_step(model, opt, ids)


def pangu_paddle_kernels_step(shape: Shape):
    """PanGu's step with the fused CPU kernels off (paddle_pangu/kernels): what they buy, in the same run."""
    step = pangu_step(shape)

    def run():
        with kernels.disabled():
            return step()

    return run


def _paddle_step(model, opt, ids):
    def step():
        out = model(ids, labels=ids)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        loss.backward()
        opt.step()
        opt.clear_grad()
        return float(loss)

    return step


def paddlenlp_step(shape: Shape):
    import paddle
    from paddlenlp.transformers import GPTConfig, GPTForCausalLM

    paddle.seed(0)
    model = GPTForCausalLM(GPTConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.ffn, max_position_embeddings=shape.seq,
        seq_length=shape.seq, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.train()
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters(), beta1=0.9, beta2=0.95,
                                 weight_decay=0.1, grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    return _paddle_step(model, opt, paddle.to_tensor(_ids(shape)))


def hf_step(shape: Shape):
    torch = set_torch_threads()
    if torch is None:
        return None
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=shape.vocab, n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads,
        n_inner=shape.ffn, n_positions=shape.seq, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        activation_function="gelu_new", attn_implementation="sdpa"))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.from_numpy(_ids(shape))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def _systems(shape: Shape, compare: bool) -> dict:
    systems = {"pangu": pangu_step(shape)}
    if compare:
        systems["pangu_paddle_kernels"] = pangu_paddle_kernels_step(shape)
        systems["paddlenlp_gpt"] = paddlenlp_step(shape)
        hf = hf_step(shape)
        if hf is not None:
            systems["hf_gpt2"] = hf
    for fn in systems.values():
        fn()  # warm-up: first-use allocations, optimizer state
    return systems


def bench_train(shape: Shape, rounds: int = 3, steps: int = 1, compare: bool = True, matmul_n: int = 1024) -> dict:
    """Interleaved training steps; tokens/s, step time, memory, FLOP/s and its share of the GEMM peak."""
    systems = _systems(shape, compare)
    before = measure_matmul_peak(matmul_n)
    systems_runs = interleave(systems, rounds, steps)
    after = measure_matmul_peak(matmul_n)
    peak = max(before, after, key=lambda p: p["peak_gflops"])  # measured just before and after: the higher
    flops = shape.flops_per_step()
    result = {"name": "train", "config": shape.label(), "threads": bench_threads(), "rounds": rounds,
              "cpu_kernels": "on" if kernels.load() is not None else f"off ({kernels.reason()})",
              "flop_formula": FLOP_FORMULA, "gflop_per_step": flops / 1e9, "matmul_peak": peak, "systems": {}}
    for name, samples in systems_runs.items():
        s = summarize(samples, shape.tokens)
        s["gflops"] = flops / s["wall_s"]["median"] / 1e9
        s["peak_fraction"] = s["gflops"] / peak["peak_gflops"]
        # per CPU-second: moves much less with the load than wall time (both threads' seconds counted)
        s["gflop_per_cpu_s"] = flops / s["cpu_s"]["median"] / 1e9
        s["peak_fraction_cpu"] = s["gflop_per_cpu_s"] / peak["peak_gflop_per_cpu_s"]
        result["systems"][name] = s
    result["ratios"] = {f"pangu/{b}": pair_ratio(systems_runs["pangu"], systems_runs[b])
                        for b in systems_runs if b != "pangu"}
    return result
