"""`pangu prepare-data --engine ray --ray-address ADDR` against a separately started cluster (`ray start --head`).

The cluster is a real `ray start --head --block` process group (2 CPUs, its own temp dir, token
authentication on with a token of this test's own, so no file under ~/.ray is read or written);
`pangu prepare-data` runs as a subprocess that joins it, and its `.bin/.idx` must be byte-identical
to the local engine's (`pangu prepare-data --engine local`) on the same input. The cluster's whole
process group is killed in a finally.
"""
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time

import pytest

from paddle_pangu.data.builtin import read_builtin
from paddle_pangu.data.indexed_dataset import IndexedDataset
from paddle_pangu.data.stats import IssueLog

import ray  # noqa: F401,E402  (the `ray` extra, part of `test`: fails loudly if missing)

RAY_START_SECONDS = 120  # start-up on a loaded 2-core machine took ~15 s


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster_env():
    """(address, env) of a `ray start --head` cluster in its own process group; killed afterwards."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = open(os.path.join(temp, "ray_start.log"), "w")
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=2", f"--temp-dir={temp}",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        address, deadline = None, time.monotonic() + RAY_START_SECONDS
        while address is None:
            m = re.search(r"ray start --address='([^']+)'", open(log.name).read())
            address = m.group(1) if m else None
            assert proc.poll() is None, f"ray start exited early:\n{open(log.name).read()[-2000:]}"
            assert time.monotonic() < deadline, f"ray start not up in {RAY_START_SECONDS}s"
            time.sleep(0.5)
        yield address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                if sig == signal.SIGKILL:
                    break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the raylet's workers stay in the group after `ray start` exits
        except ProcessLookupError:
            pass
        log.close()


def _corpus(root):
    arts = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog()) if 300 <= len(d.text) <= 900][:12]
    a = [json.dumps({"text": t}, ensure_ascii=False) for t in arts[:6]]
    b = [json.dumps({"text": t}, ensure_ascii=False) for t in arts[6:]]
    b.append(json.dumps({"text": arts[2] + "这是后来插入的一句话。"}, ensure_ascii=False))  # near-dup across shards
    b.append(json.dumps({"text": arts[7][:-20] + "。"}, ensure_ascii=False))  # near-dup inside shard b
    b.insert(2, '{"text": "' + json.dumps(arts[8][:200], ensure_ascii=False)[1:-1] + '\\ud800尾"}')  # line 3: a lone surrogate escape, skipped and counted
    root.mkdir()
    (root / "a.jsonl").write_text("\n".join(a) + "\n", encoding="utf-8")
    (root / "b.jsonl").write_text("\n".join(b) + "\n", encoding="utf-8")
    return root


def _prepare(inp, out, env, *extra):
    cmd = ["pangu", "prepare-data", "--input", str(inp), "--output", str(out),
           "--name", "news", "--workers", "1", "--no-progress", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """(input dir, the local engine's output dir) of `pangu prepare-data --engine local` on the corpus."""
    root = tmp_path_factory.mktemp("ray_cluster")
    inp = _corpus(root / "in")
    run = _prepare(inp, root / "local", dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    return inp, root / "local"


def _same_bytes(out, local_out):
    for suffix in (".bin", ".idx"):
        assert (out / f"news{suffix}").read_bytes() == (local_out / f"news{suffix}").read_bytes(), suffix


def test_joins_the_cluster_retries_failed_shards_and_writes_the_local_bytes(cluster_env, local, tmp_path):
    """Joins the `ray start` cluster (not a fresh local instance); shard 1's scan kills its worker process once
    (os._exit, not an exception), shard 0's tokenization raises twice (SHARD_ATTEMPTS = 3): the local engine's
    bytes, 3 retries logged. (One run checks both: each `prepare-data` on the cluster costs ~25 s here.)"""
    address, env = cluster_env
    inp, local_out = local
    run = _prepare(inp, tmp_path / "ray", {**env, "PANGU_RAY_TEST_FAULT": "scan:1:1:exit,tokenize:0:2"},
                   "--engine", "ray", "--ray-address", address)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"joined Ray cluster {address}, 2 CPUs" in run.stderr  # not a fresh local instance
    _same_bytes(tmp_path / "ray", local_out)
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["engine"] == "ray"
    retries = [ln for ln in run.stderr.splitlines() if "retried" in ln]
    assert len(retries) == 3, run.stderr[-3000:]
    crashed = [ln for ln in retries if "scan of shard" in ln and "b.jsonl" in ln]
    assert len(crashed) == 1 and "injected fault" not in crashed[0], crashed  # Ray's dead-worker error
    assert sum("tokenize of shard" in ln and "a.jsonl" in ln for ln in retries) == 2
    stats = json.loads((tmp_path / "ray" / "stats.json").read_text())
    assert stats["stages"]["dedup"]["dropped"] == {"near_duplicate": 2}  # the planted near-dups (across, inside b)
    assert stats["issues"] == json.loads((local_out / "stats.json").read_text())["issues"]  # no shard_failed
    (bad,) = stats["issues"]["examples"]["lone_surrogate"]  # both engines: one line naming file, line, character
    assert bad["file"].endswith("b.jsonl") and bad["line"] == 3 and "U+D800 at character 200" in bad["detail"], bad


def test_a_shard_failing_every_attempt_is_reported(cluster_env, local, tmp_path):
    address, env = cluster_env
    inp, local_out = local
    run = _prepare(inp, tmp_path / "ray", {**env, "PANGU_RAY_TEST_FAULT": "scan:0:3"},
                   "--engine", "ray", "--ray-address", address)
    assert run.returncode == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "1 shard(s) failed" in last and "a.jsonl" in last and "injected fault" in last, last
    assert "Traceback" not in run.stderr
    # shard b's 6 articles and its near-dup of an a article (whose original is now gone) are kept; its
    # near-dup of its own article is dropped (verified against shard b's signatures, which start at offset
    # 0 like the failed shard a's empty ones)
    assert len(IndexedDataset(tmp_path / "ray" / "news")) == 7


def test_a_wrong_token_is_a_one_line_error(cluster_env, local, tmp_path):
    address, env = cluster_env
    inp, _ = local
    # Ray retries a refused connection once a second for 20 s by default before raising (node.py); the error
    # path under test is ours, so the driver is given 2 attempts (Ray's own knob) instead of waiting 20 s
    bad = _prepare(inp, tmp_path / "ray", {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32),
                                           "RAY_gcs_server_port_wait_time_s": "2"},
                   "--engine", "ray", "--ray-address", address)
    assert bad.returncode == 2, bad.stderr[-3000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pangu prepare-data: error: prepare-data --ray-address {address}: cannot join"), last
    assert "Traceback" not in bad.stderr and not (tmp_path / "ray").exists()


def test_a_killed_driver_resumes_from_the_verified_shards(cluster_env, local, tmp_path):
    """`pangu prepare-data` SIGKILLed after one of its two shards is tokenized (the test hook kills the driver
    process itself at that point), one scan file corrupted, then rerun with the same arguments: it adopts the
    dead run's partial directory, re-scans the corrupt shard (saying so), keeps the rest, and writes the
    bytes of an uninterrupted run."""
    address, env = cluster_env
    inp, local_out = local
    out = tmp_path / "ray"
    killed = _prepare(inp, out, {**env, "PANGU_RAY_TEST_FAULT": "driver:tokenize:1"},
                      "--engine", "ray", "--ray-address", address)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (partial,) = tmp_path.glob("ray.partial-*")
    assert len(list((partial / "work").glob("*.scan.json"))) == 2
    assert len(list((partial / "shards").glob("*.json"))) == 1
    with open(partial / "work" / "00000.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{")  # a shard file that no longer matches its record
    rerun = _prepare(inp, out, env, "--engine", "ray", "--ray-address", address)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the interrupted run" in rerun.stderr
    assert "the scan of shard" in rerun.stderr and "a.jsonl is corrupt or partial" in rerun.stderr
    assert "resuming: 1 of 2 shards already scanned" in rerun.stderr
    assert "resuming: 1 of 2 shards already tokenized" in rerun.stderr
    _same_bytes(out, local_out)
    assert (out / "dedup_clusters.jsonl").read_text() == (local_out / "dedup_clusters.jsonl").read_text()
    assert not list(tmp_path.glob("ray.partial-*"))
