"""`prepare-data --engine ray` gives the local engine's answer, on a real local 2-CPU Ray cluster.

Corpus: real People's Daily articles in three shards (two JSONL, one gzip
that is truncated part-way, i.e. a corrupt input file) with planted
near-duplicates inside one shard and across shards, an exact copy, a
too-short document and a malformed JSON line. Both engines must keep the
same documents (same clusters, same drops by reason), write byte-identical
`.bin/.idx`, and report the corrupt file with its file and line while
keeping every other shard's documents.
"""
import copy
import gzip
import json

import pytest

from paddle_pangu.data.builtin import read_builtin
from paddle_pangu.data.manifest import read_manifest
from paddle_pangu.data.pipeline import PipelineConfig, run_pipeline
from paddle_pangu.data.stats import IssueLog

import ray  # noqa: E402  (the `ray` extra, part of `test`)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _articles(n):
    docs = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog()) if 300 <= len(d.text) <= 900]
    return docs[:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_corpus")
    arts = _articles(24)
    a = [json.dumps({"text": t}, ensure_ascii=False) for t in arts[:10]]
    a.insert(3, json.dumps({"text": arts[1] + "这是后来插入的一句话。"}, ensure_ascii=False))  # near-dup, same shard
    a.insert(6, '{"text": "unterminated')
    (root / "a.jsonl").write_text("\n".join(a) + "\n", encoding="utf-8")
    b = [json.dumps({"text": t}, ensure_ascii=False) for t in arts[10:18]]
    b.append(json.dumps({"text": arts[4]}, ensure_ascii=False))  # exact copy of a shard-a document
    b.append(json.dumps({"text": arts[12][:-30] + "。"}, ensure_ascii=False))  # near-dup inside shard b
    b.append(json.dumps({"text": "太短了。"}, ensure_ascii=False))
    (root / "b.jsonl").write_text("\n".join(b) + "\n", encoding="utf-8")
    c = [arts[18], arts[19], arts[7] + "补充一句。", arts[20], arts[21], arts[22]]  # c[2]: near-dup across shards
    blob = gzip.compress(("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in c) + "\n").encode())
    (root / "c.jsonl.gz").write_bytes(blob[: int(len(blob) * 0.7)])  # truncated: a corrupt gzip
    return root


def _cfg(corpus, out):
    return PipelineConfig(inputs=[str(corpus)], output=str(out), name="news", progress=False, num_workers=1)


@pytest.fixture(scope="module")
def both(corpus, cluster, tmp_path_factory):
    from paddle_pangu.data import ray_engine
    from paddle_pangu.data.ray_engine import run_pipeline_ray

    out = tmp_path_factory.mktemp("ray_out")
    local = run_pipeline(_cfg(corpus, out / "local"))
    distributed = run_pipeline_ray(_cfg(corpus, out / "ray"))
    _TIMELINE.update(copy.deepcopy(ray_engine.TIMELINE))  # this run's, before another run replaces it
    return out / "local", out / "ray", local, distributed


_TIMELINE: dict = {}


def test_same_bytes_same_drops_same_clusters(both):
    local_dir, ray_dir, local, distributed = both
    for suffix in (".bin", ".idx"):
        assert (ray_dir / f"news{suffix}").read_bytes() == (local_dir / f"news{suffix}").read_bytes()
    ls, rs = local.to_dict(), distributed.to_dict()
    for stage in ("read", "clean", "dedup", "tokenize"):
        for key in ("docs_in", "docs_out", "chars_in", "chars_out", "dropped"):
            assert rs["stages"][stage][key] == ls["stages"][stage][key], (stage, key)
    assert ls["stages"]["dedup"]["dropped"] == {"near_duplicate": 4}  # 3 planted near-dups + 1 exact copy
    assert ls["stages"]["clean"]["dropped"] == {"too_short": 1}
    for key in ("clusters", "documents_removed", "lsh_candidate_pairs", "verified_pairs"):
        assert rs["stages"]["dedup"][key] == ls["stages"]["dedup"][key], key
    assert rs["issues"] == ls["issues"]
    assert (ray_dir / "dedup_clusters.jsonl").read_text() == (local_dir / "dedup_clusters.jsonl").read_text()


def test_the_timeline_has_every_shards_tasks_in_the_drivers_phases(both):
    """`pangu bench data`'s timeline (docs/DATA.md): the driver's phases in order, and one scan and one
    tokenize task per shard, each inside its phase, with its worker and a non-negative warm-up and work."""
    from paddle_pangu.bench.data_bench import timeline, timeline_table

    tl = timeline(_TIMELINE)
    names = [p["phase"] for p in tl["phases"]]
    order = ["start", "shard specs", "scan", "dedup", "tokenize", "concatenate", "commit", "end"]
    assert [n for n in names if n in order] == order
    at = {p["phase"]: p["at_s"] for p in tl["phases"]}
    for stage, lo, hi in (("scan", at["scan"], at["dedup"]), ("tokenize", at["tokenize"], at["clusters file"])):
        tasks = [t for t in tl["tasks"] if t["stage"] == stage]
        assert sorted(t["shard"] for t in tasks) == [0, 1, 2], stage  # a.jsonl, b.jsonl, c.jsonl.gz
        for t in tasks:  # rounded to 0.01 s on both sides
            assert lo - 0.01 <= t["start_s"] <= t["end_s"] <= hi + 0.01 and t["warm_s"] >= 0 and t["work_s"] >= -0.01
    assert len({t["pid"] for t in tl["tasks"]}) <= 2  # the cluster's 2 CPUs: at most two worker processes
    assert "| scan | 0 |" in timeline_table({"workers": 2, "seconds": 1.0, "timeline": tl})


def test_corrupt_gzip_is_reported_and_other_shards_kept(both):
    local_dir, ray_dir, _, distributed = both
    issues = distributed.to_dict()["issues"]
    bad = issues["examples"]["unreadable_file"]
    assert len(bad) == 1 and bad[0]["file"].endswith("c.jsonl.gz") and isinstance(bad[0]["line"], int)
    manifest = read_manifest(ray_dir, verify_checksums=True)
    shards = {s["input"].rsplit("/", 1)[-1]: s["documents"] for s in manifest["shards"]}
    # a: 10 articles + near-dup (dropped); b: 8 + exact copy + near-dup (dropped) + too short (dropped);
    # c: the lines before the truncation (its near-dup of a shard-a article, line 3, was read: 4 drops)
    assert shards["a.jsonl"] == 10 and shards["b.jsonl"] == 8 and 2 <= shards["c.jsonl.gz"] < 5
    assert manifest["engine"] == "ray" and manifest["num_documents"] == sum(shards.values())
    assert read_manifest(local_dir)["num_documents"] == manifest["num_documents"]


def test_a_shard_whose_task_raises_is_reported_alone(corpus, tmp_path):
    """Error path, in-process: a shard spec the reader cannot open (a directory) fails with its file, and
    leaves no scan record (a resumed run scans it again)."""
    from paddle_pangu.data.ray_engine import _scan_task

    work = tmp_path / "work"
    work.mkdir()
    record = _scan_task(_cfg(corpus, tmp_path / "x"), 0, str(corpus), str(work))
    assert record["error"].startswith("IsADirectoryError") and record["n_read"] == 0
    assert json.loads(json.dumps(record)) == record  # the shard's stats travel as JSON, not pickles
    assert (work / "00000.jsonl").read_text() == ""  # no partial survivors reach tokenization
    assert not (work / "00000.scan.json").exists()


def test_engine_flags_are_checked(corpus, tmp_path, capsys):
    from paddle_pangu.cli import main
    from paddle_pangu.data.ray_engine import run_pipeline_ray
    from paddle_pangu.errors import UsageError

    assert main(["prepare-data", "--input", str(corpus), "--output", str(tmp_path / "o"), "--ray-address", "auto",
                 "--no-progress"]) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err
    cfg = _cfg(corpus, tmp_path / "o")
    cfg.max_docs = 3
    with pytest.raises(UsageError, match="--max-docs is a local-engine option"):
        run_pipeline_ray(cfg)
    assert not (tmp_path / "o").exists()


def test_byte_range_shards_give_the_unsplit_bytes(both, corpus, cluster, tmp_path):
    """--shard-mb small enough that a.jsonl and b.jsonl are each cut into several byte ranges at line ends
    (the gzip is not splittable): the same .bin/.idx, clusters and issues (with their file and line) as the
    local engine reading each file as one stream."""
    from paddle_pangu.data.ray_engine import run_pipeline_ray

    local_dir = both[0]
    cfg = _cfg(corpus, tmp_path / "ray")
    cfg.shard_mb = 0.004  # ~4 KB: a few articles per range
    stats = run_pipeline_ray(cfg)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "ray" / f"news{suffix}").read_bytes() == (local_dir / f"news{suffix}").read_bytes()
    assert (tmp_path / "ray" / "dedup_clusters.jsonl").read_text() == (local_dir / "dedup_clusters.jsonl").read_text()
    assert stats.to_dict()["issues"] == both[2].to_dict()["issues"]  # malformed JSON still at a.jsonl line 7
    inputs = [s["input"] for s in read_manifest(tmp_path / "ray")["shards"]]
    for name in ("a.jsonl", "b.jsonl"):
        assert sum(f"{name}#bytes=" in s for s in inputs) >= 3, inputs
    assert sum(s.endswith("c.jsonl.gz") for s in inputs) == 1


def test_auto_shard_size_follows_the_splittable_input(tmp_path):
    """Without --shard-mb the splittable input (uncompressed JSONL) is cut into about AUTO_SHARDS shards of
    1-64 MB; gzip files are not counted (never cut). Sparse files: only sizes are read."""
    from paddle_pangu.data.readers import ReaderConfig
    from paddle_pangu.data.ray_engine import AUTO_SHARDS, auto_shard_mb

    def sized(name, mb):
        with open(tmp_path / name, "wb") as fh:
            fh.truncate(int(mb * 1e6))

    reader = ReaderConfig()
    sized("a.jsonl", 30)
    sized("b.jsonl", 10)
    sized("c.jsonl.gz", 500)
    assert AUTO_SHARDS == 16 and auto_shard_mb([str(tmp_path)], reader) == 40 / 16
    assert auto_shard_mb([str(tmp_path / "c.jsonl.gz")], reader) == 1.0  # nothing to cut: the floor
    sized("a.jsonl", 2000)
    assert auto_shard_mb([str(tmp_path)], reader) == 64.0  # the ceiling
    assert auto_shard_mb(["builtin:peoples-daily", str(tmp_path / "b.jsonl")], reader) == 1.0


def test_driver_verification_on_arrays_keeps_exactly_the_pairs_at_or_above_the_threshold(tmp_path):
    """`_verify` (the reducers' candidate check, vectorised): signatures read from the right shard file and row
    (three shards, one empty, ids with gaps), pairs within and across shards, chunked; kept iff the share of
    equal positions >= threshold, as the local rule computes it, including pairs exactly at the threshold."""
    import itertools

    import numpy as np

    from paddle_pangu.data.ray_engine import _signature_index, _verify

    rng = np.random.default_rng(5)
    num_perm, base = 16, rng.integers(0, 2**32, 16, dtype=np.uint64)
    scans, sig_of, total = {}, {}, 0
    # document j differs from `base` in its first r[j] positions (values of its own): two documents agree on
    # num_perm - max(r) positions, so r = 4, 8, 12 put pairs exactly at 0.75, 0.5, 0.25
    changed = iter([0, 4, 8, 12, 16, 8, 2, 10, 4])
    for k, ids in enumerate([[0, 2, 3, 7], [], [1, 4, 5, 6, 9]]):
        rows = []
        for i in ids:
            row, r = base.copy(), next(changed)
            row[:r] = rng.integers(0, 2**32, r, dtype=np.uint64)
            rows.append(row)
            sig_of[total + i] = row
        np.save(tmp_path / f"{k:05d}.sigs.npy", np.asarray(rows, np.uint64).reshape(len(ids), num_perm))
        scans[k] = {"ids": np.asarray(ids, np.int64), "offset": total}
        total += 10
    index = _signature_index(scans, tmp_path)
    docs = sorted(sig_of)
    candidates = np.asarray(list(itertools.combinations(docs, 2)), np.int64)  # [m, 2], a < b, sorted
    for threshold in (0.25, 0.5, 0.75):
        want = [(a, b) for a, b in candidates.tolist()
                if np.count_nonzero(sig_of[a] == sig_of[b]) / num_perm >= threshold]
        assert 0 < len(want) < len(candidates)  # some pairs pass and some fail
        assert _verify(candidates, index, threshold, True, chunk=7).tolist() == [list(p) for p in want]
    assert _verify(candidates, index, 0.5, False).tolist() == candidates.tolist()
    assert _verify(np.zeros((0, 2), np.int64), index, 0.5, True).shape == (0, 2)
