"""FastAPI routes of `pangu serve` and how it starts (uvicorn).

Availability under hostile input (issue 29): the request body is bounded (`--max-body-bytes`, 413) and
must be UTF-8 before any JSON parsing; tokenisation runs in a worker thread so the event loop (and
/health) stays responsive while a big prompt is tokenised; a client that goes away (non-streaming or
streaming) cancels every row of its request; with `--api-key` the /v1 routes need
`Authorization: Bearer <key>` (constant-time compare), while / and /health stay open.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ...config.presets import PRESET_PREFIX
from ...errors import PanGuError, UsageError
from . import protocol as P
from .engine import Engine, ServerBusy
from .page import PAGE

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: ~330k CJK characters, far beyond any prompt that fits a context
# A refused body (403 host, 401 key, 413 size: refused before it was read) is read and thrown away up to
# this many bytes before the refusal is sent and the connection closed: closing a socket with unread bytes in its receive buffer sends a TCP reset, which can reach the
# client before the 413 does (it then sees "connection reset by peer", not the reason). Nothing is kept;
# past this bound the client may see the reset (the "lingering close" of nginx and Apache, bounded the same way).
DISCARD_REFUSED_BYTES = 64 << 20


def create_app(engine: Engine, model_name: str, truncate: str = "error", api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, allowed_hosts: frozenset[str] | None = None) -> FastAPI:
    """allowed_hosts: the names a request's Host header may carry (None: any; see `allowed_hosts`)."""
    app = FastAPI(title="pangu serve", docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, allowed_hosts=allowed_hosts)
    state = {"tokenizing": 0}  # requests whose prompts are being tokenised right now (in worker threads)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "running": len(engine.decoder.rows),
                "queued": engine.pending.qsize(), "tokenizing": state["tokenizing"],
                "peak_batch": engine.peak_batch, "steps": engine.steps}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "paddle_pangu", "max_model_len": engine.context}]}

    async def submit(prompts, cfg, stop, logprobs=None):
        state["tokenizing"] += 1
        try:
            encoded = await asyncio.to_thread(_encode, engine.tokenizer, prompts)
        finally:
            state["tokenizing"] -= 1
        return encoded, _submit(engine, encoded, cfg, stop, logprobs)

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest, request: Request):
        if req.echo and req.logprobs is not None:
            raise UsageError("echo with logprobs is not supported (prompt-token logprobs are not computed); "
                             "use one of them")
        prompts = req.prompts()
        encoded, jobs = await submit(prompts, req.sampling(engine.config, truncate=truncate), req.stop_strings(),
                                     req.logprobs)
        rid = P.new_id("cmpl")
        if req.stream:
            echo = [_prompt_text(engine, p, ids) for p, ids in zip(prompts, encoded)] if req.echo else None
            events = _completion_events(jobs, rid, model_name, req.include_usage, echo, engine.tokenizer, req.logprobs)
            return _sse(events, jobs, request)
        results = await _collect_all(jobs, request)
        choices = []
        for i, ((text, reason), job) in enumerate(zip(results, jobs)):
            # the tokens the row kept (a stop id that ended it was chosen, not kept)
            logprobs = _logprobs(engine.tokenizer, job.logprobs[:job.completion_tokens]) \
                if req.logprobs is not None else None
            if req.echo:
                text = _prompt_text(engine, prompts[i], encoded[i]) + text
            choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs})
        body = P.completion_body(rid, model_name, choices, sum(j.prompt_tokens for j in jobs),
                                 sum(j.completion_tokens for j in jobs))
        body["peak_batch"] = max(j.peak_batch for j in jobs)  # extension: rows decoded together with these
        return body

    @app.post("/v1/chat/completions")
    async def chat(req: P.ChatRequest, request: Request):
        if req.logprobs and req.stream:
            raise UsageError("logprobs with stream: true is not supported; request them without streaming")
        if req.top_logprobs is not None and not req.logprobs:
            raise UsageError("top_logprobs needs logprobs: true")
        cfg = req.sampling(engine.config, req.max_completion_tokens, truncate)
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        _, jobs = await submit([P.chat_prompt(req.messages)], cfg, req.stop_strings(), top_n)
        rid = P.new_id("chatcmpl")
        if req.stream:
            return _sse(_chat_events(jobs[0], rid, model_name, req.include_usage), jobs, request)
        (text, reason), = await _collect_all(jobs, request)
        body = P.chat_body(rid, model_name, text, reason, jobs[0].prompt_tokens, jobs[0].completion_tokens)
        if req.logprobs:
            body["choices"][0]["logprobs"] = _chat_logprobs(engine.tokenizer, jobs[0])
        body["peak_batch"] = jobs[0].peak_batch
        return body

    return app


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts(bind_host: str, extra: list[str] | None = None) -> frozenset[str] | None:
    """The Host header names a server bound to `bind_host` answers. Bound to loopback: this machine's own
    names only (localhost, 127.0.0.1, ::1, the bound address) plus `extra` (--allowed-host), so a web page
    from another site cannot reach it through DNS rebinding (a name it controls re-pointed at 127.0.0.1:
    the browser then sends that name as Host). Bound to another address: any name, unless `extra` lists them."""
    names = {h.strip().lower().rstrip(".") for h in extra or []}
    if is_loopback(bind_host):
        return frozenset(names | LOOPBACK_NAMES | {bind_host.lower()})
    return frozenset(names) if names else None


def host_name(header: bytes) -> str:
    """The name part of a Host header value: `name[:port]`, `[v6]:port` or a bare IPv6 address."""
    value = header.decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class _Guard:
    """ASGI middleware in front of every route: the Host header (`allowed_hosts`), the API key (on /v1), and
    the body bound and UTF-8 check (on requests with a body), each answered with an OpenAI-style error before
    FastAPI parses anything."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, allowed_hosts: frozenset[str] | None = None):
        self.app, self.max_body, self.hosts = app, max_body_bytes, allowed_hosts
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.hosts is not None and b"host" in headers and host_name(headers[b"host"]) not in self.hosts:
            name = host_name(headers[b"host"])
            return await _refuse_unread(receive, send, headers, 403, P.error_body(
                f"Host {name!r} is not a name of this server (it answers {', '.join(sorted(self.hosts))}): a web "
                f"page of another site reaching a local server through DNS rebinding looks like this; to serve "
                f"under that name, start pangu serve with --allowed-host {name}", code="host_not_allowed"))
        if self.key is not None and scope["path"].startswith("/v1"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):  # constant time in the key's content
                return await _refuse_unread(receive, send, headers, 401, P.error_body(
                    "missing or wrong API key: send the header `Authorization: Bearer <key>` "
                    "(the openai client's api_key)", code="invalid_api_key"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _refuse_unread(receive, send, headers, 413, _too_large(self.max_body, int(declared)))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                if message.get("more_body"):
                    await _discard(receive, DISCARD_REFUSED_BYTES - size)
                return await _reply(send, 413, _too_large(self.max_body, size))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            return await _reply(send, 400, P.error_body(
                f"the request body is not valid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start}); "
                f"JSON bodies must be UTF-8"))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the server's own messages (http.disconnect)

        return await self.app(scope, replay, send)


async def _refuse_unread(receive, send, headers: dict, status: int, body: dict) -> None:
    """Reply `status` to a request whose body has not been read: the body is read and dropped first (not when
    the client waits for `100-continue`: it has sent none), so the reply reaches the client before the
    connection closes (DISCARD_REFUSED_BYTES)."""
    if b"100-continue" not in headers.get(b"expect", b"").lower():
        await _discard(receive, DISCARD_REFUSED_BYTES)
    await _reply(send, status, body)


async def _discard(receive, size: int) -> None:
    """Read and drop the rest of a refused body, at most `size` bytes (the caller keeps the total within
    DISCARD_REFUSED_BYTES); a request without a body ends at the first message."""
    left = size
    while left > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _too_large(limit: int, size: int) -> dict:
    return P.error_body(f"the request body has {size} bytes or more; this server accepts at most {limit} "
                        f"(--max-body-bytes)", code="request_too_large")


async def _reply(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")  # our validators' text
        message = f"{where}: {msg}" if where else msg
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


def _encode(tokenizer, prompts: list) -> list[list[int]]:
    """Texts -> token ids (token-id prompts pass through); runs in a worker thread."""
    return [list(p) if isinstance(p, list) else tokenizer.encode_ids(p) for p in prompts]


def _prompt_text(engine: Engine, prompt, ids: list[int]) -> str:
    return prompt if isinstance(prompt, str) else engine.tokenizer.decode_ids(ids)


def _submit(engine: Engine, encoded: list[list[int]], cfg, stop, logprobs=None) -> list:
    loop = asyncio.get_running_loop()
    jobs = []
    try:
        for ids in encoded:
            jobs.append(engine.submit(ids, cfg, stop, loop, logprobs))
    except PanGuError:
        _cancel(jobs)  # all or nothing
        raise
    return jobs


def _cancel(jobs) -> None:
    for job in jobs:
        job.cancelled = True  # a queued row is dropped, a decoding row leaves at its next token


async def _events(job):
    """("text", delta, n) ... then ("done", reason, n), n = tokens so far; an engine failure raises after
    what was sent."""
    try:
        while True:
            kind, value, n = await job.events.get()
            if kind == "error":
                raise RuntimeError(value)
            yield kind, value, n
            if kind == "done":
                return
    finally:
        job.cancelled = True  # a disconnected client frees its row at the next step


async def _watch_disconnect(request: Request, jobs) -> None:
    """Cancel every row of the request once its client has gone (the server's http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            _cancel(jobs)
            return


async def _collect_all(jobs, request: Request) -> list[tuple[str, str]]:
    watcher = asyncio.create_task(_watch_disconnect(request, jobs))
    try:
        return [await _collect(job) for job in jobs]
    finally:
        watcher.cancel()
        _cancel(jobs)  # a failure of one row ends its siblings too


async def _collect(job) -> tuple[str, str]:
    parts, reason = [], None
    try:
        async for kind, value, _ in _events(job):
            if kind == "text":
                parts.append(value)
            else:
                reason = value
    except RuntimeError as err:
        raise _GenerationFailed(str(err)) from None
    return "".join(parts), reason


def _logprobs(tokenizer, kept: list, at: int = 0) -> dict:
    """OpenAI completions `logprobs` of (token, logprob, top-N) entries; text offsets start at `at`."""
    tokens = [tokenizer.decode_ids([t]) for t, _, _ in kept]
    offsets = []
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in kept],
            "top_logprobs": [{tokenizer.decode_ids([t]): lp for t, lp in top} for _, _, top in kept],
            "text_offset": offsets}


def _chat_logprobs(tokenizer, job) -> dict:
    """OpenAI chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode_ids([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(u, v) for u, v in top]}
                        for t, lp, top in job.logprobs[:job.completion_tokens]]}


class _GenerationFailed(PanGuError, RuntimeError):
    pass


def _sse(events, jobs, request: Request) -> StreamingResponse:
    async def body():
        watcher = asyncio.create_task(_watch_disconnect(request, jobs))
        try:
            async for chunk in events:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except RuntimeError as err:
            yield f"data: {json.dumps(P.error_body(str(err), kind='server_error'))}\n\n"
        finally:
            watcher.cancel()
            _cancel(jobs)  # every row of the request, not only the one being streamed
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _completion_events(jobs, rid, model, include_usage=False, echo=None, tokenizer=None, logprobs=None):
    """Chunks of each choice in turn; with `logprobs`, each chunk carries the tokens generated since the last
    one (a chunk's text can lag its tokens: text held back for a stop string or a partial character)."""
    for index, job in enumerate(jobs):
        if echo is not None:
            yield P.completion_chunk(rid, model, index, echo[index], None)
        sent = offset = 0
        async for kind, value, n in _events(job):
            text, reason = (value, None) if kind == "text" else ("", value)
            lp = None
            if logprobs is not None:
                lp = _logprobs(tokenizer, job.logprobs[sent:n], offset)
                sent, offset = n, offset + sum(len(t) for t in lp["tokens"])
            yield P.completion_chunk(rid, model, index, text, reason, lp)
    if include_usage:
        yield P.usage_chunk(rid, model, "text_completion", sum(j.prompt_tokens for j in jobs),
                            sum(j.completion_tokens for j in jobs))


async def _chat_events(job, rid, model, include_usage=False):
    yield P.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None)
    async for kind, value, _ in _events(job):
        yield P.chat_chunk(rid, model, {"content": value} if kind == "text" else {}, None if kind == "text" else value)
    if include_usage:
        yield P.usage_chunk(rid, model, "chat.completion.chunk", job.prompt_tokens, job.completion_tokens)


def load_engine(model: str, device: str = "cpu", tokenizer: str | None = None, max_batch: int = 8,
                max_queue: int = 64, threads: int = 0, weights: str | None = None) -> Engine:
    """A model directory / preset:NAME (dygraph) or a `pangu export` directory (Paddle Inference);
    weights: `--weights` (fp32 / int8 / bf16, see inference.quantize)."""
    from ..backend import open_backend

    stepper, config, tok = open_backend(model, device, tokenizer, threads, weights=weights)
    if weights in ("int8", "bf16") and hasattr(stepper, "model"):
        from ..quantize import set_threads

        # the one decode thread runs every request's rows in one batched step, one kernel call at a time:
        # --threads (0: the math library's, all cores this process may use) is the kernels' whole budget
        set_threads(stepper.model, threads)
    return Engine(stepper, config, tok, max_batch, max_queue)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def warn_if_open(host: str, api_key: str | None) -> None:
    """One line on stderr when other machines can reach the server and no key protects it."""
    if not is_loopback(host) and not api_key:
        print(f"pangu serve: warning: --host {host} accepts connections from other machines and no --api-key "
              f"(or PANGU_API_KEY) is set: anyone who can reach it can use the model", file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: the system picks a free one; the caller reports which)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535 (0 = any free port), got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
    return sock


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", tokenizer: str | None = None,
          max_batch: int = 8, max_queue: int = 64, truncate: str = "error", threads: int = 0,
          api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          port_file: str | None = None, warn: bool = True, weights: str | None = None, backend=None,
          allowed_host: list[str] | None = None) -> None:
    """Bind first (a taken port fails before the model loads; with `backend`, the (stepper, config, tokenizer)
    of a tensor-parallel rank 0, after it), load, then report the bound port: the line
    `pangu serve: listening on http://HOST:PORT` and, with `port_file`, the port written atomically there."""
    import uvicorn

    if warn:  # the CLI warns before it checks its arguments
        warn_if_open(host, api_key)
    sock = bind(host, port)
    try:
        if backend is not None:  # (stepper, config, tokenizer) already open: a tensor-parallel rank 0
            engine = Engine(*backend, max_batch, max_queue).start()
        else:
            engine = load_engine(model, device, tokenizer, max_batch, max_queue, threads, weights).start()
    except BaseException:
        sock.close()
        close = getattr(backend[0], "close", None) if backend is not None else None
        if close is not None:
            close()
        raise
    bound = sock.getsockname()[1]
    name = model if model.startswith(PRESET_PREFIX) else os.path.basename(os.path.normpath(model))
    app = create_app(engine, name, truncate, api_key, max_body_bytes, allowed_hosts(host, allowed_host))
    shown = f"[{host}]" if ":" in host else host
    print(f"pangu serve: {name} (OpenAI API under /v1, web page at /; batch <= {max_batch}, queue <= {max_queue}"
          f"{f', {weights} weights' if weights else ''}{', API key required' if api_key else ''})", flush=True)
    print(f"pangu serve: listening on http://{shown}:{bound}", flush=True)
    if port_file:
        tmp = f"{port_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{bound}\n")
        os.replace(tmp, port_file)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    if backend is not None:
        # a tensor-parallel rank 0: SIGTERM / SIGINT end the server and then return here, so the engine
        # tells the other ranks to stop (uvicorn's own handling re-raises the signal once it has shut
        # down, which would end this process before the `finally` below)
        import contextlib
        import signal

        server.capture_signals = contextlib.nullcontext
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, server.handle_exit)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
