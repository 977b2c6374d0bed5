"""`pangu bench`: interleaving, load-refused ratios, and that each target runs end to end with its baselines.
No timing assertions: speed lives in benchmarks, the tests check the bookkeeping."""
import json

import pytest

from paddle_pangu.bench import harness
from paddle_pangu.bench.train_bench import Shape
from paddle_pangu.cli import main


def test_interleave_runs_systems_in_turn():
    order = []

    def fake_sampler(fn, calls):
        fn()
        return {"wall_s": 1.0, "cpu_s": 1.0, "load": 1.0}

    systems = {name: (lambda n=name: order.append(n)) for name in ("ours", "base")}
    runs = harness.interleave(systems, rounds=3, sampler=fake_sampler)
    assert order == ["ours", "base"] * 3 and [len(v) for v in runs.values()] == [3, 3]


def _s(wall, load, cpu=None):
    return {"wall_s": wall, "cpu_s": wall if cpu is None else cpu, "load": load}


def test_pair_ratio_is_per_round_and_refuses_pairs_under_different_load():
    ours = [_s(1.0, 2.0), _s(2.0, 2.0), _s(1.0, 2.0)]
    base = [_s(3.0, 2.5), _s(2.0, 9.0), _s(1.5, 1.5, cpu=3.0)]
    r = harness.pair_ratio(ours, base)
    assert r["pairs"] == 2 and r["refused"] == 1  # round 2: load 2.0 vs 9.0
    assert r["wall"] == {"median": 2.25, "min": 1.5, "max": 3.0, "n": 2}
    assert r["cpu"]["median"] == 3.0
    refused = harness.pair_ratio([_s(1.0, 1.0)], [_s(1.0, 5.0)])
    assert refused["wall"] is None and refused["pairs"] == 0
    assert harness.loads_comparable(0.1, 2.0) and not harness.loads_comparable(0.1, 2.1)


def _touch_fresh_pages(size=64 << 20):
    """Touch `size` bytes of fresh anonymous pages. (A bytearray can reuse heap memory an earlier test freed
    but the allocator kept resident, so the RSS would not grow; an mmap is always new pages.)"""
    import mmap

    with mmap.mmap(-1, size) as m:
        for offset in range(0, size, mmap.PAGESIZE):
            m[offset] = 1


def test_summarize_medians_rates_and_sample_records_memory():
    s = harness.summarize([_s(2.0, 1.0), _s(1.0, 3.0), _s(4.0, 2.0, cpu=8.0)], work=100)
    assert s["wall_s"]["median"] == 2.0 and s["tokens_per_s"] == 50.0 and s["tokens_per_cpu_s"] == 50.0
    assert s["load"] == [1.0, 3.0, 2.0]
    one = harness.sample(_touch_fresh_pages, calls=1)  # 64 MB of new pages touched inside the sample
    assert one["wall_s"] >= 0 and one["cpu_s"] >= 0 and one["load"] >= 0
    assert one["step_extra_mb"] >= 60 and one["peak_rss_mb"] >= one["step_extra_mb"]


def test_flops_formula_of_the_issue_shape():
    # h512 L4 F2048 V40000 b4 s256: 6*N*tokens + attention = 209.6 GFLOP (docs/PLATFORM.md's figure)
    shape = Shape(hidden=512, layers=4, heads=8, ffn=2048, vocab=40000, seq=256, batch=4)
    n = 4 * (4 * 512 ** 2 + 2 * 512 * 2048) + 40000 * 512
    assert shape.flops_per_step() == 6 * n * 1024 + 12 * 4 * 256 * 512 * 1024
    assert round(shape.flops_per_step() / 1e9, 1) == 209.6


def test_bench_train_compare_reports_every_system(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--compare", "--preset", "tiny", "--seq", "8", "--batch", "1", "--rounds", "1",
                 "--matmul-n", "64", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert set(r["systems"]) == {"pangu", "pangu_paddle_kernels", "paddlenlp_gpt", "hf_gpt2"}
    assert r["cpu_kernels"] == "on"  # the suite's machine builds them (g++ from the README's test command)
    for name, s in r["systems"].items():
        assert len(s["load"]) == 1 and s["tokens_per_s"] == pytest.approx(8 / s["wall_s"]["median"])
        assert s["gflops"] == pytest.approx(r["gflop_per_step"] / s["wall_s"]["median"])
        assert s["peak_fraction"] == pytest.approx(s["gflops"] / r["matmul_peak"]["peak_gflops"])
        assert s["peak_fraction_cpu"] == pytest.approx(
            r["gflop_per_step"] / s["cpu_s"]["median"] / r["matmul_peak"]["peak_gflop_per_cpu_s"])
    ratio = r["ratios"]["pangu/paddlenlp_gpt"]
    if ratio["wall"] is not None:
        want = r["systems"]["paddlenlp_gpt"]["wall_s"]["median"] / r["systems"]["pangu"]["wall_s"]["median"]
        assert ratio["wall"]["median"] == pytest.approx(want)
    assert {"paddle", "torch"} <= set(r["matmul_peak"])
    assert "pangu/hf_gpt2" in capsys.readouterr().out


def _decode_weight_bytes(h: int, f: int, layers: int, vocab: int, mode: str) -> int:
    """Bytes a PanGu decode step reads, from the architecture (REF "block", "query layer", "output head"):
    per layer q/k/v/out [H, H] and fc_in [H, F], fc_out [F, H] with biases, two layernorms; the final
    layernorm; the tied head [V, H]. int8: 1 byte a linear / head weight plus an fp32 scale and bias per
    output channel (the head's bias is zeros); bf16: 2 bytes a linear / head weight plus an fp32 bias per
    output channel; layernorms fp32. Embedding lookups are not counted."""
    if mode == "int8":
        linears = 4 * (h * h + 8 * h) + (h * f + 8 * f) + (f * h + 8 * h)
        head = vocab * h + 8 * vocab
    elif mode == "bf16":
        linears = 4 * (2 * h * h + 4 * h) + (2 * h * f + 4 * f) + (2 * f * h + 4 * h)
        head = 2 * vocab * h + 4 * vocab
    else:
        linears = 4 * (4 * (h * h + h) + (h * f + f) + (f * h + h))
        head = 4 * vocab * h
    return layers * (linears + 4 * 4 * h) + 4 * 2 * h + head


def test_bench_generate_compare_measures_dynamic_predictor_int8_bf16_and_hf(tmp_path, capsys):
    assert main(["bench", "generate", "--compare", "--preset", "tiny", "--rounds", "1", "--prompt-len", "4",
                 "--new-tokens", "2", "--decode-batches", "2", "--json", "-"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    (b,) = r["batches"]
    from paddle_pangu.inference.quantize import cpu_has_bf16

    pangu = {"pangu_dynamic", "pangu_predictor", "predictor_onednn", "pangu_int8", "pangu_predictor_int8", "pangu_bf16",
             "pangu_predictor_bf16"}
    hf = {"hf_generate"} | ({"hf_generate_bf16"} if cpu_has_bf16() else set())
    assert b["batch"] == 2 and set(b["systems"]) == pangu | hf
    for s in b["systems"].values():
        assert s["tokens_per_s"] == pytest.approx(4 / s["wall_s"]["median"]) and s["first_token_s"]["n"] == 1
    want = {"pangu_dynamic/" + x for x in (pangu | hf) - {"pangu_dynamic"}}
    want |= {f"{p}/{x}" for p in pangu - {"pangu_dynamic"} for x in hf | {"pangu_dynamic"}}
    assert set(b["ratios"]) == want
    # the roofline: weight bytes per step from the architecture, GB/s from them, bandwidth measured
    from paddle_pangu.config import get_preset

    c = get_preset("tiny")
    want_bytes = {m: _decode_weight_bytes(c.hidden_size, c.ffn_hidden_size, c.num_layers, c.vocab_size, m)
                  for m in ("fp32", "int8", "bf16")}
    for name, s in b["systems"].items():
        if name.startswith("pangu"):
            mode = "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"
            assert s["weight_bytes"] == want_bytes[mode], name
        assert s["achieved_gb_s"] == pytest.approx(s["weight_bytes"] * 2 / s["wall_s"]["median"] / 1e9)
        assert s["roofline_fraction"] == pytest.approx(s["achieved_gb_s"] / r["bandwidth"]["read_gb_s"])
    assert r["bandwidth"]["read_gb_s"] > 0 and r["bandwidth"]["copy_gb_s"] > 0


def test_bench_serve_runs_a_bf16_server_beside_offline_decode(tmp_path, capsys):
    """`pangu bench serve --weights bf16`: a real `pangu serve --weights bf16` subprocess (its log names the
    flag), the offline decode of the same prompts in the same round, and served / offline from those two."""
    log = tmp_path / "serve.log"
    from paddle_pangu.bench import serve_bench

    r = serve_bench.bench_serve("tiny", clients=(1, 2), prompt_len=4, new_tokens=2, rounds=1, max_batch=2,
                                log_path=str(log), weights=("bf16",))
    assert r["weights"] == ["bf16"] and [(p["weights"], p["clients"]) for p in r["points"]] == [("bf16", 1), ("bf16", 2)]
    for p in r["points"]:
        (served,), (off,) = p["samples"], p["offline"]["samples"]
        assert 0 < served["tokens"] <= 2 * p["clients"]  # a stop token may end a served row early
        assert off["tokens_per_s"] == pytest.approx(2 * p["clients"] / off["wall_s"])
        assert p["served_over_offline"]["median"] == pytest.approx(served["tokens_per_s"] / off["tokens_per_s"])
    assert "served/offline" in serve_bench.table(r)
    assert "bf16 weights" in log.read_text()  # the server's banner: it was started with --weights bf16


def test_bench_rejects_bad_sizes(capsys):
    assert main(["bench", "train", "--preset", "tiny", "--heads", "5"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["bench", "generate", "--preset", "tiny", "--decode-batches", "1,x"]) == 2
    assert "comma-separated" in capsys.readouterr().err


def test_bench_parallel_runs_one_process_and_the_main_jobs_two_process_launch(tmp_path, capsys):
    # the real `pangu train --nproc 2` of configs/pretrain/mini_cpu_mp2.yaml, at the tiny preset: 2 steps, 1 round
    out = tmp_path / "parallel.json"
    assert main(["bench", "parallel", "--preset", "tiny", "--seq", "16", "--steps", "2", "--rounds", "1",
                 "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["name"] == "parallel" and r["config"].endswith("mini_cpu_mp2.yaml") and r["seq"] == 16
    assert r["global_batch"] == 8 and r["tokens_per_step"] == 8 * 16 and r["measured_steps"] == 1
    assert list(r["layouts"]) == ["single", "mp2"]
    assert (r["layouts"]["single"]["world"], r["layouts"]["mp2"]["world"]) == (1, 2)
    assert r["layouts"]["mp2"]["layout"]["mp_degree"] == 2 and r["layouts"]["single"]["layout"]["mp_degree"] == 1
    for name, s in r["layouts"].items():
        assert s["layout"]["global_batch_size"] == 8 and s["tokens_per_s"]["median"] > 0 and len(s["load"]) == 1
        (one,) = r["samples"][name]
        assert len(one["step_times_s"]) == 2 and one["load"] >= 0 and one["load_after"] >= 0
        assert one["tokens_per_s"] == pytest.approx(128 / one["step_times_s"][1])
        assert one["run_wall_s"] > 0 and one["run_cpu_s"] > 0 and one["runtime"]
    ratio = r["ratios"]["mp2/single"]
    assert ratio["pairs"] + ratio["refused"] == 1
    if ratio["tokens_per_s"] is not None:
        want = r["samples"]["single"][0]["step_s"] / r["samples"]["mp2"][0]["step_s"]
        assert ratio["tokens_per_s"]["median"] == pytest.approx(want)
    assert "ratio mp2/single" in capsys.readouterr().out


def test_bench_parallel_rejects_bad_flags_in_one_line(capsys):
    assert main(["bench", "parallel", "--preset", "tiny", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--steps 1" in err and "warm-up" in err
    assert main(["bench", "parallel", "--config", "configs/pretrain/tiny_cpu_single.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1-process layout" in err


def test_only_bench_data_runs_without_paddle_imported_by_the_command():
    """`pangu bench data` measures the pipeline as `pangu prepare-data` runs it: the command imports no paddle
    (its worker pools then fork); every other target may load a model, so the pickle guard is on."""
    from argparse import Namespace

    from paddle_pangu.cli.bench import loads_models

    assert not loads_models(Namespace(targets=["data"]))
    assert loads_models(Namespace(targets=["data", "generate"]))
    assert loads_models(Namespace(targets=None))  # the default targets: train, generate
    assert loads_models(Namespace(targets=["all"]))
