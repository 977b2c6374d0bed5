"""Verified fine-tune checkpoints: a `kill -9` mid-save never becomes the checkpoint a resume loads.

PaddleNLP's Trainer writes `checkpoint-N/` in place; a process killed while saving left `checkpoint-55/`
with a 0-byte `optimizer.pdopt`, and `resume_from_checkpoint` loaded it (or crashed) instead of falling
back to `checkpoint-54/`. Here:

* `ManifestOnSave` (a TrainerCallback, run after the Trainer's save returned) writes
  `checkpoint-N/MANIFEST.json` (sizes + xxh3 hashes, `io/durable.py`): a checkpoint without one was cut
  short, unless it predates this version (then every file must be non-empty and its safetensors
  headers valid);
* `choose_checkpoint` picks the newest `checkpoint-N/` that verifies for `resume_from_checkpoint=True`,
  renames the ones that do not to `checkpoint-N.rejected` (kept for inspection) and says so on the
  console; an explicit path that does not verify is a one-line error.
"""
from __future__ import annotations

import os
import re

from ..errors import CheckpointError

FORMAT = "paddle_pangu.trainer_checkpoint/1"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def manifest_on_save():
    from paddlenlp.trainer import TrainerCallback

    from ..io.durable import write_manifest

    class ManifestOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if args.world_size == 1 and os.path.isdir(path):  # several ranks write one dir: no single writer
                write_manifest(path, {"step": state.global_step}, "xxh3_128", FORMAT)

    return ManifestOnSave()


def verify_checkpoint(path: str) -> None:
    """CheckpointError naming the file when `path` is not a complete Trainer checkpoint."""
    from ..io.durable import MANIFEST, verify_rank_dir
    from ..io.model_dir import read_safetensors_header

    if os.path.isfile(os.path.join(path, MANIFEST)):
        verify_rank_dir(path, None, FORMAT, "fine-tune checkpoint manifest")
        return
    files = [f for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))]
    if not any(f.endswith((".pdparams", ".safetensors")) for f in files):
        raise CheckpointError(f"{path}: no model weights (an interrupted save)")
    for name in files:
        full = os.path.join(path, name)
        if os.path.getsize(full) == 0:
            raise CheckpointError(f"{full}: 0 bytes (the save was interrupted)")
        if name.endswith(".safetensors"):
            read_safetensors_header(full)


def choose_checkpoint(output_dir: str, resume):
    """What to pass as `resume_from_checkpoint`: None / False unchanged, a verified path otherwise."""
    if not resume or str(resume).lower() in ("false", "none", "0"):
        return None
    if str(resume).lower() not in ("true", "1", "yes"):
        try:
            verify_checkpoint(resume)
        except CheckpointError as exc:
            raise CheckpointError(f"resume_from_checkpoint={resume!r} does not verify: {exc}") from None
        return resume
    found = sorted(((int(m.group(1)), d) for d in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
                    if (m := _CKPT.match(d)) and os.path.isdir(os.path.join(output_dir, d))), reverse=True)
    for _, name in found:
        path = os.path.join(output_dir, name)
        try:
            verify_checkpoint(path)
            print(f"pangu finetune: resuming from {path}", flush=True)
            return path
        except CheckpointError as exc:
            target, n = path + ".rejected", 1
            while os.path.lexists(target):
                n += 1
                target = f"{path}.rejected-{n}"
            os.replace(path, target)
            print(f"pangu finetune: skipping {name}: {exc}; kept as {os.path.basename(target)}", flush=True)
    if found:
        print("pangu finetune: no checkpoint verified; starting from step 0", flush=True)
    return None
