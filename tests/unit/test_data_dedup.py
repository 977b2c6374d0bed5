"""Fuzzy dedup: planted near-duplicates in real People's Daily text are found; distinct articles are not."""
import hashlib
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from paddle_pangu.data.builtin import read_builtin
from paddle_pangu.data.dedup import DedupConfig, MinHashDeduplicator, find_near_duplicates, shingle_hashes
from paddle_pangu.data.stats import IssueLog


@pytest.fixture(scope="module")
def articles():
    docs = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog()) if 400 <= len(d.text) <= 3000]
    assert len(docs) > 600
    return docs


def _sentences(text):
    parts, cur = [], ""
    for ch in text:
        cur += ch
        if ch in "。！？":
            parts.append(cur)
            cur = ""
    return parts + ([cur] if cur else [])


def _edit(text, rng, donor):
    """A realistic near-duplicate: a few character edits, plus an inserted or deleted sentence."""
    chars = list(text)
    for _ in range(max(1, len(chars) // 100)):  # ~1% characters replaced
        chars[rng.randrange(len(chars))] = rng.choice("的一是在不了有和人这中大为上个国我以要他时来用们")
    sents = _sentences("".join(chars))
    kind = rng.choice(["insert", "delete", "both"])
    if kind in ("insert", "both"):
        sents.insert(rng.randrange(len(sents) + 1), rng.choice(_sentences(donor)))
    if kind in ("delete", "both") and len(sents) > 4:
        sents.pop(rng.randrange(len(sents)))
    return "".join(sents)


def test_planted_near_duplicates_recall_and_false_positives(articles):
    rng = random.Random(0)
    pool = articles[:]
    rng.shuffle(pool)
    originals, distinct, donors = pool[:100], pool[100:500], pool[500:]
    corpus, pairs = [], []
    for i, text in enumerate(originals):
        corpus.append(text)
        corpus.append(_edit(text, rng, donors[i % len(donors)]))
        pairs.append((len(corpus) - 2, len(corpus) - 1))
    corpus.extend(distinct)
    order = list(range(len(corpus)))
    rng.shuffle(order)  # duplicates scattered through the corpus
    shuffled = [corpus[i] for i in order]
    where = {old: new for new, old in enumerate(order)}
    result = find_near_duplicates(shuffled, DedupConfig())
    cluster_of = {k: ci for ci, c in enumerate(result.clusters) for k in c}
    found = sum(1 for a, b in pairs if where[a] in cluster_of and cluster_of.get(where[a]) == cluster_of.get(where[b]))
    recall = found / len(pairs)
    distinct_pos = [where[i] for i in range(2 * len(originals), len(corpus))]
    false_pos = sum(1 for k in distinct_pos if k in cluster_of) / len(distinct_pos)
    assert recall >= 0.9, f"recall {recall:.3f} of {len(pairs)} planted pairs"
    assert false_pos <= 0.01, f"{false_pos:.3%} of distinct articles wrongly clustered"
    # exactly one of each found pair is removed: the one that came first is kept
    for a, b in pairs:
        pa, pb = where[a], where[b]
        if cluster_of.get(pa) is not None and cluster_of.get(pa) == cluster_of.get(pb):
            assert (min(pa, pb) in result.drop) is False and max(pa, pb) in result.drop


def test_exact_copies_and_unrelated_texts(articles):
    a, b = articles[0], articles[1]
    result = find_near_duplicates([a, b, a, b, articles[2]])
    assert sorted(map(sorted, result.clusters)) == [[0, 2], [1, 3]]
    assert result.drop == {2, 3}


def test_shingle_hashes_ignore_whitespace_punctuation_and_are_stable_across_processes(articles):
    text = articles[3]
    assert np.array_equal(shingle_hashes(text, 5), shingle_hashes(text.replace("，", " , ").replace("。", "\n"), 5))
    code = (
        "import sys; from paddle_pangu.data.dedup import shingle_hashes;"
        "print(int(shingle_hashes(sys.stdin.read(), 5).sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, check=True)
    assert int(out.stdout) == int(shingle_hashes(text, 5).sum())


def test_explicit_bands_rows_and_config_errors():
    dedup = MinHashDeduplicator(DedupConfig(num_perm=64, bands=16, rows=4))
    assert dedup.bands_rows == (16, 4)
    with pytest.raises(ValueError, match="bands\\*rows"):
        DedupConfig(num_perm=64, bands=10, rows=4).validate()
    with pytest.raises(ValueError, match="threshold"):
        DedupConfig(threshold=1.5).validate()
    with pytest.raises(ValueError, match="added twice"):
        dedup.add("k", dedup.signature("一二三四五六七八九十"))
        dedup.add("k", dedup.signature("一二三四五六七八九十"))


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])  # datasketch 2.0's default; the only one before 2.0
def test_vectorised_minhash_values_equal_datasketch_update_batch(monkeypatch, scheme, compiled):
    # minhash_values replaces datasketch's per-document MinHash.update_batch: the numbers must be the same
    from datasketch import MinHash

    from paddle_pangu.data import dedup as dedup_mod

    monkeypatch.setattr(dedup_mod, "_default_scheme", lambda: scheme)  # as an installed datasketch 1.x / 2.x
    monkeypatch.setattr(dedup_mod, "USE_COMPILED", compiled)
    assert (dedup_mod._compiled_minhash() is not None) == compiled
    dedup_mod._permutations.cache_clear()
    docs = [d.text for d in read_builtin("builtin:reviews", IssueLog())]
    texts = random.Random(3).sample(docs, 150) + ["", "。", "一二三", "一二三四五", "x" * 3000]
    try:
        for cfg in (DedupConfig(), DedupConfig(num_perm=64, seed=7, shingle_size=3)):
            for text in texts:
                m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=dedup_mod._identity, scheme=scheme)
                m.update_batch(shingle_hashes(text, cfg.shingle_size).tolist())
                got = dedup_mod.minhash_values(text, cfg)
                assert got.dtype == m.hashvalues.dtype and np.array_equal(got, m.hashvalues), text[:40]
    finally:
        dedup_mod._permutations.cache_clear()


def test_permutations_are_datasketchs_without_importing_it():
    """The workers build datasketch's MinHash permutations with numpy alone (its import pulls in scipy): the
    arrays, dtypes and empty values must be datasketch's own for both schemes, the default scheme the one
    `MinHash()` picks, the fmix32 constants its own; and a fresh process computing a signature imports
    neither datasketch nor scipy."""
    from datasketch import MinHash
    from datasketch.minhash import _FMIX_CONSTANTS

    from paddle_pangu.data import dedup as dedup_mod

    assert dedup_mod._default_scheme() == MinHash(num_perm=4).scheme
    assert dedup_mod._fmix32() == tuple(int(c) for c in _FMIX_CONSTANTS[32])
    for scheme in ("affine32", "legacy"):
        for num_perm, seed in ((128, 1), (64, 7), (3, 123456)):
            m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
            a, b, empty = dedup_mod.datasketch_permutations(num_perm, seed, scheme)
            for got, want in ((a, m.permutations[0]), (b, m.permutations[1]), (empty, m.hashvalues)):
                assert got.dtype == want.dtype and np.array_equal(got, want), (scheme, num_perm, seed)
    code = ("import sys; from paddle_pangu.data.dedup import DedupConfig, minhash_values; "
            "v = minhash_values('一二三四五六七八九十', DedupConfig()); assert v.shape == (128,); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('datasketch', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bands_rows_are_datasketchs_choice_and_come_from_the_cache_without_scipy(tmp_path, monkeypatch):
    """b x r for a threshold is what datasketch's MinHashLSH picks (b, r and hashranges) for several thresholds
    and signature lengths, including ones where b x r < num_perm; the second time it is read from the cache
    file (a fresh process building the deduplicator then imports neither datasketch nor scipy); a damaged
    or out-of-range cache is computed again, never used."""
    from datasketch import MinHashLSH

    from paddle_pangu.data import dedup as dedup_mod

    monkeypatch.setenv("PANGU_KERNEL_CACHE", str(tmp_path))
    dedup_mod._optimal_bands_rows.cache_clear()
    short = 0
    for threshold in (0.3, 0.5, 0.8, 0.95):
        for num_perm in (64, 128, 100):
            cfg = DedupConfig(threshold=threshold, num_perm=num_perm)
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
            dedup = MinHashDeduplicator(cfg)
            assert dedup.bands_rows == (lsh.b, lsh.r), (threshold, num_perm)
            assert dedup.ranges == [tuple(map(int, r)) for r in lsh.hashranges]
            short += lsh.b * lsh.r < num_perm
    assert short  # the b x r < num_perm case was among them
    assert MinHashDeduplicator(DedupConfig(num_perm=64, bands=16, rows=4)).ranges[-1] == (60, 64)
    files = sorted(tmp_path.glob("lsh_bands_rows_*_t0.5_p128.json"))
    assert len(files) == 1
    code = ("import sys; from paddle_pangu.data.dedup import DedupConfig, MinHashDeduplicator; "
            "print(MinHashDeduplicator(DedupConfig()).bands_rows, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('datasketch', 'scipy')))")
    env = {**os.environ, "PANGU_KERNEL_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    assert out.stdout.strip() == f"{(lsh.b, lsh.r)} []"
    for body in ("[300, 1]", "not json"):  # out of range / damaged: the digest is recomputed for the first
        text = body if body == "not json" else hashlib.sha256(body.encode()).hexdigest() + "\n" + body
        files[0].write_text(text, encoding="utf-8")
        dedup_mod._optimal_bands_rows.cache_clear()
        assert MinHashDeduplicator(DedupConfig()).bands_rows == (lsh.b, lsh.r)
        assert files[0].read_text(encoding="utf-8").endswith(f"[{lsh.b},{lsh.r}]")
    dedup_mod._optimal_bands_rows.cache_clear()


@pytest.mark.parametrize("cfg", [DedupConfig(), DedupConfig(threshold=0.5), DedupConfig(num_perm=64, bands=16, rows=4),
                                 DedupConfig(verify=False)], ids=["default", "t0.5", "16x4", "no-verify"])
def test_array_lsh_finds_the_clusters_of_datasketchs_streaming_query_and_insert(articles, cfg):
    """result() bands every signature at once (band_keys, bucket_pairs: the Ray engine's functions); the
    reference is datasketch's MinHashLSH used as a stream (query each document against the earlier ones,
    verify, insert), the way this class worked before: same clusters, drops and pair counts."""
    from datasketch import MinHashLSH

    from paddle_pangu.data.dedup import clusters_from_pairs

    rng = random.Random(11)
    texts = articles[:150]
    texts = texts + [_edit(rng.choice(texts), rng, rng.choice(texts)) for _ in range(60)]
    texts += [texts[i] for i in rng.sample(range(len(texts)), 20)]  # exact copies: buckets of 3 and more
    rng.shuffle(texts)
    dedup = MinHashDeduplicator(cfg)
    sigs = [dedup.signature(t) for t in texts]
    for i, sig in enumerate(sigs):
        dedup.add(i, sig.hashvalues if i % 2 else sig)  # values or a MinHash: both accepted
    got = dedup.result()

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=dedup.bands_rows)
    candidates, verified = 0, []
    for i, sig in enumerate(sigs):
        for j in lsh.query(sig):
            candidates += 1
            if not cfg.verify or np.count_nonzero(sig.hashvalues == sigs[j].hashvalues) / cfg.num_perm >= cfg.threshold:
                verified.append((j, i))
        lsh.insert(i, sig)
    want = clusters_from_pairs(list(range(len(texts))), verified)
    assert (got.clusters, got.drop) == (want.clusters, want.drop)
    assert (got.candidate_pairs, got.verified_pairs) == (candidates, len(verified))
    assert len(got.drop) >= 60  # the planted copies and edits are found
