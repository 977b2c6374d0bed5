"""The serving engine: one decoding thread over a BatchDecoder, fed by a bounded queue.

Continuous batching: between two decode steps the thread takes waiting requests (up to
`max_batch` rows in flight), prefills them on their own and merges their KV cache into the
running batch; finished rows leave at once. Each request keeps its own SamplingConfig and RNG, so
a seeded request samples the same text whatever else is being served. Text deltas go back to the
asyncio side through `loop.call_soon_threadsafe`. A failure inside a step fails the rows in
flight (their clients get an error) and the thread keeps serving.
"""
from __future__ import annotations

import asyncio
import queue
import threading

from ...errors import PanGuError
from ..decoding import BatchDecoder, Row, fit_prompt
from ..generation import SamplingConfig
from ..streaming import TextStream


class ServerBusy(PanGuError, RuntimeError):
    """The request queue is full (HTTP 503)."""


class Job:
    """The asyncio side of one row: a queue of ("text", str), ("done", reason) or ("error", message)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt_tokens: int):
        self.loop, self.events = loop, asyncio.Queue()
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.cancelled = False

    def put(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Engine:
    def __init__(self, stepper, config, tokenizer, max_batch: int = 8, max_queue: int = 64):
        self.stepper, self.config, self.tokenizer = stepper, config, tokenizer
        self.max_batch = max_batch
        self.pending: queue.Queue = queue.Queue(maxsize=max_queue)
        self.decoder = BatchDecoder(stepper, config)
        self.jobs: dict[int, Job] = {}
        self.steps = 0
        self.peak_batch = 0  # most rows ever decoded in one step (shows batching happened)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pangu-decode", daemon=True)

    @property
    def context(self) -> int:
        return self.config.max_position_embeddings

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def submit(self, prompt: list[int], cfg: SamplingConfig, stop, loop) -> Job:
        """Queue one row; UsageError (-> 400) for a prompt that does not fit, ServerBusy (-> 503) when full."""
        prompt = fit_prompt(prompt, cfg, self.context)
        job = Job(loop, len(prompt))
        stream = TextStream(self.tokenizer, stop)

        def on_token(token: int) -> bool:
            job.completion_tokens += 1
            delta = stream.push(token)
            if delta:
                job.put("text", delta)
            return stream.stopped or job.cancelled

        def on_finish(row: Row) -> None:
            rest = stream.flush()
            if rest:
                job.put("text", rest)
            self.jobs.pop(id(row), None)
            job.put("done", row.finish_reason)

        row = Row(prompt, cfg, on_token, on_finish)
        self.jobs[id(row)] = job
        try:
            self.pending.put_nowait(row)
        except queue.Full:
            self.jobs.pop(id(row), None)
            raise ServerBusy(f"server busy: {self.pending.maxsize} requests already queued; retry later") from None
        return job

    def _admit(self) -> list[Row]:
        rows: list[Row] = []
        idle = not self.decoder.rows
        while len(self.decoder.rows) + len(rows) < self.max_batch:
            try:
                rows.append(self.pending.get(timeout=0.05) if idle and not rows else self.pending.get_nowait())
            except queue.Empty:
                break
        live = [r for r in rows if id(r) in self.jobs and not self.jobs[id(r)].cancelled]
        for r in rows:
            if r not in live:  # its client went away while it waited
                self.jobs.pop(id(r), None)
        return live

    def _run(self) -> None:
        while not self._stop.is_set():
            new = self._admit()
            if not new and not self.decoder.rows:
                continue
            try:
                self.decoder.add(new)
                self.peak_batch = max(self.peak_batch, len(self.decoder.rows))
                self.decoder.step()
                self.steps += 1
            except Exception as err:  # noqa: BLE001 - a bad step fails its rows, never the server
                self._fail(self.decoder.rows + [r for r in new if r not in self.decoder.rows], err)
                self.decoder.reset()

    def _fail(self, rows: list[Row], err: Exception) -> None:
        for r in rows:
            job = self.jobs.pop(id(r), None)
            if job is not None:
                job.put("error", f"generation failed: {type(err).__name__}: {err}"[:300])
