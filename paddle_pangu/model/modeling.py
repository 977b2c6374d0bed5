"""PanGuModel / PanGuForCausalLM: PaddleNLP PretrainedModel subclasses.

REF = docs/REFERENCE.md. Layer math lives in `layers.py`; this file wires the
stack, builds masks and position ids, and owns the KV cache plumbing, the tied
head and the pretraining loss.

Parallel layout: `PanGuForCausalLM(config, parallel=ctx)` builds for the
`ParallelContext` it is given (`Topology.context`); without one it follows
PaddleNLP's `config.tensor_parallel_degree` (default 1: plain layers).
"""
from __future__ import annotations

import os

import paddle
import paddle.nn as nn
from paddlenlp.transformers.model_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from paddlenlp.transformers.model_utils import PretrainedModel

from ..config import PanGuConfig
from ..parallel import context as parallel_context
from ..parallel.context import PLAIN, ParallelContext
from . import ops
from .layers import MASK_VALUE, FP32LayerNorm, PanGuBlock, PanGuEmbeddings, PanGuQueryLayer


def build_position_ids_and_mask(input_ids, eod_token_id: int, eod_reset: bool):
    """Position ids [B, S] and a boolean attention mask [B, 1, S, S] (True = may attend).

    With `eod_reset` (REF "document boundaries") the token after each
    `eod_token_id` starts a new document: its position id is 0 and it cannot
    attend to anything before it. The separator itself belongs to the
    document it ends.
    """
    b, s = input_ids.shape
    arange = paddle.arange(s, dtype="int64").unsqueeze(0).expand([b, s])  # [B, S]
    causal = paddle.tril(paddle.ones([s, s], dtype="bool")).unsqueeze(0).unsqueeze(0)  # [1, 1, S, S]
    if not eod_reset:
        return arange, causal.expand([b, 1, s, s])
    is_eod = (input_ids == eod_token_id).astype("int64")
    doc_id = paddle.cumsum(is_eod, axis=1) - is_eod  # [B, S], eod stays in its document
    begins = paddle.concat([paddle.ones([b, 1], "int64"), is_eod[:, :-1]], axis=1)  # token after eod begins a doc
    start = paddle.cummax(arange * begins, axis=1)[0]  # [B, S] index of the current document's first token
    position_ids = arange - start
    same_doc = doc_id.unsqueeze(2) == doc_id.unsqueeze(1)  # [B, S, S]
    return position_ids, paddle.logical_and(causal, same_doc.unsqueeze(1))


def to_additive_mask(mask):
    """bool/0-1 mask (True = attend) -> additive fp32 mask (0 or -10000, REF)."""
    if mask.dtype != paddle.bool:
        mask = mask.astype("bool")
    return (1.0 - mask.astype("float32")) * MASK_VALUE


def cache_mask(new: int, past, padding_mask=None):
    """Causal mask [B|1, 1, S, T] for S new tokens after `past` cached ones (int or 0-d tensor, so the
    exported decode graph stays shape-dynamic), optionally with a [B, T] padding mask (1 = real token)
    for left-padded batches."""
    if new == 1 and padding_mask is not None and ops.decode_shortcuts_on() and paddle.in_dynamic_mode():
        # a dygraph decode step: its one query is the newest position, so the causal part allows every
        # cached key and the mask is the padding alone (13 fewer ops per step; docs/INT8.md profile)
        return padding_mask.astype("bool").unsqueeze([1, 2])  # [B, 1, 1, T]
    rows = paddle.arange(new, dtype="int64").unsqueeze(1) + past  # absolute index of each query
    cols = paddle.arange(past + new, dtype="int64").unsqueeze(0)
    mask = (cols <= rows).unsqueeze(0).unsqueeze(0)  # [1, 1, S, T]
    if padding_mask is not None:
        keep = padding_mask.astype("bool").unsqueeze(1).unsqueeze(1)  # [B, 1, 1, T]
        mask = paddle.logical_and(mask, keep)
    return mask


def resolve_positions_and_mask(config, input_ids, position_ids=None, attention_mask=None, past_len=None):
    """Position ids [B, S] and the additive mask [B|1, 1, S, T] the blocks consume.

    No cache, no positions and no mask: built from input_ids (document reset per `config.eod_reset`).
    Otherwise positions default to past_len.., and a missing or [B, T] padding mask becomes causal
    (+ padding); a 4-D mask is used as given. past_len is None without a cache.
    """
    b, s = input_ids.shape
    if past_len is None and position_ids is None and attention_mask is None:
        position_ids, mask = build_position_ids_and_mask(input_ids, config.eod_token_id, config.eod_reset)
        return position_ids, to_additive_mask(mask)
    past_len = 0 if past_len is None else past_len
    if position_ids is None:
        position_ids = (paddle.arange(s, dtype="int64") + past_len).unsqueeze(0).expand([b, s])
    if attention_mask is None or attention_mask.ndim == 2:
        attention_mask = cache_mask(s, past_len, attention_mask)
    return position_ids, to_additive_mask(attention_mask)


class PanGuPretrainedModel(PretrainedModel):
    """Common base: config class, name prefix and (no-op) weight init.

    Weights are initialised where they are created (normal ParamAttr per
    REF "init"), so `_init_weights` has nothing left to do.
    """

    config_class = PanGuConfig
    base_model_prefix = "pangu"
    _keys_to_ignore_on_load_unexpected = [r"lm_head\.weight"]

    def _init_weights(self, layer):
        return None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """PaddleNLP's loader, but a `.pdparams` file is unpickled only as arrays unless --trust-pickle
        (`paddle_pangu/io/safe_load.py`); safetensors are preferred when the directory has both. A local
        directory is verified first (`model/verify.py`): config.json fields, the MANIFEST.json hashes, or
        without a manifest every tensor's name and shape against config.json."""
        from paddle_pangu.io.safe_load import safe_paddle_load

        from .verify import check_model_dir

        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
            check_model_dir(path)
        if os.path.isdir(path) and any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json")
                                       for f in os.listdir(path)):
            kwargs.setdefault("use_safetensors", True)
        with safe_paddle_load():
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_dir, *args, **kwargs):
        """PaddleNLP's writer, then the directory is sealed with MANIFEST.json (sizes + hashes of the weight
        files, `io/model_dir.py`) so every loader can verify it. One process only: with several, other
        ranks may still be writing their shards; the commands seal those directories after a barrier."""
        import paddle.distributed as dist

        from paddle_pangu.io.model_dir import seal_model_dir

        result = super().save_pretrained(save_dir, *args, **kwargs)
        if dist.get_world_size() == 1 and kwargs.get("is_main_process", True) and os.path.isdir(str(save_dir)):
            seal_model_dir(str(save_dir))
        return result

    @classmethod
    def _get_tensor_parallel_mappings(cls, config, is_split=True):
        """PaddleNLP's hook for `from_pretrained(..., tensor_parallel_degree=N)`: split / merge functions
        per parameter, generated from the one declarative table (`weight_tables.tensor_parallel_rules`)."""
        from functools import partial

        from paddlenlp.transformers.conversion_utils import split_or_merge_func

        from .weight_tables import tensor_parallel_rules

        fn = split_or_merge_func(is_split, config.tensor_parallel_degree, config.tensor_parallel_rank,
                                 config.num_attention_heads)
        strip = f"{cls.base_model_prefix}." if cls.__name__ == "PanGuModel" else ""
        mappings = {}
        for name, axis in tensor_parallel_rules(config).items():
            if axis is None:
                continue
            key = name[len(strip):] if strip and name.startswith(strip) else name
            # PaddleNLP splits "column" tensors on the last axis and the others on axis 0
            mappings[key] = partial(fn, is_column=axis == 1 or name.endswith(".bias"))
        return mappings


class PanGuModel(PanGuPretrainedModel):
    """Embeddings, L-1 blocks, final layernorm, query layer (REF "architecture")."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext | None = None):
        super().__init__(config)
        parallel = parallel_context.resolve(config, parallel)
        self.embeddings = PanGuEmbeddings(config, parallel)
        self.layers = nn.LayerList([PanGuBlock(config, parallel) for _ in range(config.num_blocks)])
        # REF "final layernorm": applied BEFORE the query layer, none after it
        self.final_layernorm = FP32LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.query_layer = PanGuQueryLayer(config, parallel)
        self.recompute_interval = 0

    def set_recompute(self, interval: int) -> None:
        """Recompute every `interval`-th block in training (0 = off) with fleet's recompute."""
        if interval < 0:
            raise ValueError(f"recompute interval must be >= 0, got {interval}")
        self.recompute_interval = int(interval)

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def _run_block(self, i, block, hidden, mask, past, use_cache):
        if self.training and self.recompute_interval and i % self.recompute_interval == 0 and not use_cache:
            from paddle.distributed.fleet.utils import recompute

            return recompute(lambda h, m: block(h, m)[0], hidden, mask, use_reentrant=False), None
        return block(hidden, mask, past, use_cache)

    def forward(self, input_ids, position_ids=None, attention_mask=None, past_key_values=None, use_cache=False,
                return_dict=False):
        """input_ids [B, S] -> last hidden state [B, S, H] (output of the query layer).

        attention_mask: None (causal; with eod_reset, document-block causal), a
        [B, T] padding mask (1 = token), or a [B, 1, S, T] bool/0-1 mask.
        past_key_values: one (k, v) per block plus one for the query layer.
        """
        # cached length as a tensor (not .shape[2]) so the exported decode graph keeps it dynamic
        past_len = None if past_key_values is None else paddle.shape(past_key_values[0][0])[2]
        position_ids, mask = resolve_positions_and_mask(self.config, input_ids, position_ids, attention_mask, past_len)
        hidden = self.embeddings(input_ids, position_ids)  # [B, S, H]
        presents = []
        for i, block in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[i]
            hidden, present = self._run_block(i, block, hidden, mask, past, use_cache)
            presents.append(present)
        hidden = self.final_layernorm(hidden)
        past = None if past_key_values is None else past_key_values[-1]
        hidden, present = self.query_layer(hidden, position_ids, mask, past, use_cache)
        presents.append(present)
        cache = tuple(presents) if use_cache else None
        if not return_dict:
            return (hidden, cache) if use_cache else hidden
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache)


class PanGuPretrainingCriterion(nn.Layer):
    """Mean next-token cross entropy over tokens with loss_mask == 1 and label != pad (REF "Tokenizer": pad 6 masked)."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.parallel = parallel

    def forward(self, logits, labels, loss_mask=None):
        # logits [B, S, V(_local)], labels [B, S] -> scalar fp32
        token_loss = ops.cross_entropy(logits, labels, self.parallel)
        mask = (labels != self.pad_token_id).astype("float32")
        if loss_mask is not None:
            mask = mask * loss_mask.astype("float32")
        return (token_loss * mask).sum() / mask.sum().clip(min=1.0)


class PanGuForCausalLM(PanGuPretrainedModel):
    """PanGu-alpha with the tied LM head (REF "output head")."""

    _tied_weights_keys = ["pangu.embeddings.word_embeddings.weight"]

    def __init__(self, config: PanGuConfig, parallel: ParallelContext | None = None):
        super().__init__(config)
        self.parallel = parallel_context.resolve(config, parallel)
        self.pangu = PanGuModel(config, self.parallel)
        self.criterion = PanGuPretrainingCriterion(config, self.parallel)

    def get_input_embeddings(self):
        return self.pangu.embeddings.word_embeddings

    def get_output_embeddings(self):
        return None  # tied: the head is the word embedding

    def forward(self, input_ids, position_ids=None, attention_mask=None, labels=None, loss_mask=None,
                past_key_values=None, use_cache=False, return_dict=False, logits_to_keep: int = 0,
                head_weight_t=None):
        """Returns (loss, logits[, cache]) with labels, else (logits[, cache]); or a CausalLMOutputWithPast.

        logits are [B, S, V]; when tensor-parallel and labels are given they
        stay vocab-sharded [B, S, V/mp] (the loss is the vocab-parallel one).
        logits_to_keep > 0 (no labels): the head runs on the last that many positions only, [B, k, V] —
        generation samples from the last one, and at prefill the [S, H] x [H, V] head is the largest GEMM.
        head_weight_t (inference only, no labels): an [H, V(_local)] copy of the tied word embedding that
        the head reads instead of the transposed embedding (the faster decode layout; ops.tied_head).
        """
        if head_weight_t is not None and labels is not None:
            raise ValueError("head_weight_t is an inference copy of the tied head: training (labels) must use "
                             "the embedding itself, or its gradient would miss the head")
        out = self.pangu(input_ids, position_ids, attention_mask, past_key_values, use_cache)
        hidden, cache = out if use_cache else (out, None)
        if logits_to_keep and labels is None:
            hidden = hidden[:, -int(logits_to_keep):]
        # REF "output head": logits = h @ word_embedding^T (tied, no bias); inference.quantize may attach an
        # int8 / bf16 copy of it (inference only: no gradient reaches the embedding)
        logits = ops.tied_head(hidden, self.pangu.embeddings.word_embeddings.weight, self.parallel,
                               parallel_output=labels is not None, weight_t=head_weight_t,
                               quantized=getattr(self, "quantized_head", None))  # [B, S, V(_local)]
        loss = self.criterion(logits, labels, loss_mask) if labels is not None else None
        if return_dict:
            return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
        result = (logits,) + ((cache,) if use_cache else ())
        return ((loss,) + result) if loss is not None else (result[0] if len(result) == 1 else result)
