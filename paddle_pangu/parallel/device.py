"""Device selection (cpu / gpu / Ascend npu) and the per-device runtime set-up.

Selection order for `auto`: a custom `npu` device (paddle-custom-npu plugin),
then CUDA, then CPU. An explicitly requested device that is missing is an
error, never a silent fallback. The NPU path follows PaddleNLP's NPU recipes; no
Ascend device is available here (docs/PLATFORM.md), so it runs in the tests on the
simulated `npu` plugin (`devices/sim_npu/`, README "Devices"), which Paddle loads
the way it loads paddle-custom-npu.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import paddle
from paddle_pangu.devices import NPU_ENV_DEFAULTS as _NPU_ENV_DEFAULTS
from paddle_pangu.errors import PanGuError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "gpu", "npu")

# Collective backend per device type. Custom devices use paddle's "xccl"
# process group, which dispatches to the plugin's HCCL on Ascend.
_BACKENDS = {"cpu": "gloo", "gpu": "nccl", "npu": "xccl"}

# The NPU recipe environment lives in `devices` (set before paddle is imported, by `runtime.apply`).
NPU_ENV_DEFAULTS = _NPU_ENV_DEFAULTS
# The Paddle flags of NPU_ENV_DEFAULTS that Paddle also takes after import (`paddle.set_flags`), for a
# process that imported paddle before `runtime.apply` could set the environment (a library user)
_RUNTIME_FLAGS = {"FLAGS_use_stride_kernel": False}


class DeviceError(PanGuError, RuntimeError):
    """The requested device is not available in this Paddle build / machine."""


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The device a run uses.

    Attributes:
        type: "cpu", "gpu" or "npu".
        backend: collective backend for multi-process runs ("gloo", "nccl", "xccl").
        count: visible devices of this type (1 for cpu).
    """

    type: str
    backend: str
    count: int

    def paddle_device(self, local_rank: int = 0) -> str:
        """String for `paddle.set_device` (e.g. "gpu:1", "npu:0", "cpu")."""
        return "cpu" if self.type == "cpu" else f"{self.type}:{local_rank}"


def _npu_count() -> int:
    if "npu" not in paddle.device.get_all_custom_device_type():
        return 0
    # e.g. ["npu:0", ..., "npu:7"]; the plugin is loaded, so at least one device is usable
    return max(1, sum(d.split(":")[0] == "npu" for d in paddle.device.get_available_custom_device()))


def _gpu_count() -> int:
    if not paddle.device.is_compiled_with_cuda():
        return 0
    return int(paddle.device.cuda.device_count())


def select_device(requested: str = "auto") -> DeviceInfo:
    """Resolve `requested` ("auto" | "cpu" | "gpu" | "npu") to an available device.

    Raises DeviceError naming what is missing when an explicit request cannot
    be met, and ValueError for an unknown name.
    """
    requested = (requested or "auto").lower()
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"device={requested!r}: expected one of {DEVICE_CHOICES}")
    if requested in ("auto", "npu"):
        n = _npu_count()
        if n > 0:
            return DeviceInfo("npu", _BACKENDS["npu"], n)
        if requested == "npu":
            raise DeviceError(
                "device='npu' requested but Paddle has no 'npu' custom device "
                f"(custom device types: {paddle.device.get_all_custom_device_type()}); "
                "install paddle-custom-npu from Paddle's package index and source the CANN set_env.sh"
            )
    if requested in ("auto", "gpu"):
        n = _gpu_count()
        if n > 0:
            return DeviceInfo("gpu", _BACKENDS["gpu"], n)
        if requested == "gpu":
            raise DeviceError(
                "device='gpu' requested but "
                + ("this Paddle build has no CUDA" if not paddle.device.is_compiled_with_cuda() else "no GPU is visible")
            )
    return DeviceInfo("cpu", _BACKENDS["cpu"], 1)


def npu_env_defaults(device: DeviceInfo | str, environ: dict | None = None) -> dict:
    """Set the NPU recipe flags (NPU_ENV_DEFAULTS) in `environ` when device is npu.

    Values the user already exported win. Returns the flags actually set;
    does nothing (returns {}) on other devices. Paddle reads FLAGS_* from the
    environment only when it is imported, so `paddle_pangu.runtime.apply` sets
    them before that in every pangu process; here (paddle imported) the
    HCCL_* variables still take effect (read when the communicator is
    created), and the flags Paddle accepts at run time (`_RUNTIME_FLAGS`)
    are set with `paddle.set_flags` unless the user exported them.
    """
    dev_type = device if isinstance(device, str) else device.type
    if dev_type != "npu":
        return {}
    environ = os.environ if environ is None else environ
    applied = {}
    for key, value in NPU_ENV_DEFAULTS.items():
        if key not in environ:
            environ[key] = value
            applied[key] = value
    if environ is os.environ:
        user_set = set(environ) - set(applied)
        for flag, value in _RUNTIME_FLAGS.items():
            if flag not in user_set and paddle.get_flags([flag])[flag] != value:
                paddle.set_flags({flag: value})
                applied[flag] = str(int(value))
    if applied:
        logger.info("NPU environment defaults applied: %s", applied)
    return applied


_ALLOCATORS_READY: set[tuple[str, int]] = set()


def init_custom_allocator(device_type: str, device_id: int) -> None:
    """Create Paddle's allocator for `device_type:device_id` from this (one) thread, once per process.

    Under FLAGS_allocator_strategy=naive_best_fit (the Ascend recipe, NPU_ENV_DEFAULTS) Paddle 3.3.1 keeps
    its custom-device allocators in a function-static map that is filled without a lock
    (`BuddyAllocatorList::Instance` in naive_best_fit_allocator.cc). Paddle Inference copies a graph's
    parameters to the device from several threads at once, so the first predictor created on a fresh
    device raced there: two allocator lists, each taking the ~92%-of-device first chunk (the second then
    fails: 'CustomDevice error, the error code is : 2'), blocks freed into the other list's pool
    ('Tensor holds no memory', 'double free or corruption') or a crash inside the map's insert. Seen as a
    backtrace of two threads in BuddyAllocator::RefillPool under TensorCopySync futures; one allocation
    here, before any predictor exists, makes every later one find the list already built."""
    key = (device_type, int(device_id))
    if key in _ALLOCATORS_READY:
        return
    paddle.zeros([1], dtype="float32").to(paddle.CustomPlace(device_type, int(device_id)))
    _ALLOCATORS_READY.add(key)


_PLUGIN_OPS_LOADED: list[str] = []


def register_npu_plugin_ops() -> list[str]:
    """Register the custom ops (`flash_attention_npu`) of the loaded npu plugin, once per process.

    Paddle loads a plugin's kernels with the device but not its custom ops: paddle-custom-npu registers
    them when `paddle_custom_device.npu.ops` is imported (its generated module calls
    `load_op_meta_info_and_register_op` on each library in CUSTOM_DEVICE_ROOT); the same is done here
    for any other plugin there (the simulated npu, devices/sim_npu). Returns the op names registered.
    """
    if _PLUGIN_OPS_LOADED:
        return _PLUGIN_OPS_LOADED
    try:
        import paddle_custom_device.npu.ops  # noqa: F401  (Ascend: registers its ops on import)
        _PLUGIN_OPS_LOADED.append("paddle_custom_device.npu.ops")
        return _PLUGIN_OPS_LOADED
    except ImportError:
        pass
    import paddle.utils.cpp_extension  # noqa: F401

    root = os.environ.get("CUSTOM_DEVICE_ROOT", "")
    for name in sorted(os.listdir(root)) if root and os.path.isdir(root) else []:
        if name.endswith(".so"):
            _PLUGIN_OPS_LOADED.extend(
                paddle.utils.cpp_extension.load_op_meta_info_and_register_op(os.path.join(root, name)))
    return _PLUGIN_OPS_LOADED


def fused_attention_available(device: DeviceInfo | str) -> str | None:
    """Which fused (flash) attention kernel the attention code may use.

    Returns "npu" when the paddle-custom-npu `flash_attention_npu` custom op
    is registered (PaddleNLP llama fusion_ops calls it through
    `core.eager._run_custom_op`), "sdpa" when `paddle.nn.functional.
    flash_attention` exists on a CUDA build (the model then calls
    scaled_dot_product_attention), else None: the plain
    softmax(QK^T/sqrt(d)) path (CPU, and any device lacking the kernel).
    """
    dev_type = device if isinstance(device, str) else device.type
    if dev_type == "npu":
        register_npu_plugin_ops()
        from .fleet_compat import registered_kernels

        return "npu" if "flash_attention_npu" in registered_kernels() else None
    if dev_type == "gpu":
        has_fa = hasattr(paddle.nn.functional, "flash_attention")
        return "sdpa" if has_fa and paddle.device.is_compiled_with_cuda() else None
    return None
