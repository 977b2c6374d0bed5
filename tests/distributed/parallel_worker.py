"""Worker for tests/distributed/test_model_parallel.py (one process of an mp / pp / mp+pp run).

Started by `launch_utils.launch` under `paddle.distributed.launch`:

    parallel_worker.py --mp 2 --pp 1 --data <npz>

Loads the plain weights and batch from the .npz the test wrote, builds the
parallel model through the public API (init_topology -> build_model ->
load_plain_state_dict), and writes per rank: the loss, and either the local
gradients (pp == 1: one forward/backward through fleet's TensorParallel
wrapper) or the gathered weights after one SGD `train_batch` step with global-norm clipping (pp > 1).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LR = 0.5  # SGD step size for the pipeline cases (large so the update dominates fp32 noise)


def tiny_parallel_model_config():
    """4 layers (3 blocks + query layer) so pp=2 splits evenly; small vocab; no dropout."""
    from paddle_pangu.config import get_preset

    return get_preset("tiny", num_layers=4, vocab_size=512, max_position_embeddings=32,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_batch(config, batch=4, seq=16, seed=7):
    """input_ids with document separators (exercises eod_reset), labels without pad, full loss mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, config.vocab_size, size=(batch, seq + 1)).astype("int64")
    ids[:, [5, 11]] = config.eod_token_id  # two documents end inside every sample
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": np.ones((batch, seq), "float32")}


def _run_tensor_parallel(model, batch, topo):
    import paddle
    from paddle.distributed import fleet

    dm = fleet.distributed_model(model)  # TensorParallel: syncs replicated parameters over mp
    loss = dm(paddle.to_tensor(batch["input_ids"]), labels=paddle.to_tensor(batch["labels"]),
              loss_mask=paddle.to_tensor(batch["loss_mask"]))[0]
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    with paddle.no_grad():
        logits = dm(paddle.to_tensor(batch["input_ids"]))  # no labels: vocab shards gathered -> [B, S, V]
    return {"loss": float(loss), "grads": grads, "logits": logits.numpy()}


def _run_pipeline(model, batch, topo, clip_norm):
    import paddle
    from paddle.distributed import fleet

    from paddle_pangu.model.modeling_pp import gather_plain_state_dict

    clip = paddle.nn.ClipGradByGlobalNorm(clip_norm) if clip_norm > 0 else None  # fleet makes it hybrid-aware
    opt = paddle.optimizer.SGD(learning_rate=LR, parameters=model.parameters(), grad_clip=clip)
    opt = fleet.distributed_optimizer(opt)
    dm = fleet.distributed_model(model)
    data = [paddle.to_tensor(batch["input_ids"]),
            (paddle.to_tensor(batch["labels"]), paddle.to_tensor(batch["loss_mask"]))]
    loss = dm.train_batch(data, opt)
    return {"loss": float(loss), "weights_after": gather_plain_state_dict(dm, topo),
            "names": sorted(model.pipe_to_plain_names().values())}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--data", required=True)
    parser.add_argument("--recompute", type=int, default=0)
    parser.add_argument("--clip", type=float, default=0.0, help="global grad-norm clip for the pipeline SGD step")
    args = parser.parse_args()

    from launch_utils import write_output

    from paddle_pangu.config.parallel_config import ParallelConfig
    from paddle_pangu.model.modeling_pp import build_model, load_plain_state_dict
    from paddle_pangu.parallel.topology import init_topology

    cfg = tiny_parallel_model_config()
    data = dict(np.load(args.data))
    batch = {k: data.pop(k) for k in ("input_ids", "labels", "loss_mask")}
    micro = batch["input_ids"].shape[0] // (2 if args.pp > 1 else 1)
    pc = ParallelConfig(mp_degree=args.mp, pp_degree=args.pp, micro_batch_size=micro,
                        global_batch_size=batch["input_ids"].shape[0], recompute_interval=args.recompute)
    topo = init_topology(pc, "cpu", model_config=cfg)
    model = build_model(cfg, pc, topo)
    load_plain_state_dict(model, data, topo)
    if args.pp > 1:
        model.train()
        out = _run_pipeline(model, batch, topo, args.clip)
    else:
        out = _run_tensor_parallel(model, batch, topo)
    out.update(mp_rank=topo.mp_rank, pp_rank=topo.pp_rank, cpu_backend=topo.cpu_backend_active)
    write_output(out)


if __name__ == "__main__":
    main()
    from launch_utils import exit_worker

    exit_worker()  # outputs are written; skip gloo's teardown (it can abort on paddle 3.3.1)
