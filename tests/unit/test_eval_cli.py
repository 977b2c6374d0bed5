"""`pangu evaluate` end to end on a random tiny model: results JSON, per-sample log audited against the
scoring and metric functions, PNG, the table beside the paper, errors for missing data."""
import json

import numpy as np
import pytest

from paddle_pangu.cli import main
from paddle_pangu.evaluation.metrics import exact_match, f1_score
from paddle_pangu.evaluation.scoring import candidate_losses
from paddle_pangu.inference.loading import load_model_and_tokenizer
from task_files import write_lines, write_ocnli_and_cmrc  # tests/task_files.py


def test_paper_run_writes_results_log_plot_and_table(tmp_path, capsys):
    write_ocnli_and_cmrc(tmp_path, ocnli_rows=4)
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


def test_perplexity_end_to_end_equals_a_recompute_from_the_token_files(tmp_path, capsys):
    """`pangu prepare-data` then `pangu evaluate --perplexity`: the results JSON's number is exp(mean token
    loss) recomputed here from the held-out documents in the .bin/.idx with the model's own forward.

    The recompute needs no knowledge of the sampler's shuffling: every document is held out (split 0,0,1),
    the model's context is the split's token count T and one window is asked for, so the window is every
    held-out document (in some order) plus the first token of the next epoch. The model resets at each
    separator (eod_reset, REF "document boundaries"), so each document's losses are those of the document
    alone whatever the order; and every document starts with the same token, so the last label is that token.
    """
    import math

    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.data.indexed_dataset import IndexedDataset
    from paddle_pangu.model import PanGuForCausalLM

    texts = ["问：北京是中华人民共和国的首都，是全国的政治中心和文化中心。", "问：上海位于长江入海口，是重要的港口城市。",
             "问：杭州是浙江省的省会，以西湖闻名于世。", "问：成都是四川省的省会，美食众多，生活节奏悠闲。",
             "问：广州是广东省的省会，历史悠久，商业发达。"]
    write_lines(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    (tmp_path / "c.yaml").write_text("cleaning:\n  min_chars: 5\nsplit: [0, 0, 1]\n", encoding="utf-8")
    assert main(["prepare-data", "--input", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "ds"), "--name",
                 "held", "--config", str(tmp_path / "c.yaml"), "--workers", "1", "--no-progress"]) == 0
    store = IndexedDataset(tmp_path / "ds" / "held")
    docs = [np.asarray(store[i], dtype="int64") for i in range(len(store))]
    assert len(docs) == len(texts) and all(d[-1] == 9 for d in docs)  # REF: each document ends with <eod> 9
    assert len({int(d[0]) for d in docs}) == 1  # the premise above: one first token
    total = sum(len(d) for d in docs)

    config = get_preset("tiny", max_position_embeddings=total, eod_reset=True, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    paddle.seed(5)
    PanGuForCausalLM(config).save_pretrained(str(tmp_path / "model"))
    out = tmp_path / "results.json"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--task", "reviews", "--shots", "0", "--limit", "1",
                 "--perplexity", str(tmp_path / "ds"), "--ppl-samples", "1", "--output", str(out)]) == 0
    reported = [r for r in json.loads(out.read_text()) if r["task"] == "perplexity"]
    assert len(reported) == 1
    reported = reported[0]

    model = PanGuForCausalLM.from_pretrained(str(tmp_path / "model"))
    model.eval()
    nll, top = 0.0, 0.0
    for d in docs:
        seq = np.concatenate([d, d[:1]])  # the label after the separator: the next document's first token
        with paddle.no_grad():
            logits = model(paddle.to_tensor(seq[None, :-1])).numpy()[0].astype(np.float64)  # [len(d), V]
        top = max(top, float(np.abs(logits).max()))
        lse = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
        nll += float((lse - logits[np.arange(len(d)), seq[1:]]).sum())
    mean = nll / total
    # the packed window and the per-document runs differ only in fp32 rounding: (6L + 1) reductions of
    # length <= F on each logit (tests/unit/test_fast_paths.py), times 2 for a loss (log-sum-exp - logit)
    tol = 2 * (6 * config.num_layers + 1) * config.ffn_hidden_size * 2.0 ** -24 * top
    assert reported["tokens"] == total
    assert abs(reported["loss"] - mean) <= tol
    assert abs(reported["perplexity"] / math.exp(mean) - 1) <= math.expm1(tol)
    assert f"token ppl {reported['perplexity']:.2f}" in capsys.readouterr().out


def test_table_shows_the_paper_number_only_beside_the_same_shot_count():
    """REF gives the paper's 2.6B numbers for zero-shot only: a 1-shot row shows "-" in that column."""
    from paddle_pangu.evaluation.report import format_table

    def row(shots, accuracy):
        return {"task": "ocnli", "shots": shots, "n": 10, "accuracy": accuracy, "ci95": {"accuracy": [0.1, 0.7]},
                "chance": 1 / 3, "paper_2.6b_zero_shot": {"accuracy": 42.61}}

    text = format_table([row(0, 0.4), row(1, 0.5)])
    lines = [line for line in text.splitlines() if "ocnli" in line]
    assert "paper 2.6B 0-shot" in text.splitlines()[0]
    zero, one = lines
    assert "40.00" in zero and zero.rstrip().endswith("42.61")
    assert "50.00" in one and one.rstrip().endswith("-") and "42.61" not in one
