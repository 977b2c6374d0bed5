"""The dataset manifest is a contract: training refuses data that was not made for the run.

Tiny hand-made datasets (a few documents through the real IndexedDatasetBuilder
and write_manifest), the real installed PanGu vocab.model for the tokenizer
hash, and the real training entry point (`training.batches.run_datasets`).
"""
import json
import logging

import numpy as np
import pytest
import yaml

from paddle_pangu.data import build_pretraining_datasets
from paddle_pangu.data.contract import RunDataContract, check_manifest
from paddle_pangu.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from paddle_pangu.data.manifest import read_manifest, sha256_file, write_manifest
from paddle_pangu.data.packing import split_documents
from paddle_pangu.errors import DataError
from paddle_pangu.tokenizer.vocab import find_vocab_file

VOCAB = find_vocab_file(None)
VOCAB_SHA = sha256_file(VOCAB)


def _dataset(path, n_docs=40, **fields):
    """A prepared-dataset dir of n_docs documents whose manifest holds `fields` (None drops a field)."""
    path.mkdir()
    with IndexedDatasetBuilder(path / "c") as b:
        for i in range(n_docs):
            b.add_document([100 + i] * 5 + [9])
    manifest = {"prefix": "c", "num_documents": n_docs, "split": [8, 1, 1], "separator_id": 9,
                "vocab_size": 40000, "vocab_sha256": VOCAB_SHA, "vocab_file": str(VOCAB), "split_seed": 1234,
                "files": ["c.bin", "c.idx"], **fields}
    write_manifest(path, {k: v for k, v in manifest.items() if v is not None})
    return path


def _contract(**kw):
    args = dict(eod_token_id=9, model_vocab_size=40000, vocab_sha256=VOCAB_SHA, vocab_file=str(VOCAB))
    return RunDataContract(**{**args, **kw})


def _build(path, contract):
    return build_pretraining_datasets([path], None, 8, {"train": 4}, contract=contract)


def test_matching_data_is_accepted(tmp_path):
    out = _build(_dataset(tmp_path / "d"), _contract())
    assert out["train"][0].shape == (9,)


def test_separator_that_is_not_the_models_eod_is_refused(tmp_path):
    d = _dataset(tmp_path / "d", separator_id=7)
    with pytest.raises(DataError, match=r"manifest\.json: separator_id=7 but the model's eod_token_id=9; "
                                        r"rerun `pangu prepare-data` with separator_id: 9"):
        _build(d, _contract())


def test_data_from_another_tokenizer_is_refused(tmp_path):
    other = "ab" * 32
    d = _dataset(tmp_path / "d", vocab_sha256=other, vocab_file="/elsewhere/vocab.model")
    with pytest.raises(DataError) as err:
        _build(d, _contract())
    msg = str(err.value)
    assert f"vocab_sha256={other}" in msg and f"vocab_sha256={VOCAB_SHA}" in msg
    assert "/elsewhere/vocab.model" in msg and "data.tokenizer" in msg


def test_ids_beyond_the_models_embedding_are_refused(tmp_path):
    d = _dataset(tmp_path / "d", vocab_size=40000)
    with pytest.raises(DataError, match=r"vocab_size=40000 .* exceeds the model's vocab_size=512.*vocab_size >= 40000"):
        _build(d, _contract(model_vocab_size=512))
    assert _build(d, _contract(model_vocab_size=40064))["train"]  # a padded embedding is fine


def test_missing_separator_or_vocab_size_is_refused(tmp_path):
    with pytest.raises(DataError, match="no separator_id field"):
        _build(_dataset(tmp_path / "a", separator_id=None), _contract())
    with pytest.raises(DataError, match="no vocab_size field"):
        _build(_dataset(tmp_path / "b", vocab_size=None), _contract())


def test_older_manifest_without_vocab_hash_is_read_with_a_warning(tmp_path, caplog):
    d = _dataset(tmp_path / "d", vocab_sha256=None)
    with caplog.at_level(logging.WARNING, logger="paddle_pangu.data.contract"):
        out = _build(d, _contract())
    assert len(out["train"]) == 4
    assert any("before manifests recorded vocab_sha256" in r.getMessage() and str(d) in r.getMessage()
               for r in caplog.records)


def _docs_seen(dataset):
    """Which documents a dataset's samples come from (document i is 100 + i repeated, then 9)."""
    return {int(t) - 100 for i in range(len(dataset)) for t in dataset[i] if t != 9}


def test_document_split_uses_the_manifests_split_seed(tmp_path):
    n = 40
    seeds = {"a": 7, "b": 99}
    for name, seed in seeds.items():
        d = _dataset(tmp_path / name, n_docs=n, split_seed=seed)
        valid = build_pretraining_datasets([d], None, 5, {"valid": 20}, seed=0)["valid"]
        seen = _docs_seen(valid)
        expected = set(split_documents(n, (8, 1, 1), seed)[1].tolist())
        assert seen == expected, (name, seen, expected)
    legacy = _dataset(tmp_path / "legacy", n_docs=n, split_seed=None)  # older manifest: the old constant
    valid = build_pretraining_datasets([legacy], None, 5, {"valid": 20}, seed=0)["valid"]
    assert _docs_seen(valid) == set(split_documents(n, (8, 1, 1), 1234)[1].tolist())
    assert split_documents(n, (8, 1, 1), 7)[1].tolist() != split_documents(n, (8, 1, 1), 99)[1].tolist()


def test_contract_for_run_hashes_the_run_tokenizer(tmp_path):
    from paddle_pangu.config.model_config import PanGuConfig

    c = RunDataContract.for_run(PanGuConfig(vocab_size=40000, eod_token_id=9), None)
    assert c.vocab_sha256 == VOCAB_SHA and c.eod_token_id == 9 and c.model_vocab_size == 40000
    check_manifest(read_manifest(_dataset(tmp_path / "d")), tmp_path / "d", c)


def test_training_refuses_mismatched_data(tmp_path):
    """The real training entry point (run config -> run_datasets) applies the contract."""
    from paddle_pangu.training.batches import run_datasets
    from paddle_pangu.training.run_config import load_run_config

    d = _dataset(tmp_path / "d", separator_id=8)
    cfg = {"model": {"preset": "tiny"}, "data": {"paths": [str(d)], "seq_len": 8},
           "parallel": {"micro_batch_size": 1, "accumulate_steps": 1},
           "train": {"max_steps": 2, "output_dir": str(tmp_path / "run"), "eval_iters": 1, "device": "cpu"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run = load_run_config(str(path))
    model_cfg, par = run.validate()
    with pytest.raises(DataError, match=r"separator_id=8 but the model's eod_token_id=9"):
        run_datasets(run, model_cfg, par.global_batch_size)
    m = json.loads((d / "manifest.json").read_text())
    m["separator_id"] = 9
    (d / "manifest.json").write_text(json.dumps(m))
    sets = run_datasets(run, model_cfg, par.global_batch_size)
    assert np.asarray(sets["train"][0]).shape == (9,) and IndexedDataset(d / "c").num_tokens == 240
