"""CPU runtime set-up, decided per machine before Paddle is imported.

Paddle's CPU wheel bundles Intel MKL (`paddle/libs/libmklml_intel.so`). MKL reads
`MKL_DEBUG_CPU_TYPE` once, when it loads, so the choice has to be made before
`import paddle`:

- AMD: without `MKL_DEBUG_CPU_TYPE=5` the bundled MKL takes its generic code path;
  with it fp32 GEMM runs several times faster (docs/PLATFORM.md "CPU math libraries").
  Set only when the bundled MKL is present.
- Intel: the same variable makes Paddle's GEMM many times slower. It is never set
  there, and an inherited value (old scripts exported it unconditionally) is removed.
- Threads: `import paddle` sets `OMP_NUM_THREADS=1` when it is unset (and warns when it
  is above 1), so by default every GEMM ran on one thread. MKL prefers `MKL_NUM_THREADS`,
  which is set to this process's share of the cores it may run on
  (`os.sched_getaffinity`) divided by the processes `paddle.distributed.launch` starts on
  this node (`PADDLE_LOCAL_SIZE`, else `PADDLE_TRAINERS_NUM`), at least 1. A thread count
  the user set (`OMP_NUM_THREADS` or `MKL_NUM_THREADS`) is kept.

- Allocator (any vendor, glibc): Paddle's CPU allocator hands each tensor to malloc and frees it
  at once, and glibc serves blocks over its mmap threshold with fresh `mmap` pages and returns
  them on free, so every large activation, gradient and softmax page-faulted each step.
  `mallopt(M_MMAP_MAX, 0)` + `mallopt(M_TRIM_THRESHOLD, 2^31-1)` keep freed memory in the heap for
  reuse (about 10x fewer page faults and less CPU per step, at a higher peak RSS: the heap keeps its
  high-water mark). Skipped when the user set any `MALLOC_*` variable or the C library is not glibc.
  README "Platform notes" / "Benchmarks" have the measured numbers and their commands.

- Devices: `PANGU_TEST_NPU=1` builds (once, cached) and loads the simulated Ascend device plugin
  (`devices/sim_npu`, via Paddle's `CUSTOM_DEVICE_ROOT`), and whenever an `npu` device will be loaded
  (that switch, or paddle-custom-npu installed) the NPU recipe's environment (`devices.NPU_ENV_DEFAULTS`:
  `FLAGS_*` Paddle reads only at import, `HCCL_*`) is set where the user has not set it. Both must happen
  before `import paddle`, and the processes `pangu train --nproc N` launches inherit them.

`PANGU_NO_RUNTIME_TUNING=1` leaves the environment and the allocator untouched. The decision is a pure
function (`decide`) so it is unit-tested per vendor; `apply()` runs it once per process
and logs one line to stderr (`PANGU_QUIET_RUNTIME=1` silences the line only).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

DISABLE_ENV = "PANGU_NO_RUNTIME_TUNING"
QUIET_ENV = "PANGU_QUIET_RUNTIME"
MKL_CPU_ENV = "MKL_DEBUG_CPU_TYPE"
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # either one set by the user: threads left alone
# the thread variables a parent's apply() found unset (so it, or `import paddle`, set them, not the user):
# child processes (the workers `pangu train --nproc N` launches) inherit them and must decide afresh
OWNED_ENV = "PANGU_RUNTIME_OWNED"
# glibc mallopt parameters (malloc.h): keep freed blocks in the heap instead of unmapping them
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MALLOPT = {"M_MMAP_MAX": (M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1)}


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # "amd" | "intel" | "other"
    model: str = ""
    flags: frozenset = frozenset()
    cores: int = 1  # cores this process may run on


@dataclass
class Decision:
    set_env: dict = field(default_factory=dict)
    unset_env: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    mallopt: dict = field(default_factory=dict)  # name -> value, applied with glibc's mallopt()

    def summary(self, cpu: CpuInfo) -> str:
        feats = ",".join(f for f in ("avx2", "avx512f", "amx_bf16") if f in cpu.flags) or "-"
        changes = [f"{k}={v}" for k, v in self.set_env.items() if k != OWNED_ENV]
        changes += [f"unset {k}" for k in self.unset_env]
        changes += [f"mallopt {k}={v}" for k, v in self.mallopt.items()]
        return (f"pangu runtime: {cpu.vendor} {cpu.model or '?'} [{feats}] {cpu.cores} cores; "
                f"{'; '.join(changes) or 'no changes'}" + (f" ({'; '.join(self.notes)})" if self.notes else ""))


def _vendor(vendor_id: str) -> str:
    v = vendor_id.strip().lower()
    if "amd" in v:
        return "amd"
    if "intel" in v:
        return "intel"
    return "other"


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (first processor block)."""
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return CpuInfo(vendor=_vendor(fields.get("vendor_id", "")), model=fields.get("model name", ""),
                   flags=frozenset(fields.get("flags", "").split()), cores=max(1, cores))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect_cpu() -> CpuInfo:
    """Vendor, model and flags of this machine's CPU (Linux /proc/cpuinfo; 'other' elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read(), available_cores())
    except OSError:
        import platform

        return CpuInfo(vendor=_vendor(platform.processor()), cores=available_cores())


def paddle_bundles_mkl() -> bool:
    """True when the installed Paddle ships its own MKL (found without importing Paddle)."""
    spec = importlib.util.find_spec("paddle")
    if spec is None or not spec.origin:
        return False
    libs = os.path.join(os.path.dirname(spec.origin), "libs")
    try:
        return any(name.startswith("libmklml") or name.startswith("libmkl_rt") for name in os.listdir(libs))
    except OSError:
        return False


def local_processes(env) -> int:
    """Processes sharing this node's cores: set by paddle.distributed.launch for each worker."""
    for key in ("PADDLE_LOCAL_SIZE", "PADDLE_TRAINERS_NUM"):
        try:
            value = int(env.get(key, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return 1


def decide(cpu: CpuInfo, env, bundled_mkl: bool, glibc: bool = False) -> Decision:
    """What to set and unset in `env` (read only) for this CPU, and the allocator settings when the C
    library is glibc. Pure: the unit tests call it per vendor."""
    d = Decision()
    if env.get(DISABLE_ENV) == "1":
        d.notes.append(f"{DISABLE_ENV}=1: environment left as is")
        return d
    if cpu.vendor == "amd" and bundled_mkl:
        if env.get(MKL_CPU_ENV) is None:
            d.set_env[MKL_CPU_ENV] = "5"  # bundled MKL's AVX2 path on AMD instead of the generic one
    elif cpu.vendor == "intel" and env.get(MKL_CPU_ENV) is not None:
        d.unset_env.append(MKL_CPU_ENV)  # forcing a CPU type on Intel made GEMM 9.4x slower
        d.notes.append(f"{MKL_CPU_ENV} removed on Intel")
    procs = local_processes(env)
    owned = set(env.get(OWNED_ENV, "").split(","))
    if all(env.get(key) is None or key in owned for key in THREAD_ENVS):
        d.set_env["MKL_NUM_THREADS"] = str(max(1, cpu.cores // procs))
        d.set_env[OWNED_ENV] = ",".join(THREAD_ENVS)  # none of them is the user's (the condition above)
    if procs > 1:
        d.notes.append(f"{procs} local processes share {cpu.cores} cores")
    if glibc and not any(key.startswith("MALLOC_") for key in env):
        d.mallopt = {name: value for name, (_, value) in MALLOPT.items()}
    return d


def _glibc():
    """ctypes handle on glibc, or None (musl, macOS, no ctypes)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _apply_mallopt(decision: Decision, libc) -> None:
    for name, value in decision.mallopt.items():
        if libc is None or libc.mallopt(MALLOPT[name][0], value) != 1:  # mallopt returns 1 on success
            decision.notes.append(f"mallopt {name} not applied")


_APPLIED: Decision | None = None


def apply(log: bool = True) -> Decision:
    """Decide once per process and apply to os.environ. Called at the top of `pangu` and tools/*.py.

    If Paddle is already imported (an embedding program or a test), MKL has read its environment:
    nothing is changed then, so the process keeps one consistent set-up.
    """
    global _APPLIED
    if _APPLIED is not None:
        return _APPLIED
    cpu = detect_cpu()
    if "paddle" in sys.modules:
        _APPLIED = Decision(notes=["paddle already imported: environment left as is"])
        return _APPLIED
    libc = _glibc()
    devices_note = _devices()
    _APPLIED = decide(cpu, os.environ, paddle_bundles_mkl(), glibc=libc is not None)
    _APPLIED.notes += devices_note
    for key in _APPLIED.unset_env:
        os.environ.pop(key, None)
    os.environ.update(_APPLIED.set_env)
    _apply_mallopt(_APPLIED, libc)
    if log and os.environ.get(QUIET_ENV) != "1":
        print(_APPLIED.summary(cpu), file=sys.stderr)
    return _APPLIED


def _devices() -> list:
    """Load the simulated npu when switched on, and the NPU environment when an npu will be loaded (before
    paddle is imported). A failed plugin build ends the process with one line naming the build log."""
    from . import devices  # the device plugins (layer 0b); allowed by tests/unit/test_architecture.py
    from .devices import sim_npu

    notes = []
    if sim_npu.enabled():
        try:
            notes.append(f"simulated npu plugin {sim_npu.enable()}")
        except sim_npu.PluginBuildError as err:
            print(f"pangu: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    if devices.npu_plugin_expected():
        applied = devices.apply_npu_env()
        if applied:
            notes.append("NPU environment " + " ".join(f"{k}={v}" for k, v in applied.items()))
    return notes
