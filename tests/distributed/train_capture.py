"""`tools/train.py` plus a gradient recorder, for the parity tests (alone or under the launcher).

    python tests/distributed/train_capture.py --config run.yaml            # any `pangu train` arguments
    PANGU_TEST_GRAD_STEPS=1,2,3,4 python -m paddle.distributed.launch ... train_capture.py --config ...

It runs exactly `pangu train` (the product's Trainer, optimizer and fleet
wrappers untouched); the only addition is a wrapper around the step method
of the optimizer the Trainer holds (fleet's HybridParallelOptimizer under
the launcher, AdamW alone), which the Trainer and fleet's
PipelineParallel.train_batch call once per optimizer step, after the
backward of every micro-batch and before any data-parallel / sharding
gradient reduction and clipping. At its entry each parameter's `.grad` is
this rank's unclipped gradient of its own mean loss (pipeline shared
weights already all-reduced over their stages). For the steps listed in
PANGU_TEST_GRAD_STEPS (1-based; default: all) every rank records its local
gradients under plain parameter names and writes
`<train.output_dir>/grads/rank<R>.pkl` with its (data, pp, mp) rank;
`train_case.read_gradients` averages over the data ranks (what dp and
sharding reduce to) and merges the mp shards like the final model.
"""
from __future__ import annotations

import os
import pickle
import sys

from paddle_pangu import runtime

runtime.apply()  # as `pangu`: before paddle is imported (the simulated npu under PANGU_TEST_NPU=1, the MKL set-up)

from paddle_pangu.cli import main  # noqa: E402
from paddle_pangu.training import trainer as trainer_module  # noqa: E402

GRAD_STEPS_ENV = "PANGU_TEST_GRAD_STEPS"
_state: dict = {"trainer": None, "calls": 0, "grads": {}}


def _wanted(step: int) -> bool:
    steps = os.environ.get(GRAD_STEPS_ENV, "")
    return not steps.strip() or step in {int(s) for s in steps.split(",") if s.strip()}


def _record(trainer, step: int) -> None:
    from paddle_pangu.model.modeling_pp import local_plain_state_dict

    _state["grads"][step] = {
        name: param.grad.astype("float32").numpy()
        for name, param in local_plain_state_dict(trainer.model).items()
        if getattr(param, "grad", None) is not None
    }


def _install() -> None:
    original_build = trainer_module.Trainer._build

    def build(self):
        original_build(self)
        _state["trainer"] = self
        optimizer = self.optimizer
        original_step = optimizer.step

        def step(*args, **kwargs):
            _state["calls"] += 1
            if _wanted(self.step + 1):  # Trainer.step counts finished steps (it is resumable)
                _record(self, self.step + 1)
            return original_step(*args, **kwargs)

        optimizer.step = step  # instance attribute: what Trainer and PipelineParallel.train_batch call

    trainer_module.Trainer._build = build


def _write() -> None:
    trainer = _state["trainer"]
    if trainer is None or not _state["grads"]:
        return
    out = os.path.join(trainer.out_dir, "grads")
    os.makedirs(out, exist_ok=True)
    topo = trainer.topo
    record = {"data_rank": topo.data_rank, "pp_rank": topo.pp_rank, "mp_rank": topo.mp_rank,
              "steps": _state["grads"]}
    with open(os.path.join(out, f"rank{trainer.rank}.pkl"), "wb") as f:
        pickle.dump(record, f)


if __name__ == "__main__":
    _install()
    code = main(["train", *sys.argv[1:]])
    _write()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))  # as tools/train.py: skip gloo's teardown after a complete run
