"""`pangu bench data` pieces: the replicated corpus, the process-tree memory probe, a local-engine row.

(The Ray rows run the engine tested in test_data_ray.py; starting two more Ray
clusters here would add a minute to the suite for no new check.)
"""
import json

from paddle_pangu.bench.data_bench import PeakRSS, _local, table, write_corpus
from paddle_pangu.data.builtin import builtin_size_bytes, read_builtin
from paddle_pangu.data.stats import IssueLog


def test_corpus_is_replicated_with_edits_past_the_builtin_size(tmp_path):
    mb = builtin_size_bytes("builtin:peoples-daily") / 1e6 * 1.05  # a little more than one copy
    written = write_corpus(tmp_path, mb, shards=3)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["part-000.jsonl", "part-001.jsonl", "part-002.jsonl"]
    assert abs(written - sum(f.stat().st_size for f in files) / 1e6) < 1e-9 and written >= mb
    per_file = [[json.loads(line)["text"] for line in f.open(encoding="utf-8")] for f in files]
    texts = [per_file[i % 3][i // 3] for i in range(sum(map(len, per_file)))]  # written round-robin
    arts = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog())]
    assert texts[:len(arts)] == arts and len(texts) > len(arts)
    for j, copy in enumerate(texts[len(arts):]):  # the second copy: each article with one character edited
        assert len(copy) == len(arts[j]) and sum(a != b for a, b in zip(copy, arts[j])) <= 1
        assert copy != arts[j] or arts[j][(37 % max(1, len(arts[j])))] == "之"


def test_local_row_and_table(tmp_path):
    (tmp_path / "c").mkdir()
    mb = write_corpus(tmp_path / "c", 0.03, shards=2)
    row = _local(tmp_path / "c", tmp_path / "out", 1, mb)
    assert row["engine"] == "local" and row["documents"] > 0 and row["peak_rss_mb"] > 50
    assert row["mb_per_s"] > 0 and row["tokenize_s"] > 0 and row["pass1_s"] >= 0
    text = table({"rows": [row], "identical_bin": True, "load_before": 1.0, "load_after": 1.0, "cpus": 2})
    assert text.splitlines()[2].startswith("| - | - | local | 1 | ")


def test_peak_rss_sees_a_child_process():
    import subprocess
    import sys
    import time

    with PeakRSS(interval=0.05) as alone:
        time.sleep(0.3)
    code = "import numpy as np, time; a = np.ones(60_000_000 // 8); a += 1; time.sleep(1.5)"
    with PeakRSS(interval=0.05) as with_child:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert with_child.peak - alone.peak > 40e6  # the child's 60 MB array is counted


def test_stage_profile_checks_the_segmenter_against_python_jieba(tmp_path):
    from paddle_pangu.bench.data_bench import profile_stages, profile_table

    (tmp_path / "c").mkdir()
    mb = write_corpus(tmp_path / "c", 0.05, shards=2)
    p = profile_stages(tmp_path / "c", mb, tmp_path / "out")
    assert p["segmenter"] == "compiled" and p["segmentation_identical"] is True and p["documents"] > 0
    assert list(p["stages"]) == ["read", "clean", "minhash", "dedup", "segment (compiled jieba)", "sentencepiece",
                                 "pack"]
    assert abs(p["pipeline_cpu_s"] - sum(s["cpu_s"] for s in p["stages"].values())) < 0.01
    assert p["python_jieba_cpu_s"] > 0 and "python jieba alone" in profile_table(p)


def test_round_ratios_include_the_per_shard_contention_gauge():
    """Same-round ratios, and the Ray 2 / Ray 1 scan seconds per shard that says whether the 2-CPU run had two
    free cores (made-up rows: only the arithmetic is under test)."""
    from paddle_pangu.bench.data_bench import _ratios

    def ray(workers, mb_per_s, scans):
        tasks = [{"stage": "scan", "work_s": w} for w in scans] + [{"stage": "tokenize", "work_s": 9.0}]
        return {"engine": "ray", "workers": workers, "mb_per_s": mb_per_s, "timeline": {"tasks": tasks}}

    rows = [{"engine": "local", "workers": 1, "mb_per_s": 4.0}, {"engine": "local", "workers": 2, "mb_per_s": 6.0},
            ray(1, 3.0, [1.0, 2.0, 3.0]), ray(2, 4.5, [3.0, 5.0])]
    assert _ratios(rows) == {"ray2/ray1": 1.5, "ray2/local2": 0.75, "ray1/local1": 0.75, "local2/local1": 1.5,
                             "ray2/ray1 scan s per shard": 2.0}
    assert "ray2/ray1 scan s per shard" not in _ratios(rows[:3])
