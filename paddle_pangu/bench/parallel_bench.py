"""`pangu bench parallel`: what the CPU gloo adapter costs, as training tokens/s of a multi-process layout
against one process of the same model, global batch and sequence length.

    pangu bench parallel                        # the main job's layout (configs/pretrain/mini_cpu_mp2.yaml)
    pangu bench parallel --compare --rounds 3   # + dp2 (same global batch over 2 data-parallel ranks)
    pangu bench parallel --config configs/pretrain/mini_cpu_pp2.yaml --steps 8

Layouts, all built from one base run YAML (default the main job's; `--config` picks another):
- `single`: world 1, no dp/mp/pp/sharding; the micro-batch kept and `accumulate_steps` multiplied by the base's
  data-parallel size, so micro_batch * accumulate * dp (the global batch) is the base's;
- the base layout itself, named by its degrees (`mp2` for the main job), started as `pangu train --nproc N`;
- with `--compare`, `dp2` (world 2, dp 2) when the global batch splits into 2 ranks of the base micro-batch.
The model is the base's preset (`--preset`/`--hidden`/... override it), the sequence length its `data.seq_len`
(`--seq` overrides it), `--batch` overrides the micro-batch. The data are the trainer's synthetic tokens
(`data.synthetic`; token content does not change the step's cost), so nothing has to be prepared.

One sample = one `pangu train` subprocess of `--steps` K steps (K >= 2) in a fresh output directory, the
interpreter/launcher start-up, one final checkpoint and a 1-batch evaluation included in its wall time. Measured:
- tokens/s = tokens per step (global batch x seq) / mean step time of steps 2..K, the step times being the
  trainer's own (`time` of each step in rank 0's `<output_dir>/metrics.jsonl`; step 1, the warm-up, excluded);
- the whole run's wall seconds and CPU seconds of every process it started (RUSAGE_CHILDREN around the run:
  `pangu train`, the launcher and its workers), start-up included;
- `os.getloadavg()` (1 minute) just before and after the run, and the `pangu runtime:` lines of the started
  process and of rank 0's worker; `mkl_threads` is the last MKL_NUM_THREADS set along that chain (a worker whose
  line says "no changes" inherited its launching process's).
Rounds are interleaved (single, mp2[, dp2], single, mp2, ...). Ratios `X/single` are formed per round from
adjacent samples like `harness.pair_ratio` (rounds whose loads differ by more than 2x are refused):
`tokens_per_s` = single's step time / X's step time (> 1: X is faster; < 1 is what the processes and the gloo
collectives cost), `run_cpu_s` = single's whole-run CPU seconds / X's (< 1: X burns more CPU).
The child processes get this process's environment; `paddle_pangu.runtime` re-decides the thread variables
it owns in each of them, so each `pangu train` (and each launched worker) takes its share of the cores
exactly as when a user starts it. (Before that fix the launched workers inherited the parent's
MKL_NUM_THREADS=2 and ran 2 threads each on 2 cores: tiny mp2 step 584 ms, after it 303 ms.)
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import PanGuError, UsageError
from .harness import pair_ratio, spread
from .report import loads, span

DEFAULT_CONFIG = "configs/pretrain/mini_cpu_mp2.yaml"
REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1800
_DIM_FIELDS = {"hidden": "hidden_size", "layers": "num_layers", "heads": "num_attention_heads",
               "ffn": "ffn_hidden_size", "vocab": "vocab_size"}


class ParallelBenchError(PanGuError, RuntimeError):
    """A benchmarked `pangu train` run failed or wrote no step times."""


@dataclass(frozen=True)
class Layout:
    name: str
    world: int
    overrides: tuple  # `--set` items on top of the base config and the common ones
    par: dict  # the validated layout (ParallelConfig.to_dict())


def resolve_config(path: str | None) -> str:
    """The base run YAML: `--config`, else the main job's (from the working directory or the repository)."""
    if path is not None:
        if not os.path.isfile(path):
            raise UsageError(f"--config {path!r}: no such run YAML")
        return path
    if os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    fallback = REPO_ROOT / DEFAULT_CONFIG
    if not fallback.is_file():
        raise UsageError(f"no {DEFAULT_CONFIG} here or in {REPO_ROOT}: pass --config")
    return str(fallback)


def model_overrides(preset: str | None = None, dims: dict | None = None, seq: int | None = None,
                    micro_batch: int | None = None) -> list[str]:
    """`--set` items for the command-line model / sequence / micro-batch overrides (None: the base's)."""
    out = [f"model.preset={preset}"] if preset else []
    dims = {k: v for k, v in (dims or {}).items() if v is not None}
    if "hidden" in dims and "ffn" not in dims:
        dims["ffn"] = 4 * dims["hidden"]
    out += [f"model.overrides.{_DIM_FIELDS[k]}={v}" for k, v in dims.items()]
    if seq:
        out.append(f"data.seq_len={seq}")
    if micro_batch:
        out.append(f"parallel.micro_batch_size={micro_batch}")
    return out


def common_overrides(steps: int, global_batch: int) -> list[str]:
    """The same for every layout: K steps on synthetic tokens, no periodic eval/checkpoint, no final model."""
    return [f"train.max_steps={steps}", "data.paths=[]", "data.weights=null", "data.splits=null",
            f"data.synthetic={{num_samples: {max(steps, 1) * global_batch}}}", "train.eval_interval=0",
            "train.eval_iters=1", "checkpoint.save_interval=0", "checkpoint.save_final_model=false",
            "checkpoint.resume=none", "logging.visualdl=false", "logging.progress_bar=false",
            f"logging.log_interval={steps}"]


def _layout_set(dp: int, mp: int, pp: int, sharding: int, micro: int, acc: int, global_batch: int) -> list[str]:
    return [f"parallel.dp_degree={dp}", f"parallel.mp_degree={mp}", f"parallel.pp_degree={pp}",
            f"parallel.sharding_degree={sharding}", f"parallel.micro_batch_size={micro}",
            f"parallel.accumulate_steps={acc}", f"parallel.global_batch_size={global_batch}",
            f"world_size={dp * mp * pp * sharding}"]


def layout_name(par) -> str:
    parts = [f"{k}{getattr(par, k + '_degree')}" for k in ("dp", "mp", "pp", "sharding")
             if getattr(par, k + "_degree") > 1]
    return "".join(parts) or "single"


def build_layouts(config: str, user: list[str], steps: int, compare: bool) -> tuple[dict, dict]:
    """({name: Layout} in run order, info about the base) -- every layout validated here, before any run."""
    from ..training.run_config import load_run_config

    base_cfg = load_run_config(config, user)
    base_model, base_par = base_cfg.validate(base_cfg.parallel.world_size)
    world, global_batch, micro = base_par.world_size, base_par.global_batch_size, base_par.micro_batch_size
    if world == 1:
        raise UsageError(f"--config {config}: a 1-process layout; `pangu bench parallel` compares a multi-process "
                         f"layout with one process (pass e.g. --config {DEFAULT_CONFIG})")
    common = common_overrides(steps, global_batch)
    plans = [("single", _layout_set(1, 1, 1, 1, micro, global_batch // micro, global_batch)),
             (layout_name(base_par), [])]
    skipped = {}
    if compare and layout_name(base_par) != "dp2":
        if global_batch % (2 * micro) == 0:
            plans.append(("dp2", _layout_set(2, 1, 1, 1, micro, global_batch // (2 * micro), global_batch)))
        else:
            skipped["dp2"] = f"global batch {global_batch} does not split into 2 ranks of micro-batch {micro}"
    layouts = {}
    for name, layout_set in plans:
        overrides = tuple(user + common + layout_set)
        cfg = load_run_config(config, list(overrides))
        w = cfg.parallel.world_size
        _, par = cfg.validate(w)
        assert par.global_batch_size == global_batch, (name, par.global_batch_size, global_batch)
        layouts[name] = Layout(name, w, overrides, par.to_dict())
    info = {"config": config, "model": base_cfg.model.preset, "params_m": round(base_model.num_parameters() / 1e6, 2),
            "seq": base_cfg.seq_len, "global_batch": global_batch, "tokens_per_step": global_batch * base_cfg.seq_len,
            "skipped": skipped}
    return layouts, info


def child_env() -> dict:
    """This environment, unbuffered. Each child decides its threads for itself, as when started from a
    shell: paddle_pangu.runtime marks the thread variables it (or `import paddle`) set as its own
    (`PANGU_RUNTIME_OWNED`), so an inherited MKL_NUM_THREADS is re-decided per launched worker."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(config: str, layout: Layout, out_dir: str) -> list[str]:
    cmd = [sys.executable, "-m", "paddle_pangu.cli", "train", "--config", config, "--output-dir", out_dir]
    for item in layout.overrides:
        cmd += ["--set", item]
    return cmd + (["--nproc", str(layout.world)] if layout.world > 1 else [])


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _runtime_lines(stderr: str, out_dir: str, world: int) -> list[str]:
    """The `pangu runtime:` lines of the started process and (launched) of rank 0's worker, in that order."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.startswith("pangu runtime:")][:1]
    if world > 1:
        try:
            with open(os.path.join(out_dir, "launch_logs", "workerlog.0"), errors="replace") as f:
                lines += [ln.strip() for ln in f if ln.startswith("pangu runtime:")][:1]
        except OSError:
            pass
    return lines


def mkl_threads(lines: list[str]) -> int | None:
    """MKL threads rank 0 ran with: the last MKL_NUM_THREADS=N set along the chain (a worker that sets none
    inherits its launching process's)."""
    found = [int(m) for ln in lines for m in re.findall(r"MKL_NUM_THREADS=(\d+)", ln)]
    return found[-1] if found else None


def step_times(out_dir: str) -> list[float]:
    path = os.path.join(out_dir, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []
    return [r["time"] for r in sorted((r for r in rows if r.get("type") == "train"), key=lambda r: r["step"])]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("pangu runtime:")]
    return lines[-1][:300] if lines else "(no output)"


def run_sample(config: str, layout: Layout, tokens_per_step: int, out_dir: str, env: dict) -> dict:
    """One `pangu train` run: its step-time tokens/s (warm-up step excluded), wall, children CPU, loads."""
    load = os.getloadavg()[0]
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    try:
        proc = subprocess.run(train_command(config, layout, out_dir), capture_output=True, text=True, env=env,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ParallelBenchError(f"layout {layout.name}: `pangu train` took over {RUN_TIMEOUT_S} s") from None
    wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
    times = step_times(out_dir)
    if proc.returncode != 0 or len(times) < 2:
        why = f"exit {proc.returncode}" if proc.returncode else f"{len(times)} step times in metrics.jsonl"
        raise ParallelBenchError(f"layout {layout.name}: `pangu train` failed ({why}): {_last_line(proc.stderr)}")
    measured = times[1:]
    step_s = sum(measured) / len(measured)
    lines = _runtime_lines(proc.stderr, out_dir, layout.world)
    return {"tokens_per_s": tokens_per_step / step_s, "step_s": step_s, "first_step_s": times[0],
            "step_times_s": times, "run_wall_s": wall, "run_cpu_s": cpu, "load": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2), "mkl_threads": mkl_threads(lines), "runtime": lines}


def bench_parallel(config: str | None = None, steps: int = 6, rounds: int = 1, compare: bool = False,
                   preset: str | None = None, dims: dict | None = None, seq: int | None = None,
                   micro_batch: int | None = None) -> dict:
    """Interleaved rounds of every layout; per-layout summaries and per-round `X/single` ratios."""
    if steps < 2:
        raise UsageError(f"--steps {steps}: parallel needs >= 2 steps per run (step 1 is warm-up, not measured)")
    if rounds < 1:
        raise UsageError(f"--rounds {rounds}: expected >= 1")
    config = resolve_config(config)
    layouts, info = build_layouts(config, model_overrides(preset, dims, seq, micro_batch), steps, compare)
    env = child_env()
    samples: dict[str, list[dict]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory(prefix="pangu_bench_parallel_") as tmp:
        for r in range(rounds):
            for name, layout in layouts.items():
                out_dir = os.path.join(tmp, f"{name}-{r}")
                samples[name].append(run_sample(config, layout, info["tokens_per_step"], out_dir, env))
    result = {"name": "parallel", **info, "steps": steps, "measured_steps": steps - 1, "rounds": rounds,
              "cpus": os.cpu_count(), "layouts": {}, "ratios": {}, "samples": samples}
    for name, layout in layouts.items():
        s = samples[name]
        result["layouts"][name] = {
            "world": layout.world, "layout": layout.par,
            "tokens_per_s": spread([x["tokens_per_s"] for x in s]), "step_s": spread([x["step_s"] for x in s]),
            "run_wall_s": spread([x["run_wall_s"] for x in s]), "run_cpu_s": spread([x["run_cpu_s"] for x in s]),
            "load": [x["load"] for x in s], "mkl_threads": s[0]["mkl_threads"], "runtime": s[0]["runtime"]}
    base = _pairable(samples["single"])
    for name in layouts:
        if name != "single":
            ratio = pair_ratio(_pairable(samples[name]), base)
            ratio["tokens_per_s"], ratio["run_cpu_s"] = ratio.pop("wall"), ratio.pop("cpu")
            result["ratios"][f"{name}/single"] = ratio
    return result


def _pairable(samples: list[dict]) -> list[dict]:
    """pair_ratio's fields: step time as `wall_s` (same tokens per step, so its ratio is the tokens/s ratio)."""
    return [{"wall_s": s["step_s"], "cpu_s": s["run_cpu_s"], "load": s["load"]} for s in samples]


def table(result: dict) -> str:
    r = result
    lines = [f"parallel  {r['config']}  preset {r['model']} ({r['params_m']}M params)  seq {r['seq']}  global batch "
             f"{r['global_batch']} ({r['tokens_per_step']} tokens/step)  {r['steps']} steps/run (step 1 not "
             f"measured)  {r['rounds']} rounds  {r['cpus']} CPUs"]
    cols = ("layout", "world", "MKL threads", "tokens/s", "step ms", "run wall s", "run CPU s", "load")
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, s in r["layouts"].items():
        row = (name, s["world"], "-" if s["mkl_threads"] is None else s["mkl_threads"],
               span(s["tokens_per_s"], fmt="{:.0f}"), span(s["step_s"], 1000, "{:.0f}"),
               span(s["run_wall_s"], fmt="{:.1f}"), span(s["run_cpu_s"], fmt="{:.1f}"), loads(s["load"]))
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    for name, q in r["ratios"].items():
        if q["tokens_per_s"] is None:
            lines.append(f"  ratio {name}: refused ({q.get('note', 'no comparable pair')})")
            continue
        refused = f", {q['refused']} refused" if q["refused"] else ""
        lines.append(f"  ratio {name}: tokens/s {span(q['tokens_per_s'], fmt='{:.2f}')}, whole-run CPU-s "
                     f"{span(q['run_cpu_s'], fmt='{:.2f}')} ({q['pairs']} pairs{refused})")
    for name, why in r["skipped"].items():
        lines.append(f"  {name} not run: {why}")
    lines.append("(ratio X/single = single's time / X's per interleaved round: tokens/s < 1 means X is slower; "
                 "CPU-s < 1 means X used more CPU; [min-max] over rounds; load = 1-minute os.getloadavg())")
    return "\n".join(lines)
