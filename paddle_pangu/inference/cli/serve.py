"""`pangu serve`: OpenAI-compatible HTTP server (completions, chat completions, SSE streaming, web page at /)."""
from __future__ import annotations

import argparse

from ..export import DEVICES
from .generate import add_weights_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, `pangu export` directory, or preset:NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--tokenizer", default=None, help="directory or vocab.model (default: model dir, then pcl-pangu)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together (continuous batching)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch; more get HTTP 503")
    p.add_argument("--truncate", choices=("error", "left"), default="error",
                   help="over-long prompts: HTTP 400 (default) or keep their end")
    add_weights_argument(p)
    p.add_argument("--threads", type=int, default=0, help="predictor CPU math threads (0 = paddle's default)")


def run(args) -> int:
    from ...errors import UsageError
    from ..server import serve

    for name in ("max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    serve(args.model, args.host, args.port, args.device, args.tokenizer, args.max_batch, args.max_queue,
          args.truncate, args.threads, weights=args.weights)
    return 0
