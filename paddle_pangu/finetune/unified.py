"""PaddleNLP's `unified_checkpoint` for PanGu: what the Trainer needs, and one fix for one process.

With `unified_checkpoint: true` the Trainer writes `checkpoint-N/` in PaddleNLP's own layout:
every tensor-parallel shard merged back to the plain parameter (through
`PanGuPretrainedModel.get_tensor_parallel_convert_actions`, which PaddleNLP derives from our
`_get_tensor_parallel_mappings`, i.e. from `model/weight_tables.py`), written as
`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json` and
`optimizer-0000k-of-0000n.safetensors` + `optimizer.safetensors.index.json` (keys
`<parameter>/moment1_0`, ...). So a checkpoint no longer depends on the layout that wrote it.

Resume on several processes is PaddleNLP's (its "local" or "dynamic" loader splits each tensor for
the new layout). Resume on ONE process is not: PaddleNLP 3.0.0b4's
`trainer/unified_checkpoint/load_save_single_card.py` reads only the first file of the index
(`load_state_dict(resolved_archive_file[0], ...)`, lines 186 and 216), written for the one-file
checkpoints a single card saves. A checkpoint saved by 2 processes has 2 files: the model then keeps
its initial values for every tensor of the second file, silently, and the optimizer dies at its next
step ("embedding_0.w_0_moment2_0 should in state dict"). `PanGuUnifiedCheckpointHandler` loads
every file of the index on one process instead, and refuses (CheckpointError naming the file and
tensor) a missing, misshapen or non-finite tensor rather than loading it.
"""
from __future__ import annotations

import os

from ..errors import CheckpointError
from ..io.weights import read_weight_map
from ..utils.json_file import read_json

MODEL_INDEX = "model.safetensors.index.json"
PEFT_INDEX = "peft_model.safetensors.index.json"  # a LoRA run's adapters (PaddleNLP's SAFE_PEFT_WEIGHTS_INDEX_NAME)
OPTIMIZER_INDEX = "optimizer.safetensors.index.json"
MASTER_INDEX = "master_weights.safetensors.index.json"
FP32_MASTER = "fp32_master_0"  # PaddleNLP's suffix of master-weight accumulators (unified_checkpoint/utils.py)


def read_index(checkpoint: str, name: str) -> dict:
    """The {key: file} weight map of one PaddleNLP index file, every listed file present."""
    path = os.path.join(checkpoint, name)
    weight_map = read_weight_map(path, CheckpointError)
    for file in sorted(set(weight_map.values())):
        if not os.path.isfile(os.path.join(checkpoint, file)):
            raise CheckpointError(f"{path}: lists {file}, which is not in {checkpoint}")
    return weight_map


def read_indexed_tensors(checkpoint: str, weight_map: dict) -> dict:
    """{key: numpy array} of every key of `weight_map`, read from every file it names (not only the
    first); a key missing from its file or a non-finite value is a CheckpointError."""
    import numpy as np
    from safetensors import safe_open

    from ..io.model_dir import read_safetensors_header

    by_file: dict[str, list[str]] = {}
    for key, file in weight_map.items():
        by_file.setdefault(file, []).append(key)
    out = {}
    for file, keys in sorted(by_file.items()):
        path = os.path.join(checkpoint, file)
        header = read_safetensors_header(path)  # sizes checked against the file before reading
        absent = sorted(set(keys) - set(header))
        if absent:
            raise CheckpointError(f"{path}: the index lists {absent[:3]} in this file but it does not hold them")
        with safe_open(path, framework="np") as fh:
            for key in keys:
                value = fh.get_tensor(key)
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise CheckpointError(f"{path}: tensor {key} has non-finite values")
                out[key] = value
    return out


def load_model_one_process(model, checkpoint: str) -> None:
    """Every weight of a unified checkpoint (any number of files) into the one-process `model`."""
    import paddle
    from paddlenlp.trainer.unified_checkpoint.utils import get_expected_state_dict

    from paddlenlp.peft import LoRAModel, PrefixModelForCausalLM

    index_name = PEFT_INDEX if isinstance(model, (LoRAModel, PrefixModelForCausalLM)) else MODEL_INDEX
    weight_map = read_index(checkpoint, index_name)
    expected = get_expected_state_dict(model)  # the saved parameters (LoRA: the adapters), as PaddleNLP keys them
    missing = sorted(set(expected) - set(weight_map))
    if missing:
        raise CheckpointError(f"{os.path.join(checkpoint, index_name)}: no {missing[:3]} "
                              f"({len(missing)} parameters of the model missing)")
    tensors = read_indexed_tensors(checkpoint, {k: weight_map[k] for k in expected})
    for key, param in expected.items():
        if tuple(tensors[key].shape) != tuple(param.shape):
            raise CheckpointError(f"{checkpoint}: {key} has shape {list(tensors[key].shape)}, the model "
                                  f"{list(param.shape)} (a checkpoint of another model size?)")
    with paddle.no_grad():
        for key, param in expected.items():
            param.set_value(paddle.to_tensor(tensors[key]).astype(param.dtype))


def load_optimizer_one_process(model, optimizer, checkpoint: str) -> dict:
    """The optimizer state dict (PaddleNLP's static accumulator names) of a unified checkpoint with any
    number of files; PaddleNLP's `load_single_card_optimizer` with every file read."""
    import paddle
    from paddlenlp.trainer.unified_checkpoint.utils import get_expected_state_dict
    from paddlenlp.utils.nested import nested_copy

    state = nested_copy(optimizer.state_dict())
    weight_map = read_index(checkpoint, OPTIMIZER_INDEX)  # a CheckpointError when absent or not an index
    has_master = bool(read_json(os.path.join(checkpoint, OPTIMIZER_INDEX), "a PaddleNLP optimizer index",
                                CheckpointError).get("master_weights", False))
    moments = read_indexed_tensors(checkpoint, weight_map)
    params = get_expected_state_dict(model)
    static = {k: v.name for k, v in params.items()}  # plain name -> the parameter's static name
    for key, value in moments.items():
        name, kind = key.split("/", 1)  # "pangu.layers.0.attention.q_proj.weight/moment1_0"
        if name not in static:
            raise CheckpointError(f"{os.path.join(checkpoint, OPTIMIZER_INDEX)}: state {key} of a parameter "
                                  f"the model does not have")
        master = has_master and params[name].dtype != paddle.float32
        acc = "_".join([static[name], FP32_MASTER, kind] if master else [static[name], kind])
        state[acc] = paddle.to_tensor(value)
        state[acc].name = acc
    if has_master:
        state["master_weights"] = {}
        for key, value in read_indexed_tensors(checkpoint, read_index(checkpoint, MASTER_INDEX)).items():
            state["master_weights"][static[key]] = paddle.to_tensor(value)
            state["master_weights"][static[key]].name = f"{static[key]}_{FP32_MASTER}"
    return state


def handler_class():
    """PaddleNLP's UnifiedCheckpointHandler with the one-process loaders above."""
    import paddle
    from paddlenlp.trainer.unified_checkpoint import UnifiedCheckpointHandler

    class PanGuUnifiedCheckpointHandler(UnifiedCheckpointHandler):
        def load_unified_checkpoint(self, model, resume_from_checkpoint):
            if paddle.distributed.get_world_size() > 1:
                return super().load_unified_checkpoint(model, resume_from_checkpoint)
            load_model_one_process(model, resume_from_checkpoint)
            print(f"pangu finetune: loaded the unified checkpoint {resume_from_checkpoint} on one process", flush=True)
            written = sorted(f for f in os.listdir(resume_from_checkpoint) if f.startswith("rng_state"))
            if "rng_state.pth" not in written:  # the Trainer keeps one RNG file per world size and skips it quietly
                print(f"pangu finetune: {resume_from_checkpoint} has no one-process RNG state ({', '.join(written) or 'none'}"
                      "): dropout draws other masks than the run that saved it would have", flush=True)

        def load_unified_optimizer(self, model, optimizer, resume_from_checkpoint):
            if paddle.distributed.get_world_size() > 1:
                return super().load_unified_optimizer(model, optimizer, resume_from_checkpoint)
            return load_optimizer_one_process(model, optimizer, resume_from_checkpoint)

    return PanGuUnifiedCheckpointHandler
