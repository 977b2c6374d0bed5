"""Worker for tests/unit/test_reshard.py::test_mp2_checkpoint_gives_single_process_logits.

    reshard_worker.py --ckpt <mp2 dir written by `pangu reshard`> --ids <.npy>

Each of the 2 processes builds the tensor-parallel model through the public
API (init_topology -> build_model), loads ITS OWN rank file
(`model.tp0R.safetensors`) as written by the resharder - no splitting here -
and writes its vocab slice of the logits (hidden @ local word-embedding rows^T).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--ids", required=True)
    args = parser.parse_args()

    import paddle
    from launch_utils import write_output
    from safetensors.numpy import load_file

    from paddle_pangu.config import PanGuConfig
    from paddle_pangu.config.parallel_config import ParallelConfig
    from paddle_pangu.model.modeling_pp import build_model
    from paddle_pangu.parallel.topology import init_topology

    cfg = PanGuConfig.from_pretrained(args.ckpt)
    ids = np.load(args.ids)
    pc = ParallelConfig(mp_degree=2, micro_batch_size=ids.shape[0], global_batch_size=ids.shape[0])
    topo = init_topology(pc, "cpu", model_config=cfg)
    model = build_model(cfg, pc, topo)
    model.eval()
    local = load_file(os.path.join(args.ckpt, f"model.tp{topo.mp_rank:02d}.safetensors"))
    expected = model.state_dict()
    assert set(local) == set(expected), sorted(set(local) ^ set(expected))[:5]
    for name, tensor in expected.items():
        assert tuple(local[name].shape) == tuple(tensor.shape), (name, local[name].shape, tensor.shape)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in local.items()})
    with paddle.no_grad():
        hidden = model.pangu(paddle.to_tensor(ids, dtype="int64"))  # [B, S, H], replicated over mp ranks
        weight = model.pangu.embeddings.word_embeddings.weight  # [V/mp, H] this rank's vocab rows
        logits = paddle.matmul(hidden, weight, transpose_y=True)  # [B, S, V/mp]
    write_output({"mp_rank": topo.mp_rank, "logits": logits.numpy()})


if __name__ == "__main__":
    main()
    from launch_utils import exit_worker

    exit_worker()  # outputs are written; skip gloo's teardown (it can abort on paddle 3.3.1)
