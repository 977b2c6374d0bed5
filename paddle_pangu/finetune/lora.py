"""LoRA through PaddleNLP's PEFT (`LoRAConfig` / `LoRAModel`) with PanGu's target modules.

Targets (`ModelArguments.lora_target_modules`): the attention projections `q_proj`, `k_proj`,
`v_proj`, `out_proj` and the FFN `fc_in`, `fc_out` of every block and of the query layer. Under
tensor parallelism PEFT swaps fleet's Column/RowParallelLinear for its parallel LoRA layers (on
CPU their mp ops run through `parallel/cpu_backend`). Only the adapters train; the Trainer saves
them as `lora_model_state*.pdparams` + `lora_config.json` (with `unified_checkpoint`: PaddleNLP's
`peft_model-0000k-of-0000n.safetensors` + `peft_model.safetensors.index.json`, which PEFT loads too).

`pangu merge-lora --base DIR --lora DIR --output DIR` folds W + (alpha/r) * A @ B into the base
weights and writes a plain PanGu model directory (config, safetensors, tokenizer).
"""
from __future__ import annotations

import os

from ..errors import CheckpointError, ConfigError


def target_patterns(names: str) -> list[str]:
    """`q_proj,k_proj` -> PEFT's full-match regexes over sublayer names (`pangu.layers.0.attn.q_proj`)."""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise ConfigError("lora_target_modules is empty: name at least one of q_proj,k_proj,v_proj,out_proj,fc_in,fc_out")
    return [rf".*\.{name}" for name in parts]


def apply_lora(model, model_args, training_args):
    """Wrap `model` in a LoRAModel (or load saved adapters from `model_args.lora_path`)."""
    from paddlenlp.peft import LoRAConfig, LoRAModel

    if training_args.pipeline_parallel_degree > 1:
        raise ConfigError("lora with pipeline_parallel_degree > 1 is not supported here; use tensor parallelism")
    if model_args.lora_path:
        check_adapter_dir(model_args.lora_path, "lora_path")
        return LoRAModel.from_pretrained(model, model_args.lora_path)
    config = LoRAConfig(
        target_modules=target_patterns(model_args.lora_target_modules), r=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout, merge_weights=False,
        tensor_parallel_degree=training_args.tensor_parallel_degree, dtype="float32",
        base_model_name_or_path=model_args.model_name_or_path)
    import paddle

    # the adapters' initial A from a generator seeded here: before this they came from whatever the model load
    # had left of the default place's generator (the CPU one on cpu; a custom device's own, untouched one on
    # npu), so `--device npu` started from other adapters than the CPU run with the same seed
    paddle.seed(training_args.seed)
    lora_model = LoRAModel(model, config)
    lora_model.mark_only_lora_as_trainable()
    if not any(p.name for p in lora_model.parameters() if not p.stop_gradient):
        raise ConfigError(f"lora_target_modules={model_args.lora_target_modules!r} matched no PanGu layer")
    return lora_model


def check_adapter_dir(lora: str, what: str) -> None:
    """The adapter directory verifies (MANIFEST.json) and holds adapter weights: PEFT would otherwise load
    no adapters at all and the "merged" model would be the base model."""
    from ..io.model_dir import verify_model_dir

    verify_model_dir(lora)
    # lora_model_state*: PEFT's own save; peft_model-0000k-of-0000n.safetensors + index: a unified_checkpoint run's
    weights = [f for f in os.listdir(lora) if f.startswith(("lora_model_state", "peft_model"))
               and f.endswith((".pdparams", ".safetensors"))]
    if not weights:
        raise CheckpointError(f"{what} {lora}: no lora_model_state*.pdparams / .safetensors or peft_model-*.safetensors "
                              "(the adapter weights); "
                              "nothing to merge or load")


def merged_model(lora_model):
    """A plain PanGuForCausalLM whose weights are the LoRA model's merged weights."""
    from ..model import PanGuForCausalLM

    lora_model.merge()
    state = {k: v for k, v in lora_model.model.state_dict().items() if "lora_" not in k}
    plain = PanGuForCausalLM(lora_model.model.config)
    missing, unexpected = plain.set_state_dict(state)
    if missing:
        raise CheckpointError(f"merge-lora: merged weights lack {missing[:3]}")
    lora_model.unmerge()
    return plain


def merge_lora(base: str, lora: str, output: str) -> str:
    """Load `base` + adapters from `lora`, merge, save a plain model directory at `output`."""
    import paddle
    from paddlenlp.peft import LoRAModel

    from ..inference.loading import load_tokenizer
    from ..model import PanGuForCausalLM

    if not os.path.isfile(os.path.join(lora, "lora_config.json")):
        raise CheckpointError(f"--lora {lora}: no lora_config.json (expected the output_dir of a lora fine-tune)")
    if not os.path.isfile(os.path.join(base, "config.json")):
        raise CheckpointError(f"--base {base}: no config.json (expected the model directory the LoRA was trained on)")
    from ..io.model_dir import same_or_nested, seal_model_dir

    for name, src in (("--base", base), ("--lora", lora)):
        if same_or_nested(src, output):
            raise ConfigError(f"--output {output!r} is, contains or lies inside {name} {src!r}; the merged weights "
                              "would overwrite or shadow it; choose a separate directory")
    check_adapter_dir(lora, "--lora")
    with paddle.no_grad():
        lora_model = LoRAModel.from_pretrained(PanGuForCausalLM.from_pretrained(base), lora)
        plain = merged_model(lora_model)
    plain.save_pretrained(output, safe_serialization=True)
    load_tokenizer(lora if os.path.exists(os.path.join(lora, "vocab.model")) else base).save_pretrained(output)
    seal_model_dir(output)
    return output
