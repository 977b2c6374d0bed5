"""`pangu prepare-data` (local engine) killed after pass 1 resumes from it when the same command is rerun.

The real `pangu` process SIGKILLs itself once pass 1 is saved (`PANGU_LOCAL_TEST_FAULT=kill-after-pass1`: no
timer to race); the rerun must say it resumes and write the bytes, clusters and counts of an uninterrupted
run; a saved pass 1 whose work file was altered is not used (a line says so) and the run starts again.
"""
import json
import logging
import os
import signal
import subprocess

from paddle_pangu.data.builtin import read_builtin
from paddle_pangu.data.pipeline import PipelineConfig, run_pipeline
from paddle_pangu.data.stats import IssueLog


def _cfg(inp, out):
    return PipelineConfig(inputs=[str(inp)], output=str(out), name="news", progress=False, num_workers=1)


def _prepare(inp, out, **env):
    cmd = ["pangu", "prepare-data", "--input", str(inp), "--output", str(out), "--name", "news", "--workers", "1",
           "--no-progress"]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def _same_output(out, ref):
    for name in ("news.bin", "news.idx", "dedup_clusters.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    got, want = (json.loads((d / "stats.json").read_text())["stages"] for d in (out, ref))
    for stage in want:
        for key in ("docs_in", "docs_out", "chars_in", "chars_out", "dropped"):
            assert got[stage][key] == want[stage][key], (stage, key)


def test_killed_after_pass1_resumes_and_an_altered_pass1_is_redone(tmp_path, caplog):
    arts = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog()) if 300 <= len(d.text) <= 900][:10]
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in arts + [arts[3] + "这是后来插入的一句话。"]]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_pipeline(_cfg(tmp_path / "in", tmp_path / "ref"))  # uninterrupted, in this process (same code)
    assert json.loads((tmp_path / "ref" / "stats.json").read_text())["stages"]["dedup"]["dropped"] == {
        "near_duplicate": 1}

    killed = _prepare(tmp_path / "in", tmp_path / "out", PANGU_LOCAL_TEST_FAULT="kill-after-pass1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (partial,) = tmp_path.glob("out.partial-*")
    assert (partial / "pass1.json").exists() and not (tmp_path / "out").exists()
    rerun = _prepare(tmp_path / "in", tmp_path / "out")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the interrupted run" in rerun.stderr and "pass 1" in rerun.stderr
    _same_output(tmp_path / "out", tmp_path / "ref")
    assert not list(tmp_path.glob("out.partial-*")) and not (tmp_path / "out" / "pass1.json").exists()

    killed = _prepare(tmp_path / "in", tmp_path / "out2", PANGU_LOCAL_TEST_FAULT="kill-after-pass1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (partial,) = tmp_path.glob("out2.partial-*")
    with open(partial / "work.jsonl", "a", encoding="utf-8") as fh:
        fh.write(lines[0] + "\n")  # a work file that no longer matches the saved pass 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_pipeline(_cfg(tmp_path / "in", tmp_path / "out2"))  # the rerun, in this process
    assert "is corrupt or partial (work.jsonl does not match its sha256" in caplog.text, caplog.text
    assert "resuming" not in caplog.text
    _same_output(tmp_path / "out2", tmp_path / "ref")
    assert not list(tmp_path.glob("out2.partial-*"))
