"""Fused, multi-threaded fp32 CPU kernels for the training step: AdamW, softmax cross entropy, LayerNorm,
masked attention softmax, attention head split / merge, the dense layers' bias gradient.

`cpu_kernels.cc` is compiled on first use with `paddle.utils.cpp_extension` (about 20 s once per
machine and Paddle version; the build directory is keyed by the source, the flags and the Paddle
and Python versions, and guarded by a file lock, so the processes of one launch build it once).

Used only where they are measured to help and the math is checked (tests/unit/test_kernels.py):
dygraph, fp32, CPU tensors, with gradients recorded (training). Inference, static graphs
(`pangu export`), GPU / NPU and fp16 / bf16 keep Paddle's kernels. `PANGU_NO_CPU_KERNELS=1` turns them
off; a machine without a C++ compiler falls back to Paddle's kernels with one logged line.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

from .native_build import CACHE_ENV, build_lock, cache_root, failure_line

DISABLE_ENV = "PANGU_NO_CPU_KERNELS"
SOURCE = Path(__file__).with_name("cpu_kernels.cc")
INT8_SOURCE = Path(__file__).with_name("int8_kernels.cc")  # int8 / bf16-weight decode (issue 25), a library of its own
# no -ffast-math (NaN / inf must propagate), no FMA contraction (the reference order of operations);
# no -march: the AVX2 paths are chosen at run time, so one build serves every x86-64 CPU
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]

_STATE: dict = {"module": None, "tried": False, "reason": None}
_INT8: dict = {"module": None, "error": None}


def _tag(source: Path = SOURCE) -> str:
    import paddle

    h = hashlib.sha256(source.read_bytes())
    h.update(" ".join(CFLAGS + [paddle.__version__, sys.version]).encode())
    return h.hexdigest()[:12]


def build_dir(source: Path = SOURCE) -> Path:
    return cache_root("kernels") / _tag(source)


def _ldflags() -> list[str]:
    # MKL's OpenMP runtime (libiomp5, bundled with Paddle and already loaded by its MKL) rather than
    # libgomp: one OpenMP runtime in the process instead of two sets of spinning workers on the same cores
    # (a design choice; libgomp was not measured against it)
    import paddle

    libs = Path(paddle.__file__).parent / "libs"
    if (libs / "libiomp5.so").exists():
        return [f"-L{libs}", "-l:libiomp5.so", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


@contextlib.contextmanager
def _quiet(log_path: Path):
    """Send the compiler's and Paddle's build chatter to `log_path` (fd level: g++ writes there too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _Ops:
    """The registered ops, called the way Paddle's generated wrappers call them (`_C_ops._run_custom_op`,
    paddle 3.3.1), so a process whose build is cached does not re-run the build's setup step (2.5 s)."""

    def __getattr__(self, op):
        from paddle import _C_ops

        def run(*args):
            return _C_ops._run_custom_op(op, *args)

        setattr(self, op, run)  # made once per op: a decode step calls the int8 op ~25 times
        return run


def _build(source: Path = SOURCE, prefix: str = "pangu_cpu_kernels"):
    from paddle.utils import cpp_extension

    where = build_dir(source)
    name = f"{prefix}_{where.name}"
    library = where / name / f"{name}.so"
    with build_lock(where):  # the other processes of a launch wait for the one build
        if library.exists():
            try:
                cpp_extension.load_op_meta_info_and_register_op(str(library))
                return _Ops()
            except Exception as exc:  # a build cut short (killed mid-link) or a damaged file: build again
                print(f"pangu kernels: the cached build {library} does not load ({type(exc).__name__}); "
                      "rebuilding it", file=sys.stderr)
                library.unlink()
        print(f"pangu kernels: building {source.name} in {where} (once, ~20 s)", file=sys.stderr)
        with _quiet(where / "build.log"):
            cpp_extension.load(name=name, sources=[str(source)], extra_cxx_cflags=CFLAGS,
                               extra_ldflags=_ldflags(), build_directory=str(where), verbose=False)
        return _Ops()  # load() registered the ops


def load():
    """The compiled kernel module, or None (then `reason()` says why). Built and loaded once per process."""
    if _STATE["tried"]:
        return _STATE["module"]
    _STATE["tried"] = True
    if os.environ.get(DISABLE_ENV) == "1":
        _STATE["reason"] = f"{DISABLE_ENV}=1"
        return None
    try:
        _STATE["module"] = _build()
    except Exception as exc:  # no compiler, no headers, a read-only cache: Paddle's kernels then
        _STATE["reason"] = failure_line(exc, build_dir() / "build.log")
        print(f"pangu kernels: {_STATE['reason']}; using Paddle's kernels", file=sys.stderr)
    return _STATE["module"]


@contextlib.contextmanager
def disabled():
    """Paddle's kernels inside the block (the benchmark's same-run baseline, and tests)."""
    load()
    saved = _STATE["module"]
    _STATE["module"] = None
    try:
        yield
    finally:
        _STATE["module"] = saved


def load_int8():
    """The int8 decode kernels (int8_kernels.cc), built and loaded once per process. There is no fallback
    for them: a model quantised to int8 runs on these or not at all, so a failed build raises a
    RuntimeError naming the build log (PANGU_NO_CPU_KERNELS does not apply; it is the training kernels' switch).
    Loading also registers the op with Paddle Inference: a process loads it before creating a predictor
    for an int8 export."""
    if _INT8["module"] is None:
        if _INT8["error"] is not None:
            raise RuntimeError(_INT8["error"])
        try:
            _INT8["module"] = _build(INT8_SOURCE, "pangu_int8_kernels")
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            _INT8["error"] = (f"the int8 kernels did not build ({type(exc).__name__}: {first}; "
                              f"log {build_dir(INT8_SOURCE) / 'build.log'})")
            raise RuntimeError(_INT8["error"]) from None
    return _INT8["module"]


def cpu_flags() -> frozenset:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none: then no bf16 and the int8
    kernel's own run-time check picks its level)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


INT8_LEVELS = ("scalar", "avx2", "avx512")
INT8_ISA_ENV = "PANGU_INT8_ISA"


def int8_isa() -> tuple[str, str]:
    """(level the int8 kernel runs now, best level of this CPU): PANGU_INT8_ISA forces the first."""
    import paddle

    chosen, best, _ = load_int8().pangu_int8_isa(paddle.zeros([1]))[0].numpy().tolist()
    return INT8_LEVELS[chosen], INT8_LEVELS[best]


def int8_last_threads() -> int:
    """Threads of the last int8 / bf16 linear call in this process big enough to split (0: none yet)."""
    import paddle

    return int(load_int8().pangu_int8_isa(paddle.zeros([1]))[0].numpy()[2])


def int8_linear(x, qweight, scale, bias, threads: int | None = None):
    """x [..., K] fp32 @ (scale [N, 1] * qweight [N, K] int8)^T + bias [N] -> [..., N] fp32, accumulated in fp32.

    Works in dygraph and inside `paddle.jit.to_static` (the exported graph then holds the custom op).
    threads None: this process's math-library threads (kernels.threads()) in dygraph, 0 (the runtime's
    default, which the predictor's set_cpu_math_library_num_threads sets) in a static graph."""
    import paddle

    if threads is None:
        threads = kernels_threads() if paddle.in_dynamic_mode() else 0
    return load_int8().pangu_int8_linear(x, qweight, scale, bias, int(threads))[0]


def bf16_linear(x, weight, bias, threads: int | None = None):
    """x [..., K] fp32 @ weight [N, K] bfloat16 ^T + bias [N] -> [..., N] fp32: the bf16 weights decoded to fp32
    exactly (a 16-bit shift), fp32 activations and accumulation. Same dispatch, threads and static-graph use
    as int8_linear."""
    import paddle

    if threads is None:
        threads = kernels_threads() if paddle.in_dynamic_mode() else 0
    return load_int8().pangu_bf16_linear(x, weight, bias, int(threads))[0]


def int8_linear_cat(x, qweights, scales, biases, threads: int | None = None):
    """Several int8 layers of one input x [..., K] (at most 16 rows: decode) in one call -> [..., sum N_g]: each
    layer's int8_linear output side by side, equal bit for bit (the same row kernel), one dispatch and one
    parallel region for all. Dygraph only (decode steps)."""
    threads = kernels_threads() if threads is None else threads
    return load_int8().pangu_int8_linear_cat(x, list(qweights), list(scales), list(biases), int(threads))[0]


def bf16_linear_cat(x, weights, biases, threads: int | None = None):
    """int8_linear_cat for bf16 layers."""
    threads = kernels_threads() if threads is None else threads
    return load_int8().pangu_bf16_linear_cat(x, list(weights), list(biases), int(threads))[0]


def int8_decode_layer_(x, query, norms, qweights, scales, biases, k_cache, v_cache, mask, t: int, eps: float,
                       act: int, query_layer: bool, threads: int) -> None:
    """One whole decoder layer for decode rows, in place (int8_kernels.cc DecodeLayer): x [B, 1, H] becomes the
    layer's output, k / v of the new token go to column t of k_cache / v_cache [B, nh, cap, hd]; mask int64
    [B, t + 1]. norms: ln1 w, ln1 b, ln2 w, ln2 b; qweights / scales / biases: q, k, v, out, fc_in, fc_out;
    query [B, 1, H] (the query layer's query source; any tensor for a block). act: 0 gelu_tanh, 1 gelu, 2
    fast_gelu. Dygraph only (inference.fused_decode)."""
    load_int8().pangu_int8_decode_layer_(x, query, list(norms), list(qweights), list(scales), list(biases), k_cache,
                                         v_cache, mask, int(t), float(eps), int(act), bool(query_layer), int(threads))


def bf16_decode_layer_(x, query, norms, weights, biases, k_cache, v_cache, mask, t: int, eps: float, act: int,
                       query_layer: bool, threads: int) -> None:
    """int8_decode_layer_ for bf16 weights."""
    load_int8().pangu_bf16_decode_layer_(x, query, list(norms), list(weights), list(biases), k_cache, v_cache, mask,
                                         int(t), float(eps), int(act), bool(query_layer), int(threads))


def stream_read(x, threads: int):
    """Sum of a large fp32 CPU tensor read once over `threads` threads (the benchmark's bandwidth probe)."""
    return load_int8().pangu_stream_read(x, int(threads))[0]


def reason() -> str | None:
    return _STATE["reason"]


def threads() -> int:
    """The kernels' thread count: the math library's (paddle_pangu.runtime sets MKL_NUM_THREADS per process)."""
    for key in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


kernels_threads = threads  # int8_linear's parameter shadows the name


def _usable(*tensors, recording: bool = True) -> bool:
    """Dygraph, dense fp32 CPU tensors, the kernels built; and gradients recorded unless `recording` is
    False (the optimizer's update runs under no_grad)."""
    import paddle

    if not paddle.in_dynamic_mode() or (recording and not paddle.is_grad_enabled()):
        return False
    return all(_plain_cpu_fp32(t) for t in tensors) and load() is not None


def _plain_cpu_fp32(t) -> bool:
    """A dense, contiguous (the kernels index memory directly), fp32 CPU tensor."""
    import paddle

    return (t is not None and t.dtype == paddle.float32 and t.place.is_cpu_place() and t.is_contiguous()
            and not (hasattr(t, "is_dist") and t.is_dist()))


def layer_norm(x, weight, bias, eps: float):
    """LayerNorm over the last dimension (weight and bias of that size); None when the kernels do not apply."""
    if not _usable(x, weight, bias) or weight.shape != [x.shape[-1]] or bias.shape != weight.shape:
        return None
    return load().pangu_layer_norm(x, weight, bias, float(eps), threads())[0]


def masked_softmax(scores, mask):
    """softmax(scores + mask, axis=-1) for fp32 scores [B, nh, S, T] and an additive mask that broadcasts
    ([1 or B, 1 or nh, 1 or S, T]); None when the kernels do not apply. The mask gets no gradient."""
    if mask is None or len(scores.shape) != 4 or len(mask.shape) != 4 or not _usable(scores, mask):
        return None
    if mask.shape[-1] != scores.shape[-1] or any(m not in (1, s) for m, s in zip(mask.shape[:3], scores.shape[:3])):
        return None
    return load().pangu_masked_softmax(scores, mask.detach(), threads())[0]


def linear(x, weight, bias):
    """x [..., K] @ weight [K, N] + bias [N] (Paddle's addmm / matmul, the bias gradient a fast column
    sum); None when the kernels do not apply."""
    if bias is None or len(weight.shape) != 2 or not _usable(x, weight, bias):
        return None
    return load().pangu_linear(x, weight, bias, threads())[0]


def swap_dims12(x):
    """[A, B, C, D] -> [A, C, B, D] as a dense copy (attention's head split and merge); None when the
    kernels do not apply (Paddle's transpose, a strided view, then)."""
    if len(x.shape) != 4 or not _usable(x):
        return None
    return load().pangu_swap_dims12(x, threads())[0]


def softmax_cross_entropy(logits, labels, ignore_index: int = -100):
    """Per-token cross entropy, logits [..., V] and int64 labels [...] -> [...]; None when the kernels do not apply."""
    import paddle

    if labels.dtype != paddle.int64 or not _usable(logits) or list(labels.shape) != list(logits.shape[:-1]):
        return None
    loss = load().pangu_softmax_ce(logits, labels, int(ignore_index), threads())[0]
    return loss.reshape(labels.shape)


def adamw_(param, grad, lr, moment1, moment2, beta1_pow, beta2_pow, *, beta1: float, beta2: float,
           epsilon: float, lr_ratio: float, coeff: float, with_decay: bool) -> bool:
    """Paddle's AdamW update in place (the same accumulators); False when the kernels do not apply."""
    if grad is None or grad.is_selected_rows():
        return False
    if not _usable(param, grad, moment1, moment2, beta1_pow, beta2_pow, recording=False):
        return False
    # param.detach() shares param's memory: the op writes the parameter in place without Paddle's
    # refusal of in-place ops on leaves that require grad (the update is not part of any graph)
    load().pangu_adamw_(param.detach(), grad, lr, moment1, moment2, beta1_pow, beta2_pow, float(beta1), float(beta2),
                        float(epsilon), float(lr_ratio), float(coeff), bool(with_decay), threads())
    return True
