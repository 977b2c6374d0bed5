"""`pangu serve --weights int8` (issue 25): a real server on a saved model answers the openai client with the
greedy text of the same model quantised in this process; the prompts are chosen so that int8 and fp32 differ
on at least one (checked here), so a server that ignored --weights would fail. `--weights bf16` on a CPU
without avx512_bf16 is a one-line refusal from generate, serve and evaluate."""
from __future__ import annotations

import openai
import paddle
import pytest
from serve_utils import Server

from paddle_pangu import kernels
from paddle_pangu.cli import main
from paddle_pangu.inference import generate_text
from paddle_pangu.inference.loading import load_model_and_tokenizer
from paddle_pangu.inference.quantize import quantize_model

PROMPTS = ["北京是", "中国人民", "长江", "今天天气", "我们的", "经济发展"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model saved as a model directory, its linear weights std 0.5 with one 100x input row: every
    output channel's scale is set by that outlier, so int8 rounds the other weights coarsely (the known
    weakness of per-channel scales) and greedy picks move."""
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(7)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    with paddle.no_grad():
        for name, p in model.named_parameters():
            if len(p.shape) == 2 and "embedding" not in name:
                w = paddle.randn(p.shape) * 0.5  # [in, out]
                w[0] = w[0] * 100
                p.set_value(w)
    out = tmp_path_factory.mktemp("int8_model")
    model.save_pretrained(str(out))
    return str(out)


def test_serve_int8_answers_with_the_int8_models_greedy_text(model_dir, tmp_path):
    fp32, tok = load_model_and_tokenizer(model_dir)
    want_fp32 = [generate_text(fp32, tok, [p], max_new_tokens=6)[0] for p in PROMPTS]
    int8 = quantize_model(fp32, "int8")
    want = [generate_text(int8, tok, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert want != want_fp32, "int8 and fp32 agree on every prompt: the test could not tell them apart"
    srv = Server(model_dir, "--weights", "int8", log_path=str(tmp_path / "server.log"))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        got = [client.completions.create(model="m", prompt=p, max_tokens=6, temperature=0).choices[0].text
               for p in PROMPTS]
    finally:
        srv.stop()
    assert got == want


@pytest.mark.parametrize("cmd", [["generate", "--prompt", "x"], ["serve"], ["evaluate", "--task", "reviews"]])
def test_bf16_weights_are_refused_in_one_line_without_avx512_bf16(cmd, capsys):
    if "avx512_bf16" in kernels.cpu_flags():
        pytest.fail("this machine has avx512_bf16: the refusal cannot be tested here")
    assert main([cmd[0], "--model", "preset:tiny", "--weights", "bf16", *cmd[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pangu {cmd[0]}: error: --weights bf16: this CPU has no avx512_bf16") and "\n" not in err
