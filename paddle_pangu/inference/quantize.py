"""`--weights fp32|int8|bf16`: the precision of the weights a loaded model decodes with (issue 25).

int8 is weight-only, per output channel, symmetric: w[i, j] ~ s[i] * q[i, j] with q in [-127, 127] and
s[i] = max_j |w[i, j]| / 127, so |w - s q| <= s / 2 for every weight. Activations and accumulation stay
fp32 (paddle_pangu/kernels/int8_kernels.cc). `quantize_model` is a post-load transform, done once per
load or export, never per token: every plain nn.Linear becomes an Int8Linear (its fp32 weight freed) and
the tied head (REF "output head": logits = h @ word_embedding^T) gets an int8 copy of the word embedding,
whose fp32 table stays for the input lookup. LayerNorms, the position and top-query embeddings stay fp32.

bf16 (`--weights bf16`) stores every linear weight and the head as bfloat16, rounded to nearest even from
fp32 once at load, so |w - bf16(w)| <= 2^-8 |w| per weight (8 significant bits: half an ulp is 2^-8 of the
leading power of two): half the bytes of fp32 per token. Activations and
accumulation stay fp32; the kernel decodes a bf16 weight to fp32 exactly (bf16 is the top 16 bits of an
fp32: a shift), so it needs no AVX512_BF16 instruction and runs on any x86-64 CPU (AVX-512 / AVX2 /
scalar, as int8). `vdpbf16ps` (AVX512_BF16) is deliberately not used: it rounds the activations to bf16
too, a different numerics contract.

Kernel threads (`threads`, default None = the process's math-library threads, kernels.threads()): the
quantised layers run one parallel region per call, in the thread that decodes. `pangu serve` decodes every
request in one engine thread (continuous batching: one batched step at a time), so its `--threads` sets
this count directly (0: the math library's, which paddle_pangu.runtime caps at the cores this process may
use): more requests never mean more kernel threads.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from .. import kernels
from ..errors import CheckpointError, UsageError

WEIGHTS = ("fp32", "int8", "bf16")
# run as Python inside paddle.jit.to_static (export): it appends the custom op to the graph as it is
_int8_linear = paddle.jit.not_to_static(kernels.int8_linear)
_bf16_linear = paddle.jit.not_to_static(kernels.bf16_linear)
# round to nearest even with 8 significant bits (7 stored + the implicit one): the unit roundoff is 2^-8, so
# |w - bf16(w)| <= 2^-8 |w| (not 2^-9: 19920.28 rounds to 19968, an error of 2.4e-3 |w|; the test found it)
BF16_REL = 2.0 ** -8


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] float -> (q [N, K] int8, s [N] float32), one scale per row (output channel).

    Computed in float64 from the stored fp32 scale, so |w - s q| <= s / 2 holds for the s the kernel uses.
    An all-zero row gets s = 0 and q = 0 (its output is the bias)."""
    w64 = np.asarray(w, dtype=np.float64)
    s = (np.abs(w64).max(axis=1) / 127.0).astype(np.float32)  # [N]
    div = np.where(s > 0, s, 1).astype(np.float64)[:, None]
    q = np.clip(np.rint(w64 / div), -127, 127).astype(np.int8)
    return q, s


def bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 array -> the uint16 bits of its bfloat16 rounding (to nearest, ties to even); what
    paddle.to_tensor turns into a bfloat16 tensor. Finite inputs only (callers check)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 values (exact: the bits are the top half of the fp32)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _finite(name: str, w: np.ndarray, to: str = "int8") -> None:
    if not np.isfinite(w).all():
        bad = int((~np.isfinite(w)).sum())
        raise CheckpointError(f"{name}: {bad} non-finite value(s); refusing to quantise it to {to}")


class Int8Linear(nn.Layer):
    """A quantised nn.Linear: x [..., K] -> [..., N]. Buffers (saved by `paddle.jit.save` with the graph):
    qweight [N, K] int8 (the fp32 weight [K, N] transposed, one row per output channel), scale [N], bias [N]."""

    def __init__(self, weight_kn: np.ndarray, bias: np.ndarray | None, name: str = "linear"):
        super().__init__()
        self.threads = None  # kernel threads (None: kernels.threads()); quantize_model sets it
        _finite(name + ".weight", weight_kn)
        q, s = quantize_rows(np.asarray(weight_kn).T)  # [N, K], [N]
        b = np.zeros(q.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
        if bias is not None:
            _finite(name + ".bias", b)
        self.register_buffer("qweight", paddle.to_tensor(q), persistable=True)
        self.register_buffer("scale", paddle.to_tensor(s), persistable=True)
        self.register_buffer("bias", paddle.to_tensor(b), persistable=True)

    def forward(self, x):
        return _int8_linear(x, self.qweight, self.scale, self.bias, self.threads)

    @staticmethod
    def linear_cat(layers, x):
        """[layer(x) for layer in layers] as one kernel call, for a decode step's layers of one input (model/ops.py
        linears): int8_linear_cat, bit for bit the same outputs. The layers' threads: the first one's."""
        y = kernels.int8_linear_cat(x, [m.qweight for m in layers], [m.scale for m in layers],
                                    [m.bias for m in layers], layers[0].threads)  # [..., sum N]
        return paddle.split(y, [m.qweight.shape[0] for m in layers], axis=-1)

    def dequantized(self) -> np.ndarray:
        """float64 [N, K]: s * q, the weight the kernel multiplies by (for accuracy checks)."""
        return self.scale.numpy().astype(np.float64)[:, None] * self.qweight.numpy().astype(np.float64)


class Int8Head(Int8Linear):
    """The tied head: hidden [B, S, H] -> logits [B, S, V] with an int8 copy of the word embedding [V, H]
    (already one row per output channel: no transpose) and no bias (REF "output head")."""

    def __init__(self, embedding_vh: np.ndarray):
        super().__init__(np.asarray(embedding_vh).T, None, "pangu.embeddings.word_embeddings.weight (tied head)")


class Bf16Linear(nn.Layer):
    """An nn.Linear with bfloat16-stored weights: x [..., K] fp32 -> [..., N] fp32. Buffers: weight [N, K]
    bfloat16 (the fp32 [K, N] weight transposed and rounded to nearest even), bias [N] fp32 (not rounded:
    N values, no bandwidth to save)."""

    def __init__(self, weight_kn: np.ndarray, bias: np.ndarray | None, name: str = "linear"):
        super().__init__()
        self.threads = None
        _finite(name + ".weight", weight_kn, "bf16")
        bits = bf16_bits(np.asarray(weight_kn, np.float32).T)  # [N, K]
        if not np.isfinite(bf16_values(bits)).all():  # |w| above bf16's largest finite value rounds to inf
            raise CheckpointError(f"{name}.weight: a value beyond bfloat16's range (3.39e38); refusing bf16")
        b = np.zeros(bits.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
        if bias is not None:
            _finite(name + ".bias", b, "bf16")
        self.register_buffer("weight", paddle.to_tensor(bits), persistable=True)  # uint16 -> paddle.bfloat16
        self.register_buffer("bias", paddle.to_tensor(b), persistable=True)

    def forward(self, x):
        return _bf16_linear(x, self.weight, self.bias, self.threads)

    @staticmethod
    def linear_cat(layers, x):
        """Int8Linear.linear_cat for bf16 layers (bf16_linear_cat)."""
        y = kernels.bf16_linear_cat(x, [m.weight for m in layers], [m.bias for m in layers], layers[0].threads)
        return paddle.split(y, [m.weight.shape[0] for m in layers], axis=-1)

    def dequantized(self) -> np.ndarray:
        """float64 [N, K]: the bf16 weights the kernel multiplies by."""
        return bf16_values(self.weight.numpy()).astype(np.float64)


class Bf16Head(Bf16Linear):
    """The tied head with a bf16 copy of the word embedding [V, H] (REF "output head": no bias)."""

    def __init__(self, embedding_vh: np.ndarray):
        super().__init__(np.asarray(embedding_vh).T, None, "pangu.embeddings.word_embeddings.weight (tied head)")


def cpu_has_bf16() -> bool:
    return "avx512_bf16" in kernels.cpu_flags()


def check_weights(weights: str, device: str = "cpu") -> None:
    """A one-line UsageError for a --weights this machine cannot run (before any model is loaded)."""
    if weights not in WEIGHTS:
        raise UsageError(f"--weights {weights!r}: expected one of {WEIGHTS}")
    if weights == "fp32":
        return
    if device != "cpu":
        raise UsageError(f"--weights {weights} is a CPU decode mode; on --device {device} use --weights fp32 "
                         f"(and `pangu export --dtype` for the device's own precision)")


def quantize_model(model, weights: str = "int8", threads: int | None = None):
    """Convert a loaded single-rank PanGuForCausalLM in place for `weights` ("fp32" leaves it as it is);
    returns the model. Frees each replaced fp32 linear weight. threads: the kernels' thread count (None or 0:
    the math library's, kernels.threads())."""
    check_weights(weights)
    if weights == "fp32":
        return model
    done = getattr(model, "weights_mode", None)
    if done is not None:
        if done != weights:
            raise UsageError(f"--weights {weights}: the model is already converted to {done} weights")
        set_threads(model, threads)
        return model
    linear_cls, head_cls = (Int8Linear, Int8Head) if weights == "int8" else (Bf16Linear, Bf16Head)
    model.eval()
    replaced = 0
    with paddle.no_grad():
        for parent_name, parent in list(model.named_sublayers(include_self=True)):
            for child_name, child in list(parent._sub_layers.items()):
                if child is None:
                    continue
                if isinstance(child, nn.Linear) and type(child) is not nn.Linear or \
                        type(child).__name__ in ("ColumnParallelLinear", "RowParallelLinear"):
                    raise UsageError(f"--weights {weights}: {parent_name}.{child_name} is a {type(child).__name__} "
                                     f"(a tensor-parallel model); {weights} decode runs a single-rank model")
                if type(child) is nn.Linear:
                    name = f"{parent_name}.{child_name}" if parent_name else child_name
                    bias = None if child.bias is None else child.bias.numpy()
                    parent._sub_layers[child_name] = linear_cls(child.weight.numpy(), bias, name)
                    replaced += 1
        if replaced == 0:
            raise UsageError(f"--weights {weights}: the model has no linear layers to convert")
        model.quantized_head = head_cls(model.get_input_embeddings().weight.numpy())
    model.weights_mode = weights
    set_threads(model, threads)
    return model


def set_threads(model, threads: int | None) -> None:
    """The kernel thread count of every int8 / bf16 layer of `model` (None or 0: kernels.threads())."""
    if threads is not None and threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = the math library's), got {threads}")
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, (Int8Linear, Bf16Linear)):
            layer.threads = threads or None
