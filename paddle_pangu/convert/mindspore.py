"""MindSpore `.ckpt` reading and writing without MindSpore.

A MindSpore checkpoint is a protobuf `Checkpoint` message (schema of
`mindspore/ccsrc/utils/checkpoint.proto`, rebuilt below with descriptor_pb2,
no protoc needed)::

    message Checkpoint {
      message Value { required string tag = 1; required TensorProto tensor = 2; }
      repeated Value value = 1;
    }
    message TensorProto {
      repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3;
    }

MindSpore writes every parameter as its own serialized `Checkpoint`
appended to the file, and splits tensors above 512 MB into several `Value`s
with the same tag along axis 0 (`np.array_split`); the full dims are repeated
in each. The reader below scans the wire format over an mmap and records
only offsets, so converting holds one tensor (plus one output shard) in
memory, never the whole file.

Released forms handled (REF "Checkpoint formats", MindSpore): one merged
file (fp32 or fp16), a directory with one merged file plus the separate
`word_embedding.npy` / `position_embedding.npy` / `top_query_embedding.npy`
tables, or a directory of per-tensor `<name>.npy` dumps. The 512-file sharded
sets with a strategy file must be merged with MindSpore first (see
docs/CONVERT.md); this module says so instead of guessing.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import mmap
import os
import re

import numpy as np

from ..model.weight_tables import MINDSPORE_ALIASES, MINDSPORE_IGNORE, mindspore_name_map
from .common import ConversionError, LazyTensor, count_blocks

# MindSpore tensor_type strings (str(mindspore.dtype)) -> numpy
TENSOR_TYPES = {
    "Float32": np.float32, "Float16": np.float16, "Float64": np.float64,
    "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
    "UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32, "UInt64": np.uint64, "Bool": np.bool_,
}
NUMPY_TO_TENSOR_TYPE = {np.dtype(v): k for k, v in TENSOR_TYPES.items()}
SLICE_BYTES = 512 * 1024 * 1024  # MindSpore's SLICE_SIZE (512 * 1024 KB)
BLOCK_PATTERN = re.compile(r"^backbone\.blocks\.(\d+)\.")
IGNORE = MINDSPORE_IGNORE


# ----------------------------------------------------------------------------- schema


def _schema_file():
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(name="paddle_pangu_ms_checkpoint.proto", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    tensor = fdp.message_type.add(name="TensorProto")
    tensor.field.add(name="dims", number=1, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    tensor.field.add(name="tensor_type", number=2, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    tensor.field.add(name="tensor_content", number=3, type=F.TYPE_BYTES, label=F.LABEL_REQUIRED)
    ckpt = fdp.message_type.add(name="Checkpoint")
    value = ckpt.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    value.field.add(name="tensor", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_REQUIRED, type_name=".TensorProto")
    ckpt.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".Checkpoint.Value")
    return fdp


_CLASSES = {}


def checkpoint_message_class():
    """The `Checkpoint` protobuf message class (built once, works with protobuf 3.20 and 4+)."""
    if "Checkpoint" not in _CLASSES:
        from google.protobuf import descriptor_pool, message_factory

        pool = descriptor_pool.DescriptorPool()
        pool.Add(_schema_file())
        desc = pool.FindMessageTypeByName("Checkpoint")
        if hasattr(message_factory, "GetMessageClass"):
            _CLASSES["Checkpoint"] = message_factory.GetMessageClass(desc)
        else:
            _CLASSES["Checkpoint"] = message_factory.MessageFactory(pool).GetPrototype(desc)
    return _CLASSES["Checkpoint"]


def save_mindspore_ckpt(path: str, tensors: dict[str, np.ndarray], slice_bytes: int = SLICE_BYTES) -> None:
    """Write tensors the way MindSpore's `save_checkpoint` does (one message per slice, appended)."""
    Checkpoint = checkpoint_message_class()
    with open(path, "wb") as f:
        for name, arr in tensors.items():
            arr = np.asarray(arr)
            ttype = NUMPY_TO_TENSOR_TYPE[arr.dtype]
            pieces = np.array_split(arr, math.ceil(arr.nbytes / slice_bytes)) if arr.nbytes > slice_bytes else [arr]
            for piece in pieces:
                msg = Checkpoint()
                value = msg.value.add()
                value.tag = name
                value.tensor.dims.extend(arr.shape)
                value.tensor.tensor_type = ttype
                value.tensor.tensor_content = np.ascontiguousarray(piece).tobytes()
                f.write(msg.SerializeToString())


# ----------------------------------------------------------------------------- streaming reader


@dataclasses.dataclass
class _Entry:
    dims: tuple
    tensor_type: str
    slices: list  # [(offset, length)] of tensor_content inside the file


def _varint(buf, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ConversionError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ConversionError("varint longer than 64 bits")


def _skip(buf, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _varint(buf, pos)
        return pos + n
    if wire == 5:
        return pos + 4
    raise ConversionError(f"unsupported protobuf wire type {wire}")


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value start, value end) of one message's fields."""
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _varint(buf, pos)
            yield field, wire, pos, pos + n
            pos += n
        else:
            nxt = _skip(buf, pos, wire)
            yield field, wire, pos, nxt
            pos = nxt


def _parse_tensor(buf, start: int, end: int):
    dims, ttype, content = [], None, None
    for field, wire, a, b in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dims.append(_varint(buf, a)[0])
        elif field == 1 and wire == 2:  # packed dims
            p = a
            while p < b:
                d, p = _varint(buf, p)
                dims.append(d)
        elif field == 2:
            ttype = bytes(buf[a:b]).decode("utf-8")
        elif field == 3:
            content = (a, b - a)
    return dims, ttype, content


def index_ckpt(buf, source: str) -> dict[str, _Entry]:
    """tag -> dims, type and byte slices, from the protobuf wire format (no tensor data copied)."""
    entries: dict[str, _Entry] = {}
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if field != 1 and wire == 0:  # scalar top-level fields of newer MindSpore (e.g. a CRC number)
            continue
        if field != 1 or wire != 2:
            raise ConversionError(f"{source}: not a MindSpore checkpoint (top-level field {field}, wire type {wire}); "
                                  "encrypted checkpoints must be decrypted with MindSpore first")
        tag, tensor = None, None
        for f2, w2, a2, b2 in _fields(buf, a, b):
            if f2 == 1:
                tag = bytes(buf[a2:b2]).decode("utf-8")
            elif f2 == 2:
                tensor = _parse_tensor(buf, a2, b2)
            elif f2 == 3:
                raise ConversionError(f"{source}: MapTensor entry {tag!r} is not a model weight format this converter reads")
        if tag is None or tensor is None or tensor[1] is None or tensor[2] is None:
            raise ConversionError(f"{source}: malformed Checkpoint.Value near byte {a} (tag {tag!r})")
        dims, ttype, content = tensor
        if tag in entries:
            entries[tag].slices.append(content)
        else:
            entries[tag] = _Entry(tuple(dims), ttype, [content])
    return entries


class CkptReader:
    """Lazy tensors of one `.ckpt` file: an index built over an mmap, data read tensor by tensor."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            if not os.path.getsize(path):
                raise ConversionError(f"{path}: empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    self.entries = index_ckpt(view, path)
                finally:
                    view.release()

    def read(self, tag: str) -> np.ndarray:
        """One tensor, read with plain file reads (the mmap is only used for the index: no page-cache RSS)."""
        e = self.entries[tag]
        if e.tensor_type not in TENSOR_TYPES:
            raise ConversionError(f"{self.path}: {tag} has tensor_type {e.tensor_type!r}; "
                                  f"expected one of {sorted(TENSOR_TYPES)}")
        dtype = np.dtype(TENSOR_TYPES[e.tensor_type])
        nbytes = sum(n for _, n in e.slices)
        flat = np.empty(nbytes // dtype.itemsize, dtype=dtype)
        view, pos = memoryview(flat.view(np.uint8)), 0
        with open(self.path, "rb") as f:
            for offset, n in e.slices:
                f.seek(offset)
                if f.readinto(view[pos:pos + n]) != n:
                    raise ConversionError(f"{self.path}: {tag} is truncated")
                pos += n
        if e.dims in ((), (0,)):  # MindSpore stores scalars with dims [0]
            return flat[:1].reshape(())
        expected = int(np.prod(e.dims))
        if flat.size != expected:
            raise ConversionError(f"{self.path}: {tag} holds {flat.size} values but dims {list(e.dims)} need {expected}")
        return flat.reshape(e.dims)

    def lazy(self) -> dict[str, LazyTensor]:
        out = {}
        for tag, e in self.entries.items():
            shape = () if e.dims == (0,) else e.dims
            dtype = np.dtype(TENSOR_TYPES.get(e.tensor_type, np.float32))
            out[tag] = LazyTensor(tuple(shape), dtype, lambda tag=tag: self.read(tag), self.path)
        return out


def _npy_lazy(path: str) -> LazyTensor:
    arr = np.load(path, mmap_mode="r")
    return LazyTensor(tuple(arr.shape), arr.dtype, lambda: np.load(path, mmap_mode="r"), path)


SHARDED_HELP = (
    "a sharded MindSpore checkpoint set (one .ckpt per device, laid out by a parallel strategy file) cannot be "
    "merged without its strategy; merge it with MindSpore first, e.g. "
    "`mindspore.transform_checkpoints(src_dir, dst_dir, 'merged', src_strategy_file='strategy.ckpt', "
    "dst_strategy_file=None)` (MindSpore >= 2.0) or `load_distributed_checkpoint` + `save_checkpoint` on one "
    "device, then pass the merged .ckpt (plus any *_embedding.npy files) here; see docs/CONVERT.md")


def read_mindspore(src: str) -> dict[str, LazyTensor]:
    """Foreign tensors of a merged .ckpt file, or of a directory holding one .ckpt and/or .npy tables."""
    if os.path.isfile(src):
        if not src.endswith(".ckpt"):
            raise ConversionError(f"{src}: expected a MindSpore .ckpt file or a directory")
        return CkptReader(src).lazy()
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: no such file or directory")
    ckpts = sorted(glob.glob(os.path.join(src, "*.ckpt")))
    strategy = [p for p in ckpts if "strategy" in os.path.basename(p)]
    weights = [p for p in ckpts if p not in strategy]
    if len(weights) > 1 or strategy:
        raise ConversionError(f"{src}: found {len(weights)} .ckpt files{' and a strategy file' if strategy else ''}: "
                              + SHARDED_HELP)
    tensors = CkptReader(weights[0]).lazy() if weights else {}
    for npy in sorted(glob.glob(os.path.join(src, "*.npy"))):
        name = os.path.basename(npy)[:-4]
        if name in tensors or MINDSPORE_ALIASES.get(name) in tensors:
            raise ConversionError(f"{npy}: tensor {name!r} is also given by another file in {src}; keep only one copy")
        tensors[name] = _npy_lazy(npy)
    if not tensors:
        raise ConversionError(f"{src}: no .ckpt or .npy files found")
    return tensors


def num_layers_from_names(names) -> int:
    """Layers incl. the query layer: backbone.blocks.{i} count + 1 (REF "layer count")."""
    return count_blocks(names, BLOCK_PATTERN) + 1


name_map = mindspore_name_map
ALIASES = MINDSPORE_ALIASES
