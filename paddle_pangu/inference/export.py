"""Export to Paddle Inference and generate with the real predictor.

Like the MindSpore model zoo's serving export (REF "Generation": two
graphs), we save two static graphs that share one weight file layout:

- `prefill`: the whole (left-padded) prompt -> last-token logits + the KV cache
- `decode`:  one token + the KV cache        -> last-token logits + the grown cache

The cache travels as one key and one value tensor per layer (L = blocks + query layer), each
[B, nh, T, hd] with dynamic B and T: inputs past_key_i / past_value_i of `decode`, outputs after the
logits in the same order. Per-layer tensors, not one stacked [L, 2, B, nh, T, hd] (the layout of
format 1), spare each decode step 2L slices and L + 1 stacks (which copied the whole cache twice).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import paddle

from .generation import decode_loop
from .sampling import SamplingConfig

GRAPHS = ("prefill", "decode")
META_FILE = "pangu_inference.json"
FORMAT = 2  # 1: one stacked kv tensor (re-export those directories)
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "gpu", "npu")


def _flat(cache):
    return tuple(t for kv in cache for t in kv)  # k_0, v_0, k_1, v_1, ...


class _Graph(paddle.nn.Layer):
    """The model plus (head_copy) `head_t`, an [H, V] copy of the tied word embedding saved with the graph:
    the head reads it instead of the transposed embedding, the faster GEMV layout per decode token on CPU
    (see DygraphStepper). It costs the embedding's size once more in each graph's weight file."""

    def __init__(self, model, head_t=None):
        """head_t: the [H, V] copy (made once by export_model for both graphs), or None to leave it out."""
        super().__init__()
        self.model = model
        self.head_t = None
        if head_t is not None:
            self.head_t = self.create_parameter(head_t.shape, dtype=head_t.dtype)
            with paddle.no_grad():
                self.head_t.set_value(head_t)
            self.head_t.stop_gradient = True


class _Prefill(_Graph):
    def forward(self, input_ids, position_ids, attention_mask):
        logits, cache = self.model(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                   use_cache=True, logits_to_keep=1,  # head on the sampled position only
                                   head_weight_t=self.head_t)
        return (logits[:, -1, :].astype("float32"),) + _flat(cache)


class _Decode(_Graph):
    def forward(self, input_ids, position_ids, attention_mask, past):
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(self.model.config.num_layers)]
        logits, new = self.model(
            input_ids, position_ids=position_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
            logits_to_keep=1, head_weight_t=self.head_t,
        )
        return (logits[:, -1, :].astype("float32"),) + _flat(new)


def _specs(config, with_cache: bool):
    specs = [
        paddle.static.InputSpec([None, None], "int64", "input_ids"),
        paddle.static.InputSpec([None, None], "int64", "position_ids"),
        paddle.static.InputSpec([None, None], "int64", "attention_mask"),  # [B, T], 1 = token, 0 = left padding
    ]
    if with_cache:
        shape = [None, config.num_attention_heads, None, config.head_dim]
        specs.append([paddle.static.InputSpec(shape, "float32", f"past_{kind}_{i}")
                      for i in range(config.num_layers) for kind in ("key", "value")])
    return specs


def export_model(model, output_dir: str, tokenizer_dir: str | None = None, dtype: str = "float32",
                 head_copy: bool = True, weights: str = "fp32") -> dict:
    """Write prefill/decode graphs (`.json` + `.pdiparams`), the model config and tokenizer files to output_dir.

    head_copy: store an [H, V] copy of the tied head in each graph (see _Graph); off for device memory.

    dtype: the precision the predictor runs at. The graphs are traced in float32 (Paddle 3.3.1 cannot trace
    float16 ops on a CPU place) and the dtype is recorded in the metadata; on gpu / npu the predictor is
    created with that precision, so Paddle Inference's mixed-precision pass casts weights and ops at load
    time while inputs and outputs (ids, float32 logits, the KV cache) keep their types (predictor_settings)."""
    from ..errors import CheckpointError, UsageError
    from ..io.model_dir import publish_files, seal_model_dir, staging_dir

    from .quantize import check_weights, quantize_model

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {DTYPES}")
    check_weights(weights)
    if weights != "fp32" and dtype != "float32":
        raise UsageError(f"--weights {weights} exports run on the CPU predictor in float32: drop --dtype {dtype}")
    model.eval()
    # every file is written into a staging directory first, then renamed into output_dir (a full disk leaves
    # nothing half-written there; a planted symlink is replaced, not written through) and sealed with a
    # MANIFEST.json the predictor verifies (io/model_dir.py)
    final = output_dir
    if weights != "fp32":  # quantised once here; the graphs hold the int8 buffers and the custom op
        quantize_model(model, weights)
        head_copy = False  # the head reads its int8 copy, not an fp32 [H, V] one
    output_dir = staging_dir(final)
    shutil.rmtree(output_dir, ignore_errors=True)
    try:
        os.makedirs(output_dir)
        meta = _write_export(model, output_dir, tokenizer_dir, dtype, head_copy, weights)
    except OSError as exc:
        shutil.rmtree(output_dir, ignore_errors=True)
        raise CheckpointError(f"export to {final} failed: {exc.strerror or exc} ({getattr(exc, 'filename', '') or final}); "
                              "nothing was written there") from exc
    publish_files(output_dir, final)
    seal_model_dir(final)
    return meta


def _write_export(model, output_dir: str, tokenizer_dir, dtype: str, head_copy: bool, weights: str) -> dict:
    with paddle.no_grad():  # one transpose of the embedding for both graphs
        head_t = model.get_input_embeddings().weight.t().contiguous() if head_copy else None
    for name, wrapper, with_cache in (("prefill", _Prefill, False), ("decode", _Decode, True)):
        layer = wrapper(model, head_t)
        layer.forward = paddle.jit.to_static(layer.forward, input_spec=_specs(model.config, with_cache),
                                            full_graph=True)
        paddle.jit.save(layer, os.path.join(output_dir, name))
    model.config.save_pretrained(output_dir)
    if tokenizer_dir:
        for fname in ("vocab.model", "vocab.vocab", "tokenizer_config.json", "special_tokens_map.json"):
            src = os.path.join(tokenizer_dir, fname)
            if os.path.exists(src) and not os.path.exists(os.path.join(output_dir, fname)):
                shutil.copy(src, output_dir)
    meta = {"format": FORMAT, "graphs": list(GRAPHS), "dtype": dtype, "head_copy": head_copy, "weights": weights,
            "kv_layout": "past_key_i, past_value_i per layer: [batch, heads, tokens, head_dim]"}
    with open(os.path.join(output_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def predictor_settings(device: str = "cpu", threads: int = 0, dtype: str = "float32") -> list[tuple[str, tuple]]:
    """The paddle.inference.Config calls for `device` and precision `dtype`, as (method, args) in order.

    gpu: enable_use_gpu(100 MB initial pool, FLAGS_selected_gpus, precision), as PaddleNLP's predictor does.
    npu: the custom device ("npu", FLAGS_selected_npus, precision) with IR optimisation on, then (in
    predictor_config) the Ascend plugin's passes on the pass builder, as PaddleNLP's llm predictor does.
    cpu: disable_gpu and the math-library threads (0 = paddle's default); bfloat16 through oneDNN (paddle falls
    back to float32 on a CPU without bf16 instructions and says so); float16 is refused (no CPU kernels)."""
    from ..errors import UsageError

    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: expected one of {DEVICES}")
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r}: expected one of {DTYPES}")
    precision = getattr(paddle.inference.PrecisionType, {"float32": "Float32", "float16": "Half",
                                                          "bfloat16": "Bfloat16"}[dtype])
    if device == "gpu":
        calls = [("enable_use_gpu", (100, int(os.environ.get("FLAGS_selected_gpus", 0)), precision))]
    elif device == "npu":
        calls = [("enable_custom_device", ("npu", int(os.environ.get("FLAGS_selected_npus", 0)), precision)),
                 ("switch_ir_optim", (True,))]
    elif dtype == "float16":
        raise UsageError("a float16 export runs on --device gpu or npu; Paddle has no float16 CPU kernels "
                         "(export float32 or bfloat16 for the CPU)")
    else:
        calls = [("disable_gpu", ())] + ([("set_cpu_math_library_num_threads", (threads,))] if threads else [])
        # fp32: oneDNN off. Every decode step has a new cache length, so oneDNN re-plans its primitives each
        # token, which costs more CPU per generate than it saves (measured: README "Benchmarks", oneDNN).
        calls += ([("enable_mkldnn", ()), ("enable_mkldnn_bfloat16", ())] if dtype == "bfloat16"
                  else [("disable_mkldnn", ())])
    return calls + [("disable_glog_info", ())]


def predictor_config(model_file: str, params_file: str, device: str = "cpu", threads: int = 0,
                     dtype: str = "float32"):
    """The paddle.inference.Config for one graph on `device` (see predictor_settings).

    npu needs the device plugin loaded in this process: without it Paddle Inference accepts the config
    and then aborts the whole process in create_predictor ("No allocator found for the place,
    Place(npu:0)"), so a missing plugin is a one-line DeviceError here instead."""
    if device == "npu":
        from ..parallel.device import init_custom_allocator, select_device

        select_device("npu")  # DeviceError naming the missing plugin
        init_custom_allocator("npu", int(os.environ.get("FLAGS_selected_npus", 0)))  # before any predictor
    cfg = paddle.inference.Config(model_file, params_file)
    for method, args in predictor_settings(device, threads, dtype):
        getattr(cfg, method)(*args)
    if device == "npu":
        add_npu_passes(cfg)
    return cfg


def add_npu_passes(cfg) -> bool:
    """PaddleNLP's `passes.addPasses(config.pass_builder(), model_type, quant_type)` from the Ascend plugin;
    False (the predictor runs unfused) when the plugin has no pass module."""
    try:
        import paddle_custom_device.npu.passes as passes
    except ImportError:
        return False
    passes.addPasses(cfg.pass_builder(), "pangu", "")
    return True


class InferenceStepper:
    """Decoding step over two Paddle Inference predictors (prefill on the first call, decode after)."""

    def __init__(self, export_dir: str, device: str = "cpu", threads: int = 0):
        missing = [g for g in GRAPHS for ext in (".json", ".pdiparams") if not os.path.exists(os.path.join(export_dir, g + ext))]
        if missing:
            raise FileNotFoundError(
                f"{export_dir}: not a `pangu export` directory, missing graph files for {sorted(set(missing))} "
                f"(expected prefill.json/.pdiparams and decode.json/.pdiparams)"
            )
        from ..config import PanGuConfig
        from ..config.config_file import read_config_file
        from ..io.model_dir import verify_model_dir

        verify_model_dir(export_dir)  # sizes + hashes of the graphs and weights, when `pangu export` sealed it
        read_config_file(os.path.join(export_dir, "config.json"))
        self.config = PanGuConfig.from_pretrained(export_dir)
        meta = read_meta(export_dir)
        self.dtype = meta.get("dtype", "float32")
        self.weights = meta.get("weights", "fp32")
        if self.weights in ("int8", "bf16"):  # the graphs call pangu_int8_linear / pangu_bf16_linear: register
            # the custom ops before the predictors load
            from .. import kernels

            kernels.load_int8()
        self.predictors = {g: self._create(export_dir, g, device, threads, self.dtype) for g in GRAPHS}

    @staticmethod
    def _create(export_dir, name, device, threads, dtype):
        cfg = predictor_config(os.path.join(export_dir, name + ".json"), os.path.join(export_dir, name + ".pdiparams"),
                               device, threads, dtype)
        return paddle.inference.create_predictor(cfg)

    def __call__(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache):
        pred = self.predictors["prefill" if cache is None else "decode"]
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask}
        for i, (k, v) in enumerate(cache or ()):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = k, v
        for name in pred.get_input_names():
            pred.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(feeds[name]))
        pred.run()
        logits, *flat = (pred.get_output_handle(n).copy_to_cpu() for n in pred.get_output_names())
        return logits, tuple(zip(flat[0::2], flat[1::2]))

    # cache helpers for the batch decoder: one (k, v) per layer, each [B, nh, T, hd] numpy
    @staticmethod
    def select(cache, rows):
        return tuple((k[rows], v[rows]) for k, v in cache)

    @staticmethod
    def pad_left(cache, n):
        pad = [(0, 0), (0, 0), (n, 0), (0, 0)]
        return tuple((np.pad(k, pad), np.pad(v, pad)) for k, v in cache) if n else cache

    @staticmethod
    def concat(a, b):
        return tuple((np.concatenate([ka, kb]), np.concatenate([va, vb])) for (ka, va), (kb, vb) in zip(a, b))

    @staticmethod
    def trim_left(cache, n):
        return tuple((k[:, :, n:], v[:, :, n:]) for k, v in cache) if n else cache


def read_meta(export_dir: str) -> dict:
    """The export's metadata; a CheckpointError naming the file when it is unreadable or of another format."""
    from ..errors import CheckpointError

    from ..utils.json_file import read_json

    path = os.path.join(export_dir, META_FILE)
    meta = read_json(path, "export metadata", CheckpointError)
    if meta.get("format", 1) != FORMAT:
        found = meta.get("format", 1)
        raise CheckpointError(f"{path}: export format {found!r}, this paddle_pangu reads format {FORMAT} "
                              f"(per-layer KV cache inputs); run `pangu export` again on the model")
    return meta


def generate_with_predictor(export_dir: str, prompts: list[list[int]], cfg: SamplingConfig | None = None,
                            device: str = "cpu") -> list[list[int]]:
    """Generation through Paddle Inference: same sampling loop as the dygraph `generate`."""
    stepper = InferenceStepper(export_dir, device)
    return decode_loop(stepper, stepper.config, prompts, cfg or SamplingConfig())
