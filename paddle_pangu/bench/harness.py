"""Interleaved same-run measurement: ours, baseline, ours, baseline, ... with the load beside every figure.

The project's machines are shared (2 cores, load often 5-10): a figure alone means little, a ratio of
two figures taken seconds apart means more, and a ratio from two runs under very different load means
nothing. So every system runs once per round in a fixed order, each sample records
`os.getloadavg()` and CPU-seconds (`time.process_time`, which moves much less with load than wall
time), and a ratio is formed per round from adjacent samples; pairs whose 1-minute load differs by
more than LOAD_FACTOR are refused, not averaged in.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

LOAD_FACTOR = 2.0  # a pair is refused when max(load) > LOAD_FACTOR * max(min(load), 1)


def _status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so the next peak is this sample's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sample(fn: Callable[[], object], calls: int = 1) -> dict:
    """Run fn `calls` times: per-call wall and CPU seconds, the load, and the resident-memory peak.

    `peak_rss_mb` is the process's peak during the sample (all models held by the process included);
    `step_extra_mb` is that peak minus the resident size before the sample: the memory the work itself
    needed (activations, gradients, optimizer state on first use).
    """
    load = os.getloadavg()[0]
    reset = _reset_peak_rss()
    rss0 = _status_kb("VmRSS")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    wall, cpu = (time.perf_counter() - wall0) / calls, (time.process_time() - cpu0) / calls
    hwm = _status_kb("VmHWM") if reset else None
    out = {"wall_s": wall, "cpu_s": cpu, "load": round(load, 2)}
    if hwm is not None and rss0 is not None:
        out.update(peak_rss_mb=round(hwm / 1024, 1), step_extra_mb=round(max(hwm - rss0, 0) / 1024, 1))
    return out


def interleave(systems: dict[str, Callable[[], object]], rounds: int, calls: int = 1,
               sampler: Callable = sample) -> dict[str, list[dict]]:
    """rounds x (each system once, in the given order): {name: [sample per round]}."""
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            runs[name].append(sampler(fn, calls))
    return runs


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(samples: list[dict], work: float | None = None, unit: str = "tokens") -> dict:
    """Median and spread of wall/CPU time per call; `work` units per call give a rate per second."""
    wall = [s["wall_s"] for s in samples]
    out = {"wall_s": spread(wall), "cpu_s": spread([s["cpu_s"] for s in samples]),
           "load": [s["load"] for s in samples]}
    if work is not None:
        out[f"{unit}_per_s"] = work / out["wall_s"]["median"]
        out[f"{unit}_per_cpu_s"] = work / out["cpu_s"]["median"]
    peaks = [s["peak_rss_mb"] for s in samples if "peak_rss_mb" in s]
    if peaks:
        out["peak_rss_mb"] = max(peaks)
        out["step_extra_mb"] = max(s["step_extra_mb"] for s in samples)
    return out


def loads_comparable(a: float, b: float, factor: float = LOAD_FACTOR) -> bool:
    return max(a, b) <= factor * max(min(a, b), 1.0)


def pair_ratio(ours: list[dict], base: list[dict], factor: float = LOAD_FACTOR) -> dict:
    """Speed of ours relative to base (>1 = ours faster) per round: base time / our time.

    Wall and CPU-second ratios, median and spread over the accepted rounds; rounds whose loads are not
    comparable are counted in `refused` and left out. No accepted round: ratio None.
    """
    kept = [(o, b) for o, b in zip(ours, base) if loads_comparable(o["load"], b["load"], factor)]
    out = {"refused": len(ours) - len(kept), "pairs": len(kept)}
    if not kept:
        out.update(wall=None, cpu=None, note=f"every pair's load differed by more than {factor}x")
        return out
    out["wall"] = spread([b["wall_s"] / o["wall_s"] for o, b in kept])
    out["cpu"] = spread([b["cpu_s"] / o["cpu_s"] for o, b in kept])
    return out


def matmul_peak_fns(n: int) -> dict[str, Callable[[], object]]:
    """fp32 n x n x n GEMM per library present (Paddle always; torch when installed), as callables."""
    import numpy as np
    import paddle

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal([n, n]).astype("float32") for _ in range(2))
    pa, pb = paddle.to_tensor(a), paddle.to_tensor(b)
    fns = {"paddle": lambda: paddle.matmul(pa, pb).numpy()}
    try:
        import torch
    except ImportError:
        return fns
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns["torch"] = lambda: torch.matmul(ta, tb)
    return fns


def measure_matmul_peak(n: int = 1024, calls: int = 3) -> dict:
    """Best GFLOP/s (wall) and GFLOP per CPU-second of an fp32 GEMM per library, measured now."""
    flop = 2.0 * n ** 3
    out = {"n": n}
    for lib, fn in matmul_peak_fns(n).items():
        fn()
        s = [sample(fn, 1) for _ in range(calls)]
        out[lib] = {"gflops": flop / min(x["wall_s"] for x in s) / 1e9,
                    "gflop_per_cpu_s": flop / min(x["cpu_s"] for x in s) / 1e9, "load": s[0]["load"]}
    libs = [v for v in out.values() if isinstance(v, dict)]
    out["peak_gflops"] = max(v["gflops"] for v in libs)
    out["peak_gflop_per_cpu_s"] = max(v["gflop_per_cpu_s"] for v in libs)
    return out


def bench_threads() -> int:
    """Math-library threads every system in one run gets (set by paddle_pangu.runtime; torch told the same)."""
    for key in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            return max(1, int(os.environ[key]))
        except (KeyError, ValueError):
            continue
    from ..runtime import available_cores

    return available_cores()


def set_torch_threads():
    """Import torch with the same thread count as Paddle's MKL (import paddle leaves OMP_NUM_THREADS=1,
    which torch would otherwise take); None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(bench_threads())
    return torch
