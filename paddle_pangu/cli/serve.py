"""`pangu serve`: OpenAI-compatible HTTP server (completions, chat completions, SSE streaming, web page at /)."""
from __future__ import annotations

import argparse
import os

from ..inference.export import DEVICES
from .generate import add_nproc_arguments, add_weights_argument

API_KEY_ENV = "PANGU_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, `pangu export` directory, or preset:NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (0 = any free port; see --port-file)")
    p.add_argument("--port-file", default=None,
                   help="write the bound port to this file once the server is ready (useful with --port 0)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--tokenizer", default=None, help="directory or vocab.model (default: model dir, then pcl-pangu)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together (continuous batching)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch; more get HTTP 503")
    p.add_argument("--truncate", choices=("error", "left"), default="error",
                   help="over-long prompts: HTTP 400 (default) or keep their end")
    add_weights_argument(p)
    p.add_argument("--threads", type=int, default=0, help="predictor CPU math threads (0 = paddle's default)")
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` on /v1 (default: ${API_KEY_ENV} if set; "
                        f"/ and /health stay open)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a name clients may reach this server by (the HTTP Host header; repeatable). Bound to "
                        "127.0.0.1 / localhost the server answers only localhost, 127.0.0.1 and ::1 by default, "
                        "which stops DNS-rebinding pages; bound elsewhere it answers any name unless this is given")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body accepted; larger ones get HTTP 413 (default 1 MiB)")
    add_nproc_arguments(p)


def run(args) -> int:
    from ..errors import UsageError
    from ..inference.server.app import DEFAULT_MAX_BODY_BYTES, serve, warn_if_open

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    warn_if_open(args.host, api_key)
    for name in ("max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535 (0 = any free port), got {args.port}")
    max_body = DEFAULT_MAX_BODY_BYTES if args.max_body_bytes is None else args.max_body_bytes
    if max_body < 1:
        raise UsageError(f"--max-body-bytes must be >= 1, got {max_body}")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    from ..inference.tensor_parallel import launched_world
    from .generate import launched, open_tensor_parallel

    code = launched("serve", args, args.weights)
    if code is not None:
        return code
    backend = None
    if launched_world()[0] > 1:  # one rank of --nproc N: rank 0 serves, the others mirror its steps
        from ..inference.tensor_parallel import LeaderStepper, follow

        net, tok, stepper, channel, rank = open_tensor_parallel(args)
        if rank != 0:
            follow(net, stepper, channel)
            return 0
        backend = (LeaderStepper(stepper, channel), net.config, tok)
    serve(args.model, args.host, args.port, args.device, args.tokenizer, args.max_batch, args.max_queue,
          args.truncate, args.threads, api_key=api_key, max_body_bytes=max_body, port_file=args.port_file, warn=False,
          weights=args.weights, backend=backend, allowed_host=args.allowed_host)
    return 0
