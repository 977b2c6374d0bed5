"""Serving engine error paths: a failing step fails only its rows (the HTTP answer is an error, the engine
keeps serving), a full queue is HTTP 503. Steppers here are stand-ins: the happy paths run the real
model in tests/integration/test_serve.py."""
import numpy as np
from starlette.testclient import TestClient

from paddle_pangu.config import get_preset
from paddle_pangu.inference.server import create_app
from paddle_pangu.inference.server.engine import Engine


class _Tokenizer:
    def encode_ids(self, text):
        return [100 + ord(c) % 50 for c in text]

    def decode_ids(self, ids):
        return "".join(chr(0x4e00 + i % 100) for i in ids)


class _Stepper:
    """Logits that always pick token 42; the prompt "boom" makes the model call raise."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, ids, positions, mask, cache):
        if (ids == 100 + ord("b") % 50).any():
            raise RuntimeError("device fell over")
        logits = np.zeros([ids.shape[0], self.vocab], "float32")
        logits[:, 42] = 1.0
        return logits, np.zeros([1, ids.shape[0], 1])

    select = staticmethod(lambda c, rows: c[:, rows])
    pad_left = staticmethod(lambda c, n: c)
    concat = staticmethod(lambda a, b: np.concatenate([a, b], 1))
    trim_left = staticmethod(lambda c, n: c)


def _client(stepper, **kw):
    config = get_preset("tiny")
    engine = Engine(stepper, config, _Tokenizer(), **kw).start()
    return engine, TestClient(create_app(engine, "stub"))


def test_a_failing_step_fails_its_request_and_the_engine_keeps_serving():
    engine, http = _client(_Stepper(40000))
    try:
        bad = http.post("/v1/completions", json={"prompt": "boom", "max_tokens": 3})
        assert bad.status_code == 500 and "device fell over" in bad.json()["error"]["message"]
        good = http.post("/v1/completions", json={"prompt": "ok", "max_tokens": 3, "temperature": 0})
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 3
    finally:
        engine.stop()


def _run_to_end(engine, jobs, loop):
    """Start the engine with `jobs` already waiting and return each job's last event as (kind, value)."""
    import asyncio

    engine.start()
    try:
        async def outcome(job):
            events = [await asyncio.wait_for(job.events.get(), 300)]
            while events[-1][0] == "text":
                events.append(await asyncio.wait_for(job.events.get(), 300))
            return events[-1][:2]  # (kind, value); [2] is the token count

        async def all_outcomes():
            return await asyncio.gather(*(outcome(j) for j in jobs))

        return loop.run_until_complete(all_outcomes())
    finally:
        engine.stop()
        loop.close()


def test_a_failing_prefill_fails_only_its_row_among_rows_joining_together():
    """Four rows join in one prefill; one of them makes the model raise: it alone gets the error, the other
    three (prefilled again row by row) decode to their end (issue 29: 7 of 8 streams got the error before)."""
    import asyncio

    from paddle_pangu.inference.sampling import SamplingConfig

    engine = Engine(_Stepper(40000), get_preset("tiny"), _Tokenizer(), max_batch=8)
    loop = asyncio.new_event_loop()
    cfg = SamplingConfig(max_new_tokens=3)
    jobs = [engine.submit(engine.tokenizer.encode_ids(p), cfg, (), loop) for p in ("ok", "boom", "fine", "yes")]
    # not started before: all four are waiting, so they are admitted in one prefill
    ends = _run_to_end(engine, jobs, loop)
    assert ends[1][0] == "error" and "device fell over" in ends[1][1]
    assert [e for i, e in enumerate(ends) if i != 1] == [("done", "length")] * 3
    assert [j.completion_tokens for j in jobs] == [3, 0, 3, 3]


class _DecodeFailsAt30(_Stepper):
    """A decode step (ids [B, 1]) holding a row at position 30 raises, batched or alone."""

    def __call__(self, ids, positions, mask, cache):
        if ids.shape[1] == 1 and (positions == 30).any():
            raise RuntimeError("kernel failed at position 30")
        return super().__call__(ids, positions, mask, cache)


def test_a_failing_decode_step_fails_only_the_row_that_fails_alone():
    """Two rows decode together; the step where one reaches position 30 raises. The step is run again row by
    row: that row gets the error, the other decodes to its end (before, both got the error)."""
    import asyncio

    from paddle_pangu.inference.sampling import SamplingConfig

    engine = Engine(_DecodeFailsAt30(40000), get_preset("tiny"), _Tokenizer(), max_batch=8)
    loop = asyncio.new_event_loop()
    cfg = SamplingConfig(max_new_tokens=6)
    jobs = [engine.submit(engine.tokenizer.encode_ids(p), cfg, (), loop) for p in ("a" * 28, "ok")]
    # both join in one prefill; row 0 decodes at positions 28, 29, then 30 fails
    ends = _run_to_end(engine, jobs, loop)
    assert ends[0][0] == "error" and "position 30" in ends[0][1]
    assert ends[1] == ("done", "length") and jobs[1].completion_tokens == 6
    assert jobs[0].completion_tokens == 3  # its tokens at positions 28, 29, 30 were chosen before the failure


def test_a_full_queue_is_503():
    import asyncio

    from paddle_pangu.inference.sampling import SamplingConfig

    config = get_preset("tiny")
    engine = Engine(_Stepper(40000), config, _Tokenizer(), max_batch=1, max_queue=1)  # not started: nobody drains
    engine.submit([5, 6], SamplingConfig(max_new_tokens=2), (), asyncio.new_event_loop())
    with TestClient(create_app(engine, "stub")) as http:
        busy = http.post("/v1/completions", json={"prompt": "c", "max_tokens": 2})
    assert busy.status_code == 503 and "busy" in busy.json()["error"]["message"]
