"""Device plugins loaded into Paddle before it is imported.

`sim_npu/`: a simulated Ascend device (`npu`) built from C++ on first use and loaded by Paddle through
`CUSTOM_DEVICE_ROOT`, exactly as Paddle loads `paddle-custom-npu`. `PANGU_TEST_NPU=1` turns it on for
`pangu` and every process it launches (`paddle_pangu.runtime.apply`), so `--device npu` runs on any CPU.
README "Devices" says what it proves and what it cannot.
"""
from __future__ import annotations

import importlib.util
import os

# Environment the PaddleNLP Ascend LLM recipes export before training:
# PaddleNLP llm/npu/llama/llama_npu_ppt_N1C8.sh and llama_npu_opt_ppt.sh
# (FLAGS_* are Paddle / paddle-custom-npu flags, HCCL_* the Ascend collective
# library, MULTI_STREAM_MEMORY_REUSE the CANN runtime). Paddle reads FLAGS_* from the environment
# when it is imported, so `paddle_pangu.runtime.apply` sets them before that (`apply_npu_env`).
NPU_ENV_DEFAULTS = {
    "FLAGS_npu_storage_format": "1",  # keep weights in NPU-private (NZ) layout
    "FLAGS_use_stride_kernel": "0",  # strided views are slow / unsupported on NPU
    "FLAGS_allocator_strategy": "naive_best_fit",
    "HCCL_OP_BASE_FFTS_MODE_ENABLE": "TRUE",
    "HCCL_INTRA_PCIE_ENABLE": "0",  # intra-node traffic over RoCE, not PCIe
    "HCCL_INTRA_ROCE_ENABLE": "1",
    "MULTI_STREAM_MEMORY_REUSE": "1",
}


def npu_plugin_expected(environ=None) -> bool:
    """True when the Paddle this process imports will have an `npu` device: the simulated one is switched
    on (`PANGU_TEST_NPU=1`) or paddle-custom-npu (package `paddle_custom_device`) is installed."""
    from . import sim_npu

    environ = os.environ if environ is None else environ
    return sim_npu.enabled(environ) or importlib.util.find_spec("paddle_custom_device") is not None


def apply_npu_env(environ=None) -> dict:
    """Set NPU_ENV_DEFAULTS in `environ` (default os.environ) where the user has not; returns what was set."""
    environ = os.environ if environ is None else environ
    applied = {key: value for key, value in NPU_ENV_DEFAULTS.items() if key not in environ}
    environ.update(applied)
    return applied
