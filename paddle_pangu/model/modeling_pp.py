"""PanGuForCausalLMPipe: the pipeline-parallel PanGu-alpha, a thin adapter over `layers.py`.

The model is flattened into fleet `PipelineLayer` descriptors (REF =
docs/REFERENCE.md):

    [shared "pangu_shared_weight": embeddings]   prefix pangu.embeddings
    [block 0] ... [block L-2]                    prefix pangu.layers.{i}
    [final layernorm]                            prefix pangu.final_layernorm   (REF: before the query layer)
    [query layer + top_query_embedding]          prefix pangu.query_layer
    [shared "pangu_shared_weight": tied head]    prefix pangu.embeddings        (REF "output head": tied)

Stage split (`ParallelConfig` module doc): the L layers (blocks + query
layer) are divided evenly; stage 0 also holds the embeddings, the last stage
the final layernorm, query layer and head. The word embedding is a
`SharedLayerDesc` on the first and last stage; fleet broadcasts it at build
time and all-reduces its gradient between the two stages each step.

Activations travel between stages as (hidden [B,S,H], position_ids [B,S],
additive mask [B,1,S,S]); position ids and mask are built once on stage 0
(with `eod_reset`, REF "document boundaries") and passed along.

Names: `state_dict()` / `set_state_dict()` use the plain PanGuForCausalLM
names (PaddleNLP `PipelinePretrainedModel` prefixes), so pipelined and plain
checkpoints share keys; `pipe_to_plain_names()` exposes the map.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
from paddle.distributed.fleet.meta_parallel import LayerDesc, PipelineLayer, SharedLayerDesc
from paddlenlp.transformers.model_utils import PipelinePretrainedModel

from ..config import PanGuConfig
from ..config.parallel_config import pipeline_layer_counts
from ..parallel import context as parallel_context
from ..parallel import fleet_compat
from ..parallel import layers as pl
from ..parallel.context import PLAIN, ParallelContext
from .layers import FP32LayerNorm, PanGuBlock, PanGuEmbeddings, PanGuQueryLayer, normal_attr
from .modeling import PanGuPretrainedModel, PanGuPretrainingCriterion, resolve_positions_and_mask

SHARED_EMBEDDING_KEY = "pangu_shared_weight"


def _unpack(args):
    """(hidden, position_ids, mask) from a stage input; ids and mask never need gradients."""
    hidden, position_ids, mask = args
    position_ids.stop_gradient = True
    mask.stop_gradient = True
    return hidden, position_ids, mask


class PanGuEmbeddingPipe(PanGuEmbeddings):
    """Stage-0 embeddings; also builds position ids and the (document-reset) causal mask."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__(config, parallel)
        self.config = config

    @property
    def embedding_weight(self):
        return self.word_embeddings.weight

    def forward(self, args):
        """args: input_ids [B,S] or (input_ids[, position_ids[, attention_mask]])."""
        args = args if isinstance(args, (tuple, list)) else (args,)
        input_ids = args[0]
        position_ids = args[1] if len(args) > 1 else None
        attention_mask = args[2] if len(args) > 2 else None
        input_ids.stop_gradient = True
        position_ids, mask = resolve_positions_and_mask(self.config, input_ids, position_ids, attention_mask)
        hidden = super().forward(input_ids, position_ids)  # [B, S, H]
        position_ids.stop_gradient = True
        mask.stop_gradient = True
        return hidden, position_ids, mask


class PanGuBlockPipe(PanGuBlock):
    """A decoder block taking and returning the stage tuple; optionally recomputed in training.

    Recompute uses fleet's `recompute` (RNG-preserving, works on every
    device) rather than PipelineLayer's `recompute_interval`, whose
    `recompute_hybrid` refuses CPU in paddle 3.3.1. The re-entrant variant:
    inside a CPU pipeline stage the non-re-entrant one killed the process
    without a message during the backward pass (paddle 3.3.1).
    """

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN, recompute: bool = False):
        super().__init__(config, parallel)
        self.recompute = recompute

    def _block(self, hidden, mask):
        return PanGuBlock.forward(self, hidden, mask)[0]  # [B, S, H]

    def forward(self, args):
        hidden, position_ids, mask = _unpack(args)
        if self.recompute and self.training and not hidden.stop_gradient:
            from paddle.distributed.fleet.utils import recompute

            hidden = recompute(self._block, hidden, mask, use_reentrant=True)
        else:
            hidden = self._block(hidden, mask)
        return hidden, position_ids, mask


class PanGuFinalNormPipe(FP32LayerNorm):
    """REF "final layernorm": LN_final before the query layer (none after it)."""

    def __init__(self, config: PanGuConfig):
        super().__init__(config.hidden_size, epsilon=config.layer_norm_eps)

    def forward(self, args):
        hidden, position_ids, mask = _unpack(args)
        return super().forward(hidden), position_ids, mask


class PanGuQueryLayerPipe(PanGuQueryLayer):
    """REF "query layer": queries from top_query_embedding[position_ids]; returns hidden [B,S,H]."""

    def forward(self, args):
        hidden, position_ids, mask = _unpack(args)
        hidden, _ = super().forward(hidden, position_ids, mask)
        return hidden


class PanGuHeadPipe(nn.Layer):
    """Last-stage holder of the tied word embedding (REF "output head": logits = h @ W_word^T)."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        self.parallel = parallel
        self.word_embeddings = pl.vocab_embedding(
            parallel, config.vocab_size, config.hidden_size, weight_attr=normal_attr(config.initializer_range))

    @property
    def embedding_weight(self):
        return self.word_embeddings.weight


def tied_head_forward(shared_layer, hidden):
    """hidden [B,S,H] -> logits [B,S,V/mp] (vocab-parallel; the loss is vocab-parallel CE)."""
    return pl.tied_lm_logits(shared_layer.parallel, hidden, shared_layer.embedding_weight, parallel_output=True)


class PanGuPipeCriterion(nn.Layer):
    """Pipeline loss: labels [B,S] or (labels, loss_mask); mean over unmasked, non-pad tokens.

    The pipeline averages micro-batch losses, so it equals the full-batch
    loss when every micro-batch has the same number of counted tokens.
    """

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        self.criterion = PanGuPretrainingCriterion(config, parallel)

    def forward(self, logits, labels):
        labels, loss_mask = labels if isinstance(labels, (tuple, list)) else (labels, None)
        return self.criterion(logits, labels, loss_mask)


def desc_segments(num_layers: int, pp_degree: int) -> list[int]:
    """PipelineLayer `seg_method` list: first descriptor index of each stage, plus the total.

    Descriptors: 0 embeddings, 1..L-1 blocks, L final LN, L+1 query layer, L+2 head.
    Stage s >= 1 starts at block s*k (k = layers per stage), i.e. descriptor s*k + 1.
    """
    counts = pipeline_layer_counts(num_layers, pp_degree)
    starts = [0] + [sum(counts[:s]) + 1 for s in range(1, pp_degree)]
    return starts + [num_layers + 3]


class PanGuForCausalLMPipe(PipelinePretrainedModel, PipelineLayer):
    """PanGu-alpha as a fleet PipelineLayer with the plain model's parameter names.

    Build after `init_topology()` with its `Topology.context` (the hybrid group is
    read from the context, not from fleet's globals), or through PaddleNLP's
    `from_pretrained(..., tensor_parallel_degree=N)` inside its Trainer. Train through
    `fleet.distributed_model(model).train_batch([input_ids, (labels, loss_mask)], optimizer)`.
    """

    config_class = PanGuConfig
    _init_weights = PanGuPretrainedModel._init_weights

    def __init__(self, config: PanGuConfig, recompute_interval: int = 0, parallel: ParallelContext | None = None):
        self.config = config
        # a pipeline always runs under fleet: the context of init_topology, or PaddleNLP's (fleet's hybrid group)
        ctx = parallel_context.resolve(config, parallel) if parallel is not None else parallel_context.from_fleet(config)
        if ctx.hcg is None:
            from ..errors import ConfigError

            raise ConfigError("PanGuForCausalLMPipe needs a fleet parallel context (init_topology with pp_degree > 1)")
        self.add_sequential_layer(
            SharedLayerDesc(SHARED_EMBEDDING_KEY, PanGuEmbeddingPipe, shared_weight_attr="embedding_weight",
                            config=config, parallel=ctx), "pangu.embeddings")
        for i in range(config.num_blocks):  # same rule as PanGuModel.set_recompute: every interval-th block
            recompute = bool(recompute_interval) and i % recompute_interval == 0
            self.add_sequential_layer(LayerDesc(PanGuBlockPipe, config=config, parallel=ctx, recompute=recompute),
                                      f"pangu.layers.{i}")
        self.add_sequential_layer(LayerDesc(PanGuFinalNormPipe, config=config), "pangu.final_layernorm")
        self.add_sequential_layer(LayerDesc(PanGuQueryLayerPipe, config=config, parallel=ctx), "pangu.query_layer")
        self.add_sequential_layer(
            SharedLayerDesc(SHARED_EMBEDDING_KEY, PanGuHeadPipe, forward_func=tied_head_forward,
                            shared_weight_attr="embedding_weight", config=config, parallel=ctx), "pangu.embeddings")
        PipelineLayer.__init__(
            self,
            layers=self.get_sequential_layers(),
            loss_fn=PanGuPipeCriterion(config, ctx),
            topology=ctx.hcg.topology(),
            seg_method=desc_segments(config.num_layers, ctx.pp_degree),
        )
        self._mark_shared_weights()

    def _mark_shared_weights(self) -> None:
        """Count the tied embedding once in the global grad norm.

        fleet compares parameter *names* with the attribute name when it sets
        `is_firstly_shared`, so with an attribute property it never marks the
        copy on the non-owning stage; the hybrid grad clip would then count
        the tied weight twice. Mark it here: owner = lowest rank of the group.
        """
        fleet_compat.mark_shared_weight_owners(self)

    @classmethod
    def _prepare_pipeline_inputs_func(cls, inputs):
        """PaddleNLP Trainer hook: a batch dict (or the list of its micro-batch dicts) ->
        [input_ids, (labels, loss_mask)]; the loss mask rides with the labels to the last stage, so
        prompt and padding tokens never reach the loss. Without a loss_mask: [input_ids, labels]."""
        batches = [inputs] if isinstance(inputs, dict) else list(inputs)

        def pick(key):
            values = [b[key] for b in batches]
            return values[0] if isinstance(inputs, dict) else values

        labels = pick("labels")
        if all("loss_mask" in b for b in batches):
            labels = (labels, pick("loss_mask"))
        return [pick("input_ids"), labels]

    def pipe_to_plain_names(self) -> dict[str, str]:
        """{PipelineLayer parameter name on this stage: plain PanGuForCausalLM name}."""
        return fleet_compat.pipeline_name_mapping(self)


# ============================================================================
# Building / loading / gathering a model for a topology (API for training)
# ============================================================================

def build_model(model_config: PanGuConfig, parallel_config, topology):
    """The model this process holds for `topology` (call after `init_topology`).

    pp == 1: `PanGuForCausalLM` (tensor-parallel layers when mp > 1, via the
    factory); pp > 1: `PanGuForCausalLMPipe`. Recompute follows
    `parallel_config.recompute_interval`. The model is not wrapped: pass it
    to `fleet.distributed_model` when world size > 1.
    """
    from .modeling import PanGuForCausalLM

    if topology.pp_degree > 1:
        model = PanGuForCausalLMPipe(model_config, recompute_interval=parallel_config.recompute_interval,
                                     parallel=topology.context)
        paddle.seed(parallel_config.seed)  # PipelineLayer re-seeds per layer while building; restore the run seed
        return model
    model = PanGuForCausalLM(model_config, parallel=topology.context)
    if parallel_config.recompute_interval:
        model.pangu.set_recompute(parallel_config.recompute_interval)
    return model


def _unwrap(model):
    """The PanGu model inside fleet's TensorParallel / PipelineParallel wrappers."""
    while hasattr(model, "_layers") and not isinstance(model, PipelineLayer):
        model = model._layers
    return model


def local_plain_state_dict(model) -> dict:
    """This process's parameters under plain names (mp-sharded, this pp stage only), as tensors."""
    return dict(_unwrap(model).state_dict())


def load_plain_state_dict(model, plain_state_dict: dict, topology) -> None:
    """Load a single-process (plain, unsplit) state dict into this process's parallel model.

    Splits tensor-parallel parameters for `topology.mp_rank` (weight table
    rules), keeps only the parameters of this pipeline stage, and raises
    KeyError / ValueError naming the parameter when one is missing or has
    the wrong shape.
    """
    from .weight_tables import split_state_dict

    inner = _unwrap(model)
    local = inner.state_dict()
    missing = sorted(set(local) - set(plain_state_dict))
    if missing:
        raise KeyError(f"load_plain_state_dict: {len(missing)} parameter(s) missing from the state dict, e.g. {missing[:3]}")
    shard = split_state_dict({k: plain_state_dict[k] for k in local}, topology.mp_degree, topology.mp_rank)
    for name, tensor in local.items():
        if tuple(shard[name].shape) != tuple(tensor.shape):
            raise ValueError(f"load_plain_state_dict: {name} has shape {list(shard[name].shape)} after the "
                             f"mp split, the model expects {list(tensor.shape)}")
    inner.set_state_dict({k: paddle.to_tensor(v, dtype=local[k].dtype) for k, v in shard.items()})


def gather_plain_state_dict(model, topology) -> dict:
    """Every rank gets the full plain state dict (numpy) of a parallel model.

    All-gathers each process's shard over the global group (fine for tests
    and small models; large checkpoints are consolidated offline by the
    resharder from saved shards), merges mp shards per stage with the weight
    table and takes the union over stages. Data-parallel / sharding replicas
    other than index 0 are ignored.
    """
    import paddle.distributed as dist

    from .weight_tables import merge_state_dicts

    local = {k: v.numpy() for k, v in local_plain_state_dict(model).items()}
    if topology.world_size == 1:
        return local
    entries: list = []
    dist.all_gather_object(entries, (topology.data_rank, topology.pp_rank, topology.mp_rank, local))
    full: dict = {}
    for stage in range(topology.pp_degree):
        shards = sorted((e for e in entries if e[0] == 0 and e[1] == stage), key=lambda e: e[2])
        merged = merge_state_dicts([e[3] for e in shards])
        for name, value in merged.items():
            full.setdefault(name, value)  # the tied embedding appears on the first and last stage
    return full
