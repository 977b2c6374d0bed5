"""Fine-tuning through the real PaddleNLP `Trainer` (the one module that builds it).

Every `TrainingArguments` field reaches the Trainer unchanged (`arguments.py` parses them with
PaddleNLP's own parser). What this module adds around it:

* the model: a model directory (split for `tensor_parallel_degree` > 1 by PaddleNLP's
  `_get_tensor_parallel_mappings` hook, fed by our weight table) or `preset:NAME`; pipeline
  parallel builds `PanGuForCausalLMPipe`; `recompute` turns on block recompute; LoRA wraps it;
* checks at start for what would otherwise fail mid-run (max_length above the model's positions,
  packing without the document-reset mask, bf16/fp16 on CPU where paddle 3.3.1 neither autocasts
  nor has a bf16 matmul kernel);
* the data (`data.py`, `examples.py`, `builtin.py`) and its truncation counts in the log;
* the final save: one plain model directory (tensor-parallel shards merged back);
* `unified_checkpoint`: PaddleNLP's own save / load, plus the one-process load of a checkpoint that
  several processes wrote (`unified.py`, docs/FINETUNE.md).

docs/PLATFORM.md: the Paddle team moved LLM work to `paddleformers` (argument names differ, e.g.
tensor_model_parallel_size); keeping the Trainer here makes a later switch one place.
"""
from __future__ import annotations

import logging
import os
import random

from ..errors import ConfigError

logger = logging.getLogger("paddle_pangu.finetune")


def check_precision(training_args) -> None:
    """bf16 / fp16 are passed to the Trainer on GPU / NPU; on CPU they would silently train in fp32."""
    import paddle

    if (training_args.bf16 or training_args.fp16) and paddle.get_device().startswith("cpu"):
        which = "bf16" if training_args.bf16 else "fp16"
        raise ConfigError(
            f"{which}=True with fp16_opt_level={training_args.fp16_opt_level!r} on CPU: paddle 3.3.1 does not "
            f"autocast on CPU places and its CPU dygraph has no bfloat16 matmul kernel; run on GPU/NPU or drop {which}")


def load_model(model_args, training_args):
    """The model this process trains (not yet LoRA-wrapped), plus its tokenizer."""
    import paddle

    with paddle.utils.unique_name.guard():
        return _load_model(model_args, training_args)


def _load_model(model_args, training_args):
    import paddle

    from ..config.presets import model_preset
    from ..inference.loading import load_tokenizer
    from ..model import PanGuForCausalLM

    path = model_args.model_name_or_path
    config = model_preset(path, "model_name_or_path")  # None for a directory
    tp = dict(tensor_parallel_degree=training_args.tensor_parallel_degree,
              tensor_parallel_rank=training_args.tensor_parallel_rank)
    if training_args.pipeline_parallel_degree > 1:
        model = _load_pipe(path, config, training_args)
    elif config is not None:
        from ..config.config_file import check_fits_memory

        paddle.seed(training_args.seed)
        check_fits_memory(config, f"model_name_or_path={path}", 4 / training_args.tensor_parallel_degree)
        config.tensor_parallel_degree, config.tensor_parallel_rank = tp.values()
        model = PanGuForCausalLM(config)
    elif os.path.isfile(os.path.join(path, "config.json")):
        model = PanGuForCausalLM.from_pretrained(path, **tp)
    else:
        raise ConfigError(f"model_name_or_path={path!r}: expected a model directory with config.json or preset:NAME")
    if training_args.recompute and hasattr(model, "pangu"):
        model.pangu.set_recompute(1)
    _choose_attention(model)
    source = "" if config is not None else path
    return model, load_tokenizer(source, model_args.tokenizer_name_or_path)


def _check_placed(training_args) -> str:
    """This process' place (e.g. "npu:1"), refused when it is not the device the run asked for: fleet.init
    (TrainingArguments' __post_init__) sets the place again from the launcher's environment."""
    import paddle

    from ..parallel.device import DeviceError

    placed = paddle.get_device()
    wanted = getattr(training_args, "placed_on", None)  # set by arguments.parse_finetune_args
    if wanted is not None and placed.split(":")[0] != wanted:
        raise DeviceError(f"device={wanted!r} but this process was placed on {placed!r} "
                          f"(PADDLE_DISTRI_BACKEND={os.environ.get('PADDLE_DISTRI_BACKEND')})")
    return placed


def _choose_attention(model) -> None:
    """The device's fused attention where it has one (the Ascend plugin's `flash_attention_npu` on npu,
    sdpa on a CUDA build), as `pangu train` does; the reference math elsewhere. Without this the
    Trainer ran the plain softmax(QK^T) path on npu and never called the op the Ascend run calls."""
    import paddle

    from ..model.layers import set_attention_impl
    from ..parallel.device import fused_attention_available

    set_attention_impl(model, fused_attention_available(paddle.get_device().split(":")[0]) or "plain")


def _load_pipe(path, preset, training_args):
    from ..model.modeling_pp import PanGuForCausalLMPipe

    if preset is not None:
        raise ConfigError("pipeline_parallel_degree > 1 needs a model directory (save one with save_pretrained)")
    return PanGuForCausalLMPipe.from_pretrained(path, tensor_parallel_degree=training_args.tensor_parallel_degree,
                                                tensor_parallel_rank=training_args.tensor_parallel_rank)


def resolve_max_length(data_args, config) -> int:
    limit = config.max_position_embeddings
    max_length = data_args.max_length or limit
    if max_length > limit:
        raise ConfigError(f"max_length={max_length} exceeds the model's max_position_embeddings={limit} "
                          f"(position and top-query tables have {limit} rows); use max_length <= {limit}")
    if data_args.packing and not config.eod_reset:
        raise ConfigError("packing=True needs a model with eod_reset=True: the document-reset mask is what "
                          "keeps packed examples from attending to each other")
    return max_length


def _rows(spec: str, data_args):
    from .builtin import builtin_rows
    from .data import read_rows

    if spec.startswith("builtin:"):
        return builtin_rows(spec, data_args.builtin_max_examples)
    return read_rows(spec, data_args)


def split_eval(rows, ratio: float, seed: int):
    """(train, eval): a seeded shuffle, eval = ceil-ish ratio of rows (at least 1)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * ratio))
    if n_eval >= len(rows):
        raise ConfigError(f"eval_ratio={ratio} leaves no training rows out of {len(rows)}")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def build_datasets(data_args, tokenizer, config, seed: int):
    """(train examples, eval examples) ready for the collator; truncation counts are logged."""
    from .examples import TruncationStats, build_examples, pack_examples

    max_length = resolve_max_length(data_args, config)
    train_rows = _rows(data_args.train_file, data_args)
    eval_rows = _rows(data_args.eval_file, data_args) if data_args.eval_file else []
    if not eval_rows and data_args.eval_ratio > 0:
        train_rows, eval_rows = split_eval(train_rows, data_args.eval_ratio, seed)
    out = []
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        stats = TruncationStats(data_args.truncation)
        examples = build_examples(rows, tokenizer, max_length, config.eod_token_id, data_args.truncation,
                                  data_args.response_only_loss, stats)
        print(f"finetune {name} data: {stats.summary()}", flush=True)
        if data_args.packing:
            examples = pack_examples(examples, max_length, config.eod_token_id)
        out.append(examples)
    if not out[0]:
        raise ConfigError(f"{data_args.train_file}: no training examples left after truncation={data_args.truncation}")
    return out[0], out[1]


def _trainer_class():
    """PaddleNLP's Trainer with two single-process fixes (3.0.0b4):

    * the train sampler is the `DistributedBatchSampler` a multi-process run uses (here with one
      replica): its shuffle is seeded by the epoch, so one process sees the batches of a tensor- or
      pipeline-parallel run, and a resumed run the batches of the uninterrupted one (the stock
      single-process `BatchSampler` draws from the global RNG, which resume restores only after the
      interrupted epoch's order was drawn);
    * `save_total_limit` also rotates checkpoints (3.0.0b4 rotates only when local_rank == 0, and it
      is -1 in a plain run);
    * `unified_checkpoint`: one process loads every file of a checkpoint several processes wrote
      (`unified.py`; 3.0.0b4 reads only the first).
    """
    from paddle.io import DistributedBatchSampler
    from paddlenlp.trainer import Trainer

    class PanGuSFTTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.args.unified_checkpoint:
                from .unified import handler_class

                self.unified_checkpoint_handler = handler_class()(self.args)

        def _get_train_sampler(self):
            if self.args.world_size > 1 or self.train_dataset is None:
                return super()._get_train_sampler()
            return DistributedBatchSampler(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                                           shuffle=True, num_replicas=1, rank=0,
                                           drop_last=self.args.dataloader_drop_last)

        def _save_checkpoint(self, model, metrics=None):
            super()._save_checkpoint(model, metrics)
            if self.args.local_rank < 0 and not self.args.use_hybrid_parallel:
                self._rotate_checkpoints(use_mtime=False, output_dir=self.args.output_dir)

    return PanGuSFTTrainer


def _loss_recorder(history: list):
    """A TrainerCallback keeping every logged {step, loss | eval_loss} (the Trainer clears log_history)."""
    from paddlenlp.trainer import TrainerCallback

    class LossRecorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "eval_loss"):
                if logs and key in logs:
                    history.append({"step": state.global_step, key: float(logs[key])})
                    if args.process_index == 0:  # the CLI quiets PaddleNLP's own INFO log
                        print(f"step {state.global_step}/{state.max_steps}: {key} {float(logs[key]):.4f}", flush=True)

    return LossRecorder()


def build_trainer(model, tokenizer, training_args, train_examples, eval_examples, pad_to=None, history=None,
                  callbacks=()):
    from .examples import SFTCollator

    training_args.remove_unused_columns = False
    return _trainer_class()(
        model=model, args=training_args, train_dataset=train_examples, eval_dataset=eval_examples or None,
        tokenizer=tokenizer, data_collator=SFTCollator(model.config.pad_token_id, pad_to=pad_to),
        callbacks=[_loss_recorder(history if history is not None else []), *callbacks])


def save_final(trainer, model, tokenizer, training_args) -> None:
    """output_dir becomes a plain model directory (tensor-parallel shards merged, safetensors);
    LoRA runs save the adapters (merge them with `pangu merge-lora`)."""
    from ..io.model_dir import seal_model_dir

    merge = training_args.tensor_parallel_degree > 1
    if hasattr(model, "lora_config") or training_args.pipeline_parallel_degree > 1:
        trainer.save_model(merge_tensor_parallel=merge)
    else:
        model.save_pretrained(training_args.output_dir, merge_tensor_parallel=merge,
                              is_main_process=training_args.should_save, safe_serialization=True)
        if training_args.should_save:
            tokenizer.save_pretrained(training_args.output_dir)
    if training_args.world_size > 1:
        import paddle.distributed as dist

        dist.barrier()  # every rank's files are written before the manifest lists them
    if training_args.should_save:  # MANIFEST.json over the weights / adapters (io/model_dir.py)
        seal_model_dir(training_args.output_dir)


def run_finetune(model_args, data_args, training_args, callbacks=()) -> dict:
    """Load, build data, train (resuming when asked), evaluate, save; returns metrics + loss history.
    `callbacks`: extra PaddleNLP TrainerCallbacks.

    Runs under a fresh unique-name scope: the Trainer's optimizer checkpoints are keyed by parameter
    and accumulator names (`embedding_0.w_0_moment1_0`), so a resumed run must create them under the
    same names as the run that saved them, whatever else the process built before."""
    import paddle

    from ..io.outdir import lock_output_dir, release_output_dir

    out = training_args.output_dir
    if training_args.process_index == 0:  # one fine-tune per output_dir (io/outdir.py), before anything is written
        lock_output_dir(out, "pangu finetune", "output_dir")
    try:
        with paddle.utils.unique_name.guard():
            return _run_finetune(model_args, data_args, training_args, callbacks)
    finally:
        if training_args.process_index == 0:
            release_output_dir(out)


def _run_finetune(model_args, data_args, training_args, callbacks) -> dict:
    from .lora import apply_lora

    check_precision(training_args)
    device = _check_placed(training_args)
    model, tokenizer = load_model(model_args, training_args)
    train, evals = build_datasets(data_args, tokenizer, model.config, training_args.seed)
    if model_args.lora:
        model = apply_lora(model, model_args, training_args)
    pipelined = training_args.pipeline_parallel_degree > 1
    pad_to = resolve_max_length(data_args, model.config) if pipelined else None
    history: list = []
    from .resume import choose_checkpoint, manifest_on_save

    trainer = build_trainer(model, tokenizer, training_args, train, evals, pad_to, history,
                            [manifest_on_save(), *callbacks])
    resume = training_args.resume_from_checkpoint
    if training_args.world_size == 1:  # verified, falling back past damaged ones (finetune/resume.py)
        resume = choose_checkpoint(training_args.output_dir, resume)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if evals:
        metrics.update(trainer.evaluate())
    save_final(trainer, model, tokenizer, training_args)
    metrics["history"] = history
    metrics["device"] = device
    metrics["attention_impl"] = sorted({getattr(m, "impl", "") for m in model.sublayers() if hasattr(m, "impl")})
    if training_args.should_save:
        import json

        with open(os.path.join(training_args.output_dir, "finetune_history.json"), "w", encoding="utf-8") as fh:
            json.dump(history, fh)
    return metrics
