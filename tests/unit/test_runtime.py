"""The per-CPU runtime decision (paddle_pangu/runtime.py): AMD / Intel / other, launch shares, the override."""
import os
import subprocess
import sys

import pytest

from paddle_pangu import runtime
from paddle_pangu.runtime import CpuInfo, decide, parse_cpuinfo

AMD = CpuInfo("amd", "AMD EPYC", frozenset({"avx2", "avx512f"}), cores=2)
INTEL = CpuInfo("intel", "Intel Xeon", frozenset({"avx512f", "amx_bf16"}), cores=2)
OTHER = CpuInfo("other", "Neoverse", frozenset(), cores=4)


def test_amd_with_bundled_mkl_sets_cpu_type_and_threads():
    d = decide(AMD, {}, bundled_mkl=True)
    assert d.set_env == {"MKL_DEBUG_CPU_TYPE": "5", "MKL_NUM_THREADS": "2",
                         "PANGU_RUNTIME_OWNED": "OMP_NUM_THREADS,MKL_NUM_THREADS"}
    assert d.unset_env == []


def test_amd_without_bundled_mkl_leaves_cpu_type_alone():
    assert "MKL_DEBUG_CPU_TYPE" not in decide(AMD, {}, bundled_mkl=False).set_env


def test_intel_never_sets_cpu_type_and_removes_an_inherited_one():
    assert "MKL_DEBUG_CPU_TYPE" not in decide(INTEL, {}, bundled_mkl=True).set_env
    d = decide(INTEL, {"MKL_DEBUG_CPU_TYPE": "5"}, bundled_mkl=True)
    assert d.unset_env == ["MKL_DEBUG_CPU_TYPE"] and "MKL_DEBUG_CPU_TYPE" not in d.set_env


def test_other_vendor_gets_threads_only():
    d = decide(OTHER, {"MKL_DEBUG_CPU_TYPE": "5"}, bundled_mkl=True)
    assert d.set_env["MKL_NUM_THREADS"] == "4" and "MKL_DEBUG_CPU_TYPE" not in d.set_env and d.unset_env == []


def test_launch_workers_share_the_cores_and_user_threads_are_kept():
    assert decide(OTHER, {"PADDLE_LOCAL_SIZE": "2"}, True).set_env["MKL_NUM_THREADS"] == "2"
    assert decide(AMD, {"PADDLE_TRAINERS_NUM": "2"}, True).set_env["MKL_NUM_THREADS"] == "1"
    assert decide(AMD, {"PADDLE_LOCAL_SIZE": "8"}, True).set_env["MKL_NUM_THREADS"] == "1"  # at least one
    d = decide(AMD, {"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "0"}, True)
    assert "MKL_NUM_THREADS" not in d.set_env and "MKL_DEBUG_CPU_TYPE" not in d.set_env


def test_launched_workers_redecide_threads_their_parent_set():
    """`pangu train --nproc 2`: the parent's apply() set MKL_NUM_THREADS=2 (and `import paddle` set
    OMP_NUM_THREADS=1); each worker inherits both but must take its own share (found by bench parallel)."""
    parent = decide(AMD, {}, True)
    assert parent.set_env["MKL_NUM_THREADS"] == "2"
    worker_env = {**parent.set_env, "OMP_NUM_THREADS": "1", "PADDLE_LOCAL_SIZE": "2"}
    worker = decide(AMD, worker_env, True)
    assert worker.set_env["MKL_NUM_THREADS"] == "1"
    user = decide(AMD, {**worker_env, "PANGU_RUNTIME_OWNED": "OMP_NUM_THREADS", "MKL_NUM_THREADS": "2"}, True)
    assert "MKL_NUM_THREADS" not in user.set_env  # a thread count the user exported is kept


def test_override_disables_everything():
    env = {"PANGU_NO_RUNTIME_TUNING": "1", "MKL_DEBUG_CPU_TYPE": "5"}
    for cpu in (AMD, INTEL, OTHER):
        d = decide(cpu, env, bundled_mkl=True, glibc=True)
        assert d.set_env == {} and d.unset_env == [] and d.mallopt == {}


def test_glibc_allocator_keeps_freed_memory_for_every_vendor_unless_the_user_tuned_malloc():
    for cpu in (AMD, INTEL, OTHER):
        assert decide(cpu, {}, True, glibc=True).mallopt == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}
        assert decide(cpu, {}, True, glibc=False).mallopt == {}
        assert decide(cpu, {"MALLOC_ARENA_MAX": "2"}, True, glibc=True).mallopt == {}


_REUSE = (  # page faults of a second 64 MiB buffer written page by page, after the first was freed
    "import resource, paddle_pangu.runtime as r; r.apply()\n"
    "def touch():\n"
    "    b = bytearray(64 << 20)\n"
    "    for i in range(0, len(b), 4096): b[i] = 1\n"
    "    return b\n"
    "b = touch(); del b\n"
    "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; b = touch()\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
)


def test_apply_makes_freed_memory_reused_without_page_faults():
    """The allocator setting is real: 16384 pages are re-faulted without it, (almost) none with it."""
    if runtime._glibc() is None:
        pytest.skip("not glibc: decide() asks for no allocator setting there (tested above)")
    faults = {}
    for label, extra in (("tuned", {}), ("untuned", {"PANGU_NO_RUNTIME_TUNING": "1"})):
        env = {k: v for k, v in _child_env(**extra).items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", _REUSE], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        faults[label] = int(out.stdout.strip())
    pages = (64 << 20) // 4096
    # untuned: glibc mmaps fresh pages for the second buffer (one fault per page, or per 2 MiB huge page)
    assert faults["tuned"] < pages // 16 and faults["tuned"] < faults["untuned"], faults


def test_parse_cpuinfo_reads_vendor_and_flags():
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: fpu avx512f amx_bf16\n\n" \
           "processor\t: 1\nvendor_id\t: AuthenticAMD\n"
    cpu = parse_cpuinfo(text, cores=2)
    assert cpu.vendor == "intel" and cpu.model == "Xeon" and "amx_bf16" in cpu.flags and cpu.cores == 2
    assert parse_cpuinfo("vendor_id : AuthenticAMD\n", 0).vendor == "amd"
    assert parse_cpuinfo("vendor_id : HygonGenuine\n", 1).vendor == "other"


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_DEBUG_CPU_TYPE", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS", "PANGU_NO_RUNTIME_TUNING",
                                                            "PANGU_RUNTIME_OWNED")}
    env.update(extra)
    return env


def test_apply_sets_the_environment_before_paddle_and_logs_once():
    code = ("import os, paddle_pangu.runtime as r; a = r.apply(); b = r.apply(); assert a is b; "
            "import paddle; print(os.environ.get('MKL_DEBUG_CPU_TYPE'), os.environ['MKL_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(PADDLE_LOCAL_SIZE="2"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cpu = runtime.detect_cpu()
    expected = decide(cpu, {"PADDLE_LOCAL_SIZE": "2"}, runtime.paddle_bundles_mkl())
    assert out.stdout.split() == [expected.set_env.get("MKL_DEBUG_CPU_TYPE", "None"),
                                  expected.set_env["MKL_NUM_THREADS"]]
    assert out.stderr.count("pangu runtime:") == 1


def test_apply_after_paddle_import_changes_nothing():
    code = "import os, paddle, paddle_pangu.runtime as r; r.apply(); print(os.environ.get('MKL_NUM_THREADS'))"
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None" and "pangu runtime:" not in out.stderr
