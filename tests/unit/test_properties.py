"""Property tests: any input gives a result or the project's own error (PanGuError), never another exception.

Over the run-config loader (dicts and raw YAML text), the JSONL / text readers (arbitrary bytes,
any reader settings), the tokenizer (any text, any ids) and the generation arguments.
"""
import math
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paddle_pangu.errors import PanGuError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
SECTIONS = {
    "model": ["preset", "overrides", "init_from"],
    "data": ["paths", "weights", "seq_len", "splits", "synthetic", "tokenizer"],
    "optim": ["lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip", "warmup_steps", "decay_steps",
              "decay_style"],
    "amp": ["dtype", "level", "init_loss_scale"],
    "parallel": ["dp_degree", "mp_degree", "pp_degree", "micro_batch_size", "accumulate_steps", "sharding_degree"],
    "train": ["max_steps", "seed", "device", "eval_interval", "eval_iters", "max_nonfinite_steps"],
    "checkpoint": ["save_interval", "keep_last", "resume", "force_resume"],
    "logging": ["log_interval", "visualdl"],
}


@st.composite
def run_config_dicts(draw):
    out = {}
    for section, keys in SECTIONS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
            out[section] = {k: draw(values) for k in chosen}
    if draw(st.booleans()):
        out[draw(st.text(max_size=6))] = draw(values)
    return out


def _result_or_project_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except PanGuError as exc:
        assert "\n" not in str(exc).strip() or "Traceback" not in str(exc)
        return exc


@SETTINGS
@given(run_config_dicts())
@example({"data": {"synthetic": {"num_samples": 8}, "splits": [None, 1, 1]}})  # found by this test: float(None)
@example({"data": {"synthetic": {"num_samples": 8}, "splits": ["a", 1, 1]}})
def test_run_config_from_any_dict(data):
    from paddle_pangu.training.run_config import run_config_from_dict

    def load_and_validate():
        cfg = run_config_from_dict(data, source="prop.yaml")
        cfg.validate(1)
        return cfg

    _result_or_project_error(load_and_validate)


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_run_config_from_any_yaml_text(text):
    from paddle_pangu.training.run_config import load_run_config

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "run.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        _result_or_project_error(lambda: load_run_config(path).validate(1))


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from(["a.jsonl", "a.txt", "a.jsonl.gz", "b.json"]),
       st.sampled_from(["auto", "text", "jsonl", "csv"]), st.sampled_from(["line", "blank", "file", "para"]),
       st.sampled_from(["utf-8", "gb18030", "latin-1", "nope-9"]), st.text(max_size=6))
def test_readers_on_any_bytes(data, name, fmt, doc_mode, encoding, field):
    from paddle_pangu.data.readers import ReaderConfig, read_documents
    from paddle_pangu.data.stats import IssueLog

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        cfg = ReaderConfig(format=fmt, doc_mode=doc_mode, text_field=field or "text", encoding=encoding)
        docs = _result_or_project_error(lambda: list(read_documents([path], cfg, IssueLog())))
        if isinstance(docs, list):
            assert all(isinstance(doc.text, str) and doc.text.strip() for doc in docs)


_TOKENIZER = []


def _tokenizer():
    if not _TOKENIZER:
        from paddle_pangu.tokenizer import PanGuTokenizer

        _TOKENIZER.append(PanGuTokenizer.from_default())
    return _TOKENIZER[0]


@SETTINGS
@given(st.text(max_size=80))
def test_tokenizer_encodes_any_text(text):
    tok = _tokenizer()
    ids = _result_or_project_error(tok.encode, text)
    if not isinstance(ids, PanGuError):
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)


@SETTINGS
@given(st.lists(st.integers(-5, 50_000), max_size=20))
def test_tokenizer_decodes_any_ids(ids):
    out = _result_or_project_error(_tokenizer().decode, ids)
    assert isinstance(out, (str, PanGuError))


sampling_numbers = st.one_of(st.integers(-3, 70_000), st.floats(allow_nan=True, allow_infinity=True))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
                                        "frequency_penalty", "presence_penalty", "seed", "truncate", "do_sample",
                                        "no_such_arg"]),
                       st.one_of(sampling_numbers, st.booleans(), st.sampled_from(["error", "left", "x"])), max_size=5),
       st.lists(st.integers(0, 39_999), max_size=40), st.integers(1, 64))
def test_generation_arguments(kwargs, prompt, context):
    from paddle_pangu.inference.decoding import fit_prompt
    from paddle_pangu.inference.sampling import SamplingConfig

    cfg = _result_or_project_error(SamplingConfig.build, **kwargs)
    if isinstance(cfg, SamplingConfig):
        assert cfg.max_new_tokens >= 1 and (cfg.temperature >= 0 and not math.isnan(cfg.temperature))
        fitted = _result_or_project_error(fit_prompt, prompt, cfg, context)
        if isinstance(fitted, list):
            assert 1 <= len(fitted) and len(fitted) + cfg.max_new_tokens <= context
