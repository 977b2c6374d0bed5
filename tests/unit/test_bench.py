"""`pangu bench` produces a same-run ratio for each target (no timing assertions: speed lives in benchmarks)."""
import json

from paddle_pangu.cli import main


def test_bench_train_and_generate_report_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "generate", "--preset", "tiny", "--seq", "16", "--batch", "2", "--steps", "1",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == ["train_step", "generate"]
    for r in results:
        assert r["ours_tokens_per_s"] > 0 and r["baseline_tokens_per_s"] > 0
        assert abs(r["ratio"] - r["ours_tokens_per_s"] / r["baseline_tokens_per_s"]) < 1e-6 * r["ratio"] + 1e-9
    assert "ratio" in capsys.readouterr().out
