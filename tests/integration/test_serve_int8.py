"""`pangu serve --weights int8|bf16` (issue 25): a real server on a saved model answers the openai client with
the greedy text of the same model converted in this process; the prompts are chosen so that each mode's
text differs from fp32's and from the other mode's on at least one prompt (checked here), so a server that
ignored --weights, or ran the other mode, would fail. bf16 needs no AVX512_BF16 (the kernel decodes bf16
by a shift), so it runs on every test machine; on a GPU / NPU both modes are one-line refusals."""
from __future__ import annotations

import openai
import paddle
import pytest
from serve_utils import Server

from paddle_pangu.cli import main
from paddle_pangu.inference import generate_text
from paddle_pangu.inference.loading import load_model_and_tokenizer
from paddle_pangu.inference.quantize import quantize_model

PROMPTS = ["中国人民", "今天天气", "学生们", "春天来了"]
NEW = 10  # tokens per answer


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


@pytest.fixture(scope="module")
def texts(model_dir):
    """{mode: greedy text per prompt} of the model converted in this process, once for both servers."""
    out = {}
    for mode in ("fp32", "int8", "bf16"):
        model, tok = load_model_and_tokenizer(model_dir)
        quantize_model(model, mode)
        out[mode] = [generate_text(model, tok, [p], max_new_tokens=NEW)[0] for p in PROMPTS]
    return out


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_serve_answers_with_the_converted_models_greedy_text(texts, model_dir, weights, tmp_path):
    want = texts[weights]
    others = [m for m in texts if m != weights]
    same = [m for m in others if texts[m] == want]
    assert not same, f"{weights} and {same} give the same text on every prompt: the test could not tell them apart"
    srv = Server(model_dir, "--weights", weights, log_path=str(tmp_path / "server.log"))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        got = [client.completions.create(model="m", prompt=p, max_tokens=NEW, temperature=0).choices[0].text
               for p in PROMPTS]
    finally:
        srv.stop()
    assert got == want


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_converted_weights_off_the_cpu_are_refused_in_one_line(weights, capsys):
    assert main(["generate", "--model", "preset:tiny", "--device", "gpu", "--weights", weights, "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pangu generate: error: --weights {weights} is a CPU decode mode") and "\n" not in err
