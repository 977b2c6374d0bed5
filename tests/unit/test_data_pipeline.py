"""End-to-end `prepare-data`: real People's Daily text with planted problems, stats, manifest, atomicity."""
import json
import subprocess
import sys

import numpy as np
import pytest

from paddle_pangu.cli import main
from paddle_pangu.data import build_pretraining_datasets, pipeline
from paddle_pangu.data.builtin import read_builtin
from paddle_pangu.data.cleaning import Cleaner
from paddle_pangu.data.indexed_dataset import IndexedDataset
from paddle_pangu.data.manifest import read_manifest
from paddle_pangu.data.pipeline import PipelineConfig, run_pipeline
from paddle_pangu.data.stats import Document, IssueLog, StageStats

N_ARTICLES = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """news.jsonl: 30 real articles + a near-duplicate + a malformed line; notes.txt: bad bytes + short line."""
    root = tmp_path_factory.mktemp("corpus")
    arts = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog()) if 400 <= len(d.text) <= 1500][:N_ARTICLES]
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in arts]
    lines.insert(10, '{"text": "unterminated')
    lines.append(json.dumps({"text": arts[3] + "这是后来插入的一句话。"}, ensure_ascii=False))
    (root / "news.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "notes.txt").write_bytes("太短了。\n".encode() + b"\xc3\x28 invalid utf-8\n")
    (root / "empty.jsonl").write_bytes(b"")
    return root, arts


def _cfg(corpus_dir, out, **kw):
    kw.setdefault("num_workers", 1)
    return PipelineConfig(inputs=[str(corpus_dir)], output=str(out), name="news", progress=False, **kw)


def test_end_to_end_dataset(corpus, tmp_path):
    root, arts = corpus
    out = tmp_path / "ds"
    stats = run_pipeline(_cfg(root, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial dir left
    names = {p.name for p in out.iterdir()}
    assert {"news.bin", "news.idx", "manifest.json", "stats.json", "stats.txt", "dedup_clusters.jsonl"} <= names
    assert "work.jsonl" not in names
    s = json.loads((out / "stats.json").read_text())
    assert s["stages"]["read"]["docs_out"] == N_ARTICLES + 1 + 1  # articles + near-dup + "太短了。"
    assert s["stages"]["clean"]["dropped"] == {"too_short": 1}
    assert s["stages"]["dedup"]["dropped"] == {"near_duplicate": 1} and s["stages"]["dedup"]["clusters"] == 1
    issues = s["issues"]
    assert issues["counts"] == {"malformed_json": 1, "undecodable_line": 1, "empty_file": 1}
    assert issues["examples"]["malformed_json"][0]["line"] == 11
    assert issues["examples"]["undecodable_line"][0]["line"] == 2
    cluster = json.loads((out / "dedup_clusters.jsonl").read_text().splitlines()[0])
    assert cluster["kept"]["ref"].endswith("news.jsonl:4") and cluster["removed"][0]["ref"].endswith(f"news.jsonl:{N_ARTICLES + 2}")
    manifest = read_manifest(out, verify_checksums=True)
    ds = IndexedDataset(out / "news")
    assert len(ds) == manifest["num_documents"] == N_ARTICLES == stats.stages["tokenize"].docs_out
    assert ds.num_tokens == manifest["num_tokens"] == s["summary"]["tokens"]
    for i in range(len(ds)):
        assert ds[i][-1] == 9 and not (np.asarray(ds[i][:-1]) == 9).any()  # REF: 9 after every document
    from paddle_pangu.tokenizer import PanGuSentencePiece

    cleaned = Cleaner().clean(Document(arts[0], "t", "t"), StageStats("c")).text
    assert list(ds[0][:-1]) == PanGuSentencePiece().encode_ids(cleaned)
    assert "near_duplicate" in (out / "stats.txt").read_text()
    data = build_pretraining_datasets([out], None, 32, {"train": 50, "valid": 2}, seed=0)
    assert data["train"][0].shape == (33,) and len(data["valid"]) == 2


def test_multiprocess_run_matches_single_process(corpus, tmp_path, monkeypatch):
    """Two workers write byte-identical output to one worker (8 articles and a near-duplicate of one of
    them: small enough for a busy 2-core box). Chunks of 2 documents, for cleaning and for tokenizing,
    so the two workers really interleave several chunks each and the merge order is tested."""
    import paddle_pangu.tokenizer as tokenizer_pkg

    encoder = tokenizer_pkg.ParallelEncoder
    monkeypatch.setattr(pipeline, "CHUNK_DOCS", 2)
    monkeypatch.setattr(tokenizer_pkg, "ParallelEncoder", lambda *a, **k: encoder(*a, **{**k, "chunk_size": 2}))
    _, arts = corpus
    small = tmp_path / "small"
    small.mkdir()
    docs = arts[:8] + [arts[5] + "这是后来插入的一句话。"]
    (small / "news.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs),
                                      encoding="utf-8")
    one = run_pipeline(_cfg(small, tmp_path / "one", num_workers=1))
    run_pipeline(_cfg(small, tmp_path / "two", num_workers=2))
    assert one.stages["dedup"].dropped == {"near_duplicate": 1} and one.stages["tokenize"].docs_out == 8
    assert (tmp_path / "one" / "news.bin").read_bytes() == (tmp_path / "two" / "news.bin").read_bytes()
    assert (tmp_path / "one" / "news.idx").read_bytes() == (tmp_path / "two" / "news.idx").read_bytes()


def test_prepare_data_command_imports_no_paddle_and_its_forked_workers_match_one_worker(corpus, tmp_path):
    """`pangu prepare-data` builds no model unless a perplexity model is given, so it imports neither paddle
    nor paddlenlp: its worker pools fork (inheriting the loaded segmenter) instead of spawning. 300 documents
    (3 pass-1 chunks of CHUNK_DOCS) in a fresh process with two workers: the output is one worker's."""
    _, arts = corpus
    small = tmp_path / "in"
    small.mkdir()
    docs = [f"{a}第{i}份。" for i in range(10) for a in arts]  # near-duplicates of each article: dedup has work
    (small / "news.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs),
                                      encoding="utf-8")
    assert len(docs) > 2 * pipeline.CHUNK_DOCS
    one = run_pipeline(_cfg(small, tmp_path / "one", num_workers=1))
    code = ("import json, sys\n"
            "from paddle_pangu.cli import main\n"
            "from paddle_pangu.data import pipeline\n"
            f"rc = main(['prepare-data', '--input', {str(small)!r}, '--output', {str(tmp_path / 'two')!r}, "
            "'--name', 'news', '--workers', '2', '--no-progress'])\n"
            "print(json.dumps({'rc': rc, 'start': pipeline.start_method(), "
            "'mods': sorted({m.split('.')[0] for m in sys.modules} & {'paddle', 'paddlenlp'})}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "start": "fork", "mods": []}, got
    assert one.stages["dedup"].dropped["near_duplicate"] > 0
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "one" / f"news{suffix}").read_bytes() == (tmp_path / "two" / f"news{suffix}").read_bytes()


def test_interrupted_run_leaves_nothing_and_existing_output_is_protected(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    out = tmp_path / "ds"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_pass_tokenize", boom)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_cfg(root, out))
    assert list(tmp_path.iterdir()) == []
    stale = tmp_path / "ds.partial-999999999"  # left by a killed run (no such pid)
    (stale / "work").mkdir(parents=True)
    monkeypatch.undo()
    run_pipeline(_cfg(root, out, max_docs=3, stages=("clean",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    read_manifest(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_pipeline(_cfg(root, out))


def test_stage_subset_writes_documents(corpus, tmp_path):
    root, _ = corpus
    stats = run_pipeline(_cfg(root, tmp_path / "docs", stages=("clean", "dedup")))
    lines = (tmp_path / "docs" / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == stats.stages["dedup"].docs_out == N_ARTICLES
    assert read_manifest(tmp_path / "docs")["num_documents"] == N_ARTICLES
    with pytest.raises(ValueError, match="without the tokenize"):
        build_pretraining_datasets([tmp_path / "docs"], None, 8, {"train": 2})


def test_every_data_config_file_loads():
    from pathlib import Path

    from paddle_pangu.cli.prepare_data import load_config_file

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "data").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config_file(f)
        assert cfg.name and cfg.stages[-1] == "tokenize"


def test_cli_with_yaml_config_and_errors(corpus, tmp_path, capsys):
    root, _ = corpus
    cfg = tmp_path / "data.yaml"
    cfg.write_text("cleaning:\n  min_chars: 100\ndedup:\n  threshold: 0.6\nsplit: [8, 1, 1]\n", encoding="utf-8")
    out = tmp_path / "ds"
    argv = ["prepare-data", "--input", str(root), "--output", str(out), "--config", str(cfg), "--workers", "1",
            "--no-progress", "--max-docs", "12", "--name", "cli"]
    assert main(argv) == 0
    m = read_manifest(out)
    assert m["split"] == [8, 1, 1] and m["config"]["dedup"]["threshold"] == 0.6 and m["config"]["cleaning"]["min_chars"] == 100
    assert m["stats"]["read"]["docs_out"] == 12
    bad = tmp_path / "bad.yaml"
    bad.write_text("cleaning:\n  min_char: 100\n", encoding="utf-8")
    assert main(argv[:5] + ["--config", str(bad), "--overwrite"]) == 2
    assert "min_char" in capsys.readouterr().err


def test_quality_stage_scores_then_rethreshold_without_rescoring(corpus, tmp_path):
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.data.builtin import builtin_files
    from paddle_pangu.model import PanGuForCausalLM

    root, _ = corpus
    pos, neg = builtin_files("reviews")
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("\n".join(pos.read_text(encoding="utf-8").splitlines()[:300]), encoding="utf-8")
    bad.write_text("\n".join(neg.read_text(encoding="utf-8").splitlines()[:300]), encoding="utf-8")
    paddle.seed(0)
    model = PanGuForCausalLM(get_preset("tiny"))
    first = tmp_path / "scored"
    stats = run_pipeline(_cfg(root, first, stages=("clean", "quality", "dedup", "tokenize"),
                              classifier_good=str(good), classifier_bad=str(bad),
                              quality=pipeline.QualityConfig(max_tokens=64)), model=model)
    recs = [json.loads(x) for x in (first / "scores.jsonl").read_text().splitlines()]
    assert len(recs) == stats.stages["quality"].docs_in == stats.stages["quality"].docs_out == N_ARTICLES + 1
    assert all(r["perplexity"] > 1 and 0 <= r["quality"] <= 1 for r in recs)
    assert (first / "quality_classifier.json").is_file()
    cut = float(np.median([r["perplexity"] for r in recs]))
    second = run_pipeline(_cfg(root, tmp_path / "cut", stages=("clean", "quality", "tokenize"),
                               scores_from=str(first / "scores.jsonl"), quality=pipeline.QualityConfig(max_perplexity=cut)))
    expected_drops = sum(r["perplexity"] > cut for r in recs)
    assert second.stages["quality"].dropped["high_perplexity"] == expected_drops > 0


def test_benchmark_pipeline_tokens_equal_reference(tmp_path, capsys, monkeypatch):
    """`pangu bench tokenize` (correctness only; speed is not asserted): the pipeline's ids equal the
    reference's, and a reference that differs makes the command fail in one line, not print a speed-up."""
    from paddle_pangu.bench import tokenizer_bench
    from paddle_pangu.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "tokenize", "--mb", "0.05", "--workers", "1", "--json", str(out)]) == 0
    assert "token ids identical to the reference's" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())
    detail = result["detail"]
    assert detail["identical"] and detail["documents"] > 5 and detail["megabytes"] >= 0.05
    reference = tokenizer_bench.reference_encode
    monkeypatch.setattr(tokenizer_bench, "reference_encode", lambda *a, **k: reference(*a, **k)[:-1])
    assert main(["bench", "tokenize", "--mb", "0.05", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "pangu bench: error: tokenize: the pipeline's token ids differ from the reference's " \
                      "(see the table above)" and "Traceback" not in "\n".join(err)
