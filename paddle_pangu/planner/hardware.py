"""Device presets for the planner: memory, peak throughput, interconnect, devices per node.

Accelerator numbers are vendor datasheet / paper values (not measured here: these machines have
no GPU or NPU). The `cpu` preset is measured on this project's CPU machines (2-core AMD EPYC,
paddle 3.3.1, one thread per training process, as the launch helpers run it); its throughput is
per CPU-second so that it does not depend on how loaded the shared machine is.
Every field can be overridden from the command line (`pangu plan --memory-gb ...`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class DevicePreset:
    """One accelerator type. TFLOPS are dense peaks (no sparsity); bandwidths GB/s per device, one direction."""

    name: str
    memory_gb: float
    peak_tflops_fp16: float
    peak_tflops_bf16: float  # 0: the device has no bf16 matmul
    peak_tflops_fp32: float
    intra_node_gbs: float
    inter_node_gbs: float
    devices_per_node: int
    utilization: float = 0.35  # assumed model-FLOPs utilisation (the PanGu paper reports no throughput)
    reserve_gb: float = 2.0  # framework workspace, fragmentation, communication buffers
    source: str = ""


def _cpu_memory_gb() -> float:
    """This machine's RAM per core (one training process per core), from /proc/meminfo."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return round(kb / 1024**2 / max(os.cpu_count() or 1, 1), 2)
    except (OSError, StopIteration):
        return 8.0


PRESETS: dict[str, DevicePreset] = {
    # PanGu-alpha paper (arXiv 2104.12369) sec. 4: 2048 Ascend 910, 32 GB HBM each; Huawei Ascend 910
    # datasheet: 256 TFLOPS fp16, no bf16; Atlas 800 (model 9000): 8 chips/node on HCCS (~30 GB/s per
    # chip), one 100 GbE RoCE port per chip between nodes (12.5 GB/s).
    "ascend910": DevicePreset("ascend910", 32.0, 256.0, 0.0, 128.0, 30.0, 12.5, 8,
                              source="PanGu paper sec. 4; Ascend 910 / Atlas 800-9000 datasheets"),
    # Ascend 910B (Atlas 800T A2): 64 GB HBM2e, ~313 TFLOPS fp16/bf16 (public spec summaries), HCCS
    # 56 GB/s per chip inside the 8-chip node, 200 GbE RoCE per chip between nodes (25 GB/s).
    "ascend910b": DevicePreset("ascend910b", 64.0, 313.0, 313.0, 78.0, 56.0, 25.0, 8,
                               source="Atlas 800T A2 public spec summaries (approximate)"),
    # NVIDIA A100 datasheet: 312 TFLOPS fp16/bf16 tensor dense, 19.5 fp32 (156 TF32); NVLink3
    # 600 GB/s bidirectional = 300 one way; DGX A100: 8 GPUs, one 200 Gb/s HDR IB per GPU (25 GB/s).
    "a100-40g": DevicePreset("a100-40g", 40.0, 312.0, 312.0, 19.5, 300.0, 25.0, 8,
                             source="NVIDIA A100 datasheet; DGX A100 system guide"),
    "a100-80g": DevicePreset("a100-80g", 80.0, 312.0, 312.0, 19.5, 300.0, 25.0, 8,
                             source="NVIDIA A100 80GB datasheet; DGX A100 system guide"),
    # NVIDIA H100 SXM datasheet: 989 TFLOPS fp16/bf16 dense (1979 with sparsity), 67 fp32; NVLink4
    # 900 GB/s bidirectional = 450 one way; DGX H100: one 400 Gb/s NDR IB per GPU (50 GB/s).
    "h100": DevicePreset("h100", 80.0, 989.0, 989.0, 67.0, 450.0, 50.0, 8,
                         source="NVIDIA H100 SXM datasheet; DGX H100 system guide"),
    # Peak fp32 GEMM per CPU-second and utilisation: measured (docs/PLANNER.md "The cpu preset" has the
    # figures, machine, load and commands). No fp16/bf16 matmul kernel on CPU (docs/PLATFORM.md): CPU plans
    # are fp32. Memory: RAM / cores, read at run time. Bandwidth: gloo over loopback, nominal 1 GB/s (not
    # measured). Reserve 0: the allocator statistics count exactly the tensors the terms model.
    "cpu": DevicePreset("cpu", _cpu_memory_gb(), 0.0, 0.0, 0.0627, 1.0, 1.0, max(os.cpu_count() or 1, 1),
                        utilization=0.63, reserve_gb=0.0,
                        source="measured on this machine: tools/validate_planner.py, docs/PLANNER.md"),
}


def get_device_preset(name: str) -> DevicePreset:
    if name not in PRESETS:
        raise UsageError(f"--device-preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def override(preset: DevicePreset, **fields) -> DevicePreset:
    """The preset with every non-None field replaced (command-line overrides)."""
    given = {k: v for k, v in fields.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(DevicePreset)})
    if unknown:
        raise UsageError(f"unknown device field(s) {unknown}")
    return dataclasses.replace(preset, **given)
