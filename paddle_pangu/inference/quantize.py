"""`--weights fp32|int8|bf16`: the precision of the weights a loaded model decodes with (issue 25).

int8 is weight-only, per output channel, symmetric: w[i, j] ~ s[i] * q[i, j] with q in [-127, 127] and
s[i] = max_j |w[i, j]| / 127, so |w - s q| <= s / 2 for every weight. Activations and accumulation stay
fp32 (paddle_pangu/kernels/int8_kernels.cc). `quantize_model` is a post-load transform, done once per
load or export, never per token: every plain nn.Linear becomes an Int8Linear (its fp32 weight freed) and
the tied head (REF "output head": logits = h @ word_embedding^T) gets an int8 copy of the word embedding,
whose fp32 table stays for the input lookup. LayerNorms, the position and top-query embeddings stay fp32.

bf16 needs AVX512_BF16; on a CPU without it `--weights bf16` is a one-line refusal (never an fp32 run
under a bf16 label). On a CPU with it the dygraph bf16 kernels are not written yet (they could not be
tested on the machines this was built on), so it is refused there too, naming the alternative.
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


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] float -> (q [N, K] int8, s [N] float32), one scale per row (output channel).

    Computed in float64 from the stored fp32 scale, so |w - s q| <= s / 2 holds for the s the kernel uses.
    An all-zero row gets s = 0 and q = 0 (its output is the bias)."""
    w64 = np.asarray(w, dtype=np.float64)
    s = (np.abs(w64).max(axis=1) / 127.0).astype(np.float32)  # [N]
    div = np.where(s > 0, s, 1).astype(np.float64)[:, None]
    q = np.clip(np.rint(w64 / div), -127, 127).astype(np.int8)
    return q, s


def _finite(name: str, w: np.ndarray) -> None:
    if not np.isfinite(w).all():
        bad = int((~np.isfinite(w)).sum())
        raise CheckpointError(f"{name}: {bad} non-finite value(s); refusing to quantise it to int8")


class Int8Linear(nn.Layer):
    """A quantised nn.Linear: x [..., K] -> [..., N]. Buffers (saved by `paddle.jit.save` with the graph):
    qweight [N, K] int8 (the fp32 weight [K, N] transposed, one row per output channel), scale [N], bias [N]."""

    def __init__(self, weight_kn: np.ndarray, bias: np.ndarray | None, name: str = "linear"):
        super().__init__()
        _finite(name + ".weight", weight_kn)
        q, s = quantize_rows(np.asarray(weight_kn).T)  # [N, K], [N]
        b = np.zeros(q.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
        if bias is not None:
            _finite(name + ".bias", b)
        self.register_buffer("qweight", paddle.to_tensor(q), persistable=True)
        self.register_buffer("scale", paddle.to_tensor(s), persistable=True)
        self.register_buffer("bias", paddle.to_tensor(b), persistable=True)

    def forward(self, x):
        return _int8_linear(x, self.qweight, self.scale, self.bias)

    def dequantized(self) -> np.ndarray:
        """float64 [N, K]: s * q, the weight the kernel multiplies by (for accuracy checks)."""
        return self.scale.numpy().astype(np.float64)[:, None] * self.qweight.numpy().astype(np.float64)


class Int8Head(Int8Linear):
    """The tied head: hidden [B, S, H] -> logits [B, S, V] with an int8 copy of the word embedding [V, H]
    (already one row per output channel: no transpose) and no bias (REF "output head")."""

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
    if weights == "bf16":
        if not cpu_has_bf16():
            raise UsageError("--weights bf16: this CPU has no avx512_bf16 instructions (see /proc/cpuinfo flags); "
                             "a bf16 run here would be fp32 under a bf16 label. Use --weights int8 or fp32")
        raise UsageError("--weights bf16: the bf16 decode kernels are not built yet (untested: no bf16 CPU was "
                         "available); use --weights int8, or `pangu export --dtype bfloat16` for oneDNN's bf16")


def quantize_model(model, weights: str = "int8"):
    """Convert a loaded single-rank PanGuForCausalLM in place for `weights` ("fp32" leaves it as it is);
    returns the model. Frees each replaced fp32 linear weight."""
    check_weights(weights)
    if weights == "fp32":
        return model
    if getattr(model, "quantized_head", None) is not None:
        return model  # already int8
    model.eval()
    replaced = 0
    with paddle.no_grad():
        for parent_name, parent in list(model.named_sublayers(include_self=True)):
            for child_name, child in list(parent._sub_layers.items()):
                if child is None:
                    continue
                if isinstance(child, nn.Linear) and type(child) is not nn.Linear or \
                        type(child).__name__ in ("ColumnParallelLinear", "RowParallelLinear"):
                    raise UsageError(f"--weights int8: {parent_name}.{child_name} is a {type(child).__name__} "
                                     f"(a tensor-parallel model); int8 decode runs a single-rank model")
                if type(child) is nn.Linear:
                    name = f"{parent_name}.{child_name}" if parent_name else child_name
                    bias = None if child.bias is None else child.bias.numpy()
                    parent._sub_layers[child_name] = Int8Linear(child.weight.numpy(), bias, name)
                    replaced += 1
        if replaced == 0:
            raise UsageError("--weights int8: the model has no linear layers to quantise")
        model.quantized_head = Int8Head(model.get_input_embeddings().weight.numpy())
    return model
