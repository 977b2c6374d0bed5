"""`pangu evaluate / generate / serve --nproc 2` (issue 27 part 1): real `pangu` subprocesses, each starting
2 CPU ranks under paddle.distributed.launch, against the same command / functions in one process.

The model: preset tiny with N(0, 0.1) weights (seed 11), saved as a full directory (split at load, slice
by slice) and resharded to mp2 rank files (`pangu reshard`'s function; loaded as they are). 0.1 instead of
the reference 0.02 so the greedy tokens depend on every weight: with it, a swapped rank slice of a
column- or row-parallel weight changes the greedy text (tests/unit/test_tp_inference_parts.py
checks that mutation on this same model), so equal tokens here mean the split and the all-reduces are right.

fp32 bound for the evaluation losses. mp2 changes only the summation order of the row-parallel matmuls
(attention out_proj and mlp fc_out: each rank sums its K/2 products, the all-reduce adds the two
partial sums; K = hidden 64 or ffn 256) -- the logits are gathered whole (c_concat) before the loss,
so the softmax / cross entropy is the same code on the same numbers. Reassociating a K-term fp32 sum
changes it by at most about sqrt(K) * u relative for random-sign terms (u = 2^-24; the worst case K*u
needs all rounding errors aligned), a few such errors per reduction. There are 2 row-parallel
reductions per transformer layer, 3 layers (2 blocks + the query layer): 6 reductions, each perturbing
the hidden state relatively by <= 4 * sqrt(256) * u; layernorm and softmax are well conditioned
(Lipschitz ~1 in relative terms at these scales), so the per-token loss moves by at most
6 * 4 * 16 * u ~= 2.3e-5 relative. We assert rtol = 6 * 4 * sqrt(256) * 2^-24 per example mean loss
(observed about 1e-7) and identical predictions / generated text.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from serve_utils import Server  # noqa: E402
from tp_case import PROMPTS, tp_model  # noqa: E402
from task_files import write_ocnli_and_cmrc  # noqa: E402  (tests/task_files.py)

FP32_U = 2.0 ** -24
LOSS_RTOL = 6 * 4 * np.sqrt(256) * FP32_U  # see the module docstring
GUARD_S = 600  # hang guard of one launched command, not a timing assertion


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tp_model(tmp_path_factory.mktemp("tp"))


@pytest.fixture(scope="module")
def reference(dirs):
    from paddle_pangu.inference.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(dirs[0])


def _pangu(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "paddle_pangu.cli", *args, "--launch-logs", str(tmp / f"logs-{args[0]}")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=GUARD_S, cwd=str(tmp))


def test_evaluate_nproc2_gives_the_one_process_losses_and_predictions(dirs, tmp_path):
    from paddle_pangu.cli import main

    write_ocnli_and_cmrc(tmp_path / "tasks", ocnli_rows=5)  # a candidate task and a generation task
    common = ["--task", "paper", "--data-dir", str(tmp_path / "tasks"), "--shots", "0", "1", "--batch-size", "6"]
    assert main(["evaluate", "--model", dirs[0], *common, "--output", str(tmp_path / "one.json"),
                 "--log-samples", str(tmp_path / "one.jsonl")]) == 0
    r = _pangu("evaluate", "--model", dirs[0], *common, "--output", str(tmp_path / "tp.json"),
               "--log-samples", str(tmp_path / "tp.jsonl"), "--nproc", "2", tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ocnli" in r.stdout and "cmrc2018" in r.stdout  # rank 0's report table on the console
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text(encoding="utf-8").splitlines()]
    tp = [json.loads(line) for line in (tmp_path / "tp.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(tp) == len(one) == 2 * (5 + 2)
    for a, b in zip(one, tp):
        assert (a["task"], a["shots"], a["id"]) == (b["task"], b["shots"], b["id"])
        if a["task"] == "ocnli":
            la, lb = ([c["mean_loss"] for c in x["candidates"]] for x in (a, b))
            np.testing.assert_allclose(lb, la, rtol=LOSS_RTOL, atol=0)
            assert b["prediction"] == a["prediction"] and b["correct"] == a["correct"]
        else:
            assert b["generated"] == a["generated"] and a["generated"]
    summary = {(x["task"], x["shots"]): x for x in json.loads((tmp_path / "tp.json").read_text())}
    for x in json.loads((tmp_path / "one.json").read_text()):
        metric = "accuracy" if x["task"] == "ocnli" else "f1"
        assert summary[(x["task"], x["shots"])][metric] == x[metric]
    assert (tmp_path / "tp.png").read_bytes()[:4] == b"\x89PNG"


def test_generate_nproc2_on_rank_files_prints_the_one_process_greedy_text(dirs, reference, tmp_path):
    from paddle_pangu.inference import generate_text

    model, tok = reference
    want = generate_text(model, tok, PROMPTS, max_new_tokens=12)
    assert len(set(want)) == 2 and all(len(set(tok.encode_ids(w))) > 3 for w in want)  # not a degenerate model
    args = ["generate", "--model", dirs[1], "--max-new-tokens", "12", "--nproc", "2"]
    for p in PROMPTS:
        args += ["--prompt", p]
    r = _pangu(*args, tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == [p + w for p, w in zip(PROMPTS, want)]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_serve_nproc2_answers_the_openai_client_and_stops_every_rank_on_sigterm(dirs, reference, tmp_path):
    import openai

    from paddle_pangu.inference import generate_text

    model, tok = reference
    lengths = {PROMPTS[0]: 6, PROMPTS[1]: 14}  # rows leave at different steps: cache rows are dropped / trimmed
    want = {p: generate_text(model, tok, [p], max_new_tokens=n)[0] for p, n in lengths.items()}
    srv = Server(dirs[0], "--nproc", "2", "--launch-logs", str(tmp_path / "logs"), log_path=str(tmp_path / "serve.log"))
    try:
        workers = [p for p in _descendants(srv.proc.pid)]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=300, max_retries=0)

        def ask(prompt):
            out = client.completions.create(model="full", prompt=prompt, max_tokens=lengths[prompt], temperature=0)
            return out.choices[0].text

        with ThreadPoolExecutor(2) as pool:  # concurrent requests: rows join a running batch
            got = dict(zip(PROMPTS, pool.map(ask, PROMPTS)))
        assert got == want
        assert ask(PROMPTS[1]) == want[PROMPTS[1]]  # and again, alone, after the batch emptied
        time.sleep(6)  # longer than the heartbeat: the idle followers stay in step
        assert ask(PROMPTS[0]) == want[PROMPTS[0]]
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=120) == 0, srv.tail()
        alive = [p for p in workers if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
        assert len(workers) >= 3 and not alive, (workers, alive)  # launcher + 2 ranks, all gone
        assert "listening on http://127.0.0.1:" in srv.tail()
        assert "error" not in srv.tail().lower(), srv.tail()
    finally:
        srv.stop()
