"""Verified per-rank training checkpoints and resume.

Layout under `<output_dir>/checkpoints/`::

    step_00000100/
        rank_00000/  model.safetensors  optimizer.safetensors  state.json  MANIFEST.json
        rank_00001/  ...
        run_config.json        (rank 0: the run config, part of the resume contract)
        COMPLETE               (rank 0, last: world size and the hash of every rank's MANIFEST.json)
    latest                     (the newest sealed step dir name; a hint, written atomically)

No file holds a pickle: tensors are safetensors, the rest (step, data position,
LR scheduler, loss scaler, every RNG, the optimizer's skeleton) is tagged JSON.

Writing: every file goes to a temporary name, is fsynced and renamed
(`files.atomic_write`); each rank writes its files into `step_N.partial/`,
then its `MANIFEST.json` (sizes and xxh3-128 / sha256 hashes of the bytes on
disk); rank 0 writes `COMPLETE` and renames the directory to `step_N/`, then
`latest`. A save that fails (e.g. ENOSPC) removes its partial directory and
raises `CheckpointError`; leftovers of a killed save are removed at the next start.

Resuming (`checkpoint.resume: auto`): the newest `step_N/` that verifies on
every rank (COMPLETE, manifest hash, every file's size and hash), regardless of
what `latest` says; the ones that do not are logged with the reason and renamed
`*.rejected`. The run config must match (contract.py) unless `--force-resume`.
Each rank loads only its own shard, so a resume uses the same parallel layout,
unless `--reshard` (`checkpoint.reshard: true`): then a checkpoint of another
dp / mp / pp / sharding layout is converted while loading (reshard.py,
docs/CHECKPOINTS.md); without it a layout change is refused in one line naming
the flag. The consolidated model (`save_pretrained`) is the layout-free export.
Multi-node jobs need `output_dir` on a filesystem every node sees.
"""
from .contract import check_run_config, config_differences
from .files import hash_file, verify_rank_dir
from .rank_state import capture_rng_state, rename_optimizer_state, restore_rng_state
from .store import (CKPT_SUBDIR, COMPLETE, LATEST, find_resume_dir, load_checkpoint, save_checkpoint,
                    step_dir_name, verify_checkpoint)

__all__ = ["CKPT_SUBDIR", "COMPLETE", "LATEST", "capture_rng_state", "check_run_config", "config_differences",
           "find_resume_dir", "hash_file", "load_checkpoint", "rename_optimizer_state", "restore_rng_state",
           "save_checkpoint", "step_dir_name", "verify_checkpoint", "verify_rank_dir"]
