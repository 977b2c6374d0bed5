"""Save, verify, choose and load per-rank checkpoints (layout in the package docstring)."""
from __future__ import annotations

import logging
import os
import re
import shutil

import paddle

from paddle_pangu.errors import CheckpointError

from .contract import check_run_config
from .files import (MANIFEST, atomic_write_json, atomic_write_text, fsync_dir, hash_file, read_json,
                    verify_rank_dir, write_manifest)
from .rank_state import capture_rng_state, read_rank_files, restore_rng_state, write_rank_files

logger = logging.getLogger("paddle_pangu.checkpoint")

CKPT_SUBDIR = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
RUN_CONFIG = "run_config.json"
PARTIAL, REPLACED, REJECTED = ".partial", ".replaced", ".rejected"
_STEP_RE = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_dir_name(rank: int) -> str:
    return f"rank_{rank:05d}"


def _world() -> tuple[int, int]:
    return paddle.distributed.get_rank(), paddle.distributed.get_world_size()


def _barrier():
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.barrier()


def _all_ranks_ok(ok: bool) -> bool:
    """True when `ok` holds on every rank (one all-reduce; no-op alone)."""
    if paddle.distributed.get_world_size() == 1:
        return ok
    flag = paddle.to_tensor([0 if ok else 1], dtype="int32")
    paddle.distributed.all_reduce(flag)
    return int(flag) == 0


# ---- save ----------------------------------------------------------------------------
def save_checkpoint(output_dir: str, step: int, model, optimizer, scheduler, scaler=None,
                    extra: dict | None = None, run_config: dict | None = None, keep_last: int = 2,
                    hash_algo: str = "xxh3_128") -> str:
    """Write this rank's shard under `step_N.partial/`; rank 0 seals it and renames it to `step_N/`.

    A failed save (disk full, ...) removes the partial directory and raises
    CheckpointError; the previous checkpoints are untouched.
    """
    root = os.path.join(output_dir, CKPT_SUBDIR)
    final = os.path.join(root, step_dir_name(step))
    partial = final + PARTIAL
    rank, world = _world()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by an earlier failed save of this step
    _barrier()
    rank_dir = os.path.join(partial, rank_dir_name(rank))
    state = {"step": step, "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": capture_rng_state(), "extra": extra or {}}
    try:
        os.makedirs(rank_dir, exist_ok=True)
        write_rank_files(rank_dir, model, optimizer, state)
        write_manifest(rank_dir, {"step": step, "rank": rank, "world_size": world}, hash_algo)
    except OSError as exc:
        _failed(partial if rank == 0 else rank_dir, step, exc)
    _barrier()
    if rank == 0:
        try:
            _seal(root, partial, final, step, world, run_config, hash_algo)
        except OSError as exc:
            _failed(partial, step, exc)
        _prune(root, step, keep_last)
    _barrier()
    return final


def _failed(path: str, step: int, exc: OSError):
    shutil.rmtree(path, ignore_errors=True)
    raise CheckpointError(f"saving the step-{step} checkpoint failed: {exc.strerror or exc} "
                          f"({getattr(exc, 'filename', None) or path}); the partial directory was removed and "
                          "earlier checkpoints are untouched") from exc


def _seal(root, partial, final, step, world, run_config, algo) -> None:
    """Rank 0, after every rank's manifest: run config, COMPLETE (manifest hashes), rename, `latest`."""
    if run_config is not None:
        atomic_write_json(os.path.join(partial, RUN_CONFIG), run_config)
    manifests = {}
    for r in range(world):
        path = os.path.join(partial, rank_dir_name(r), MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"rank {r} wrote no manifest: {path}")
        manifests[rank_dir_name(r)] = hash_file(path, algo)[1]
    run_cfg = os.path.join(partial, RUN_CONFIG)
    complete = {"step": step, "world_size": world, "hash": algo, "manifests": manifests,
                "run_config": hash_file(run_cfg, algo)[1] if os.path.isfile(run_cfg) else None}
    atomic_write_json(os.path.join(partial, COMPLETE), complete)
    fsync_dir(partial)
    if os.path.isdir(final):  # the same step saved again (a resumed run stopping where it started)
        os.replace(final, final + REPLACED)
    os.replace(partial, final)
    fsync_dir(root)
    shutil.rmtree(final + REPLACED, ignore_errors=True)
    atomic_write_text(os.path.join(root, LATEST), step_dir_name(step))


def _steps(root: str) -> list[int]:
    """Steps of the sealed checkpoint directories under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(int(m.group(1)) for d in os.listdir(root) if (m := _STEP_RE.match(d)))


def _prune(root: str, saved_step: int, keep_last: int) -> None:
    """Keep the checkpoint just written and the `keep_last - 1` newest before it.

    Rejected checkpoints (`*.rejected*`) are kept until the user removes them: a damaged COMPLETE or
    run_config.json may leave intact weights someone wants back.

    The one just written was hashed from disk, so the newest verified checkpoint is never deleted.
    Checkpoints newer than it (another timeline, after an explicit older resume) are left alone.
    """
    older = [s for s in _steps(root) if s < saved_step]
    for step in older[:max(len(older) - (keep_last - 1), 0)]:
        shutil.rmtree(os.path.join(root, step_dir_name(step)), ignore_errors=True)
    newer = [s for s in _steps(root) if s > saved_step]
    if newer:
        logger.warning("checkpoints newer than step %d remain from an earlier run: %s", saved_step,
                       ", ".join(step_dir_name(s) for s in newer))


# ---- verify and choose -----------------------------------------------------------------
def verify_checkpoint(step_dir: str, rank: int | None = None, world: int | None = None,
                      reshard: bool = False) -> dict:
    """COMPLETE of `step_dir` after checking it and this rank's manifest and files (CheckpointError if not).

    With `reshard` the checkpoint may come from another process count: this rank checks the old ranks
    rank, rank + world, ... (so every old rank is checked by exactly one new rank)."""
    cur_rank, cur_world = _world()
    rank = cur_rank if rank is None else rank
    world = cur_world if world is None else world
    complete = read_json(os.path.join(step_dir, COMPLETE), f"{COMPLETE} marker")
    saved_world = complete.get("world_size")
    if saved_world != world and not reshard:
        raise CheckpointError(f"{step_dir}: saved by {saved_world} processes{_saved_layout(step_dir)}, resuming "
                              f"with {world}; pass --reshard (checkpoint.reshard: true) to convert it to this "
                              "layout, or restore the checkpoint's layout")
    if not isinstance(saved_world, int) or saved_world < 1:
        raise CheckpointError(f"{step_dir}/{COMPLETE}: world_size {saved_world!r} is not a process count")
    algo = complete.get("hash", "xxh3_128")
    run_cfg = os.path.join(step_dir, RUN_CONFIG)
    if complete.get("run_config") and (not os.path.isfile(run_cfg) or hash_file(run_cfg, algo)[1] != complete["run_config"]):
        raise CheckpointError(f"{run_cfg}: missing or differs from the hash recorded in {COMPLETE}")
    for old_rank in (range(rank, saved_world, world) if reshard else [rank]):
        name = rank_dir_name(old_rank)
        manifest_path = os.path.join(step_dir, name, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise CheckpointError(f"{manifest_path}: missing")
        if hash_file(manifest_path, algo)[1] != complete.get("manifests", {}).get(name):
            raise CheckpointError(f"{manifest_path}: differs from the hash recorded in {COMPLETE}")
        verify_rank_dir(os.path.join(step_dir, name),
                        {"step": complete.get("step"), "rank": old_rank, "world_size": saved_world})
    return complete


def _saved_layout(step_dir: str) -> str:
    """` (dp1 mp2 pp1 sharding1)` of a checkpoint's recorded run config, or nothing."""
    from .reshard import layout_text, saved_parallel

    try:
        par = saved_parallel(step_dir)
    except CheckpointError:
        return ""
    return f" ({layout_text(par)})" if par else ""


def _clean_leftovers(root: str) -> None:
    """Rank 0 at start: drop partial saves and temporaries; undo a replace cut short by a crash."""
    if not os.path.isdir(root):
        return
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(REPLACED):
            target = path[:-len(REPLACED)]
            if os.path.isdir(target):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)
        elif name.endswith(PARTIAL) or ".tmp-" in name:
            logger.warning("removing %s (left by a save that did not finish)", path)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _read_latest(root: str) -> str | None:
    path = os.path.join(root, LATEST)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().strip()
    except OSError:
        return None
    if not _STEP_RE.match(text):
        logger.warning("%s is empty or garbled (%r); choosing among the checkpoints on disk", path, text[:40])
        return None
    return text


def find_resume_dir(output_dir: str, resume: str | None, reshard: bool = False) -> str | None:
    """The checkpoint to resume from, verified on every rank.

    `none`: None. A path: that checkpoint, or CheckpointError if it is missing or does not
    verify. `auto`: the newest checkpoint under `output_dir` that verifies on every rank;
    newer ones that do not are renamed `*.rejected` and logged with the reason. None if
    there is no checkpoint at all. `reshard`: checkpoints of another process count are verified too
    (every old rank by one new rank) instead of refused.
    """
    if resume in (None, "", "none"):
        return None
    if resume != "auto":
        if not os.path.isdir(resume):
            raise CheckpointError(f"checkpoint.resume={resume!r}: no such checkpoint directory")
        reason = _verify_everywhere(resume, reshard)
        if reason:
            raise CheckpointError(f"checkpoint.resume={resume!r} does not verify: {reason}")
        return resume
    root = os.path.join(output_dir, CKPT_SUBDIR)
    rank, _ = _world()
    if rank == 0:
        _clean_leftovers(root)
    _barrier()
    latest = _read_latest(root)
    skipped = []
    for step in reversed(_steps(root)):
        step_dir = os.path.join(root, step_dir_name(step))
        reason = _verify_everywhere(step_dir, reshard)
        if reason is None:
            _reject(skipped, latest, step_dir)
            return step_dir
        skipped.append((step_dir, reason))
    _reject(skipped, latest, None)
    return None


def _verify_everywhere(step_dir: str, reshard: bool = False) -> str | None:
    """None if `step_dir` verifies on every rank, else the reason (this rank's, or 'on another rank')."""
    try:
        verify_checkpoint(step_dir, reshard=reshard)
        reason = None
    except CheckpointError as exc:
        if "pass --reshard" in str(exc):  # a layout change: the same one-line refusal on every rank
            raise
        reason = str(exc)
    if not _all_ranks_ok(reason is None):
        return reason or "another rank's files do not verify (see that rank's log)"
    return None


def _reject(skipped, latest, chosen) -> None:
    rank, _ = _world()
    for step_dir, reason in skipped:
        logger.warning("skipping checkpoint %s: %s", step_dir, reason)
    if rank == 0:
        for step_dir, _ in skipped:
            target, n = step_dir + REJECTED, 1
            while os.path.lexists(target):  # an earlier rejection of the same step is kept too
                n += 1
                target = f"{step_dir}{REJECTED}-{n}"
            os.replace(step_dir, target)
            logger.warning("kept %s for inspection (remove it when done)", target)
    if skipped and chosen is None:
        logger.warning("no checkpoint verified; starting from step 0 (rejected: %s)",
                       ", ".join(os.path.basename(d) for d, _ in skipped))
    elif chosen and latest and os.path.basename(chosen) != latest:
        logger.warning("`latest` names %s; resuming from %s, the newest checkpoint that verifies", latest, chosen)
    _barrier()


# ---- load ----------------------------------------------------------------------------
def load_checkpoint(step_dir: str, model, optimizer, scheduler, scaler=None, run_config: dict | None = None,
                    force: bool = False, reshard: bool = False, topo=None, model_config=None) -> dict:
    """Load this rank's shard of a verified checkpoint; returns the saved state after restoring RNGs.

    With `run_config` the saved run config must match (contract.py) unless `force`. A checkpoint of
    another dp / mp / pp / sharding layout is refused in one line naming --reshard, or with `reshard` (and
    `topo`, `model_config`) converted to this layout (reshard.py); then the returned state holds
    `resharded_from` / `resharded_to` (the two layouts as text).
    """
    from .reshard import layout_of, layout_text, saved_parallel

    rank, world = _world()
    saved = os.path.join(step_dir, RUN_CONFIG)
    saved_cfg = read_json(saved, "run config") if os.path.isfile(saved) else None
    old_par = saved_parallel(step_dir)
    new_par = (run_config or {}).get("parallel")
    old_world = read_json(os.path.join(step_dir, COMPLETE), f"{COMPLETE} marker").get("world_size")
    changed = old_world != world or (old_par is not None and new_par is not None
                                     and layout_of(old_par) != layout_of(new_par))
    if changed and not reshard:
        was = layout_text(old_par) if old_par else f"{old_world} processes"
        now = layout_text(new_par) if new_par else f"{world} processes"
        raise CheckpointError(f"{step_dir}: written by {was}, this run is {now}; pass --reshard "
                              "(checkpoint.reshard: true) to convert it to this layout, or restore the checkpoint's layout")
    if changed:
        if old_par is None or new_par is None or topo is None or model_config is None:
            raise CheckpointError(f"{step_dir}: no run_config.json recorded, so the layout it was written by is "
                                  "unknown; --reshard needs it")
        return _load_resharded(step_dir, old_world, old_par, model, optimizer, scheduler, scaler, saved_cfg,
                               run_config, force, topo, model_config)
    if run_config is not None:
        check_run_config(step_dir, saved_cfg, run_config, force, logger.warning)
    _check_shapes(os.path.join(step_dir, rank_dir_name(rank)), model)
    state = read_rank_files(os.path.join(step_dir, rank_dir_name(rank)), model, optimizer)
    scheduler.set_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    return state


def _check_shapes(rank_dir: str, model) -> None:
    """Every model tensor is in the checkpoint with its shape (a changed model is refused, not half-loaded)."""
    from safetensors import safe_open

    from .rank_state import MODEL_FILE

    path = os.path.join(rank_dir, MODEL_FILE)
    with safe_open(path, framework="np") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    diffs = [f"{k}: {saved.get(k, 'absent')} -> {tuple(v.shape)}" for k, v in model.state_dict().items()
             if saved.get(k) != tuple(v.shape)]
    if diffs:
        raise CheckpointError(f"{path}: the model differs from the checkpoint's ({len(diffs)} tensors): "
                              + "; ".join(diffs[:5]))


def _load_resharded(step_dir, old_world, old_par, model, optimizer, scheduler, scaler, saved_cfg, run_config, force,
                    topo, model_config) -> dict:
    """Convert a checkpoint of another layout into this rank's model and optimizer (reshard.py)."""
    from .rank_state import apply_optimizer_state, _unique_to_structured
    from .reshard import (_REPLICATED_SUFFIXES, RESHARD_FIELDS, check_pipe_names, check_reshardable,
                          convert_rank_state, is_stage2, layout_text, param_of, pipe_to_plain, plain_name,
                          read_rank_state, reseed, stage2_slice)

    new_par = run_config["parallel"]
    root = read_rank_state(step_dir)  # old rank 0: step, scheduler, scaler, optimizer skeleton
    step = int(root["step"])
    check_reshardable(step_dir, old_par, new_par, step, (root.get("extra") or {}).get("consumed_samples"))
    check_run_config(step_dir, saved_cfg, run_config, force, logger.warning, also_safe=RESHARD_FIELDS)
    check_pipe_names(model, model_config)
    local = model.state_dict()
    key_of = {pipe_to_plain(plain_name(k), model_config): k for k in local}  # plain name -> this model's key
    weights, moments, masters = convert_rank_state(step_dir, old_par, old_world, model_config,
                                                   {n: tuple(local[k].shape) for n, k in key_of.items()},
                                                   topo.mp_degree, topo.mp_rank, topo.pp_degree, topo.pp_rank)
    model.set_state_dict({key_of[n]: paddle.to_tensor(a, dtype=local[key_of[n]].dtype) for n, a in weights.items()})
    structured = {pipe_to_plain(plain_name(s), model_config): s for s in _unique_to_structured(model).values()}
    params = sorted(structured, key=len, reverse=True)
    opt_state = {k: v for k, v in (root.get("optimizer") or {}).items()  # non-tensor entries (LR_Scheduler)
                 if k != "master_weights" and not (isinstance(v, dict) and "__tensor__" in v)}
    cut = lambda name, arr, key: arr  # noqa: E731  (whole tensors unless this run is sharding stage 2)
    if is_stage2(new_par):  # this rank keeps a flat slice of each parameter's state (reshard.stage2_slice)
        from paddle_pangu.parallel.fleet_compat import sharding_stage2_ranges

        ranges = sharding_stage2_ranges(optimizer)
        unique = {s: u for u, s in _unique_to_structured(model).items()}
        unplaced = sorted(s for s, u in unique.items() if u not in (ranges or {}))
        if unplaced:  # e.g. fleet's pipeline comm overlap, which builds the buffers only at the first step
            raise CheckpointError(f"{step_dir}: --reshard into sharding stage 2 needs the optimizer's stage-2 "
                                  f"buffers, which do not place {unplaced[:3]} ({len(unplaced)} parameters) yet")
        cut = lambda name, arr, key: stage2_slice(arr, ranges[unique[structured[name]]],  # noqa: E731
                                                  f"{step_dir}: {key}")
    for key, arr in moments.items():
        name, suffix = param_of(key, params)
        if not key.endswith(_REPLICATED_SUFFIXES):
            arr = cut(name, arr, key)
        if arr is not None:
            opt_state[structured[name] + suffix] = paddle.to_tensor(arr)
    masters = {n: cut(n, a, "master_weights/" + n) for n, a in masters.items()}
    if any(a is not None for a in masters.values()):
        opt_state["master_weights"] = {structured[n]: paddle.to_tensor(a) for n, a in masters.items() if a is not None}
    apply_optimizer_state(model, optimizer, opt_state)
    scheduler.set_state_dict(root["scheduler"])
    if scaler is not None and root.get("scaler") is not None:
        scaler.load_state_dict(root["scaler"])
    reseed(topo.parallel_config.seed, step, topo)
    return {**root, "resharded_from": layout_text(old_par), "resharded_to": layout_text(new_par)}

