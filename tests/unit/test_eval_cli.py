"""`pangu evaluate` end to end on a random tiny model: results JSON, per-sample log audited against the
scoring and metric functions, PNG, the table beside the paper, errors for missing data."""
import json

import numpy as np
import pytest

from paddle_pangu.cli import main
from paddle_pangu.evaluation.metrics import exact_match, f1_score
from paddle_pangu.evaluation.scoring import candidate_losses
from paddle_pangu.inference.loading import load_model_and_tokenizer


def _write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _fixtures(root):
    labels = ["entailment", "neutral", "contradiction"]
    for split in ("dev", "train"):
        _write_lines(root / "fewclue" / "ocnli" / f"{split}_few_all.json",
                     [{"id": i, "sentence1": f"{split}前提{i}说明天下雨", "sentence2": f"假设{i}", "label": labels[i % 3]}
                      for i in range(4)])
    paras = [{"context": f"第{i}段：小明住在杭州，喜欢西湖。", "qas": [{"id": f"{split}{i}", "question": "小明住在哪里？",
                                                              "answers": [{"text": "杭州", "answer_start": 6}]}]}
             for split in ("d", "t") for i in range(2)]
    (root / "cmrc2018").mkdir()
    (root / "cmrc2018" / "cmrc2018_dev.json").write_text(json.dumps({"data": [{"paragraphs": paras[:2]}]}), encoding="utf-8")
    (root / "cmrc2018" / "cmrc2018_train.json").write_text(json.dumps({"data": [{"paragraphs": paras[2:]}]}), encoding="utf-8")


def test_paper_run_writes_results_log_plot_and_table(tmp_path, capsys):
    _fixtures(tmp_path)
    out, log = tmp_path / "results.json", tmp_path / "samples.jsonl"
    rc = main(["evaluate", "--model", "preset:tiny", "--task", "paper", "--data-dir", str(tmp_path), "--shots", "0", "1",
               "--limit", "3", "--batch-size", "6", "--output", str(out), "--log-samples", str(log)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped: task chid" in captured.err and "ocnli" in captured.out and "42.61" in captured.out
    results = {(r["task"], r["shots"]): r for r in json.loads(out.read_text())}
    assert sorted(results) == [("cmrc2018", 0), ("cmrc2018", 1), ("ocnli", 0), ("ocnli", 1)]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 3 + 3 + 2 + 2  # ocnli --limit 3, cmrc2018 has 2 examples, both at 0 and 1 shots
    model, tok = load_model_and_tokenizer("preset:tiny", seed=0)  # the same seeded weights the command built
    for shots in (0, 1):
        cand = [r for r in rows if r["task"] == "ocnli" and r["shots"] == shots]
        for r in cand:
            ids = [c["token_ids"] for c in r["candidates"]]
            assert [tok.encode_ids(c["text"]) for c in r["candidates"]] == ids
            np.testing.assert_allclose([c["mean_loss"] for c in r["candidates"]], candidate_losses(model, ids), rtol=1e-5)
            assert r["prediction"] == int(np.argmin([c["mean_loss"] for c in r["candidates"]]))
            assert r["correct"] == (r["prediction"] == r["gold"]) and r["shots_used"] == shots
        res = results[("ocnli", shots)]
        assert res["n"] == 3 and res["accuracy"] == np.mean([r["correct"] for r in cand]) and res["chance"] == 1 / 3
        assert res["ci95"]["accuracy"][0] <= res["accuracy"] <= res["ci95"]["accuracy"][1]
        gen = [r for r in rows if r["task"] == "cmrc2018" and r["shots"] == shots]
        for r in gen:
            assert r["references"] == ["杭州"] and r["prompt"].endswith("问：小明住在哪里？\n答：")
            assert r["em"] == exact_match(r["generated"], r["references"]) and r["f1"] == f1_score(r["generated"], ["杭州"])
        assert results[("cmrc2018", shots)]["f1"] == pytest.approx(np.mean([r["f1"] for r in gen]))
    assert "阅读文章：第0段" in [r for r in rows if r["task"] == "cmrc2018" and r["shots"] == 1][0]["prompt"]
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_reviews_task_still_runs(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", "preset:tiny", "--task", "reviews", "--num-eval", "4", "--shots", "0",
                 "--output", str(out), "--json"]) == 0
    (res,) = json.loads(out.read_text())
    assert res["task"] == "reviews" and res["n"] == 4 and res["chance"] == 0.5 and 0 <= res["accuracy"] <= 1


def test_missing_task_data_is_one_line_naming_the_file_and_its_source(tmp_path, capsys):
    assert main(["evaluate", "--model", "preset:tiny", "--task", "tnews", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "dev_few_all.json or dev.json" in err and "CLUEbenchmark" in err
    assert main(["evaluate", "--model", "preset:tiny", "--task", "nosuch", "--data", str(tmp_path)]) == 2
    assert main(["evaluate", "--model", "preset:tiny", "--task", "paper", "--data-dir", str(tmp_path)]) == 2
    assert "none of the paper's task files" in capsys.readouterr().err
