"""Build and enable the simulated Ascend device plugin (device type `npu`).

`build()` compiles every `*.cc` in this folder (`runtime.cc`: the C_DeviceInterface with its allocator,
streams and `xccl_*` collectives; the kernel files: plugin kernels registered for `npu`) into one shared
library with g++. The build is cached under `~/.cache/paddle_pangu/sim_npu/<tag>` (or
`$PANGU_KERNEL_CACHE/sim_npu/<tag>`), the tag a hash of the sources, the flags, the Paddle version and
the compiler's version line, and guarded by a file lock, so the processes of one launch build it once
(~30 s) and the others wait for it. A failed build raises `PluginBuildError`, one line naming the build
log. The library is the only file of `<tag>/plugin/`, the folder that becomes `CUSTOM_DEVICE_ROOT`
(Paddle loads every shared library there when it is imported).

Standard library only: `enable()` must run before `import paddle`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ...errors import PanGuError
from ...kernels.native_build import build_lock, cache_root

SWITCH_ENV = "PANGU_TEST_NPU"  # "1": load the simulated npu in this process and the processes it launches
ROOT_ENV = "CUSTOM_DEVICE_ROOT"  # Paddle's: the folder of device plugins it loads at import
HERE = Path(__file__).resolve().parent
LIBRARY = "libpangu_sim_npu.so"
# -ffp-contract=off, no -march: no FMA contraction, so fp32 kernels round like Paddle's CPU kernels and pangu_adamw_
CXXFLAGS = ["-std=c++17", "-shared", "-fPIC", "-O2", "-ffp-contract=off"]


class PluginBuildError(PanGuError, RuntimeError):
    """The simulated npu plugin could not be compiled (no compiler, missing headers, a compile error)."""


def sources() -> list[Path]:
    return sorted(HERE.glob("*.cc"))


def paddle_dir() -> Path:
    """The installed `paddle` package folder, found without importing it."""
    spec = importlib.util.find_spec("paddle")
    if spec is None or not spec.origin:
        raise PluginBuildError("the simulated npu plugin needs paddlepaddle installed (no `paddle` package found)")
    return Path(spec.origin).parent


def _paddle_version(pdir: Path) -> str:
    for dist in ("paddlepaddle", "paddlepaddle-gpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    lib = pdir / "base" / "libpaddle.so"
    return f"unknown-{lib.stat().st_size if lib.exists() else 0}"


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "g++"))


def _compiler_id() -> str:
    try:
        out = subprocess.run([*compiler(), "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def command(pdir: Path, output: Path) -> list[str]:
    """The g++ command line (docs/PLATFORM.md "Custom devices, bf16 and the CPU kernels Paddle lacks": the wheel's headers + libpaddle.so)."""
    include = pdir / "include"
    return [*compiler(), *CXXFLAGS, f"-I{include}", f"-I{include / 'third_party'}",
            f"-I{include / 'third_party' / 'install' / 'onednn' / 'include'}",
            *map(str, sources()), "-o", str(output),
            f"-L{pdir / 'base'}", "-l:libpaddle.so", f"-Wl,-rpath,{pdir / 'base'}"]


def build_dir() -> Path:
    pdir = paddle_dir()
    h = hashlib.sha256()
    for src in sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    h.update(" ".join([*CXXFLAGS, _paddle_version(pdir), _compiler_id(), str(pdir)]).encode())
    return cache_root("sim_npu") / h.hexdigest()[:12]


def build() -> Path:
    """The folder holding the compiled plugin (built now if it is not cached); raises PluginBuildError."""
    try:
        where = build_dir()
        plugin_dir = where / "plugin"
        library = plugin_dir / LIBRARY
        with build_lock(where):
            if library.exists():
                return plugin_dir
            log = where / "build.log"
            plugin_dir.mkdir(parents=True, exist_ok=True)
            partial = where / f"{LIBRARY}.partial"
            cmd = command(paddle_dir(), partial)
            print(f"pangu sim npu: building the simulated npu plugin in {where} (once, ~30 s)", file=sys.stderr)
            with open(log, "w") as out:
                out.write(" ".join(map(shlex.quote, cmd)) + "\n")
                out.flush()
                result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                raise PluginBuildError(f"the simulated npu plugin failed to build ({cmd[0]} exit {result.returncode}); "
                                       f"log {log}")
            os.replace(partial, library)  # whole or absent: a killed build leaves only the .partial
            return plugin_dir
    except PluginBuildError:
        raise
    except OSError as exc:  # no compiler, an unwritable cache
        raise PluginBuildError(f"the simulated npu plugin failed to build ({type(exc).__name__}: {exc}); "
                               f"log {cache_root('sim_npu')}") from None


def enabled(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(SWITCH_ENV) == "1"


def enable(environ=None) -> Path:
    """Build the plugin and point `CUSTOM_DEVICE_ROOT` at it in `environ` (default os.environ), so the
    Paddle imported afterwards (in this process and in those it starts) has the `npu` device."""
    environ = os.environ if environ is None else environ
    plugin_dir = build()
    environ[ROOT_ENV] = str(plugin_dir)
    return plugin_dir
