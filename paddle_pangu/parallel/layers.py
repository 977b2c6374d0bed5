"""Layer factory: the only place the model gets splittable layers from.

Every function takes the `ParallelContext` (`parallel/context.py`) it builds
for, explicitly, as Megatron-core layers take their config and group: nothing
here reads fleet's globals. With `ctx.mp_degree == 1` these are plain
`paddle.nn` layers and ops; above it they are fleet's `ColumnParallelLinear`,
`RowParallelLinear`, `VocabParallelEmbedding` and `ParallelCrossEntropy` on
`ctx.mp_group`, so the model math in `paddle_pangu/model/layers.py` never
branches on the parallel layout.
"""
from __future__ import annotations

import contextlib

import paddle
import paddle.nn as nn

from . import fleet_compat
from .context import ParallelContext


def local_rng(ctx: ParallelContext):
    """Context for dropout on tensor-parallel-local activations (e.g. the probabilities of this
    rank's attention heads): fleet's `model_parallel_rng` stream, distinct per mp rank and seeded
    by `parallel.topology.init_topology`. A no-op with mp == 1."""
    if not ctx.tensor_parallel:
        return contextlib.nullcontext()
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    return get_rng_state_tracker().rng_state()


def _plain_linear(in_features, out_features, weight_attr, has_bias):
    return nn.Linear(in_features, out_features, weight_attr=weight_attr, bias_attr=None if has_bias else False)


def column_linear(ctx: ParallelContext, in_features, out_features, weight_attr=None, has_bias=True,
                  gather_output=False):
    """Linear whose output features are split across the tensor-parallel group."""
    if not ctx.tensor_parallel:
        return _plain_linear(in_features, out_features, weight_attr, has_bias)
    from paddle.distributed.fleet.meta_parallel import ColumnParallelLinear

    return ColumnParallelLinear(in_features, out_features, weight_attr=weight_attr, has_bias=has_bias,
                                gather_output=gather_output, mp_group=ctx.mp_group)


def row_linear(ctx: ParallelContext, in_features, out_features, weight_attr=None, has_bias=True,
               input_is_parallel=True):
    """Linear whose input features are split across the tensor-parallel group (output all-reduced)."""
    if not ctx.tensor_parallel:
        return _plain_linear(in_features, out_features, weight_attr, has_bias)
    from paddle.distributed.fleet.meta_parallel import RowParallelLinear

    return RowParallelLinear(in_features, out_features, weight_attr=weight_attr, has_bias=has_bias,
                             input_is_parallel=input_is_parallel, mp_group=ctx.mp_group)


def vocab_embedding(ctx: ParallelContext, num_embeddings, embedding_dim, weight_attr=None):
    """Word embedding whose rows (vocabulary) are split across the tensor-parallel group."""
    if not ctx.tensor_parallel:
        return nn.Embedding(num_embeddings, embedding_dim, weight_attr=weight_attr)
    from paddle.distributed.fleet.meta_parallel import VocabParallelEmbedding

    return VocabParallelEmbedding(num_embeddings, embedding_dim, weight_attr=weight_attr, mp_group=ctx.mp_group)


def tied_lm_logits(ctx: ParallelContext, hidden, embedding_weight, parallel_output: bool, weight_t=None):
    """Tied head (REF "output head": logits = h @ word_embedding^T, no bias).

    hidden: [B, S, H]; embedding_weight: [V_local, H] -> logits [B, S, V_local]
    (or [B, S, V] when mp > 1 and not parallel_output).
    weight_t: optional [H, V_local] copy of embedding_weight for inference (no gradient reaches the
    embedding through it). At decode the head is a GEMV over the largest weight, and MKL reads the
    [H, V] layout about 2x faster than the transposed [V, H] one (see inference/generation.py).
    """
    def head(h):
        return paddle.matmul(h, weight_t) if weight_t is not None else paddle.matmul(h, embedding_weight,
                                                                                   transpose_y=True)

    if not ctx.tensor_parallel:
        return head(hidden)
    # PaddleNLP `parallel_matmul`: each rank multiplies by its vocab shard [V/mp, H]
    hidden = fleet_compat.c_identity(hidden, ctx.mp_group)  # identity fwd, all-reduce of grads bwd
    logits = head(hidden)
    if parallel_output:
        return logits
    return fleet_compat.c_concat(logits, ctx.mp_group)


def vocab_parallel_cross_entropy(ctx: ParallelContext, logits, labels):
    """Per-token cross entropy in fp32 over this rank's vocab shard. logits [B, S, V/mp], labels [B, S] -> [B, S]."""
    from paddle.distributed.fleet.meta_parallel import ParallelCrossEntropy

    loss = ParallelCrossEntropy(mp_group=ctx.mp_group)(logits.astype("float32"), labels.unsqueeze(-1))
    return loss.squeeze(-1)
