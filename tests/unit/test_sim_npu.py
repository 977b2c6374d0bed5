"""The simulated Ascend device (paddle_pangu/devices/sim_npu): built on first use, loaded by Paddle through
CUSTOM_DEVICE_ROOT when `PANGU_TEST_NPU=1`, with several devices and a counted allocator; a failed build
is one line naming its log. Each check runs in a fresh process (the plugin must load before paddle)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = r"""
import ctypes, json, os, sys
from paddle_pangu import runtime
runtime.apply()
import paddle
from paddle_pangu.devices import sim_npu
out = {"types": paddle.device.get_all_custom_device_type(), "devices": paddle.device.get_available_custom_device()}
paddle.set_device("npu:1")
lib = ctypes.CDLL(os.path.join(os.environ["CUSTOM_DEVICE_ROOT"], sim_npu.LIBRARY))
lib.pangu_sim_npu_used_bytes.restype = ctypes.c_size_t
before, used_before = paddle.device.memory_allocated("npu:1"), lib.pangu_sim_npu_used_bytes(1)
x = paddle.ones([1000, 1000], dtype="float32")  # 4,000,000 bytes on npu:1
out["place"] = str(x.place)
out["allocated_delta"] = paddle.device.memory_allocated("npu:1") - before
out["plugin_delta"] = lib.pangu_sim_npu_used_bytes(1) - used_before
out["other_device"] = lib.pangu_sim_npu_used_bytes(2)
out["sum"] = float(x.sum())
del x
out["after_free"] = paddle.device.memory_allocated("npu:1") - before
try:  # PANGU_SIM_NPU_MEMORY_MB=64: a 400 MB tensor does not fit the device
    y = paddle.zeros([100, 1000, 1000], dtype="float32")
    out["oom"] = None
except Exception as exc:
    out["oom"] = type(exc).__name__ + ": " + str(exc).strip().splitlines()[-1][:200]
out["used_after_oom"] = lib.pangu_sim_npu_used_bytes(1) <= 64 << 20
out["flags"] = paddle.get_flags(["FLAGS_use_stride_kernel"])
print("RESULT " + json.dumps(out))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "CUSTOM_DEVICE", "FLAGS_"))}
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
                "PANGU_QUIET_RUNTIME": "1"})
    env.update(extra)
    return env


def test_plugin_loads_with_devices_and_counted_memory():
    """`PANGU_TEST_NPU=1`: Paddle has exactly the `npu` type with PANGU_SIM_NPU_COUNT devices; a 4 MB tensor
    on npu:1 moves Paddle's allocated-memory statistic by its size and the plugin's own count by at least
    that (Paddle's allocator rounds up and caches), on that device only; freeing it returns Paddle's
    statistic; an allocation over the device's memory limit is refused (and not counted);
    and the NPU recipe's `FLAGS_use_stride_kernel=0` took effect (set before paddle was imported)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=_env(PANGU_TEST_NPU="1", PANGU_SIM_NPU_COUNT="3",
                                                                   PANGU_SIM_NPU_MEMORY_MB="64"),
                          capture_output=True, text=True, timeout=900, cwd=str(REPO))
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["types"] == ["npu"]
    assert out["devices"] == ["npu:0", "npu:1", "npu:2"]
    assert out["place"] == "Place(npu:1)" and out["sum"] == 1e6
    assert out["allocated_delta"] >= 4_000_000 and out["allocated_delta"] < 4_000_000 + 4096
    assert out["plugin_delta"] >= out["allocated_delta"]
    assert out["other_device"] == 0
    assert out["after_free"] == 0
    # refused the way paddle-custom-npu refuses it (device_memory_allocate returns C_FAILED = 2), and the
    # failed allocation is not counted
    assert out["oom"] and "CustomDevice error, the error code is : 2" in out["oom"], out["oom"]
    assert out["used_after_oom"]
    assert out["flags"] == {"FLAGS_use_stride_kernel": False}


def test_without_the_switch_there_is_no_npu():
    code = "from paddle_pangu import runtime\nruntime.apply()\nimport paddle\nprint(paddle.device.get_all_custom_device_type())"
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]


def test_failed_build_is_one_line_naming_the_log(tmp_path):
    """A compiler that fails: `pangu` exits 2 with one line naming the build log, which holds the command."""
    cxx = tmp_path / "broken-cxx"
    cxx.write_text("#!/bin/sh\necho 'fatal error: simulated compiler failure' >&2\nexit 1\n")
    cxx.chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "paddle_pangu.cli", "info"], capture_output=True, text=True,
                          timeout=300, env=_env(PANGU_TEST_NPU="1", CXX=str(cxx), PANGU_KERNEL_CACHE=str(tmp_path)))
    assert proc.returncode == 2, proc.stderr
    lines = [s for s in proc.stderr.splitlines() if s.strip() and not s.startswith("pangu sim npu: building")]
    assert len(lines) == 1 and lines[0].startswith("pangu: error: the simulated npu plugin failed to build"), lines
    log = Path(lines[0].rsplit("log ", 1)[1])
    assert log.is_file() and log.parent.parent == tmp_path / "sim_npu"
    text = log.read_text()
    assert str(cxx) in text and "simulated compiler failure" in text
    assert not list((log.parent / "plugin").glob("*.so"))  # nothing half-built is left to be loaded
