"""Open what `pangu generate` / `pangu serve` decode with: a stepper, the model config and the tokenizer.

A `pangu export` directory runs on the Paddle Inference predictor; a model directory (or preset:NAME)
runs the dygraph model. Both feed the same BatchDecoder."""
from __future__ import annotations

import os

from ..errors import CheckpointError, UsageError


def is_export_dir(path: str) -> bool:
    from .export import META_FILE

    return os.path.exists(os.path.join(path, META_FILE))


def use_device(device: str, dygraph: bool) -> None:
    """Check that `device` exists here (a one-line DeviceError if not); the dygraph model is placed on it."""
    from ..parallel.device import select_device

    info = select_device(device)
    if dygraph:
        import paddle

        paddle.set_device(info.paddle_device())


def open_backend(model: str, device: str = "cpu", tokenizer: str | None = None, threads: int = 0, seed: int = 0,
                 weights: str | None = None):
    """(stepper, config, tokenizer) for a model directory, preset:NAME or an export directory.

    weights (`--weights`, inference.quantize): fp32 / int8 / bf16 for a model directory (None = fp32, quantised
    once here, after loading); an export directory runs the weights it was exported with (None or the same)."""
    from .generation import DygraphStepper
    from .loading import load_model_and_tokenizer, load_tokenizer
    from .quantize import check_weights, quantize_model

    exported = is_export_dir(model)
    if weights is not None:
        check_weights(weights, device)  # a refusal (bf16 without avx512_bf16, say) before anything loads
    use_device(device, dygraph=not exported)
    try:
        if exported:
            from .export import InferenceStepper

            stepper = InferenceStepper(model, device, threads)
            if weights is not None and weights != stepper.weights:
                raise UsageError(f"--weights {weights}: {model} was exported with {stepper.weights} weights; "
                                 f"re-export with `pangu export --weights {weights}` or drop --weights")
            return stepper, stepper.config, load_tokenizer(model, tokenizer)
        net, tok = load_model_and_tokenizer(model, tokenizer, seed)
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None
    quantize_model(net, weights or "fp32")
    return DygraphStepper(net, frozen=True), net.config, tok  # served / CLI weights never change
