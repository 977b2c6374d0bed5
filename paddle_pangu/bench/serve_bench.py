"""Server decode benchmark: a real `pangu serve` subprocess on a free 127.0.0.1 port under N concurrent clients.

Each client sends one streaming greedy completion (`stream_options.include_usage` for the exact token
count); per client count and round: first-token latency (request sent -> first text chunk, median over
clients) and aggregate tokens/s (all completion tokens / wall time of the round). Rounds interleave the
client counts; the load average is recorded beside each sample. Request loops are bounded (one
request per client per round) and the server is stopped at the end.

`weights` (`pangu bench serve --weights fp32,int8,bf16`): one server per mode (`pangu serve --weights`), all
started first and idle while another is measured, the rounds interleaving modes and client counts. With
`offline` (default), the same round also runs offline batch decode in this process on the same model and
weights (preset:NAME, seed 0; the same prompt ids at batch N = the client count, N x new tokens, no stop):
`served / offline` per round is the continuous batcher's cost (HTTP, streaming, scheduling) as a number.
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


def start_server(model: str, max_batch: int, log_path: str, weights: str = "fp32"):
    """The server binds port 0 and writes the port it got to --port-file when ready (no find-then-bind race)."""
    import tempfile

    port_file = os.path.join(tempfile.mkdtemp(prefix="pangu-bench-serve-"), "port")
    log = open(log_path, "a")
    proc = subprocess.Popen([sys.executable, "-m", "paddle_pangu.cli", "serve", "--model", model, "--host",
                             "127.0.0.1", "--port", "0", "--port-file", port_file, "--max-batch", str(max_batch),
                             "--weights", weights], stdout=log, stderr=subprocess.STDOUT)
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


def _offline(preset: str, weights: str, texts: list[str], clients, new_tokens: int) -> dict:
    """{clients: callable} decoding texts[:n] at batch n in this process, the model a server of `weights` runs."""
    from ..inference.backend import open_backend
    from .decode_bench import stepper_fn

    stepper, _, tok = open_backend(f"preset:{preset}", weights=weights)
    ids = [tok.encode_ids(t) for t in texts]
    return {n: stepper_fn(stepper, ids[:n], new_tokens) for n in clients}


def bench_serve(preset: str = "mini", clients=(1, 8), prompt_len: int = 32, new_tokens: int = 64,
                rounds: int = 3, max_batch: int = 8, log_path: str | None = None, weights=("fp32",),
                offline: bool = True) -> dict:
    from ..inference.quantize import check_weights
    from ..tokenizer import PanGuTokenizer
    from .harness import sample

    for w in weights:
        check_weights(w)
    tok = PanGuTokenizer.from_default()
    rng = np.random.default_rng(1)
    texts = [tok.decode_ids(rng.integers(100, 30000, prompt_len).tolist()) for _ in range(max(clients))]
    servers = {}
    try:
        for w in weights:
            servers[w] = start_server(f"preset:{preset}", max_batch, log_path or os.devnull, w)
        local = {w: _offline(preset, w, texts, clients, new_tokens) for w in weights} if offline else {}
        for w, (_, url) in servers.items():
            one_request(url, texts[0], 2)  # warm-up
            for fn in local.get(w, {}).values():
                fn()
        samples = {(w, n): [] for w in weights for n in clients}
        local_samples = {(w, n): [] for w in local for n in clients}
        for _ in range(rounds):
            for w in weights:
                for n in clients:
                    samples[w, n].append(_round(servers[w][1], texts[:n], new_tokens))
                    if w in local:
                        s = sample(local[w][n])
                        s["tokens_per_s"] = n * new_tokens / s["wall_s"]
                        local_samples[w, n].append(s)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    points = []
    for w in weights:
        for n in clients:
            got = samples[w, n]
            point = {"weights": w, "clients": n, "tokens_per_s": spread([s["tokens_per_s"] for s in got]),
                     "first_token_s": spread([s["first_token_s"] for s in got]),
                     "load": [s["load"] for s in got], "samples": got}
            if (w, n) in local_samples:
                off = local_samples[w, n]
                point["offline"] = {"batch": n, "tokens_per_s": spread([s["tokens_per_s"] for s in off]),
                                    "load": [s["load"] for s in off], "samples": off}
                # per round, served and offline measured back to back: served tokens/s / offline tokens/s
                point["served_over_offline"] = spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(got, off)])
            points.append(point)
    return {"name": "serve", "config": f"preset:{preset} prompt~{prompt_len} +{new_tokens} greedy, "
                                       f"max batch {max_batch}", "weights": list(weights), "points": points}


def table(result: dict) -> str:
    lines = [f"serve  {result['config']}  (pangu serve subprocess, streaming clients)"]
    for p in result["points"]:
        tps, ftl = p["tokens_per_s"], p["first_token_s"]
        line = (f"  {p.get('weights', 'fp32'):>4} {p['clients']:>3} clients  {tps['median']:>8.1f} tok/s "
                f"[{tps['min']:.1f}-{tps['max']:.1f}]  first token {1000 * ftl['median']:.0f} ms "
                f"[{1000 * ftl['min']:.0f}-{1000 * ftl['max']:.0f}]")
        if "offline" in p:
            off, r = p["offline"]["tokens_per_s"], p["served_over_offline"]
            line += (f"  offline batch {p['offline']['batch']} {off['median']:.1f} tok/s, served/offline "
                     f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]")
        lines.append(line + f"  load {min(p['load']):.1f}-{max(p['load']):.1f}")
    return "\n".join(lines)
