"""The serving engine: one decoding thread over a BatchDecoder, fed by a bounded queue.

Continuous batching: between two decode steps the thread takes waiting requests (up to
`max_batch` rows in flight), prefills them on their own and merges their KV cache into the
running batch; finished rows leave at once. Each request keeps its own SamplingConfig and RNG, so
a seeded request samples the same text whatever else is being served. Text deltas go back to the
asyncio side through `loop.call_soon_threadsafe`.

Failures stay with the rows that caused them (issue 29): prompt token ids outside the vocabulary are
refused at submit (HTTP 400); a prefill that fails for a group of joining rows is retried row by row,
so only the failing rows get an error and the running batch is untouched; a decode step that fails is
run again row by row (BatchDecoder's on_row_error) and only the rows that fail alone get an error. A
cancelled job (its client went away) leaves the batch at its next token, or is dropped from the queue.
"""
from __future__ import annotations

import asyncio
import queue
import threading

import numpy as np

from ...errors import PanGuError, UsageError
from ..decoding import BatchDecoder, Row, fit_prompt
from ..sampling import SamplingConfig
from ..streaming import TextStream


class ServerBusy(PanGuError, RuntimeError):
    """The request queue is full (HTTP 503)."""


class Job:
    """The asyncio side of one row: a queue of ("text", str), ("done", reason) or ("error", message), each
    followed by the row's completion-token count when it was put (which tokens a text delta covers)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt_tokens: int):
        self.loop, self.events = loop, asyncio.Queue()
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.cancelled = False
        self.peak_batch = 0  # most rows decoded together in one step while this job decoded
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []  # (token, logprob, top-N)

    def put(self, kind: str, value: str) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value, self.completion_tokens))


class Engine:
    def __init__(self, stepper, config, tokenizer, max_batch: int = 8, max_queue: int = 64):
        self.stepper, self.config, self.tokenizer = stepper, config, tokenizer
        self.max_batch = max_batch
        self.pending: queue.Queue = queue.Queue(maxsize=max_queue)
        self.decoder = BatchDecoder(stepper, config, on_row_error=lambda row, err: self._fail([row], err))
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

    def submit(self, prompt: list[int], cfg: SamplingConfig, stop, loop, logprobs: int | None = None) -> Job:
        """Queue one row; UsageError (-> 400) for a prompt that does not fit or holds an id outside the
        vocabulary, ServerBusy (-> 503) when full. `logprobs` N records each token's logprob and top N."""
        vocab = self.config.vocab_size
        for what, ids in (("prompt", prompt), ("stop_token_ids", cfg.stop_token_ids)):
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise UsageError(f"{what}: token id {bad} is outside the model's vocabulary [0, {vocab})")
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

        row = _ServedRow(prompt, cfg, on_token, on_finish)
        row.top_n, row.job = logprobs, job
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
        # a tensor-parallel leader stepper (inference.tensor_parallel) tells the other ranks to stop when
        # the server stops, after this thread's last step
        close = getattr(self.stepper, "close", None)
        try:
            self._loop()
        finally:
            if close is not None:
                close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            new = self._admit()
            if not new and not self.decoder.rows:
                continue
            self._add(new)
            if not self.decoder.rows:
                continue
            batch = len(self.decoder.rows)
            self.peak_batch = max(self.peak_batch, batch)
            for r in self.decoder.rows:
                r.job.peak_batch = max(r.job.peak_batch, batch)
            try:
                self.decoder.step()
                self.steps += 1
            except Exception as err:  # noqa: BLE001 - a bad step fails its rows, never the server
                self._fail(self.decoder.rows, err)
                self.decoder.reset()

    def _add(self, new: list[Row]) -> None:
        """Prefill the joining rows together; if that fails, row by row, failing only the rows that fail.
        BatchDecoder.add changes the running batch only after the prefill succeeded."""
        try:
            self.decoder.add(new)
            return
        except Exception as err:  # noqa: BLE001
            if len(new) == 1:
                self._fail(new, err)
                return
        for r in new:
            try:
                self.decoder.add([r])
            except Exception as err:  # noqa: BLE001
                self._fail([r], err)

    def _fail(self, rows: list[Row], err: Exception) -> None:
        for r in rows:
            job = self.jobs.pop(id(r), None)
            if job is not None:
                job.put("error", f"generation failed: {type(err).__name__}: {err}"[:300])


class _ServedRow(Row):
    """A Row that records, when asked (`top_n` not None), the logprob of each chosen token and the top N
    under the model's distribution (log-softmax of the raw logits, before temperature and penalties)."""

    top_n: int | None = None
    job: Job | None = None

    def choose(self, logits: np.ndarray) -> int:
        token = super().choose(logits)
        if self.top_n is not None and self.job is not None:
            x = logits.astype("float64")  # [V]
            logp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
            top = np.argsort(-logp, kind="stable")[:self.top_n] if self.top_n else []
            self.job.logprobs.append((token, float(logp[token]), [(int(t), float(logp[t])) for t in top]))
        return token
