"""Inference on the simulated `npu` (PANGU_TEST_NPU=1 loads devices/sim_npu in every `pangu` process):
`pangu evaluate --device npu`, `pangu export` + `pangu generate --device npu` through Paddle
Inference's custom-device config (`enable_custom_device("npu", ...)`), and `pangu serve --device npu`
answering the official openai client; `--device npu` without the plugin is one line. At fp32 the npu runs Paddle's CPU kernels through the
custom-device fallback, so greedy tokens and predictions must equal the CPU run's; per-candidate
losses agree within fp32 rounding of sums over the vocabulary (V u relative, u = 2^-24).
"""
import json
import os
import subprocess
import sys

import pytest

from serve_utils import Server  # tests/integration is on sys.path (rootdir conftest-less import)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from npu_run import pangu as _pangu  # noqa: E402  (tests/npu_run.py)

PROMPT = "今天天气很好，我们"
NEW_TOKENS = "6"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("npu_export") / "tiny"
    proc = _pangu("export", "--model", "preset:tiny", "--output", str(out), npu=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _generate(model, device):
    proc = _pangu("generate", "--model", str(model), "--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS,
                  "--no-stream", "--device", device, npu=device == "npu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cpu_text(exported):
    return _generate(exported, "cpu")  # the prompt and its greedy continuation


def test_export_generate_on_npu_predictor_equals_cpu(exported, cpu_text):
    on_npu = _generate(exported, "npu")
    assert on_npu == cpu_text and len(on_npu) > len(PROMPT), (on_npu, cpu_text)


def test_serve_on_npu_answers_the_openai_client_with_the_cpu_tokens(exported, cpu_text, tmp_path, monkeypatch):
    import openai

    monkeypatch.setenv("PANGU_TEST_NPU", "1")
    monkeypatch.delenv("CUSTOM_DEVICE_ROOT", raising=False)
    server = Server(str(exported), "--device", "npu", log_path=str(tmp_path / "serve.log"))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        done = client.completions.create(model="pangu", prompt=PROMPT, max_tokens=int(NEW_TOKENS), temperature=0)
        served = done.choices[0].text
    finally:
        server.stop()
    assert served and PROMPT + served == cpu_text, (served, cpu_text)


def test_evaluate_on_npu_equals_cpu(tmp_path):
    rows = {}
    for device in ("npu", "cpu"):
        log = tmp_path / f"{device}.jsonl"
        proc = _pangu("evaluate", "--model", "preset:tiny", "--task", "reviews", "--num-eval", "4", "--shots", "0",
                      "--device", device, "--output", str(tmp_path / f"{device}.json"), "--log-samples", str(log),
                      "--json", npu=device == "npu")
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows[device] = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows["npu"]) == len(rows["cpu"]) == 4
    vocab = 40000  # tiny preset; a candidate's mean loss sums softmax terms over the vocabulary
    for a, b in zip(rows["npu"], rows["cpu"]):
        assert a["prediction"] == b["prediction"] and a["gold"] == b["gold"]
        for ca, cb in zip(a["candidates"], b["candidates"]):
            assert ca["token_ids"] == cb["token_ids"]
            assert abs(ca["mean_loss"] - cb["mean_loss"]) <= vocab * 2.0 ** -24 * abs(cb["mean_loss"])


def test_npu_without_the_plugin_is_a_one_line_error(exported):
    proc = _pangu("generate", "--model", str(exported), "--prompt", PROMPT, "--device", "npu", npu=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("pangu generate: error: device='npu' requested but Paddle has no 'npu' custom device")
    assert "Traceback" not in proc.stderr


def test_the_npu_allocator_exists_before_the_predictor_copies_its_parameters(exported):
    """Paddle 3.3.1 fills its naive_best_fit custom-device allocator map without a lock, and a predictor
    copies its parameters from several threads: on a fresh device that race lost ~1 serve in 3 (two ~15 GB
    first chunks, 'CustomDevice error 2', double frees). predictor_config must build the allocator first,
    from one thread: its first chunk is reserved before create_predictor is called."""
    code = ("from paddle_pangu import runtime; runtime.apply(log=False); import paddle.device as dev; "
            "from paddle_pangu.inference.export import predictor_config; "
            f"d = {str(exported)!r}; before = dev.memory_reserved('npu:0'); "
            "predictor_config(d + '/prefill.json', d + '/prefill.pdiparams', 'npu'); "
            "print(before, dev.memory_reserved('npu:0'))")
    env = {**os.environ, "GLOG_minloglevel": "2", "PANGU_TEST_NPU": "1"}
    env.pop("CUSTOM_DEVICE_ROOT", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = map(int, proc.stdout.split()[-2:])
    assert before == 0 and after > 0, proc.stdout
