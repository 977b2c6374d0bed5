"""Tensor-parallel inference: `pangu evaluate / generate / serve --nproc N` (issue 27).

The command re-launches itself under `paddle.distributed.launch` (training/launch.py); each of the N
workers inits fleet with mp_degree=N (`parallel/topology.py`, the code training uses) and builds
`PanGuForCausalLM` split N ways by the weight table (`model/weight_tables.py`):

* a full model directory is split at load: each rank reads only its slice of every tensor
  (safetensors slicing, `weight_tables.shard_index`, the index `split_state_dict` uses), so a rank
  holds about 1/N of the split weights plus the replicated ones (layernorms, biases of row-parallel
  linears, position and top-query embeddings);
* a per-rank directory (`pangu train` with mp, `pangu reshard`) whose mp degree equals N loads its
  rank file as it is; another degree is a one-line error naming both and the `pangu reshard` command.

Rank 0 (the leader) reads the inputs, writes the outputs, prints and serves HTTP. The other ranks
(followers) run `follow()`: rank 0 broadcasts every step before running it, and they run the same
step on their shard (every forward holds collectives, so all ranks must call it with the same
shapes in the same order). The step protocol, one message per step over the mp group:

    [int64 (header bytes, payload bytes)]  then  [uint8 header JSON + array payload]
    header = {"op": ..., "args": {...}, "arrays": [[name, dtype, shape], ...], "free": [cache ids]}

ops: "forward" (a scoring forward: input_ids [+ labels]), "step" (a decode step: ids, positions,
mask, cache id -> new cache id), "select" / "pad_left" / "concat" / "trim_left" (the KV-cache row
edits of continuous batching, `inference/decoding.py`), "noop" (rank 0's heartbeat while it sends
nothing else: gloo's collectives time out after 30 s) and "stop" (followers exit). Each rank keeps its own KV-cache shard; rank 0 hands the batch decoder
`_Cache` handles whose ids name the followers' copies, and the ids of handles it dropped travel with
the next message so the followers drop theirs. Sampling is on rank 0 only (the logits are gathered
over the vocabulary on every rank); the chosen tokens reach the followers as the ids of the next
step, so the same seed gives the same tokens whatever N is.

If rank 0 dies, the launcher stops the other workers (and a follower whose broadcast partner is
gone gets a gloo error); a follower also exits when its launcher is gone (parent process changed).
Tensor parallel only: pipeline stages are not built here, so a model needs N >= its weight bytes /
one device's memory (`pangu plan`).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import weakref

import numpy as np

from ..errors import CheckpointError, UsageError

STOP, NOOP, FORWARD, STEP = "stop", "noop", "forward", "step"
CACHE_OPS = ("select", "pad_left", "concat", "trim_left")
HEARTBEAT_S = 4.0  # rank 0 sends a noop after this long without a message (gloo's own timeout is 30 s)


def launched_world() -> tuple[int, int]:
    """(world size, rank) as `paddle.distributed.launch` set them; (1, 0) in a plain process."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = int(os.environ.get("PADDLE_TRAINER_ID", os.environ.get("PADDLE_GLOBAL_RANK", "0")))
    return world, rank


def reshard_command(model: str, nproc: int) -> str:
    out = f"{model.rstrip(os.sep)}_mp{nproc}"
    return f"`pangu reshard {model} --output {out} --mp {nproc} --pp 1`"


def check_model_for_nproc(model: str, nproc: int, weights: str | None = None, option: str = "--model") -> None:
    """What `--nproc N` refuses before anything is launched (one line each): non-fp32 weights, an export
    directory, a per-rank directory of another layout, a model whose heads / widths / vocabulary do not
    divide by N."""
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return
    if weights not in (None, "fp32"):
        raise UsageError(f"--weights {weights} with --nproc {nproc}: tensor-parallel inference runs fp32 weights "
                         f"only for now; drop --weights or use --nproc 1")
    from .backend import is_export_dir

    from ..config.presets import model_preset

    config = model_preset(model, option)
    if config is None:
        if is_export_dir(model):
            raise UsageError(f"{option} {model}: a `pangu export` directory runs one Paddle Inference predictor "
                             f"(one process); give the model directory it was exported from with --nproc {nproc}")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise CheckpointError(f"{option} {model!r}: expected a model directory containing config.json "
                                  f"(from `pangu train`, `pangu convert` or save_pretrained) or preset:NAME")
        from ..convert.reshard import detect_layout
        from ..convert.common import open_model_config

        mp, pp, files = detect_layout(model)
        if files and (mp, pp) != (nproc, 1):
            raise CheckpointError(f"{option} {model} is saved per rank for mp{mp} pp{pp} but --nproc {nproc} runs "
                                  f"mp{nproc} pp1; load it with --nproc {mp} (pp1 layouts only) or reshard it: "
                                  f"{reshard_command(model, nproc)}")
        config = open_model_config(model)
    from ..config.parallel_config import ParallelConfig

    ParallelConfig(mp_degree=nproc).validate(config, nproc)  # heads / hidden / ffn / vocab divisible by N


def init_tensor_parallel(device: str = "cpu"):
    """Process groups for the launched world (mp_degree = world size): `parallel.topology.init_topology`."""
    from ..config.parallel_config import ParallelConfig
    from ..parallel.topology import init_topology

    world, _ = launched_world()
    return init_topology(ParallelConfig(mp_degree=world), device)


# ----------------------------------------------------------------------------- loading a rank's part


def _rank_weights_of_full_dir(path: str, config, mp: int, rank: int) -> dict[str, np.ndarray]:
    """This rank's part of every tensor of a plain model directory, read slice by slice where the
    format allows it (safetensors, not bf16) and through a full read of one tensor otherwise."""
    from safetensors import safe_open

    from ..io.model_dir import read_safetensors_header
    from ..io.weights import read_weight_files
    from ..model.weight_tables import shard_index, tensor_parallel_rules

    rules = tensor_parallel_rules(config)
    lazy = read_weight_files(path)
    headers: dict[str, dict] = {}
    out = {}
    for name, tensor in lazy.items():
        index = shard_index(name, tensor.shape, mp, rank, rules)
        src = tensor.source
        if src.endswith(".safetensors") and src not in headers:
            headers[src] = read_safetensors_header(src)
        if src.endswith(".safetensors") and headers[src][name][0] != "BF16":
            with safe_open(src, framework="np") as g:
                out[name] = np.ascontiguousarray(g.get_slice(name)[index])  # only this rank's bytes are read
        else:
            out[name] = np.ascontiguousarray(tensor.load()[index])
    return out


def load_rank_model(model: str, ctx, seed: int = 0, tokenizer: str | None = None):
    """(PanGuForCausalLM built for `ctx`, tokenizer) holding this rank's part of `model` (a model directory,
    full or per rank, or preset:NAME: the one-process model of `seed`, then split)."""
    import paddle

    from ..config.presets import model_preset
    from ..convert.reshard import detect_layout
    from ..io.weights import read_weight_files, variant_name
    from ..model import PanGuForCausalLM
    from ..model.weight_tables import split_state_dict
    from .loading import check_tokenizer_fits, load_tokenizer

    mp, rank = ctx.mp_degree, ctx.mp_rank
    config = model_preset(model)
    if config is not None:
        paddle.seed(seed)  # the plain model one process builds for preset:NAME (inference.loading)
        state = split_state_dict(PanGuForCausalLM(config).state_dict(), mp, rank)
    else:
        from ..model.verify import check_model_dir

        config = check_model_dir(model)  # manifest hashes / tensor names and shapes against config.json
        saved_mp, saved_pp, files = detect_layout(model)
        if files:
            if (saved_mp, saved_pp) != (mp, 1):  # checked before the launch too; a changed directory lands here
                raise CheckpointError(f"--model {model} is saved for mp{saved_mp} pp{saved_pp}, this job is mp{mp}: "
                                      f"{reshard_command(model, mp)}")
            state = {k: t.load() for k, t in read_weight_files(model, variant_name(rank, 0, mp, 1)).items()}
        else:
            state = _rank_weights_of_full_dir(model, config, mp, rank)
    net = PanGuForCausalLM(config, parallel=ctx)
    missing, unexpected = net.set_state_dict(state)
    if missing or unexpected:
        raise CheckpointError(f"{model}: rank {rank} of mp{mp} lacks {list(missing)[:3]} / holds unexpected "
                              f"{list(unexpected)[:3]}")
    net.eval()
    tok = load_tokenizer(model, tokenizer)
    check_tokenizer_fits(tok, net.config, tokenizer or model)
    return net, tok


# ----------------------------------------------------------------------------- the step channel


class Channel:
    """Rank 0 broadcasts step messages to the other ranks of the mp group (see the module docstring).

    gloo gives up on a collective after 30 s (its default timeout, which paddle 3.3.1's
    `ProcessGroupGloo.create` does not expose), and a follower waits in one for the next step. So on
    rank 0 a heartbeat thread sends a noop whenever nothing was sent for HEARTBEAT_S seconds (an idle
    server, rank 0 reading data or writing a report); a step holds `lock` from its message to the end
    of its own collectives, so a noop never lands inside one."""

    def __init__(self, group=None, src: int = 0):
        import time

        self.group, self.src = group, src
        self.lock = threading.RLock()
        self.last = time.monotonic()
        self.closed = False
        self._beat: threading.Thread | None = None

    def start_heartbeat(self) -> "Channel":
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat, name="pangu-tp-heartbeat", daemon=True)
            self._beat.start()
        return self

    def _heartbeat(self) -> None:
        import time

        while not self.closed:
            time.sleep(HEARTBEAT_S / 4)
            if time.monotonic() - self.last < HEARTBEAT_S or not self.lock.acquire(blocking=False):
                continue
            try:
                if not self.closed:
                    self.send(NOOP)
            except Exception as err:  # noqa: BLE001 - the job is ending; the main thread reports it
                print(f"pangu: tensor-parallel heartbeat failed: {err}", file=sys.stderr, flush=True)
                return
            finally:
                self.lock.release()

    def close(self, free: list | None = None) -> None:
        """The stop message (once); followers leave `follow()`."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.send(STOP, free=free)

    def send(self, op: str, args: dict | None = None, arrays: dict | None = None, free: list | None = None) -> None:
        import time

        import paddle
        import paddle.distributed as dist

        arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
        header = json.dumps({"op": op, "args": args or {}, "free": free or [],
                             "arrays": [[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()]}).encode()
        payload = b"".join(v.tobytes() for v in arrays.values())
        with self.lock:
            sizes = paddle.to_tensor(np.array([len(header), len(payload)], dtype="int64"))
            dist.broadcast(sizes, src=self.src, group=self.group)
            body = paddle.to_tensor(np.frombuffer(header + payload, dtype="uint8").copy())
            dist.broadcast(body, src=self.src, group=self.group)
            self.last = time.monotonic()

    def recv(self) -> tuple[str, dict, dict, list]:
        import paddle
        import paddle.distributed as dist

        sizes = paddle.zeros([2], dtype="int64")
        dist.broadcast(sizes, src=self.src, group=self.group)
        n_header, n_payload = (int(x) for x in sizes.numpy())
        body = paddle.zeros([n_header + n_payload], dtype="uint8")
        dist.broadcast(body, src=self.src, group=self.group)
        raw = body.numpy().tobytes()
        header = json.loads(raw[:n_header])
        arrays, at = {}, n_header
        for name, dtype, shape in header["arrays"]:
            dt = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            arrays[name] = np.frombuffer(raw, dtype=dt, count=count, offset=at).reshape(shape).copy()
            at += count * dt.itemsize
        return header["op"], header["args"], arrays, header["free"]


class _Cache:
    """Rank 0's handle of one KV cache: its own shard (`local`) and the id of the followers' copies."""

    __slots__ = ("id", "local", "__weakref__")

    def __init__(self, cid: int, local):
        self.id, self.local = cid, local


class LeaderStepper:
    """The stepper rank 0's batch decoder drives (generate, serve, evaluate's generation tasks): every call
    is broadcast to the followers, then runs here, under the channel's lock; see the module docstring."""

    def __init__(self, stepper, channel: Channel):
        self.inner, self.channel, self.config = stepper, channel.start_heartbeat(), stepper.config
        self._next, self._freed, self._freed_lock = 0, [], threading.Lock()

    def _send(self, op, args=None, arrays=None):
        with self._freed_lock:
            free, self._freed = self._freed, []
        self.channel.send(op, args, arrays, free)

    def _handle(self, local) -> _Cache:
        handle = _Cache(self._next, local)
        self._next += 1
        weakref.finalize(handle, self._drop, handle.id)
        return handle

    def _drop(self, cid: int) -> None:
        with self._freed_lock:
            self._freed.append(cid)

    def __call__(self, ids, positions, mask, cache):
        with self.channel.lock:
            self._send(STEP, {"cache": None if cache is None else cache.id, "out": self._next},
                       {"ids": np.asarray(ids, "int64"), "positions": np.asarray(positions, "int64"),
                        "mask": np.asarray(mask, "int64")})
            out = self._handle(None)  # the id named in the message
            logits, out.local = self.inner(ids, positions, mask, None if cache is None else cache.local)
        return logits, out

    def _edit(self, op: str, args: dict, run):
        with self.channel.lock:
            self._send(op, {**args, "out": self._next})
            return self._handle(run())

    def select(self, cache, rows):
        rows = [int(r) for r in rows]
        return self._edit("select", {"cache": cache.id, "rows": rows}, lambda: self.inner.select(cache.local, rows))

    def pad_left(self, cache, n: int):
        if n == 0:
            return cache
        return self._edit("pad_left", {"cache": cache.id, "n": int(n)}, lambda: self.inner.pad_left(cache.local, n))

    def concat(self, a, b):
        return self._edit("concat", {"a": a.id, "b": b.id}, lambda: self.inner.concat(a.local, b.local))

    def trim_left(self, cache, n: int):
        if n == 0:
            return cache
        return self._edit("trim_left", {"cache": cache.id, "n": int(n)}, lambda: self.inner.trim_left(cache.local, n))

    def close(self) -> None:
        """Tell the followers to exit (once)."""
        self.channel.close()


class LeaderModel:
    """Rank 0's view of the model for evaluation: `model(input_ids[, labels=...])` is broadcast before it
    runs here; `make_stepper()` gives the LeaderStepper `inference.generation.generate` decodes with."""

    def __init__(self, model, channel: Channel):
        self.model, self.channel, self.config = model, channel.start_heartbeat(), model.config
        self.parallel = model.parallel
        self._stepper = None

    def __call__(self, input_ids, labels=None):
        arrays = {"input_ids": input_ids.numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        with self.channel.lock:
            self.channel.send(FORWARD, {}, arrays)
            return self.model(input_ids, labels=labels)

    def eval(self):
        self.model.eval()
        return self

    def make_stepper(self):
        from .generation import DygraphStepper

        if self._stepper is None:  # one numbering of cache ids per run, as the follower has one stepper
            self._stepper = LeaderStepper(DygraphStepper(self.model), self.channel)
        return self._stepper

    def close(self) -> None:
        self.channel.close()


def _watch_parent() -> None:
    """Exit when the launcher that started this follower is gone (never block forever on a dead job)."""
    import time

    parent = os.getppid()
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            print("follower: the launcher is gone; exiting", file=sys.stderr, flush=True)
            os._exit(3)


def follow(model, stepper, channel: Channel, caches: dict | None = None, watch: bool = True) -> int:
    """A follower's loop: run each step rank 0 broadcasts until "stop"; returns the number of steps.

    A step that fails here fails on rank 0 too (same shapes, same code): it is logged and the loop goes
    on, as rank 0's server goes on with its other rows. `caches` (id -> this rank's KV cache) and
    `watch=False` (no SIGINT change, no launcher watch) are for tests."""
    import signal

    import paddle

    if watch:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when the job ends (its stop message)
        threading.Thread(target=_watch_parent, name="pangu-follower-watch", daemon=True).start()
    caches = {} if caches is None else caches
    done = 0
    while True:
        op, args, arrays, free = channel.recv()
        for cid in free:
            caches.pop(cid, None)
        if op == STOP:
            return done
        if op == NOOP:
            continue
        try:
            with paddle.no_grad():
                if op == FORWARD:
                    labels = arrays.get("labels")
                    model(paddle.to_tensor(arrays["input_ids"]),
                          labels=None if labels is None else paddle.to_tensor(labels))
                elif op == STEP:
                    past = None if args["cache"] is None else caches[args["cache"]]
                    _, caches[args["out"]] = stepper(arrays["ids"], arrays["positions"], arrays["mask"], past)
                elif op == "select":
                    caches[args["out"]] = stepper.select(caches[args["cache"]], args["rows"])
                elif op == "pad_left":
                    caches[args["out"]] = stepper.pad_left(caches[args["cache"]], args["n"])
                elif op == "concat":
                    caches[args["out"]] = stepper.concat(caches[args["a"]], caches[args["b"]])
                elif op == "trim_left":
                    caches[args["out"]] = stepper.trim_left(caches[args["cache"]], args["n"])
                else:
                    raise ValueError(f"unknown step op {op!r}")
        except Exception as err:  # noqa: BLE001 - rank 0 reports it to its user; keep mirroring
            print(f"follower: step {op} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        done += 1
