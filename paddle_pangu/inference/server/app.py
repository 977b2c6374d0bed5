"""FastAPI routes of `pangu serve` and how it starts (uvicorn)."""
from __future__ import annotations

import asyncio
import json
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ...errors import PanGuError, UsageError
from . import protocol as P
from .engine import Engine, ServerBusy
from .page import PAGE


def create_app(engine: Engine, model_name: str, truncate: str = "error") -> FastAPI:
    app = FastAPI(title="pangu serve", docs_url=None, redoc_url=None)
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "running": len(engine.decoder.rows),
                "queued": engine.pending.qsize(), "peak_batch": engine.peak_batch, "steps": engine.steps}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "paddle_pangu", "max_model_len": engine.context}]}

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise UsageError("prompt must be a text or a non-empty list of texts")
        jobs = _submit(engine, prompts, req.sampling(engine.config, truncate=truncate), req.stop_strings())
        rid = P.new_id("cmpl")
        if req.stream:
            return _sse(_completion_events(jobs, rid, model_name, req.include_usage))
        results = [await _collect(job) for job in jobs]
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason) in enumerate(results)]
        return P.completion_body(rid, model_name, choices, sum(j.prompt_tokens for j in jobs),
                                 sum(j.completion_tokens for j in jobs))

    @app.post("/v1/chat/completions")
    async def chat(req: P.ChatRequest):
        cfg = req.sampling(engine.config, req.max_completion_tokens, truncate)
        jobs = _submit(engine, [P.chat_prompt(req.messages)], cfg, req.stop_strings())
        rid = P.new_id("chatcmpl")
        if req.stream:
            return _sse(_chat_events(jobs[0], rid, model_name, req.include_usage))
        text, reason = await _collect(jobs[0])
        return P.chat_body(rid, model_name, text, reason, jobs[0].prompt_tokens, jobs[0].completion_tokens)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
            where = None
        return JSONResponse(P.error_body(message, where), status_code=400)

    @app.exception_handler(ServerBusy)
    async def busy(_: Request, exc: ServerBusy):
        return JSONResponse(P.error_body(str(exc), kind="server_busy"), status_code=503)

    @app.exception_handler(_GenerationFailed)
    async def failed(_: Request, exc: _GenerationFailed):
        return JSONResponse(P.error_body(str(exc), kind="server_error"), status_code=500)

    @app.exception_handler(PanGuError)
    async def usage(_: Request, exc: PanGuError):
        return JSONResponse(P.error_body(str(exc)), status_code=400)


def _submit(engine: Engine, prompts: list[str], cfg, stop) -> list:
    loop = asyncio.get_running_loop()
    encoded = [engine.tokenizer.encode_ids(p) for p in prompts]
    jobs = []
    try:
        for ids in encoded:
            jobs.append(engine.submit(ids, cfg, stop, loop))
    except PanGuError:
        for job in jobs:  # all or nothing
            job.cancelled = True
        raise
    return jobs


async def _events(job):
    """("text", delta) ... then ("done", reason); an engine failure raises after what was sent."""
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "error":
                raise RuntimeError(value)
            yield kind, value
            if kind == "done":
                return
    finally:
        job.cancelled = True  # a disconnected client frees its row at the next step


async def _collect(job) -> tuple[str, str]:
    parts, reason = [], None
    try:
        async for kind, value in _events(job):
            if kind == "text":
                parts.append(value)
            else:
                reason = value
    except RuntimeError as err:
        raise _GenerationFailed(str(err)) from None
    return "".join(parts), reason


class _GenerationFailed(PanGuError, RuntimeError):
    pass


def _sse(events) -> StreamingResponse:
    async def body():
        try:
            async for chunk in events:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except RuntimeError as err:
            yield f"data: {json.dumps(P.error_body(str(err), kind='server_error'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _completion_events(jobs, rid, model, include_usage=False):
    for index, job in enumerate(jobs):
        async for kind, value in _events(job):
            text, reason = (value, None) if kind == "text" else ("", value)
            yield P.completion_chunk(rid, model, index, text, reason)
    if include_usage:
        yield P.usage_chunk(rid, model, "text_completion", sum(j.prompt_tokens for j in jobs),
                            sum(j.completion_tokens for j in jobs))


async def _chat_events(job, rid, model, include_usage=False):
    yield P.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None)
    async for kind, value in _events(job):
        yield P.chat_chunk(rid, model, {"content": value} if kind == "text" else {}, None if kind == "text" else value)
    if include_usage:
        yield P.usage_chunk(rid, model, "chat.completion.chunk", job.prompt_tokens, job.completion_tokens)


def load_engine(model: str, device: str = "cpu", tokenizer: str | None = None, max_batch: int = 8,
                max_queue: int = 64, threads: int = 0, weights: str | None = None) -> Engine:
    """A model directory / preset:NAME (dygraph) or a `pangu export` directory (Paddle Inference);
    weights: `--weights` (fp32 / int8 / bf16, see inference.quantize)."""
    from ..backend import open_backend

    stepper, config, tok = open_backend(model, device, tokenizer, threads, weights=weights)
    return Engine(stepper, config, tok, max_batch, max_queue)


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", tokenizer: str | None = None,
          max_batch: int = 8, max_queue: int = 64, truncate: str = "error", threads: int = 0,
          weights: str | None = None) -> None:
    import uvicorn

    engine = load_engine(model, device, tokenizer, max_batch, max_queue, threads, weights).start()
    name = model if model.startswith("preset:") else os.path.basename(os.path.normpath(model))
    app = create_app(engine, name, truncate)
    print(f"pangu serve: {name} on http://{host}:{port} (OpenAI API under /v1, web page at /; "
          f"batch <= {max_batch}, queue <= {max_queue})", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.stop()
