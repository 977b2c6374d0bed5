"""Resume a checkpoint under another parallel layout (`pangu train --reshard`, `checkpoint.reshard: true`).

A per-rank checkpoint (store.py) holds, per rank, that rank's shard of the
model and of the optimizer state. Resuming it under another dp / mp / pp /
sharding layout converts, in each new process on the CPU while loading:

* model weights, AdamW moments (`_moment1_0`, `_moment2_0`) and fp32 master
  weights (AMP O2, `master_weights/` and the `.fp32_master_*` moments): for
  every parameter this rank holds, its shards are read from the old ranks of
  each old mp rank (`safetensors` tensor by tensor, never a whole file),
  merged into the single-process tensor and cut for this rank by the weight
  table (`convert/reshard.py` `merge_shards` / `split_part`, the one splitter
  `pangu reshard` uses; the word embedding's vocab padding is dropped and
  re-added for the new mp degree);
* the beta powers (`_beta1_pow_acc_0`, `_beta2_pow_acc_0`, shape [1]) are
  replicated: taken from the old mp rank 0;
* sharding (ZeRO stage 1) partitions the optimizer state by parameter: each
  accumulator is looked up by parameter name among the old data-parallel /
  sharding replicas of its mp rank (`DygraphShardingOptimizer.set_state_dict`
  keeps the parameters the new sharding rank owns);
* sharding stage 2 (fleet's DygraphShardingOptimizerV2, `split_param`) keeps,
  per parameter, a flat 1-D slice of its padded range in a fused buffer on
  each sharding rank that owns part of it (moments and master weights; the
  beta powers stay [1]): the slices of the old sharding ranks, in rank order,
  are concatenated, the alignment padding dropped and the parameter's shape
  restored (`unflatten_slices`) before the merge / split above;
* step, LR scheduler and loss-scaler state: the same on every old rank, taken
  from old rank 0;
* the data position: a batch is a pure function of (seed, step, data rank)
  with global sample `step * G + data_rank * P + j` (training/batches.py), so
  it carries over exactly when the global batch G stays the same; a changed G
  is refused in one line;
* the RNG: per-rank generator states do not map between different rank
  counts, so every RNG is reseeded from (train.seed, step): the global seed,
  numpy, random and fleet's model-parallel tracker (seed + 1 + mp_rank x
  pp_degree + pp_rank, as at start-up, on the reseeded base). Deterministic,
  but not the stream the old layout would have drawn: a resharded run equals
  the uninterrupted run only while dropout is 0.

Pipeline stages: the pipeline model names a parameter by the global index of
its layer (`pipe_to_plain`, the same for every pp degree), so every old and
new name maps to the plain name, and a parameter moves to whichever new stage
holds it (`convert/reshard.py` `stages_of` is the same rule). With the same mp
and pp degrees on both sides (only dp / sharding change, e.g. a pp16 mp8 run
from dp16 to dp8) each tensor is the old shard at this rank's (mp, pp)
coordinates, read as it is from one of its old data replicas.

Resuming into sharding stage 2: each converted moment / master weight is cut
to this rank's flat slice by the live optimizer's buffer layout
(`stage2_slice`, the ranges from `parallel.fleet_compat.sharding_stage2_ranges`).

Refused in one line: a changed global batch.

Why in each new process rather than a converted copy written first: no second
copy of a large checkpoint on disk and no serial step on rank 0; the verified
checkpoint stays the one source. Each new rank reads every old mp shard of the
parameters it holds (with pp == 1: the whole model and its moments), one
tensor at a time, so peak extra memory is about one full tensor.
"""
from __future__ import annotations

import json
import os

import numpy as np

from paddle_pangu.errors import CheckpointError

from .files import read_json
from .rank_state import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, decode_state

LAYOUT_AXES = ("dp", "mp", "pp", "sharding")
# the run-config fields a reshard may change: the degrees and how the (unchanged) global batch is cut
RESHARD_FIELDS = ("world_size",) + tuple(f"parallel.{k}" for k in ("dp_degree", "mp_degree", "pp_degree",
                                                                    "sharding_degree", "sharding_stage",
                                                                    "micro_batch_size", "accumulate_steps"))
_FLEET_ORDER = ("dp", "pp", "sharding", "mp")  # fleet's default hybrid order (mp fastest), sep = 1 here
_WRAPPER = "_layers."  # fleet's TensorParallel / ShardingParallel wrappers prefix every state-dict key
_MASTER_DIR = "master_weights/"  # split_tensors key of an AMP O2 master weight
_REPLICATED_SUFFIXES = ("_beta1_pow_acc_0", "_beta2_pow_acc_0")


def layout_of(par: dict) -> dict:
    """{"dp": .., "mp": .., "pp": .., "sharding": ..} of a `parallel` run-config section (defaults 1)."""
    return {a: int(par.get(f"{a}_degree") or 1) for a in LAYOUT_AXES}


def layout_text(par: dict) -> str:
    """`dp1 mp2 pp1 sharding1` of a `parallel` run-config section."""
    return " ".join(f"{a}{n}" for a, n in layout_of(par).items())


def saved_parallel(step_dir: str) -> dict | None:
    """The `parallel` section of the run config a checkpoint was written under (None if not recorded)."""
    path = os.path.join(step_dir, "run_config.json")
    if not os.path.isfile(path):
        return None
    return dict(read_json(path, "run config").get("parallel") or {})


def check_reshardable(step_dir: str, old: dict, new: dict, old_step: int, consumed: int | None) -> None:
    """One-line CheckpointError when `old` -> `new` (parallel sections) is a change this module cannot convert."""
    where = f"{step_dir} (written by {layout_text(old)}, resuming as {layout_text(new)})"
    g_old, g_new = old.get("global_batch_size"), new.get("global_batch_size")
    if g_old is not None and g_new is not None and int(g_old) != int(g_new):
        raise CheckpointError(f"{where}: parallel.global_batch_size {g_new} differs from the checkpoint's {g_old}; "
                              "the data position (step x global batch) only carries over with the same global batch: "
                              f"choose micro_batch_size x accumulate_steps x dp x sharding = {g_old}")
    if consumed is not None and g_new is not None and int(consumed) != old_step * int(g_new):
        raise CheckpointError(f"{where}: the checkpoint consumed {consumed} samples in {old_step} steps, not "
                              f"{old_step} x global batch {g_new}; refusing to guess the data position")


def rank_coords(rank_dir: str, rank: int, old: dict) -> dict:
    """{"dp", "mp", "pp", "sharding"} coordinates of old `rank`: as recorded in its state.json, else fleet's
    default order (dp, pp, sharding, mp; mp varies fastest)."""
    extra = read_json(os.path.join(rank_dir, STATE_FILE), "checkpoint state").get("extra") or {}
    if "coords" in extra:
        coords = extra["coords"]
        if not (isinstance(coords, dict) and all(isinstance(coords.get(a), int) for a in LAYOUT_AXES)):
            raise CheckpointError(f"{rank_dir}/{STATE_FILE}: extra.coords {coords!r} is not "
                                  "{dp, mp, pp, sharding} integer coordinates")
        return {a: coords[a] for a in LAYOUT_AXES}
    degrees, out, rest = layout_of(old), {}, rank
    for axis in reversed(_FLEET_ORDER):
        rest, out[axis] = divmod(rest, degrees[axis])
    return out


def read_rank_state(step_dir: str, rank: int = 0) -> dict:
    """The decoded state.json of an old rank (step, scheduler, scaler, extra, optimizer skeleton)."""
    return decode_state(os.path.join(step_dir, f"rank_{rank:05d}", STATE_FILE))


def plain_name(key: str) -> str:
    """A state-dict / optimizer key without fleet's wrapper prefixes (`_layers.`)."""
    while key.startswith(_WRAPPER):
        key = key[len(_WRAPPER):]
    return key


class _OldRanks:
    """Lazy, per-tensor read access to the old ranks' files of a checkpoint, by plain name and old mp rank
    (any pp stage that holds the parameter: the tied word embedding is on the first and the last).

    `same_shard`: (mp rank, pp stage) when the old and the new layout have the same mp and pp degrees:
    only the old ranks at those coordinates are read (their data replicas), as the one "mp rank" 0."""

    def __init__(self, step_dir: str, world: int, old: dict, model_config, same_shard: tuple | None = None):
        from safetensors import safe_open

        self.mp = 1 if same_shard else layout_of(old)["mp"]
        self.model: dict[str, dict[int, tuple]] = {}  # plain name -> {old mp rank: (file handle, raw key)}
        self.optim: dict[str, dict[int, tuple]] = {}
        # sharding stage 2: plain name -> {old mp rank: {old sharding rank: (file handle, raw key)}}
        self.flat = is_stage2(old)
        self.slices: dict[str, dict[int, dict[int, tuple]]] = {}
        self.sharding = layout_of(old)["sharding"]
        self._open = []
        for rank in range(world):  # data rank order: the first replica that holds a tensor serves it
            rank_dir = os.path.join(step_dir, f"rank_{rank:05d}")
            coords = rank_coords(rank_dir, rank, old)
            if same_shard and (coords["mp"], coords["pp"]) != tuple(same_shard):
                continue
            if same_shard:
                coords = {**coords, "mp": 0}
            for fname, table in ((MODEL_FILE, self.model), (OPTIMIZER_FILE, self.optim)):
                handle = safe_open(os.path.join(rank_dir, fname), framework="np")
                self._open.append(handle)
                for key in handle.keys():
                    master = key.startswith(_MASTER_DIR)
                    name = pipe_to_plain(plain_name(key[len(_MASTER_DIR):] if master else key), model_config)
                    name = _MASTER_DIR + name if master else name
                    table.setdefault(name, {}).setdefault(coords["mp"], (handle, key))
                    if self.flat and table is self.optim and not name.endswith(_REPLICATED_SUFFIXES):
                        self.slices.setdefault(name, {}).setdefault(coords["mp"], {}).setdefault(
                            coords["sharding"], (handle, key))

    def shards(self, table: dict, name: str, where: str, shape: tuple = ()) -> list[np.ndarray]:
        """The old mp shards of `name`; under sharding stage 2 each one rebuilt from its flat slices into
        `shape` (the parameter's shard shape) by `unflatten_slices`."""
        found = table.get(name, {})
        missing = [m for m in range(self.mp) if m not in found]
        if missing:
            raise CheckpointError(f"{where}: {name} is missing for old mp rank(s) {missing}")
        if table is self.optim and name in self.slices:
            return [unflatten_slices({s: h.get_tensor(k) for s, (h, k) in self.slices[name][m].items()},
                                     shape, self.sharding, f"{where}: {name} (old mp rank {m})")
                    for m in range(self.mp)]
        return [found[m][0].get_tensor(found[m][1]) for m in range(self.mp)]


def is_stage2(par: dict) -> bool:
    """Whether a `parallel` section runs fleet's sharding stage 2 (DygraphShardingOptimizerV2, `split_param`)."""
    return int(par.get("sharding_degree") or 1) > 1 and int(par.get("sharding_stage") or 1) == 2


# fleet's tensor_fusion_helper pads each parameter to a multiple of (256 bytes / element size) x sharding
# degree elements: at most 128 x degree elements of padding for 2-byte types (64 x degree for float32)
_MAX_PAD_PER_RANK = 128


def stage2_slice(tensor: np.ndarray, span: tuple, where: str) -> np.ndarray | None:
    """This rank's flat slice of one parameter's optimizer tensor under sharding stage 2 (the inverse of
    `unflatten_slices`): `span` = (begin, end, padded size) from the live optimizer
    (`parallel.fleet_compat.sharding_stage2_ranges`); the flat tensor zero-padded to the padded size
    (fleet's padding is zeros) and cut to [begin, end). None when this rank holds no part of it."""
    begin, end, padded = (int(v) for v in span)
    if begin >= end:
        return None
    if tensor.size > padded or not 0 <= begin < end <= padded:
        raise CheckpointError(f"{where}: {tensor.size} elements do not fit the sharding stage-2 slice "
                              f"[{begin}, {end}) of a {padded}-element padded parameter")
    flat = np.zeros(padded, dtype=tensor.dtype)
    flat[:tensor.size] = tensor.reshape(-1)
    return np.ascontiguousarray(flat[begin:end])


def unflatten_slices(slices: dict, shape: tuple, degree: int, where: str) -> np.ndarray:
    """One parameter's optimizer tensor (a moment, a master weight) of shape `shape` from its sharding
    stage-2 slices {old sharding rank: 1-D slice}.

    Fleet's DygraphShardingOptimizerV2 (tensor_fusion_helper.py `build_sharding_buffer` /
    `ShardingGradView`) lays the parameters of a fused buffer end to end, each padded to a multiple of
    the alignment x sharding degree, and sharding rank r owns the buffer range [r S, (r + 1) S), S = size
    / degree. A rank's accumulator for a parameter is the 1-D part of the parameter's padded range that
    falls in its own range (no accumulator where that is empty). The ranges are contiguous and ordered by
    rank, so the slices concatenated in sharding-rank order are the padded flat parameter; the padding
    (zeros at the end) is dropped. Refused in one line when the lengths cannot be that (a missing rank)."""
    numel = int(np.prod(shape)) if len(shape) else 1
    parts = [np.asarray(slices[r]).reshape(-1) for r in sorted(slices)]
    total = sum(p.size for p in parts)
    if not parts or total < numel or total - numel >= _MAX_PAD_PER_RANK * degree:
        raise CheckpointError(f"{where}: sharding stage-2 slices of ranks {sorted(slices)} hold {total} elements, "
                              f"expected {numel} (shape {list(shape)}) plus under {_MAX_PAD_PER_RANK * degree} "
                              "of alignment padding")
    return np.concatenate(parts)[:numel].reshape(shape)


def pipe_to_plain(key: str, model_config) -> str:
    """A pipeline model's state-dict / optimizer key (`PanGuForCausalLMPipe`) under the plain model's name.

    PipelineLayer names a parameter by the global index of its layer description, whatever the pp
    degree (modeling_pp.py: 0 the shared embedding, 1..num_blocks the blocks, then the final layernorm
    and the query layer; the tied head is the shared embedding again, `shared_layers.<key>.`), so the
    names of any stage of any pp layout map to plain names by the layer index. Keys that are plain
    already (pp 1) pass through. Checked against the live model's own mapping (`pipe_to_plain_names`)
    by `check_pipe_names`.
    """
    from paddle_pangu.model.modeling_pp import SHARED_EMBEDDING_KEY

    shared = f"shared_layers.{SHARED_EMBEDDING_KEY}."
    if key.startswith(shared):
        return "pangu.embeddings." + key[len(shared):]
    head, dot, rest = key.partition(".")
    if not (dot and head.isdigit()):
        return key
    index, blocks = int(head), model_config.num_blocks
    if 1 <= index <= blocks:
        return f"pangu.layers.{index - 1}.{rest}"
    if index == blocks + 1:
        return f"pangu.final_layernorm.{rest}"
    if index == blocks + 2:
        return f"pangu.query_layer.{rest}"
    raise CheckpointError(f"pipeline parameter {key!r}: layer index {index} is not a layer of a "
                          f"{model_config.num_layers}-layer PanGu")


def check_pipe_names(model, model_config) -> None:
    """Refuse when `pipe_to_plain` disagrees with a pipeline model's own name mapping (a changed naming)."""
    inner = model
    while not hasattr(inner, "pipe_to_plain_names") and hasattr(inner, "_layers"):
        inner = inner._layers
    if not hasattr(inner, "pipe_to_plain_names"):
        return
    wrong = {k: v for k, v in inner.pipe_to_plain_names().items() if pipe_to_plain(k, model_config) != v}
    if wrong:
        raise CheckpointError(f"--reshard: the pipeline model names its parameters differently from what the "
                              f"conversion assumes: {dict(list(wrong.items())[:3])}")


def param_of(key: str, params: list[str]) -> tuple[str, str]:
    """(plain parameter name, suffix) of an optimizer-state key such as `pangu.x.weight_moment1_0`."""
    for name in params:  # longest first
        if key.startswith(name) and (len(key) == len(name) or key[len(name)] in "_."):
            return name, key[len(name):]
    raise CheckpointError(f"optimizer state {key!r} belongs to no parameter of the model")


def convert_rank_state(step_dir: str, old: dict, world: int, model_config, local_shapes: dict,
                       mp_degree: int, mp_rank: int, pp_degree: int = 1, pp_rank: int = 0) -> tuple[dict, dict, dict]:
    """This new rank's (model tensors, optimizer tensors, master weights), numpy, under plain names.

    `local_shapes`: {plain parameter name: shape on this rank} of the new model (with pp > 1: its
    pipeline names); `old`: the checkpoint's `parallel` section; `world`: its process count. Every
    optimizer-state tensor of the checkpoint whose parameter this rank holds is converted (moments and
    master weights split like their parameter, beta powers replicated). With the same mp and pp degrees
    on both sides (a dp / sharding change) each tensor is the old shard at this rank's (mp, pp)
    coordinates as it is; otherwise the old mp shards (from any stage holding the parameter) are merged and cut.
    """
    from paddle_pangu.convert.reshard import merge_shards, split_part
    from paddle_pangu.model.weight_tables import tensor_parallel_rules

    rules = tensor_parallel_rules(model_config)
    same_shard = (mp_rank, pp_rank) if (layout_of(old)["mp"], layout_of(old)["pp"]) == (mp_degree, pp_degree) else None
    src = _OldRanks(step_dir, world, old, model_config, same_shard)

    def convert(table, name, tensor_name, param_shape):
        shards = src.shards(table, tensor_name, step_dir, src_shape[name])
        if tensor_name.endswith(_REPLICATED_SUFFIXES) or tuple(shards[0].shape) != tuple(src_shape[name]):
            if tuple(shards[0].shape) != (1,):
                raise CheckpointError(f"{step_dir}: {tensor_name} has shape {list(shards[0].shape)}, expected the "
                                      f"shape of {name} {list(src_shape[name])} or [1]")
            return shards[0]
        if same_shard:
            part = shards[0]
        else:
            part = split_part(name, merge_shards(name, shards, model_config, rules), mp_degree, mp_rank, rules)
        if tuple(part.shape) != tuple(param_shape):
            raise CheckpointError(f"{step_dir}: {tensor_name} converts to shape {list(part.shape)} on mp rank "
                                  f"{mp_rank} of {mp_degree}, the model expects {list(param_shape)}")
        return np.ascontiguousarray(part)

    missing = sorted(set(local_shapes) - set(src.model))
    if missing:
        raise CheckpointError(f"{step_dir}: the model differs from the checkpoint's: {missing[:5]} are not in it")
    src_shape = {n: tuple(src.model[n][min(src.model[n])][0].get_slice(src.model[n][min(src.model[n])][1]).get_shape())
                 for n in local_shapes}
    model = {n: convert(src.model, n, n, shape) for n, shape in local_shapes.items()}
    every = sorted(set(local_shapes) | set(src.model), key=len, reverse=True)  # this stage's and the others'
    optim, master = {}, {}
    for key in src.optim:
        if key.startswith(_MASTER_DIR):
            name = key[len(_MASTER_DIR):]
            if name in local_shapes:
                master[name] = convert(src.optim, name, key, local_shapes[name])
            continue
        name, _ = param_of(key, every)
        if name in local_shapes:  # with pp > 1 the other parameters belong to another stage
            optim[key] = convert(src.optim, name, key, local_shapes[name])
    return model, optim, master


def reseed(seed: int, step: int, topo) -> int:
    """Reseed every RNG from (seed, step) for this rank (the per-rank states of another layout do not map)."""
    import random

    from paddle_pangu.parallel.topology import seed_everything

    base = int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0] % (2 ** 31 - 1))
    seed_everything(base, topo.mp_rank, topo.pp_rank, topo.pp_degree)
    np.random.seed(base)
    random.seed(base)
    return base


__all__ = ["RESHARD_FIELDS", "check_reshardable", "convert_rank_state", "is_stage2", "layout_of", "layout_text",
           "param_of", "plain_name", "rank_coords", "read_rank_state", "reseed", "saved_parallel", "stage2_slice",
           "unflatten_slices"]
