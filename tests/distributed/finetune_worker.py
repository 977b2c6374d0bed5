"""Worker for tests/distributed/test_finetune_parallel.py: one `pangu finetune` run (real PaddleNLP
Trainer) under paddle.distributed.launch.

    finetune_worker.py '<json of finetune fields>' [stop_at]

Writes per rank: the logged losses, the first q_proj / fc_out / word-embedding shards as loaded
(before training), the trained local parameters, and the parallel ranks; stops after step `stop_at` when given (an interrupted job).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_utils import exit_worker, write_output  # noqa: E402


def loaded_shards(model_args, training_args) -> dict:
    from paddle_pangu.finetune.trainer import load_model

    model, _ = load_model(model_args, training_args)
    if training_args.pipeline_parallel_degree > 1:
        return {}
    block = model.pangu.layers[0]
    return {"q_proj": block.attention.q_proj.weight.numpy(), "fc_out": block.mlp.fc_out.weight.numpy(),
            "word": model.pangu.embeddings.word_embeddings.weight.numpy()}


def callbacks(stop_at: int, final: dict):
    """Stop after `stop_at` (0: never); keep this rank's trained parameters in `final`."""
    from paddlenlp.trainer import TrainerCallback

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at and state.global_step >= stop_at:
                control.should_training_stop = True

        def on_train_end(self, args, state, control, model=None, **kwargs):
            final.update({k: v.numpy() for k, v in model.state_dict().items()})

    return [Probe()]


def main() -> None:
    from paddle_pangu.finetune import parse_finetune_args, run_finetune

    fields = json.loads(sys.argv[1])
    stop_at = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    model_args, data_args, training_args = parse_finetune_args(None, fields)
    shards = loaded_shards(model_args, training_args)
    final: dict = {}
    metrics = run_finetune(model_args, data_args, training_args, callbacks=callbacks(stop_at, final))
    write_output({"history": metrics["history"], "shards": shards, "final": final,
                  "tp_rank": training_args.tensor_parallel_rank, "pp_rank": training_args.pipeline_parallel_rank})
    exit_worker(0)


if __name__ == "__main__":
    main()
