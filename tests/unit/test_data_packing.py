""".bin/.idx round trip, document splits, seq_len+1 samples, blending, build_pretraining_datasets."""
import json

import numpy as np
import pytest

from paddle_pangu.data import build_pretraining_datasets
from paddle_pangu.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from paddle_pangu.data.manifest import read_manifest, write_manifest
from paddle_pangu.data.packing import BlendedDataset, GPTSampleDataset, split_documents

SEP = 9


def _docs(n, seed, base=10):
    rng = np.random.RandomState(seed)
    return [list(rng.randint(base, 40000, size=rng.randint(3, 40))) + [SEP] for _ in range(n)]


def _prepared(path, docs, name="c"):
    path.mkdir()
    with IndexedDatasetBuilder(path / name) as b:
        for d in docs:
            b.add_document(d)
    write_manifest(path, {"prefix": name, "num_documents": len(docs), "split": [8, 1, 1], "files": [f"{name}.bin", f"{name}.idx"]})
    return path


def test_indexed_round_trip_and_errors(tmp_path):
    docs = _docs(50, 0)
    with IndexedDatasetBuilder(tmp_path / "x") as b:
        for d in docs:
            b.add_document(d)
    ds = IndexedDataset(tmp_path / "x")
    assert ds.dtype == np.uint16 and len(ds) == 50 and ds.num_tokens == sum(map(len, docs))
    assert all(list(ds[i]) == docs[i] for i in range(50))
    assert list(ds.get(3, 1, 2)) == docs[3][1:3]
    with pytest.raises(ValueError, match="token ids must be in"):
        IndexedDatasetBuilder(tmp_path / "y").add_document([70000])
    raw = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "x.idx").write_bytes(b"BADMAGIC" + raw[8:])
    with pytest.raises(ValueError, match="bad magic"):
        IndexedDataset(tmp_path / "x")
    (tmp_path / "x.idx").write_bytes(raw)
    (tmp_path / "x.bin").write_bytes((tmp_path / "x.bin").read_bytes()[:-2])  # truncated .bin
    with pytest.raises(ValueError, match="size"):
        IndexedDataset(tmp_path / "x")


def test_whole_datasets_appended_give_the_files_of_documents_added_one_by_one(tmp_path):
    """`add_dataset` (the Ray engine's shard join): shards appended whole, between single documents and with an
    empty shard, give byte-identical .bin / .idx to adding every document in order; copied in chunks smaller
    than a shard, so the chunk loop runs; a shard whose documents are not stored back to back (offsets
    permuted by hand) is copied document by document in index order; another dtype is refused."""
    shards = [_docs(n, seed) for n, seed in ((7, 1), (0, 2), (13, 3))]
    singles = _docs(3, 4)
    for k, docs in enumerate(shards):
        with IndexedDatasetBuilder(tmp_path / f"s{k}") as b:
            for d in docs:
                b.add_document(d)
    with IndexedDatasetBuilder(tmp_path / "one") as b:
        for d in [singles[0]] + shards[0] + shards[1] + [singles[1]] + shards[2] + [singles[2]]:
            b.add_document(d)
    with IndexedDatasetBuilder(tmp_path / "whole") as b:
        b.add_document(singles[0])
        b.add_dataset(IndexedDataset(tmp_path / "s0"), chunk_tokens=16)
        b.add_dataset(IndexedDataset(tmp_path / "s1"), chunk_tokens=16)
        b.add_document(singles[1])
        b.add_dataset(IndexedDataset(tmp_path / "s2"), chunk_tokens=16)
        b.add_document(singles[2])
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"whole{ext}").read_bytes() == (tmp_path / f"one{ext}").read_bytes()
    # s2 with documents 0 and 1 swapped in the index only: the tokens stay, the reading order changes
    idx = bytearray((tmp_path / "s2.idx").read_bytes())
    n, head = 13, 40
    lengths = np.frombuffer(bytes(idx[head:head + 8 * n]), np.int64).copy()
    offsets = np.frombuffer(bytes(idx[head + 8 * n:]), np.int64).copy()
    lengths[[0, 1]], offsets[[0, 1]] = lengths[[1, 0]], offsets[[1, 0]]
    (tmp_path / "s2.idx").write_bytes(bytes(idx[:head]) + lengths.tobytes() + offsets.tobytes())
    swapped = IndexedDataset(tmp_path / "s2")
    with IndexedDatasetBuilder(tmp_path / "perm") as b:
        b.add_dataset(swapped)
    assert [list(d) for d in IndexedDataset(tmp_path / "perm")] == [shards[2][1], shards[2][0]] + shards[2][2:]
    with pytest.raises(ValueError, match="uint16 tokens, this dataset uint32"):
        IndexedDatasetBuilder(tmp_path / "wide", np.uint32).add_dataset(IndexedDataset(tmp_path / "s0"))


def test_split_documents_deterministic_disjoint_complete():
    parts = split_documents(1000, (949, 50, 1), seed=3)
    assert [len(p) for p in parts] == [949, 50, 1]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    again = split_documents(1000, (949, 50, 1), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[1], split_documents(1000, (949, 50, 1), seed=4)[1])
    assert [len(p) for p in split_documents(20, (949, 50, 1))] == [18, 1, 1]  # no empty requested split
    with pytest.raises(ValueError, match="split ratios"):
        split_documents(10, (1, -1))


def test_samples_stride_boundaries_epochs_and_determinism(tmp_path):
    docs = _docs(30, 1)
    with IndexedDatasetBuilder(tmp_path / "x") as b:
        for d in docs:
            b.add_document(d)
    ds = IndexedDataset(tmp_path / "x")
    idx = np.arange(30)
    seq, n = 16, 200  # 200*16 tokens > one epoch (~650 tokens): several epochs
    sd = GPTSampleDataset(ds, idx, seq, n, seed=5)
    assert sd.num_epochs > 1
    samples = [sd[i] for i in range(n)]
    assert all(s.dtype == np.int64 and s.shape == (seq + 1,) for s in samples)
    by_pos = [None] * n
    for i in range(n):
        by_pos[int(sd.sample_order[i])] = samples[i]
    stream = np.concatenate([by_pos[0]] + [s[1:] for s in by_pos[1:]])
    for a, b in zip(by_pos, by_pos[1:]):
        assert a[-1] == b[0]  # stride seq_len: last token of a sample starts the next
    epoch = np.concatenate([docs[k] for k in sd.doc_order[:30]])
    assert np.array_equal(stream[: len(epoch)], epoch)  # documents concatenated whole, shuffled order
    assert sorted(sd.doc_order[:30]) == list(range(30)) and sorted(sd.doc_order[30:60]) == list(range(30))
    same = GPTSampleDataset(ds, idx, seq, n, seed=5)
    other = GPTSampleDataset(ds, idx, seq, n, seed=6)
    assert all(np.array_equal(same[i], samples[i]) for i in range(n))
    assert not all(np.array_equal(other[i], samples[i]) for i in range(n))
    with pytest.raises(ValueError, match="no tokens"):
        GPTSampleDataset(ds, np.array([], dtype=np.int64), seq, 3, seed=0)


def test_blended_dataset_follows_weights():
    a, b = [("a", i) for i in range(1000)], [("b", i) for i in range(1000)]
    bl = BlendedDataset([a, b], [0.7, 0.3], 500)
    share = np.mean([bl[i][0] == "a" for i in range(500)])
    assert abs(share - 0.7) < 0.01
    from_b = [bl[i] for i in range(500) if bl[i][0] == "b"]
    assert from_b == [("b", i) for i in range(len(from_b))]  # each source is consumed in order, no repeats
    prefix_a = np.cumsum([bl[i][0] == "a" for i in range(500)])  # Megatron blending: every prefix
    assert np.all(np.abs(prefix_a - 0.7 * np.arange(1, 501)) <= 1.0)  # is within one sample of its share
    with pytest.raises(ValueError, match="weights"):
        BlendedDataset([a, b], [1.0], 10)


def test_build_pretraining_datasets_single_and_mixture(tmp_path):
    d1 = _prepared(tmp_path / "one", _docs(80, 2))
    d2 = _prepared(tmp_path / "two", _docs(80, 3, base=20000))
    out = build_pretraining_datasets([d1], None, 8, {"train": 40, "valid": 5, "test": 0}, seed=1)
    assert set(out) == {"train", "valid"} and len(out["train"]) == 40 and out["train"][0].shape == (9,)
    ds = IndexedDataset(d1 / "c")
    train_docs, valid_docs, _ = split_documents(len(ds), (8, 1, 1), 1234)  # manifest split 8/1/1
    valid_tokens = set(np.concatenate([ds[i] for i in valid_docs]).tolist()) - {SEP}
    train_tokens = set(np.concatenate([ds[i] for i in train_docs]).tolist()) - {SEP}
    assert set(np.concatenate([out["valid"][i] for i in range(5)]).tolist()) - {SEP} <= valid_tokens
    assert set(np.concatenate([out["train"][i] for i in range(40)]).tolist()) - {SEP} <= train_tokens
    mix = build_pretraining_datasets([d1, d2], [3, 1], 8, {"train": 400}, seed=1)["train"]
    from_two = np.mean([mix[i][mix[i] != SEP].min() >= 20000 for i in range(400)])
    assert abs(from_two - 0.25) < 0.03  # REF "Source mixture": sampled by weight
    again = build_pretraining_datasets([d1, d2], [3, 1], 8, {"train": 400}, seed=1)["train"]
    assert all(np.array_equal(mix[i], again[i]) for i in range(0, 400, 37))


def test_incomplete_dataset_is_refused(tmp_path):
    d = _prepared(tmp_path / "one", _docs(10, 4))
    (d / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        build_pretraining_datasets([d], None, 8, {"train": 4})
    d2 = _prepared(tmp_path / "two", _docs(10, 4))
    m = json.loads((d2 / "manifest.json").read_text())
    m["files"]["c.bin"]["bytes"] += 2
    (d2 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="does not match manifest"):
        read_manifest(d2)
