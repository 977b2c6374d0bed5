"""Server decode benchmark: a real `pangu serve` subprocess on a free 127.0.0.1 port under N concurrent clients.

Each client sends one streaming greedy completion (`stream_options.include_usage` for the exact token
count); per client count and round: first-token latency (request sent -> first text chunk, median over
clients) and aggregate tokens/s (all completion tokens / wall time of the round). Rounds interleave the
client counts; the load average is recorded beside each sample. Request loops are bounded (one
request per client per round) and the server is stopped at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .harness import spread

START_TIMEOUT_S = 300


def start_server(model: str, max_batch: int, log_path: str):
    """The server binds port 0 and writes the port it got to --port-file when ready (no find-then-bind race)."""
    import tempfile

    port_file = os.path.join(tempfile.mkdtemp(prefix="pangu-bench-serve-"), "port")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "paddle_pangu.cli", "serve", "--model", model, "--host",
                             "127.0.0.1", "--port", "0", "--port-file", port_file, "--max-batch", str(max_batch)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(port_file):
            with open(port_file) as f:
                return proc, f"http://127.0.0.1:{int(f.read())}"
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"pangu serve did not start (see {log_path})")


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def one_request(url: str, prompt: str, new_tokens: int, api_key: str | None = None) -> tuple[float, float, int]:
    """(first-token seconds, total seconds, completion tokens) of one streaming greedy completion."""
    body = json.dumps({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    req = urllib.request.Request(url + "/v1/completions", body, headers)
    t0, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (first if first is not None else total), total, tokens


def _round(url: str, prompts: list[str], new_tokens: int, api_key: str | None = None) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: one_request(url, p, new_tokens, api_key), prompts))
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "first_token_s": float(np.median([r[0] for r in results])), "load": load}


def bench_serve(preset: str = "mini", clients=(1, 8), prompt_len: int = 32, new_tokens: int = 64,
                rounds: int = 3, max_batch: int = 8, log_path: str | None = None) -> dict:
    from ..tokenizer import PanGuTokenizer

    tok = PanGuTokenizer.from_default()
    rng = np.random.default_rng(1)
    texts = [tok.decode_ids(rng.integers(100, 30000, prompt_len).tolist()) for _ in range(max(clients))]
    proc, url = start_server(f"preset:{preset}", max_batch, log_path or os.devnull)
    try:
        one_request(url, texts[0], 2)  # warm-up
        samples = {n: [] for n in clients}
        for _ in range(rounds):
            for n in clients:
                samples[n].append(_round(url, texts[:n], new_tokens))
    finally:
        stop_server(proc)
    points = [{"clients": n, "tokens_per_s": spread([s["tokens_per_s"] for s in samples[n]]),
               "first_token_s": spread([s["first_token_s"] for s in samples[n]]),
               "load": [s["load"] for s in samples[n]], "samples": samples[n]} for n in clients]
    return {"name": "serve", "config": f"preset:{preset} prompt~{prompt_len} +{new_tokens} greedy, "
                                       f"max batch {max_batch}", "points": points}


def table(result: dict) -> str:
    lines = [f"serve  {result['config']}  (pangu serve subprocess, streaming clients)"]
    for p in result["points"]:
        tps, ftl = p["tokens_per_s"], p["first_token_s"]
        lines.append(f"  {p['clients']:>3} clients  {tps['median']:>8.1f} tok/s [{tps['min']:.1f}-{tps['max']:.1f}]"
                     f"  first token {1000 * ftl['median']:.0f} ms [{1000 * ftl['min']:.0f}-{1000 * ftl['max']:.0f}]"
                     f"  load {min(p['load']):.1f}-{max(p['load']):.1f}")
    return "\n".join(lines)
