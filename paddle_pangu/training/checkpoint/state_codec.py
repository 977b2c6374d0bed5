"""Checkpoint state without pickle: a JSON skeleton plus tensors in safetensors.

`split_tensors(tree)` replaces every `paddle.Tensor` of a nested state (an
optimizer's `state_dict`, a model's) by `{"__tensor__": key}` and returns the
tensors by key; `join_tensors` puts them back. `to_json` / `from_json` encode
the small remainder (tuples, numpy arrays and scalars, Paddle RNG
`GeneratorState`s, non-string dict keys) as tagged JSON so it comes back with
the same Python types. Nothing here can run code while loading.
"""
from __future__ import annotations

import numpy as np
import paddle

from paddle_pangu.errors import CheckpointError

_TAGS = ("__tensor__", "__tuple__", "__ndarray__", "__npscalar__", "__generator__", "__items__", "__bytes__")


def _generator_cls():
    return type(paddle.get_rng_state()[0])


def split_tensors(tree, prefix: str = "", out: dict | None = None):
    """(skeleton with tensors replaced by placeholders, {key: tensor})."""
    out = {} if out is None else out
    if isinstance(tree, paddle.Tensor):
        key = prefix or "value"
        if key in out:
            raise CheckpointError(f"checkpoint state: two tensors map to the key {key!r}")
        out[key] = tree.detach() if hasattr(tree, "detach") else tree
        return {"__tensor__": key}, out
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: split_tensors(v, f"{prefix}/{k}" if prefix else k, out)[0] for k, v in tree.items()}, out
        return {"__items__": [[_encode(k), split_tensors(v, f"{prefix}/{k}", out)[0]] for k, v in tree.items()]}, out
    if isinstance(tree, (list, tuple)):
        items = [split_tensors(v, f"{prefix}/{i}", out)[0] for i, v in enumerate(tree)]
        return ({"__tuple__": items} if isinstance(tree, tuple) else items), out
    return _encode(tree), out


def join_tensors(skeleton, tensors: dict, where: str):
    """Inverse of `split_tensors` (after `from_json`): placeholders become the loaded tensors."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            key = skeleton["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"{where}: tensor {key!r} is missing")
            return tensors[key]
        return {k: join_tensors(v, tensors, where) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors, where) for v in skeleton]
    if isinstance(skeleton, tuple):
        return tuple(join_tensors(v, tensors, where) for v in skeleton)
    return skeleton


def _encode(obj):
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item(), "dtype": str(obj.dtype)}
    if isinstance(obj, bytes):
        return {"__bytes__": obj.hex()}
    if isinstance(obj, _generator_cls()):
        return {"__generator__": _encode(obj.__getstate__())}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v) for k, v in obj.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if isinstance(obj, paddle.Tensor):
        return _encode(obj.numpy())
    raise CheckpointError(f"checkpoint state: cannot store a {type(obj).__name__} without pickle")


def to_json(obj):
    """JSON-ready form of `obj` (already-encoded skeleton parts pass through)."""
    return _encode(obj)


def from_json(obj):
    """Decode tagged JSON (what `to_json` / `split_tensors` produced) back to Python objects."""
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tags = [t for t in _TAGS if t in obj]
    if not tags:
        return {k: from_json(v) for k, v in obj.items()}
    tag = tags[0]
    if tag == "__tensor__":
        return obj
    if tag == "__tuple__":
        return tuple(from_json(v) for v in obj[tag])
    if tag == "__ndarray__":
        return np.asarray(obj[tag], dtype=obj["dtype"]).reshape(obj["shape"])
    if tag == "__npscalar__":
        return np.dtype(obj["dtype"]).type(obj[tag])
    if tag == "__bytes__":
        return bytes.fromhex(obj[tag])
    if tag == "__generator__":
        cls = _generator_cls()
        state = cls.__new__(cls)
        state.__setstate__(from_json(obj[tag]))
        return state
    return {_hashable(from_json(k)): from_json(v) for k, v in obj[tag]}


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key
