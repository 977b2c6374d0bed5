"""`pangu <args>` in a subprocess with the simulated npu plugin loaded (PANGU_TEST_NPU=1, README "Devices") or,
with npu=False, without it; CUSTOM_DEVICE_ROOT is always cleared so only the switch decides."""
import os
import subprocess
import sys


def pangu(*args, npu=True, timeout=600):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    env.pop("CUSTOM_DEVICE_ROOT", None)
    if npu:
        env["PANGU_TEST_NPU"] = "1"
    else:
        env.pop("PANGU_TEST_NPU", None)
    return subprocess.run([sys.executable, "-m", "paddle_pangu.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)
