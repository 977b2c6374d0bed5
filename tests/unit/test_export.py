"""Paddle Inference export: the real predictor reproduces dygraph generation (greedy fp32, batched and
unbatched, rows joining mid-run, seeded sampling), the device / dtype configs it builds, the CLI, per-rank
models merged before export, and serving an export directory."""
import json
import os
import shutil
import sys
import types

import numpy as np
import paddle
import pytest

from paddle_pangu.cli import main
from paddle_pangu.errors import UsageError
from paddle_pangu.inference import SamplingConfig, generate
from paddle_pangu.inference.decoding import BatchDecoder, Row
from paddle_pangu.inference.export import (
    META_FILE, InferenceStepper, add_npu_passes, export_model, generate_with_predictor, predictor_config, predictor_settings,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(21)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.eval()
    out = tmp_path_factory.mktemp("export")
    export_model(model, str(out))
    return model, str(out), InferenceStepper(str(out))


def test_export_writes_both_graphs(exported):
    _, out, stepper = exported
    for name in ("prefill", "decode"):
        assert os.path.getsize(os.path.join(out, name + ".pdiparams")) > 0
        assert os.path.exists(os.path.join(out, name + ".json"))
    assert os.path.exists(os.path.join(out, "config.json")) and stepper.dtype == "float32"
    model = exported[0]
    weights = sum(int(np.prod(p.shape)) for p in model.parameters()) + model.config.vocab_size * model.config.hidden_size
    for name in ("prefill", "decode"):  # the model plus the head's [H, V] copy, fp32
        assert os.path.getsize(os.path.join(out, name + ".pdiparams")) >= 4 * weights


def test_predictor_logits_match_dygraph(exported):
    model, _, stepper = exported
    ids = np.array([[6, 6, 101, 202, 303], [11, 12, 13, 14, 15]], "int64")
    mask = (ids != 6).astype("int64")
    mask[1, :] = 1
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, kv = stepper(ids, pos, mask, None)
    ref, cache = model(paddle.to_tensor(ids), position_ids=paddle.to_tensor(pos), attention_mask=paddle.to_tensor(mask),
                       use_cache=True)
    np.testing.assert_allclose(logits, ref[:, -1].numpy(), rtol=1e-5, atol=1e-5)
    assert len(kv) == model.config.num_layers
    for (k, v), (rk, rv) in zip(kv, cache):
        assert k.shape == v.shape == (2, model.config.num_attention_heads, 5, model.config.head_dim)
        np.testing.assert_allclose(k, rk.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, rv.numpy(), rtol=1e-5, atol=1e-6)
    step = np.array([[7], [8]], "int64")  # one decode step over the predictor's own cache
    grown = np.concatenate([mask, np.ones([2, 1], "int64")], 1)
    logits2, kv2 = stepper(step, pos[:, -1:] + 1, grown, kv)
    ref2, _ = model(paddle.to_tensor(step), position_ids=paddle.to_tensor(pos[:, -1:] + 1),
                    attention_mask=paddle.to_tensor(grown), past_key_values=cache, use_cache=True)
    np.testing.assert_allclose(logits2, ref2[:, -1].numpy(), rtol=1e-5, atol=1e-5)
    assert kv2[0][0].shape[2] == 6


def test_an_export_of_another_format_is_refused_in_one_line(exported, tmp_path):
    from paddle_pangu.errors import CheckpointError

    _, out, _ = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = json.loads((old / META_FILE).read_text())
    (old / META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "format"}))  # format 1 had none
    with pytest.raises(CheckpointError, match=r"export format 1, this paddle_pangu reads format 2.*pangu export"):
        InferenceStepper(str(old))
    (old / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"pangu_inference.json: not valid JSON .*expected export metadata"):
        InferenceStepper(str(old))


def test_predictor_greedy_equals_dygraph_unbatched_and_batched(exported):
    model, out, _ = exported
    prompts = [[101, 2002, 303, 4004], [77, 88], [5, 6, 7, 8, 9, 10, 11]]
    cfg = SamplingConfig(max_new_tokens=10, eos_token_id=-1, frequency_penalty=2.0)  # penalty: varied tokens
    batched = generate(model, prompts, cfg)
    assert generate_with_predictor(out, prompts, cfg) == batched
    for p, expected in zip(prompts, batched):
        assert generate_with_predictor(out, [p], cfg) == [expected] == generate(model, [p], cfg)
    assert all(len(set(b)) > 3 for b in batched)


def _run(stepper, config, rows, late):
    decoder = BatchDecoder(stepper, config)
    decoder.add(rows)
    decoder.step()
    decoder.add(late)
    while decoder.rows:
        decoder.step()
    return [r.tokens for r in rows + late]


def test_predictor_rows_joining_and_seeded_sampling_equal_dygraph(exported):
    from paddle_pangu.inference.generation import DygraphStepper

    model, _, stepper = exported
    greedy = SamplingConfig(max_new_tokens=6, eos_token_id=-1, frequency_penalty=2.0)

    def sampled(seed):
        return SamplingConfig(max_new_tokens=6, eos_token_id=-1, do_sample=True, temperature=1.3, seed=seed)

    def rows():
        return [Row([101, 2002, 303], greedy), Row([5, 6], sampled(4))], [Row([77, 88, 99, 1, 2], sampled(9))]

    via_predictor = _run(stepper, stepper.config, *rows())
    assert via_predictor == _run(DygraphStepper(model), model.config, *rows())
    alone = _run(stepper, stepper.config, [Row([77, 88, 99, 1, 2], sampled(9))], [])
    assert via_predictor[2] == alone[0]  # the seeded row did not notice its companions


def test_predictor_settings_per_device_and_dtype(monkeypatch):
    P = paddle.inference.PrecisionType
    monkeypatch.setenv("FLAGS_selected_gpus", "3")
    monkeypatch.setenv("FLAGS_selected_npus", "5")
    assert predictor_settings("gpu", dtype="float16") == [("enable_use_gpu", (100, 3, P.Half)), ("disable_glog_info", ())]
    assert predictor_settings("npu", dtype="bfloat16") == [
        ("enable_custom_device", ("npu", 5, P.Bfloat16)), ("switch_ir_optim", (True,)), ("disable_glog_info", ())]
    assert predictor_settings("cpu", threads=2) == [
        ("disable_gpu", ()), ("set_cpu_math_library_num_threads", (2,)), ("disable_mkldnn", ()),
        ("disable_glog_info", ())]
    assert ("enable_mkldnn_bfloat16", ()) in predictor_settings("cpu", dtype="bfloat16")
    with pytest.raises(UsageError, match="float16 export runs on --device gpu or npu"):
        predictor_settings("cpu", dtype="float16")
    with pytest.raises(UsageError, match="--device 'tpu'"):
        predictor_settings("tpu")


def test_device_configs_build_and_npu_passes_are_added(exported, monkeypatch):
    _, out, _ = exported
    files = (os.path.join(out, "decode.json"), os.path.join(out, "decode.pdiparams"))
    gpu = predictor_config(*files, device="gpu")  # a CPU paddle build logs that it has no GPU and keeps the rest
    assert gpu.memory_pool_init_size_mb() == 100 and gpu.gpu_device_id() == 0
    # no npu plugin in this process: a one-line DeviceError, not Paddle Inference aborting the process in
    # create_predictor; with the plugin the npu config runs for real (tests/integration/test_npu_inference.py)
    from paddle_pangu.parallel.device import DeviceError

    with pytest.raises(DeviceError, match="no 'npu' custom device"):
        predictor_config(*files, device="npu")
    # the Ascend plugin's pass module cannot be had here: its calling convention, on a stand-in module
    calls = []
    passes = types.ModuleType("paddle_custom_device.npu.passes")
    passes.addPasses = lambda builder, model_type, quant_type: calls.append((type(builder).__name__, model_type,
                                                                             quant_type))
    for name, module in (("paddle_custom_device", types.ModuleType("paddle_custom_device")),
                         ("paddle_custom_device.npu", types.ModuleType("paddle_custom_device.npu")),
                         ("paddle_custom_device.npu.passes", passes)):
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["paddle_custom_device"].npu = sys.modules["paddle_custom_device.npu"]
    sys.modules["paddle_custom_device.npu"].passes = passes
    assert add_npu_passes(paddle.inference.Config(*files)) and calls == [("PaddlePassBuilder", "pangu", "")]


def test_cli_export_dtype_generate_and_errors(tmp_path, capsys):
    out = str(tmp_path / "bf16")
    assert main(["export", "--model", "preset:tiny", "--output", out, "--dtype", "bfloat16"]) == 0
    assert InferenceStepper(out).dtype == "bfloat16"
    capsys.readouterr()
    assert main(["generate", "--model", out, "--prompt", "北京是", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("北京是")
    fp16 = str(tmp_path / "fp16")  # a float16 export differs from a bfloat16 one only by its recorded dtype
    shutil.copytree(out, fp16)
    meta_file = os.path.join(fp16, META_FILE)
    with open(meta_file) as f:
        meta = json.load(f)
    with open(meta_file, "w") as f:
        json.dump({**meta, "dtype": "float16"}, f)
    assert main(["generate", "--model", fp16, "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pangu generate: error: a float16 export runs on --device gpu or npu") and "\n" not in err
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "expected a model directory" in capsys.readouterr().err


def test_per_rank_model_is_merged_before_export(exported, tmp_path, capsys):
    from paddle_pangu.convert.reshard import detect_layout, reshard

    model, _, _ = exported
    plain, ranks, out = str(tmp_path / "plain"), str(tmp_path / "mp2"), str(tmp_path / "served")
    model.save_pretrained(plain)
    reshard(plain, ranks, 2, 1)
    assert detect_layout(ranks)[:2] == (2, 1)
    assert main(["export", "--model", ranks, "--output", out]) == 0
    assert "merging to one rank" in capsys.readouterr().out
    cfg = SamplingConfig(max_new_tokens=6, eos_token_id=-1, frequency_penalty=2.0)
    assert generate_with_predictor(out, [[101, 2002, 303]], cfg) == generate(model, [[101, 2002, 303]], cfg)


def test_serving_an_export_directory(exported):
    from starlette.testclient import TestClient

    from paddle_pangu.inference.server import create_app, load_engine
    from paddle_pangu.tokenizer import PanGuTokenizer
    from paddle_pangu.inference import generate_text

    model, out, _ = exported
    engine = load_engine(out).start()
    try:
        with TestClient(create_app(engine, "served")) as http:
            r = http.post("/v1/completions", json={"prompt": "北京是", "max_tokens": 6, "temperature": 0})
            assert r.status_code == 200
            expected = generate_text(model, PanGuTokenizer.from_default(), ["北京是"], max_new_tokens=6)[0]
            assert r.json()["choices"][0]["text"] == expected
            assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 999}).status_code == 400
    finally:
        engine.stop()


def test_missing_export_dir_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="prefill"):
        InferenceStepper(str(tmp_path))


def test_export_without_the_head_copy_is_one_embedding_smaller_and_decodes_alike(exported, tmp_path, capsys):
    model, out, stepper = exported
    lean = str(tmp_path / "lean")
    export_model(model, lean, head_copy=False)
    embedding = 4 * model.config.vocab_size * model.config.hidden_size
    for name in ("prefill", "decode"):
        saved = os.path.getsize(os.path.join(out, name + ".pdiparams")) - os.path.getsize(os.path.join(lean, name + ".pdiparams"))
        assert embedding <= saved <= embedding + 4096  # the copy, plus one tensor header
    assert json.loads(open(os.path.join(lean, META_FILE)).read())["head_copy"] is False
    ids = np.array([[101, 2002, 303, 4004], [77, 88, 99, 5]], "int64")
    mask, pos = np.ones_like(ids), np.tile(np.arange(4), [2, 1])
    with_copy, cache = stepper(ids, pos, mask, None)
    without, lean_cache = InferenceStepper(lean)(ids, pos, mask, None)
    for (k1, v1), (k2, v2) in zip(cache, lean_cache):
        np.testing.assert_array_equal(k1, k2)  # the blocks are the same graph
        np.testing.assert_array_equal(v1, v2)
    with paddle.no_grad():
        hidden = model.pangu(paddle.to_tensor(ids)).numpy()[:, -1]
    w = np.abs(model.pangu.embeddings.word_embeddings.weight.numpy())
    # only the head GEMM differs: one length-H dot per logit in another order (1% for hidden's own rounding)
    assert (np.abs(with_copy - without) <= 1.01 * model.config.hidden_size * 2.0 ** -24 * (np.abs(hidden) @ w.T)).all()
    assert main(["export", "--model", "preset:tiny", "--output", str(tmp_path / "cli"), "--no-head-copy"]) == 0
    assert json.loads(open(os.path.join(tmp_path / "cli", META_FILE)).read())["head_copy"] is False
