"""The final model directory a run ends with (`<output_dir>/final_model/`).

`save_final_model` writes config, tokenizer files and the weights under plain
(`PanGuForCausalLM`) names, read back by `from_pretrained`, `pangu generate`,
`pangu evaluate` and `pangu finetune`:

* up to `checkpoint.consolidate_max_params` the weights are gathered into one
  `model_state.pdparams` (what `PanGuForCausalLM.save_pretrained` writes;
  written directly because inside an mp job the layer factory would build a
  sharded model);
* above it, an mp/pp job writes one file per (mp rank, pp stage) so no process
  holds the whole model; `pangu reshard final_model -o DIR --mp 1 --pp 1`
  merges them.

The file formats are those of `paddle_pangu/io/weights.py`. The directory is
written as `final_model.partial/`, sealed with a `MANIFEST.json` (sizes and
hashes, `io/model_dir.py`) and renamed into place: a full disk or a kill never
leaves a half-written model under the final name, and a symlink planted in an
earlier `final_model/` is replaced with the directory, never written through.
"""
from __future__ import annotations

import logging
import os

import paddle.distributed as dist

import shutil

from ..errors import CheckpointError
from ..io.model_dir import publish_dir, seal_model_dir, staging_dir
from ..io.weights import PADDLE_WEIGHTS_NAME, rank_file_name, save_numpy_safetensors, save_pdparams, write_layout

logger = logging.getLogger("paddle_pangu.training")


def save_final_model(model, model_config, par, topo, cfg) -> str:
    """Write `final_model/` under `cfg.train.output_dir` from every rank of the run; returns its path.

    `model` is the (possibly fleet-wrapped) trained model, `par` the validated
    ParallelConfig, `topo` this process's Topology, `cfg` the RunConfig.
    """
    final = os.path.join(cfg.train.output_dir, "final_model")
    out = staging_dir(final)
    split = par.mp_degree * par.pp_degree > 1
    per_rank = split and model_config.num_parameters() > cfg.checkpoint.consolidate_max_params
    try:
        if topo.rank == 0:
            shutil.rmtree(out, ignore_errors=True)  # left by a run killed while writing its final model
            os.makedirs(out)
            model_config.architectures = ["PanGuForCausalLM"]  # what AutoModelForCausalLM reads (as save_pretrained writes)
            model_config.save_pretrained(out)
            _save_tokenizer(cfg, model_config.vocab_size, out)
        if topo.world_size > 1:
            dist.barrier()  # the directory exists before any rank writes into it
        if per_rank:
            _write_rank_weights(model, par, topo, out)
        else:
            _write_consolidated_weights(model, topo, out)
        if topo.world_size > 1:
            dist.barrier()
        if topo.rank == 0:
            seal_model_dir(out)
            publish_dir(out, final)
    except OSError as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise CheckpointError(f"writing the final model failed: {exc.strerror or exc} "
                              f"({getattr(exc, 'filename', None) or out}); nothing was left under {final} by this "
                              "run (the checkpoints are intact: fix the disk and rerun to write it)") from exc
    out = final
    if topo.rank == 0:
        logger.info("final model written to %s%s", out,
                    f" per rank (mp{par.mp_degree} pp{par.pp_degree}); merge with `pangu reshard {out} "
                    f"-o DIR --mp 1 --pp 1`" if per_rank else "")
    return out


def _write_consolidated_weights(model, topo, out: str) -> None:
    from ..model.modeling_pp import gather_plain_state_dict

    state = gather_plain_state_dict(model, topo)  # {plain name: np.ndarray}, every rank
    if topo.rank == 0:
        save_pdparams(os.path.join(out, PADDLE_WEIGHTS_NAME), state)


def _write_rank_weights(model, par, topo, out: str) -> None:
    """Each (mp rank, pp stage) writes its plain-named shard once (from data-parallel rank 0)."""
    from ..model.modeling_pp import local_plain_state_dict

    mp, pp = par.mp_degree, par.pp_degree
    if topo.dp_rank == 0 and topo.sharding_rank == 0:
        local = {k: v.astype("float32").numpy() for k, v in local_plain_state_dict(model).items()}
        save_numpy_safetensors(os.path.join(out, rank_file_name(topo.mp_rank, topo.pp_rank, mp, pp)), local)
    if topo.rank == 0:
        write_layout(out, mp, pp)


def _save_tokenizer(cfg, vocab_size: int, out: str) -> None:
    """Copy the tokenizer files next to the model; synthetic runs get the default tokenizer (when the
    model's vocabulary covers it), so AutoTokenizer and `pangu generate` open every final_model."""
    from ..tokenizer import save_tokenizer_files

    source = cfg.data.tokenizer if cfg.data.synthetic is None else None
    if not save_tokenizer_files(out, source, vocab_size):
        logger.info("no tokenizer files written to %s: vocab_size %d is smaller than the tokenizer's", out, vocab_size)
