"""Validation perplexity of a consolidated model directory, in one process.

Reads the same validation samples the trainer evaluates on (same run YAML,
same seed and global batch), so the number printed here for
`<output_dir>/final_model` should equal the trainer's last `eval` line: a
check that the consolidated weights load into the single-process model.

Both perplexities go through the one reduction `model.losses.LossMean`,
named for what they weight: here each batch weighs 1 (exp of the mean of
per-batch mean token losses, the training objective the trainer logs, and
what this check must reproduce); `evaluation.scoring.perplexity` weighs each
batch by its token count (the held-out corpus perplexity `pangu evaluate`
reports). They agree when every batch counts the same number of tokens.
"""
from __future__ import annotations

import numpy as np
import paddle
from tqdm import tqdm

from ..model.losses import LossMean, perplexity_of
from .batches import StepBatcher, run_datasets, split_tokens_labels
from .nonfinite import finite_or_nan
from .run_config import RunConfig


def batch_mean_perplexity(mean_batch_loss: float) -> float:
    """exp(mean of per-batch mean losses), the loss capped at 50 so a diverged run still logs a number."""
    return perplexity_of(mean_batch_loss, cap=50.0)


@paddle.no_grad()
def evaluate_model_dir(model_dir: str, cfg: RunConfig, validated: tuple | None = None) -> dict:
    """{'loss', 'ppl', 'tokens'} of `model_dir` on the run's `eval_iters` validation batches.

    `validated`: what `cfg.validate()` returned, when the caller has run that check already."""
    from paddle_pangu.model import PanGuForCausalLM

    model_cfg, par = validated if validated is not None else cfg.validate()
    model = PanGuForCausalLM.from_pretrained(model_dir)
    model.eval()
    valid = run_datasets(cfg, model_cfg, par.global_batch_size, which=("valid",))["valid"]
    batcher = StepBatcher(valid, par.global_batch_size, 0, 1,
                          cfg.train.seed + 1)
    losses = LossMean()  # each batch weighs 1
    for i in tqdm(range(cfg.train.eval_iters), desc="perplexity", unit="batch"):
        tokens, labels = split_tokens_labels(batcher.batch(i))  # [G, S] each
        per_rank = [finite_or_nan(*model(paddle.to_tensor(t), labels=paddle.to_tensor(l))[:2])  # NaN stays NaN
                    for t, l in zip(np.split(tokens, par.data_parallel_size), np.split(labels, par.data_parallel_size))]
        losses.add(float(sum(float(x) for x in per_rank) / len(per_rank)))
    return {"loss": losses.mean, "ppl": batch_mean_perplexity(losses.mean), "tokens": losses.weight * tokens.size}
