"""Layer factory: the only place the model gets splittable layers from.

With tensor-parallel degree 1 these are plain `paddle.nn` layers and ops.
With degree > 1 they are fleet's `ColumnParallelLinear`, `RowParallelLinear`,
`VocabParallelEmbedding` and `ParallelCrossEntropy`, so the model math in
`paddle_pangu/model/layers.py` never branches on the parallel layout.
"""
from __future__ import annotations

import contextlib

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


@paddle.jit.not_to_static
def _hcg():
    """The fleet hybrid communicate group, or None outside a fleet job (plain Python, never traced)."""
    try:
        from paddle.distributed import fleet

        if not fleet.fleet._is_collective:  # fleet.init not called
            return None
        return fleet.get_hybrid_communicate_group()
    except Exception:
        return None


def mp_world_size() -> int:
    hcg = _hcg()
    return hcg.get_model_parallel_world_size() if hcg is not None else 1


def mp_rank() -> int:
    hcg = _hcg()
    return hcg.get_model_parallel_rank() if hcg is not None else 0


def mp_group():
    """The tensor-parallel process group, or None outside a fleet job."""
    hcg = _hcg()
    return hcg.get_model_parallel_group() if hcg is not None else None


def local_rng():
    """Context for dropout on tensor-parallel-local activations (e.g. the probabilities of this
    rank's attention heads): fleet's `model_parallel_rng` stream, distinct per mp rank and seeded
    by `parallel.topology.init_topology`. A no-op with mp == 1."""
    if mp_world_size() == 1:
        return contextlib.nullcontext()
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    return get_rng_state_tracker().rng_state()


def column_linear(in_features, out_features, weight_attr=None, has_bias=True, gather_output=False):
    """Linear whose output features are split across the tensor-parallel group."""
    if mp_world_size() == 1:
        return nn.Linear(in_features, out_features, weight_attr=weight_attr, bias_attr=None if has_bias else False)
    from paddle.distributed.fleet.meta_parallel import ColumnParallelLinear

    return ColumnParallelLinear(
        in_features, out_features, weight_attr=weight_attr, has_bias=has_bias, gather_output=gather_output
    )


def row_linear(in_features, out_features, weight_attr=None, has_bias=True, input_is_parallel=True):
    """Linear whose input features are split across the tensor-parallel group (output all-reduced)."""
    if mp_world_size() == 1:
        return nn.Linear(in_features, out_features, weight_attr=weight_attr, bias_attr=None if has_bias else False)
    from paddle.distributed.fleet.meta_parallel import RowParallelLinear

    return RowParallelLinear(
        in_features, out_features, weight_attr=weight_attr, has_bias=has_bias, input_is_parallel=input_is_parallel
    )


def vocab_embedding(num_embeddings, embedding_dim, weight_attr=None):
    """Word embedding whose rows (vocabulary) are split across the tensor-parallel group."""
    if mp_world_size() == 1:
        return nn.Embedding(num_embeddings, embedding_dim, weight_attr=weight_attr)
    from paddle.distributed.fleet.meta_parallel import VocabParallelEmbedding

    return VocabParallelEmbedding(num_embeddings, embedding_dim, weight_attr=weight_attr)


def tied_lm_logits(hidden, embedding_weight, parallel_output: bool):
    """Tied head (REF "output head": logits = h @ word_embedding^T, no bias).

    hidden: [B, S, H]; embedding_weight: [V_local, H] -> logits [B, S, V_local]
    (or [B, S, V] when mp > 1 and not parallel_output).
    """
    if mp_world_size() == 1:
        return paddle.matmul(hidden, embedding_weight, transpose_y=True)
    from paddle.distributed.fleet.layers.mpu import mp_ops

    # PaddleNLP `parallel_matmul`: each rank multiplies by its vocab shard [V/mp, H]
    group = mp_group()
    hidden = mp_ops._c_identity(hidden, group=group)  # identity fwd, all-reduce of grads bwd
    logits = paddle.matmul(hidden, embedding_weight, transpose_y=True)
    if parallel_output:
        return logits
    return mp_ops._c_concat(logits, group=group)


def lm_cross_entropy(logits, labels, parallel_output: bool):
    """Per-token cross entropy in fp32. logits [B, S, V(_local)], labels [B, S] -> [B, S]."""
    if mp_world_size() == 1 or not parallel_output:
        loss = F.cross_entropy(logits.astype("float32"), labels.unsqueeze(-1), reduction="none")
        return loss.squeeze(-1)
    from paddle.distributed.fleet.meta_parallel import ParallelCrossEntropy

    loss = ParallelCrossEntropy()(logits.astype("float32"), labels.unsqueeze(-1))
    return loss.squeeze(-1)
