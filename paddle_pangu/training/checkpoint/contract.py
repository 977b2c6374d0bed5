"""The run config as part of the checkpoint contract.

A checkpoint records the run config it was written under (`run_config.json`).
Resuming compares it with the current one: fields that only change how long
or how verbosely the run goes (`SAFE`) may differ and are logged; any other
difference (model shape, parallel layout, data, seed, optimizer, precision)
is refused with every difference listed, unless `--force-resume`
(`checkpoint.force_resume: true`).
"""
from __future__ import annotations

from paddle_pangu.errors import CheckpointError

SAFE = ("train.max_steps", "train.eval_interval", "train.eval_iters", "train.output_dir", "train.device",
        "model.init_from", "logging.", "checkpoint.")
_MISSING = "<absent>"


def flatten(tree, prefix: str = "") -> dict:
    """{"a.b.c": leaf} of a nested dict (lists are leaves)."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE)


def config_differences(saved: dict, current: dict, also_safe: tuple = ()) -> tuple[list[str], list[str]]:
    """(safe differences, refused differences) as `key: saved -> current` lines; `also_safe`: keys allowed
    to differ here too (the layout fields under --reshard)."""
    a, b = flatten(saved), flatten(current)
    safe, refused = [], []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, _MISSING), b.get(key, _MISSING)
        if old == new or (isinstance(old, (int, float)) and isinstance(new, (int, float)) and float(old) == float(new)):
            continue
        (safe if _is_safe(key) or key in also_safe else refused).append(f"{key}: {old!r} -> {new!r}")
    return safe, refused


def check_run_config(step_dir: str, saved: dict | None, current: dict, force: bool, log,
                     also_safe: tuple = ()) -> None:
    """Refuse (CheckpointError) or log the differences between the saved and the current run config."""
    if saved is None:
        log(f"{step_dir}: no run_config.json recorded; resuming without the config check")
        return
    safe, refused = config_differences(saved, current, also_safe)
    if safe:
        log(f"resuming {step_dir} with changed settings (allowed): " + "; ".join(safe))
    if refused and not force:
        raise CheckpointError(f"{step_dir} was written under a different run config: " + "; ".join(refused)
                              + " (restore these settings, start a new output_dir, or pass --force-resume)")
    if refused:
        log(f"--force-resume: resuming {step_dir} despite: " + "; ".join(refused))
