"""Never unpickle a file the user did not vouch for.

`.pdparams` / `.pdopt` (what `paddle.save` writes) are pickles, and unpickling
runs whatever the file says. The rule is the one the Megatron / HF converters
use for torch files (`weights_only`): a pickle is read with an unpickler that
knows only numpy arrays, dtypes and plain containers, so a file holding
anything else (an `os.system` payload, a custom class) is refused with a
one-line `UntrustedPickleError` naming the file and `--trust-pickle`, and
nothing in it runs. Full unpickling (`paddle.load`) happens only when the user
vouches: `--trust-pickle` on a `pangu` command or `PANGU_TRUST_PICKLE=1`.

`load_pdparams` is the one reader of such files in the project;
`safe_paddle_load()` routes `paddle.load` through it for code we do not own
(PaddleNLP's `from_pretrained`, LoRA loading) while it is active:
`PanGuPretrainedModel.from_pretrained` and every `pangu` command use it.
Safetensors files are preferred wherever both exist.

What the arrays-only unpickler builds is bounded before anything walks it:
pickle memo references let a few hundred bytes describe a tree of shared
lists with 2^30 leaves (a 341-byte file made every loader hang past 3.9 GB).
`_arrays_only` walks the tree as its consumers will (expanded) and refuses it
past `MAX_DEPTH` levels, `MAX_OBJECTS` objects or array bytes beyond the file
size (arrays in a pickle carry their bytes, so more means shared references).
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
from collections import OrderedDict

import numpy as np

from paddle_pangu.errors import CheckpointError

TRUST_ENV = "PANGU_TRUST_PICKLE"
_ALLOWED = {
    ("collections", "OrderedDict"), ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
}


MAX_DEPTH = 16  # a state dict is 1-3 levels deep (optimizer: accumulators, master weights, LR scheduler)
MAX_OBJECTS = 2_000_000  # ~100x the tensors of a 200B-parameter state dict


# What the PaddleNLP Trainer's checkpoints add in `rng_state.pth` / `rng_state_<world>.pth` (its
# `_save_checkpoint`): paddle's generator states (CPU / device generators and fleet's model-parallel
# RNG tracker), next to python `random` and numpy states that are plain tuples / arrays. A
# GeneratorState is restored from a tuple of ints through pybind's `__setstate__`; it runs no code.
_RNG_STATE_FILE = re.compile(r"rng_state(_\d+)?\.pth\Z")
_RNG_STATE_CLASSES = frozenset({("paddle.base.libpaddle", "GeneratorState")})


def _extra_allowed(path: str) -> frozenset:
    """Classes allowed beyond arrays for this file: the generator state, in the Trainer's RNG files only."""
    return _RNG_STATE_CLASSES if _RNG_STATE_FILE.match(os.path.basename(path)) else frozenset()


class UntrustedPickleError(CheckpointError):
    """A pickle-based file holds more than arrays and the user did not pass --trust-pickle."""


class _Budget:
    def __init__(self, path: str, max_bytes: int):
        self.path, self.objects, self.bytes, self.max_bytes = path, 0, 0, max_bytes

    def take(self, obj, depth: int) -> None:
        self.objects += 1
        if depth > MAX_DEPTH:
            _refuse_shape(self.path, f"nesting deeper than {MAX_DEPTH} levels")
        if self.objects > MAX_OBJECTS:
            _refuse_shape(self.path, f"more than {MAX_OBJECTS} objects once shared references are expanded")
        if isinstance(obj, np.ndarray):
            self.bytes += obj.nbytes
            if self.bytes > self.max_bytes:
                _refuse_shape(self.path, f"arrays totalling more than the file's {self.max_bytes} bytes "
                                         "(shared references)")


def _refuse_shape(path: str, why: str):
    raise CheckpointError(f"{path}: refused to load a pickle with {why}; a model state dict is a flat mapping of "
                          "arrays (crafted or corrupt file?)") from None


def pickle_trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def trust_pickle(flag: bool = True) -> None:
    """What `--trust-pickle` does: this process and the ones it starts may unpickle files."""
    if flag:
        os.environ[TRUST_ENV] = "1"


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, file, extra: frozenset = frozenset(), **kwargs):
        super().__init__(file, **kwargs)
        self.extra = extra

    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module, name) in self.extra:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def _refuse(path: str, why: str):
    raise UntrustedPickleError(
        f"{path}: a pickle file that holds more than arrays ({why}); it was not unpickled. If you trust this file, "
        f"rerun with --trust-pickle (or {TRUST_ENV}=1), or convert it to safetensors") from None


class _NamedArray(np.ndarray):
    """An array paddle.save pickled with its tensor's name: a nested tensor such as the optimizer's O2 master
    weights, whose names key their moments (`embedding_0.w_0_fp32_master_0_moment1_0`). Dropping the name gave
    the loaded master weight a `generated_tensor_N` name, and the resumed bf16 O2 fine-tune stopped in AdamW
    ("Optimizer set error, generated_tensor_271_moment1_0 should in state dict"); paddle.load keeps it."""

    tensor_name = ""


def _named(name: str, array: np.ndarray) -> np.ndarray:
    out = array.view(_NamedArray)
    out.tensor_name = name
    return out


def _arrays_only(obj, path: str, budget: _Budget, depth: int = 0):
    budget.take(obj, depth)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        _refuse(path, "an object array")
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return _named(obj[0], obj[1])  # paddle.save of a nested tensor: (name, ndarray)
    if isinstance(obj, dict):
        return OrderedDict((k, _arrays_only(v, path, budget, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays_only(v, path, budget, depth + 1) for v in obj)
    return obj


def load_pdparams(path: str, return_numpy: bool = True, keep_name_table: bool = False):
    """A `paddle.save` file as arrays (Tensors if not `return_numpy`); full unpickling only if trusted."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weights file")
    if pickle_trusted():
        import paddle

        load = _REAL_LOAD[0] if _REAL_LOAD else paddle.load
        return load(path, return_numpy=return_numpy, keep_name_table=keep_name_table)
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _ArraysOnly(io.BytesIO(data), _extra_allowed(path), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            KeyError, MemoryError, OverflowError, RecursionError) as exc:  # crafted opcodes: refuse, never crash
        _refuse(path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
    try:
        obj = _arrays_only(obj, path, _Budget(path, len(data) + (1 << 20)))
    except (TypeError, ValueError) as exc:
        _refuse(path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
    if isinstance(obj, dict):
        from paddle.framework.io import _pack_loaded_dict  # re-joins params paddle.save split (> 4 GB), arrays only

        obj = _pack_loaded_dict(obj)
        if not keep_name_table:
            obj.pop("StructuredToParameterName@@", None)
    if return_numpy:
        return _plain(obj)
    import paddle

    def to_tensor(v):
        if isinstance(v, np.ndarray):
            t = paddle.to_tensor(np.asarray(v))
            if getattr(v, "tensor_name", ""):
                t.name = v.tensor_name  # as paddle.load names a nested tensor
            return t
        if isinstance(v, dict):
            return type(v)((k, to_tensor(x)) for k, x in v.items())
        return v

    return to_tensor(obj)


def _plain(obj):
    """The arrays as plain numpy arrays (return_numpy: no names, as paddle.load gives)."""
    if isinstance(obj, _NamedArray):
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


_REAL_LOAD: list = []


@contextlib.contextmanager
def safe_paddle_load():
    """While active, `paddle.load(path, ...)` goes through `load_pdparams` (re-entrant)."""
    import paddle

    if _REAL_LOAD:  # already active
        yield
        return
    real = paddle.load
    _REAL_LOAD.append(real)

    def guarded(path, **configs):
        if not isinstance(path, (str, os.PathLike)):
            if pickle_trusted():
                return real(path, **configs)
            raise UntrustedPickleError(f"paddle.load of a {type(path).__name__} (not a file path) was refused; "
                                       f"rerun with --trust-pickle (or {TRUST_ENV}=1) if you trust its source")
        return load_pdparams(os.fspath(path), return_numpy=bool(configs.get("return_numpy", False)),
                             keep_name_table=bool(configs.get("keep_name_table", False)))

    paddle.load = guarded
    try:
        yield
    finally:
        paddle.load = real
        _REAL_LOAD.clear()
