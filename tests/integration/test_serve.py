"""`pangu serve` end to end: a real server subprocess on a free 127.0.0.1 port, the official `openai` client.

The served model is `preset:tiny` (random init, seed 0); the expected texts come from the same model
built in this process and `generate_text`, so the server must compute exactly what generation does."""
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_utils import Server

from paddle_pangu.inference import generate_text
from paddle_pangu.inference.loading import load_model_and_tokenizer
from paddle_pangu.inference.server.protocol import ChatMessage, chat_prompt

PROMPTS = ["北京是", "今天天气", "中国科学院", "人工智能的", "上海的夜景", "我喜欢", "春天来了", "长江"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("preset:tiny", "--max-batch", "8", log_path=str(tmp_path_factory.mktemp("serve") / "server.log"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def local():
    model, tok = load_model_and_tokenizer("preset:tiny", seed=0)
    return model, tok


def _greedy(local, prompt, n, **kw):
    model, tok = local
    return generate_text(model, tok, [prompt], max_new_tokens=n, **kw)[0]


def test_models_and_completion_equal_local_greedy(client, local):
    assert [m.id for m in client.models.list().data] == ["preset:tiny"]
    out = client.completions.create(model="preset:tiny", prompt="北京是", max_tokens=8, temperature=0,
                                    frequency_penalty=2.0)
    expected = _greedy(local, "北京是", 8, frequency_penalty=2.0)
    assert expected and out.choices[0].text == expected
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 8


def test_chat_completion_uses_the_chat_template(client, local):
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
    out = client.chat.completions.create(model="preset:tiny", messages=messages, max_tokens=6, temperature=0,
                                         presence_penalty=1.5)
    prompt = chat_prompt([ChatMessage(**m) for m in messages])
    assert prompt.endswith("助手：")
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == _greedy(local, prompt, 6, presence_penalty=1.5)


def test_streamed_text_equals_non_streamed_greedy(client):
    kw = dict(model="preset:tiny", prompt="中国科学院", max_tokens=10, temperature=0, frequency_penalty=2.0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = [c.choices[0].text for c in client.completions.create(stream=True, **kw)]
    assert sum(1 for c in chunks if c) > 1 and "".join(chunks) == whole
    messages = [{"role": "user", "content": "讲个故事"}]
    chat_whole = client.chat.completions.create(model="preset:tiny", messages=messages, max_tokens=8,
                                                temperature=0, frequency_penalty=2.0).choices[0].message.content
    stream = client.chat.completions.create(model="preset:tiny", messages=messages, max_tokens=8, temperature=0,
                                            frequency_penalty=2.0, stream=True)
    deltas = [c.choices[0].delta.content or "" for c in stream]
    assert sum(1 for d in deltas if d) > 1 and "".join(deltas) == chat_whole


def test_stop_strings_and_seeded_sampling(client):
    kw = dict(model="preset:tiny", prompt="今天天气", max_tokens=10, temperature=0, frequency_penalty=2.0)
    whole = client.completions.create(**kw).choices[0].text
    stop = whole[4:6]
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.text == whole[:whole.index(stop)] and cut.finish_reason == "stop"
    sample = dict(model="preset:tiny", prompt="今天天气", max_tokens=10, temperature=1.5, seed=123)
    first = client.completions.create(**sample).choices[0].text
    assert client.completions.create(**sample).choices[0].text == first


def test_eight_concurrent_clients_each_get_their_solo_output(client, server):
    def ask(i):
        if i == 7:  # one seeded sampled row among greedy companions
            return client.completions.create(model="preset:tiny", prompt=PROMPTS[i], max_tokens=12,
                                             temperature=1.2, seed=99).choices[0].text
        return client.completions.create(model="preset:tiny", prompt=PROMPTS[i], max_tokens=12 - i % 3,
                                         temperature=0, frequency_penalty=2.0).choices[0].text

    solo = [ask(i) for i in range(8)]
    assert len(set(solo)) == 8
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert together == solo
    assert server.health()["peak_batch"] > 1  # the concurrent requests really shared decode steps


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(client, server):
    url = server.url + "/v1/completions"
    bad = [
        (b'{"prompt": "x", "max_tokens": ', "not valid JSON"),
        (b'{"prompt": "x", "max_tokens": "many"}', "max_tokens"),
        (b'{"prompt": "x", "temperature": -1}', "temperature"),
        (b'{"max_tokens": 4}', "prompt"),
        (b'[1, 2, 3]', "dictionary"),
        (b'{"prompt": "x", "max_tokens": 4000}', "context"),
        (b'{"prompt": ""}', "empty"),
    ]
    for body, needle in bad:
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 400, (body, r.text)
        assert needle in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]},
                   timeout=60)
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="max_position_embeddings"):
        client.completions.create(model="preset:tiny", prompt="，".join(PROMPTS) * 8, max_tokens=8)
    assert server.proc.poll() is None and server.health()["status"] == "ok"
    assert client.completions.create(model="preset:tiny", prompt="长江", max_tokens=3, temperature=0).choices[0].text


def test_stream_usage_and_the_server_benchmark_round(client, server):
    from paddle_pangu.bench.serve_bench import _round

    chunks = list(client.completions.create(model="preset:tiny", prompt="长江", max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"repetition_penalty": 1.0}))
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
    r = _round(server.url, PROMPTS[:3], 6)  # what `pangu bench serve` measures, against this server
    assert r["tokens"] == 18 and r["tokens_per_s"] > 0 and 0 < r["first_token_s"] <= r["wall_s"]
