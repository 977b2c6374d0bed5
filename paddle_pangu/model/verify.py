"""What `from_pretrained` checks in a local model directory before PaddleNLP reads it.

1. config.json: valid JSON object, every shape field an integer in range
   (`config/config_file.py`), and the fp32 parameters fit in available memory.
2. `MANIFEST.json` (written by every `pangu` command that writes a model
   directory, `io/model_dir.py`): every listed weight file's size and xxh3
   hash; an unlisted weight file is refused.
3. Without a manifest, safetensors headers are bounded and validated (crafted
   lengths / entries).
4. Always: the tensors of the weight files (as the verified manifest records
   them, or read from the headers / the arrays-only unpickler) must be
   exactly those of `PanGuForCausalLM(config)` with the config's shapes.
   PaddleNLP would randomly initialise a missing tensor (the word embedding
   included) and only log a warning; here it is an error naming the file and
   the tensor (`lm_head.weight`, the tied head, is ignored as
   `_keys_to_ignore_on_load_unexpected` says). config.json's vocab_size
   against the weights is this check; against the tokenizer,
   `inference/loading.py`.
"""
from __future__ import annotations

import os

from ..config.config_file import check_fits_memory, read_config_file
from ..errors import CheckpointError
from ..io.model_dir import check_safetensors_files, read_safetensors_header, verify_model_dir
from ..io.weights import (PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, read_pdparams,
                          read_weight_map)
from .weight_tables import plain_param_shapes

IGNORED = ("lm_head.weight",)


def _tensor_shapes(path: str, recorded: dict | None = None) -> tuple[str, dict[str, tuple]] | None:
    """(file described, {tensor: shape}) of the weights `from_pretrained` would read, or None if none.
    `recorded`: the verified manifest's {file: {tensor: shape}} (saves reading a pickle twice)."""
    recorded = recorded or {}

    def header(fn):
        if fn in recorded:
            return {k: tuple(v) for k, v in recorded[fn].items()}
        return {k: v[1] for k, v in read_safetensors_header(os.path.join(path, fn)).items()}

    index = os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        files = sorted(set(read_weight_map(index).values()))
        shapes = {}
        for fn in files:
            if not os.path.isfile(os.path.join(path, fn)):
                raise CheckpointError(f"{os.path.join(path, fn)}: listed in {SAFE_WEIGHTS_INDEX_NAME} but missing")
            shapes.update(header(fn))
        return index, shapes
    single = os.path.join(path, SAFE_WEIGHTS_NAME)
    if os.path.isfile(single):
        return single, header(SAFE_WEIGHTS_NAME)
    pdparams = os.path.join(path, PADDLE_WEIGHTS_NAME)
    if os.path.isfile(pdparams):
        if PADDLE_WEIGHTS_NAME in recorded:
            return pdparams, {k: tuple(v) for k, v in recorded[PADDLE_WEIGHTS_NAME].items()}
        return pdparams, {k: tuple(v.shape) for k, v in read_pdparams(pdparams).items()}
    return None


def check_tensors(path: str, config, recorded: dict | None = None) -> None:
    """The directory's tensors are exactly the model's, with the config's shapes (CheckpointError otherwise)."""
    found = _tensor_shapes(path, recorded)
    if found is None:  # per-rank / per-stage files (tp / pp outputs): PaddleNLP's loader decides what it reads
        return
    where, shapes = found
    # PanGuModel.save_pretrained writes names without the base-model prefix; PaddleNLP loads either way
    shapes = {k if k.startswith("pangu.") or k in IGNORED else f"pangu.{k}": v for k, v in shapes.items()}
    expected = plain_param_shapes(config)
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError(f"{where}: tensor {missing[0]} is missing ({len(missing)} of {len(expected)} model "
                              f"tensors absent{': ' + ', '.join(missing[1:4]) if len(missing) > 1 else ''}); "
                              "refusing to fill them with random values")
    unexpected = [k for k in shapes if k not in expected and k not in IGNORED]
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor {unexpected[0]} ({len(unexpected)} not in a PanGu model "
                              "of this config.json)")
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise CheckpointError(f"{where}: tensor {name} has shape {list(shapes[name])}, config.json implies "
                                  f"{list(shape)} (config and weights disagree)")


def check_model_dir(path: str):
    """Validate config.json and the weights of a local model directory; returns the PanGuConfig."""
    from ..config.model_config import PanGuConfig

    data = read_config_file(os.path.join(path, "config.json"))
    known = {k: v for k, v in data.items() if k in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                                                   "ffn_hidden_size", "max_position_embeddings")}
    config = PanGuConfig(**known)
    check_fits_memory(config, os.path.join(path, "config.json"))
    manifest = verify_model_dir(path)
    if manifest is None:
        check_safetensors_files(path)
    recorded = manifest.get("tensors") if manifest else None
    check_tensors(path, config, recorded if isinstance(recorded, dict) else None)
    return config
