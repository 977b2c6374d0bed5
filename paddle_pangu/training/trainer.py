"""The pretraining loop: single process, dp, mp, pp, sharding, recompute, accumulation.

One `Trainer` runs alone or under `python -m paddle.distributed.launch`:

1. `RunConfig.validate(world_size)` checks the layout before any process
   group exists (`ParallelConfig.validate`).
2. Device selection and, with more than one process, fleet hybrid topology.
3. Model: `PanGuForCausalLM` (pp == 1) or `PanGuForCausalLMPipe` (pp > 1),
   optionally started from a plain (unsharded) state dict.
4. AdamW + warmup/cosine, AMP, then `fleet.distributed_model/optimizer`.
5. Loop: per step, this rank's batch is a pure function of (seed, step, data
   rank) (`batches.StepBatcher`); pp steps go through fleet's
   `PipelineParallel.train_batch`, the rest through forward/backward over the
   micro-batches. Console / tqdm / VisualDL logs, `metrics.jsonl`, periodic
   checkpoints, evaluation (loss, perplexity), and the final model directory
   (`final_model.py`).
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np
import paddle
import paddle.distributed as dist

from ..io.weights import load_plain_weights
from . import checkpoint as ckpt
from .amp import plan_amp
from .batches import StepBatcher, run_datasets, split_tokens_labels
from .evaluate import batch_mean_perplexity
from .final_model import save_final_model
from .train_log import TrainLogger, logger, setup_console_logging
from .nonfinite import NonFiniteError, NonFiniteGuard, finite_or_nan, stop_message
from .optim import attach_norm_recorder, build_optimizer, build_scheduler
from .run_config import RunConfig, check_data_paths, to_dict


class Trainer:
    """Pretrain PanGu-alpha as described by one RunConfig."""

    def __init__(self, cfg: RunConfig, validated: tuple | None = None):
        """`validated`: what `cfg.validate(launched world size)` returned, when the caller (`pangu train`) has
        run that check already; else it runs here. Either way before any collective."""
        self.cfg = cfg
        from paddle_pangu.parallel.topology import launched_world_size

        self.world_size = launched_world_size()
        self.model_config, self.par = validated if validated is not None else cfg.validate(self.world_size)
        _check_memory(self.model_config, self.par, self.world_size)
        check_data_paths(cfg)
        self.out_dir = cfg.train.output_dir
        _lock_output_dir(self.out_dir)  # before anything is written there: one run per output_dir
        self.step = 0
        self._setup_runtime()
        self._build()

    # ---- set-up ----------------------------------------------------------
    def _setup_runtime(self) -> None:
        """Device, process groups (world > 1), seeds; the layout was validated already."""
        from paddle_pangu.parallel.device import select_device
        from paddle_pangu.parallel.topology import init_topology

        self.device = select_device(self.cfg.train.device)
        self.amp = plan_amp(self.cfg.amp, self.device.type)
        self.topo = init_topology(self.par, self.device)  # (model, layout) validated once, by cfg.validate
        self.hcg = self.topo.hcg
        np.random.seed(self.cfg.train.seed)
        self.rank = self.topo.rank
        setup_console_logging(self.rank)

    @property
    def pipelined(self) -> bool:
        return self.par.pp_degree > 1

    @property
    def data_rank(self) -> int:
        """This rank's index among the dp x sharding ranks that read different samples."""
        return self.topo.data_rank

    def _build(self) -> None:
        cfg = self.cfg
        model = self._build_model()
        self.scheduler = build_scheduler(cfg.optim, cfg.train.max_steps)
        optimizer = build_optimizer(model, cfg.optim, self.scheduler, multi_precision=self.amp.master_weights)
        model, optimizer = self.amp.decorate(model, optimizer)
        scaler = self.amp.make_scaler()
        if self.world_size > 1:
            model, optimizer, scaler = _distribute(model, optimizer, scaler)
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.grad_norm = attach_norm_recorder(optimizer)
        self.nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps, model.parameters())
        self.nonfinite.install(optimizer)  # skips the update of a step whose loss or gradient is non-finite
        self._build_data()

    def _build_model(self):
        from paddle_pangu.model.modeling_pp import build_model

        from paddle_pangu.model.layers import set_attention_impl
        from paddle_pangu.parallel.device import fused_attention_available

        model = build_model(self.model_config, self.par, self.topo)  # recompute set from the layout
        # fused (flash) attention where the device has it (GPU sdpa / Ascend plugin), reference math elsewhere
        set_attention_impl(model, fused_attention_available(self.topo.device) or "plain")
        if self.cfg.model.init_from:
            _load_initial_weights(model, self.cfg.model.init_from, self.topo)
        else:
            _seeded_initial_weights(model, self.model_config, self.par, self.topo, self.cfg)
        model.train()
        return model

    def _build_data(self) -> None:
        cfg, par = self.cfg, self.par
        per_rank = par.micro_batch_size * par.accumulate_steps
        sets = run_datasets(cfg, self.model_config, par.global_batch_size)
        seed = cfg.train.seed
        self.train_batches = StepBatcher(sets["train"], per_rank, self.data_rank, par.data_parallel_size, seed)
        valid = sets["valid"]
        self.valid_batches = (StepBatcher(valid, per_rank, self.data_rank, par.data_parallel_size, seed + 1)
                              if valid is not None and len(valid) else None)
        self.tokens_per_step = par.global_batch_size * cfg.seq_len

    # ---- steps -----------------------------------------------------------
    def _to_tensors(self, batch: np.ndarray):
        tokens, labels = split_tokens_labels(batch)  # [P, S] each
        return paddle.to_tensor(tokens), paddle.to_tensor(labels)

    def _plain_step(self, tokens, labels) -> float:
        """Forward/backward over accumulate_steps micro-batches, then one optimizer step."""
        mbs, acc = self.par.micro_batch_size, self.par.accumulate_steps
        total = 0.0
        for i in range(acc):
            sl = slice(i * mbs, (i + 1) * mbs)
            sync = self.model.no_sync() if hasattr(self.model, "no_sync") and i < acc - 1 else contextlib.nullcontext()
            with sync:
                with self.amp.autocast():
                    loss = self.model(tokens[sl], labels=labels[sl])[0]  # scalar, mean over tokens
                scaled = loss / acc
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += float(loss)
        self.nonfinite.veto_loss(total)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        return total / acc

    def _pipeline_step(self, tokens, labels) -> float:
        with self.amp.autocast():
            loss = self.model.train_batch([tokens, labels], self.optimizer, lr_scheduler=None, scaler=self.scaler)
        return float(loss)

    def _mean_over_data_ranks(self, value: float) -> float:
        """Average a per-rank scalar over the dp x sharding ranks (mp/pp ranks already agree)."""
        if self.hcg is None or self.par.data_parallel_size == 1:
            return value
        t = paddle.to_tensor([value], dtype="float64")
        for group, size in ((self.hcg.get_data_parallel_group(), self.par.dp_degree),
                            (self.hcg.get_sharding_parallel_group(), self.par.sharding_degree)):
            if size > 1:
                dist.all_reduce(t, group=group)
        return float(t) / self.par.data_parallel_size

    def train_step(self) -> dict:
        """Run optimizer step `self.step` (0-based) and return its metrics."""
        tokens, labels = self._to_tensors(self.train_batches.batch(self.step))
        lr = self.scheduler.get_lr()
        t0 = time.time()
        self.nonfinite.begin_step()
        loss = (self._pipeline_step if self.pipelined else self._plain_step)(tokens, labels)
        self.scheduler.step()
        loss = self._mean_over_data_ranks(loss)
        self.step += 1
        bad = self.nonfinite.end_step(loss)
        metrics = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": None if bad else self.grad_norm(),
                   "time": time.time() - t0}
        return {**metrics, "nonfinite": bad} if bad else metrics

    # ---- evaluation ------------------------------------------------------
    @paddle.no_grad()
    def evaluate(self) -> dict:
        """Mean loss and perplexity on `eval_iters` fixed validation batches."""
        if self.valid_batches is None:
            return {}
        self.model.eval()
        losses = []
        for i in range(self.cfg.train.eval_iters):
            tokens, labels = self._to_tensors(self.valid_batches.batch(i))
            with self.amp.autocast():
                if self.pipelined:
                    loss = self.model.eval_batch([tokens, labels], compute_loss=True)
                else:
                    loss, logits = self.model(tokens, labels=labels)[:2]
                    loss = finite_or_nan(loss, logits)  # CPU cross_entropy says ln V for NaN logits
            losses.append(float(loss))
        self.model.train()
        mean = self._mean_over_data_ranks(sum(losses) / len(losses))
        return {"loss": mean, "ppl": batch_mean_perplexity(mean)}

    # ---- the loop --------------------------------------------------------
    def maybe_resume(self) -> None:
        reshard = self.cfg.checkpoint.reshard
        step_dir = ckpt.find_resume_dir(self.out_dir, self.cfg.checkpoint.resume, reshard=reshard)
        if step_dir is None:
            return
        state = ckpt.load_checkpoint(step_dir, self.model, self.optimizer, self.scheduler, self.scaler,
                                     run_config=to_dict(self.cfg), force=self.cfg.checkpoint.force_resume,
                                     reshard=reshard, topo=self.topo, model_config=self.model_config)
        self.step = int(state["step"])
        logger.info("resumed from %s at step %d", step_dir, self.step)
        if state.get("resharded_from"):  # the console logger shows rank 0's line, also under --nproc
            logger.info("resuming step %d written by %s as %s (--reshard: weights, optimizer moments, master "
                        "weights, scheduler and loss scaler converted; RNGs reseeded from train.seed and the step)",
                        self.step, state["resharded_from"], state["resharded_to"])
        if self.rank == 0 and self.cfg.checkpoint.resume == "auto":  # say it where the user looks
            print(f"pangu train: resuming from {step_dir} (step {self.step}), found in train.output_dir by "
                  "checkpoint.resume=auto; to start fresh use a new output_dir or checkpoint.resume=none", flush=True)

    def save(self) -> str:
        par = self.par
        topo = self.topo
        extra = {"consumed_samples": self.step * par.micro_batch_size * par.accumulate_steps * par.data_parallel_size,
                 # where this rank sits: a resume on another layout (--reshard) finds each old rank's shard by it
                 "coords": {"dp": topo.dp_rank, "mp": topo.mp_rank, "pp": topo.pp_rank, "sharding": topo.sharding_rank}}
        return ckpt.save_checkpoint(self.out_dir, self.step, self.model, self.optimizer, self.scheduler, self.scaler,
                                    extra=extra, run_config=to_dict(self.cfg), keep_last=self.cfg.checkpoint.keep_last)

    def train(self, stop_after: int | None = None) -> dict:
        """Train (resuming if a checkpoint is found) to `train.max_steps`, or checkpoint and stop after `stop_after`."""
        try:
            return self._train(stop_after)
        finally:
            from ..io.outdir import release_output_dir

            release_output_dir(self.out_dir)

    def _train(self, stop_after: int | None) -> dict:
        cfg = self.cfg
        self.maybe_resume()
        log = TrainLogger(self.rank == 0, os.path.join(self.out_dir, "visualdl"), cfg.train.max_steps, self.step,
                          cfg.logging.log_interval, self.tokens_per_step, cfg.logging.visualdl,
                          cfg.logging.progress_bar)
        log.info(f"training {self.model_config.num_parameters() / 1e6:.1f}M params, layout {self.par.to_dict()}, "
                 f"device {self.device.type}, amp {self.amp.dtype if self.amp.enabled else 'off'}")
        last = self.cfg.train.max_steps if stop_after is None else min(self.cfg.train.max_steps, stop_after)
        result: dict = {}
        while self.step < last:
            metrics = self.train_step()
            self._record(metrics, log)
            if metrics.get("nonfinite"):
                self._on_nonfinite(metrics, log)
            if cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0 and self.step < last:
                self._record_eval(log)
            if cfg.checkpoint.save_interval and self.step % cfg.checkpoint.save_interval == 0:
                self.save()
        if not cfg.checkpoint.save_interval or self.step % cfg.checkpoint.save_interval:
            self.save()  # the end of a run (or an early stop) is always resumable
        if self.step >= cfg.train.max_steps:
            result["eval"] = self._record_eval(log)
            if cfg.checkpoint.save_final_model:
                result["model_dir"] = self.save_final_model()
        log.close()
        return result

    def _on_nonfinite(self, metrics: dict, log: TrainLogger) -> None:
        """Log a skipped step; past the limit, checkpoint the last good state and stop (NonFiniteError)."""
        guard = self.nonfinite
        log.info(f"step {self.step}: non-finite {metrics['nonfinite']} (loss {metrics['loss']}); update and batch "
                 f"skipped ({guard.consecutive}/{guard.max_bad} consecutive allowed)")
        if not guard.exhausted:
            return
        saved = self.save() if guard.weights_finite() else None
        log.close()
        raise NonFiniteError(stop_message(self.step, metrics["nonfinite"], metrics["loss"], guard,
                                          self.train_batches, saved))

    def _record(self, metrics: dict, log: TrainLogger) -> None:
        log.log_step(metrics["step"], metrics["loss"], metrics["lr"], metrics["grad_norm"], metrics["time"])
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            _append_line(os.path.join(self.out_dir, "metrics.jsonl"), json.dumps({"type": "train", **metrics}))

    def _record_eval(self, log: TrainLogger) -> dict:
        result = self.evaluate()
        if not result:
            return result
        log.info(f"eval step {self.step}: loss {result['loss']:.4f} perplexity {result['ppl']:.2f}")
        log.scalars("eval", result, self.step)
        if self.rank == 0:
            _append_line(os.path.join(self.out_dir, "metrics.jsonl"),
                         json.dumps({"type": "eval", "step": self.step, **result}))
        return result

    # ---- export ----------------------------------------------------------
    def save_final_model(self) -> str:
        """Write `final_model/` (see `final_model.py`); returns its path."""
        return save_final_model(self.model, self.model_config, self.par, self.topo, self.cfg)


# ---- helpers -----------------------------------------------------------------
def _check_memory(model_config, par, world: int) -> None:
    """Refuse before allocating a model whose fp32 weights cannot fit: each process on this node holds at
    least its 1/(mp x pp) share of them (a lower bound: gradients and Adam moments come on top)."""
    from ..config.config_file import check_fits_memory

    local = int(os.environ.get("PADDLE_LOCAL_SIZE") or world)
    per_node = 4 * local / (par.mp_degree * par.pp_degree)
    check_fits_memory(model_config, "model (fp32 weights of the processes on this node)", bytes_per_param=per_node)


def _append_line(path: str, line: str) -> None:
    """Append to a log file of the output dir; a symlink planted under its name is removed first (its
    target is never written), so the log is always our own regular file."""
    if os.path.islink(path):
        logger.warning("%s was a symlink; replaced by a regular file (its target is left untouched)", path)
        os.remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _lock_output_dir(out_dir: str) -> None:
    """Rank 0 (or the `--nproc` launcher before it) holds `<output_dir>/.pangu.lock` for the whole run
    (io/outdir.py): a second run into the same directory is refused with the holder's pid and host."""
    from ..io.outdir import LOCKED_ENV, lock_output_dir

    if os.environ.get("PADDLE_TRAINER_ID", "0") != "0":
        return
    if os.environ.get(LOCKED_ENV) == os.path.realpath(out_dir):
        return
    lock_output_dir(out_dir, "pangu train", "train.output_dir")


def _distribute(model, optimizer, scaler):
    """fleet wrappers for the layout fleet.init was given (parallel/topology.py builds the strategy).

    Model: DataParallel / TensorParallel / PipelineParallel / ShardingParallel.
    Optimizer: HybridParallelOptimizer (dp/sharding gradient sync, the
    cross-group grad clip) around DygraphShardingOptimizer (stage 1) or
    DygraphShardingOptimizerV2 (stage 2, `split_param`) when sharding.
    """
    from paddle.distributed import fleet

    from ..parallel.fleet_compat import zero_stage2_grads_in_place

    model = fleet.distributed_model(model)
    optimizer = fleet.distributed_optimizer(optimizer)
    zero_stage2_grads_in_place(optimizer)  # stage 2 on npu / gpu: Paddle's clear_grad detaches the gradients
    if scaler is not None:
        scaler = fleet.distributed_scaler(scaler)
    return model, optimizer, scaler


def _seeded_initial_weights(model, model_config, par, topo, cfg) -> None:
    """Every layout starts from the weights one process would build with the same seed.

    A tensor- or pipeline-parallel model draws its shards from per-rank RNG streams, so the same
    train.seed gave different initial weights per layout. Here each rank builds the plain model a
    single process builds (PanGuForCausalLM right after paddle.seed(seed)), and keeps its own mp
    shard / pp stage through the weight table (as model.init_from does). Up to
    checkpoint.consolidate_max_params only (each rank holds the full model once, as the
    consolidated final_model save does); above it the per-rank init stays and this is logged."""
    if par.mp_degree * par.pp_degree == 1:
        return  # already the plain model, built right after seed_everything(seed)
    if model_config.num_parameters() > cfg.checkpoint.consolidate_max_params:
        logger.info("initial weights drawn per rank (the model is above checkpoint.consolidate_max_params): the "
                    "same train.seed gives different weights in another layout; set model.init_from to fix them")
        return
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.model.modeling_pp import load_plain_state_dict
    from paddle_pangu.parallel.context import PLAIN

    with paddle.utils.unique_name.guard():  # the run's own parameter names stay as they were
        paddle.seed(par.seed)
        plain = PanGuForCausalLM(model_config, parallel=PLAIN)
        state = {k: v.numpy() for k, v in plain.state_dict().items()}
        del plain
    load_plain_state_dict(model, state, topo)


def _load_initial_weights(model, path: str, topo) -> None:
    """Start from a plain PanGuForCausalLM state dict (a model dir or a .pdparams file), split for mp/pp."""
    from paddle_pangu.model.modeling_pp import load_plain_state_dict

    if not os.path.exists(path):
        raise FileNotFoundError(f"model.init_from={path!r}: no such model directory or .pdparams file")
    # a model dir (model_state.pdparams or (sharded) safetensors, e.g. from `pangu convert`) or a .pdparams file
    load_plain_state_dict(model, load_plain_weights(path), topo)
