"""The compiled jieba segmenter (paddle_pangu/tokenizer/jieba_exact.cc) against python jieba 0.42.1.

The reference is `jieba.cut(text, cut_all=False)` itself (HMM=True, as REF "Tokenizer" calls it), run in
the test on the same strings: a seeded sample of the two built-in corpora and a generated adversarial set.
The full-corpus comparison is `pangu bench data` / tools (docs/DATA.md "Segmenter"), not part of the suite.
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import jieba
import pytest

from paddle_pangu.tokenizer import PanGuSentencePiece, fastseg
from paddle_pangu.tokenizer.core import init_jieba


@pytest.fixture(scope="module")
def module():
    init_jieba()
    m = fastseg.load()
    assert m is not None, f"the compiled segmenter did not build: {fastseg.reason()}"
    assert fastseg.backend() == "compiled"
    return m


def _reference(text: str) -> list[str]:
    return list(jieba.cut(text, cut_all=False))


def _assert_same(module, texts):
    for i, text in enumerate(texts):
        ref = _reference(text)
        assert module.cut(text) == ref, f"string {i} {text[:60]!r}"
        assert module.segment(text) == fastseg.python_segment(text), f"string {i} {text[:60]!r}"


def _corpus_sample(source: str, n: int, seed: int) -> list[str]:
    from paddle_pangu.data.builtin import read_builtin
    from paddle_pangu.data.stats import IssueLog

    docs = [d.text for d in read_builtin(source, IssueLog())]
    return random.Random(seed).sample(docs, n)


def test_peoples_daily_sample_identical(module):
    # 120 of 2,757 articles (~80k characters): every string must match segment for segment
    _assert_same(module, _corpus_sample("builtin:peoples-daily", 120, seed=24))


def test_reviews_sample_identical(module):
    _assert_same(module, _corpus_sample("builtin:reviews", 600, seed=24))


# Pieces of the generated strings: each exercises one rule of jieba's block regexes, the DAG or the HMM.
_PIECES = [
    "abc", "ABC", "K", "x", "123", "0", "4.5", "12.5%", "3-3", "128-93", "K-1", "C++", "C#", "AT&T", "a_b",
    ".", "..", "%", "-", "+", "#", "&", "_", "e.g.", "1.", ".5", "3.14.15", "v2.0-rc1",
    " ", "  ", "\t", "\n", "\r\n", "\r", "\n\r", "\u3000", "\xa0", "\u2028", "\u2029", "\x85", "\x1c", "\u200b",
    "\u2009", "\ufeff", "\x0b\x0c",
    "，", "。", "！", "？", "、", "；", "：", "“", "”", "（", "）", "《", "》", "…", "——", "·", "@", "/", "$", "~",
    "ＡＢＣ", "１２３", "，", "．", "％", "＋", "－",
    "😀", "🎉", "👍🏽", "\U00020000", "\U0002a6d6", "\ud800",
    "é", "ß", "Ω", "я", "ありがとう", "한국어", "ไทย", "ع",
    "中华人民共和国", "我爱北京天安门", "的", "了", "是", "研究生命起源", "结婚的和尚未结婚的",
    "小明硕士毕业于中国科学院计算所", "他来到了网易杭研大厦", "乒乓球拍卖完了", "工信处女干事",
    "龘靐齉齾爩鱻麤", "龗灪龖厵", "\u9fd5", "\u9fd6", "\u9fff", "\u4e00", "\u3400", "〇", "丶丿乚亅",
    "张三李四王五", "韩玉鉴赏", "冯小刚", "上海自来水来自海上",
]


def _adversarial(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "\r\n", "龘" * 300, "靐齉齾爩鱻" * 60, "a" * 500, "1" * 200 + ".5%", "的" * 100]
    for _ in range(n):
        out.append("".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 14))))
    return out


def test_adversarial_strings_identical(module):
    _assert_same(module, _adversarial(3000, seed=2104))


def test_dictionary_weights_are_jieba_doubles_bit_for_bit(module):
    # route probabilities are sums of log(FREQ or 1) - log(total): the same doubles as jieba.calc
    freq, total = jieba.dt.FREQ, jieba.dt.total
    logtotal = math.log(total)
    for w in freq:  # every key: the trie is rehashed into a smaller table after the build (Trie::Shrink)
        in_freq, positive, weight = module.word_weight(w)
        assert (in_freq, positive) == (True, freq[w] > 0), w
        assert weight == math.log(freq[w] or 1) - logtotal, w
    assert module.word_weight("不是一个词典里的词语啊") == (False, False, -logtotal)


def test_tokenizer_uses_compiled_segmenter_and_ids_match_python_jieba(module):
    codec = PanGuSentencePiece()
    texts = _corpus_sample("builtin:peoples-daily", 20, seed=5) + _adversarial(200, seed=9)
    # a lone surrogate is not encodable by SentencePiece on either path (it is segmented exactly above)
    for text in (t for t in texts if "\ud800" not in t):
        expected = codec.sp.encode(fastseg.python_segment(text))
        assert codec.encode_ids(text) == expected, text[:60]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


_PROBE = (
    "from paddle_pangu.tokenizer import fastseg, PanGuSentencePiece\n"
    "import jieba\n"
    "c = PanGuSentencePiece()\n"
    "{setup}\n"
    "t = '工信处女干事每月经过下属科室都要亲口交代24口交换机等技术性器件的安装工作 C++ 3.5%'\n"
    "assert c.segment(t) == fastseg.python_segment(t)\n"
    "print(fastseg.backend())\n"
)


def test_failed_build_falls_back_to_python_jieba_with_one_line(tmp_path):
    proc = _run(_PROBE.format(setup=""), CXX="false", PANGU_KERNEL_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pangu jieba:")]
    assert len(lines) == 1 and "build failed" in lines[0] and "using python jieba" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_env_forces_python_and_user_dictionary_switches_to_python(module):
    proc = _run(_PROBE.format(setup=""), PANGU_JIEBA="python")
    assert proc.returncode == 0 and proc.stdout.strip() == "python", proc.stderr
    # a word added after start-up is not in the compiled copy: the python path (which knows it) takes over
    proc = _run(_PROBE.format(setup="assert fastseg.backend() == 'compiled'\njieba.add_word('处女干事每月')"))
    assert proc.returncode == 0 and proc.stdout.strip() == "python", proc.stderr


def test_cached_tables_are_the_tables_built_from_jieba_and_a_damaged_cache_is_refused(module, tmp_path,
                                                                                     monkeypatch, capfd):
    """The tables cache (a worker restores it instead of loading jieba's dictionary) holds exactly the tables
    built from jieba's FREQ and HMM dicts; segmenting from restored tables is python jieba's; a flipped bit,
    a truncated dump or an edge pointing outside the trie is refused, never loaded."""
    import numpy as np

    built = module.dump()
    path = tmp_path / "tables.bin"
    monkeypatch.setattr(fastseg, "tables_cache_path", lambda: path)
    size, total = len(jieba.dt.FREQ), jieba.dt.total
    try:
        fastseg._write_cache(module, size, total)
        assert fastseg._restore_cached(module) == (size, total)
        assert module.dump() == built  # byte for byte: every trie slot, weight, flag, HMM entry
        _assert_same(module, _corpus_sample("builtin:peoples-daily", 10, seed=11) + _adversarial(300, seed=12))
        data = bytearray(path.read_bytes())
        data[-3] ^= 1  # one bit of the last emission probability
        path.write_bytes(bytes(data))
        capfd.readouterr()
        assert fastseg._restore_cached(module) is None
        err = capfd.readouterr().err.splitlines()
        assert len(err) == 1 and "damaged (sha256 mismatch)" in err[0], err
        with pytest.raises(ValueError, match="sizes"):
            module.restore(built[:-8])
        with pytest.raises(ValueError, match="not a _pangu_jieba dump"):
            module.restore(b"\0" * 4096)
        slots, nodes = int.from_bytes(built[8:16], "little"), int.from_bytes(built[16:24], "little")
        # the smallest power-of-two table at most half full (a trie of `nodes` nodes has nodes - 1 edges)
        assert slots // 2 < max(1024, 2 * (nodes - 1)) <= slots, (slots, nodes)
        keys = np.frombuffer(built, np.uint64, slots, 208)  # after the 208-byte header (jieba_exact.cc)
        used = int(np.flatnonzero(keys != np.uint64(2**64 - 1))[0])
        bad = bytearray(built)
        bad[208 + slots * 8 + used * 4: 208 + slots * 8 + used * 4 + 4] = (nodes + 5).to_bytes(4, "little")
        with pytest.raises(ValueError, match="outside the trie"):
            module.restore(bytes(bad))
    finally:
        module.restore(built)
    assert module.dump() == built


def test_a_fresh_process_segments_from_the_cache_without_loading_jieba(module):
    """What a data worker does: the tokenizer restores the cached tables (jieba's dictionary never loaded: ~1 s
    saved per process) and its token ids are python jieba's + SentencePiece's."""
    import json

    fastseg._write_cache(module, len(jieba.dt.FREQ), jieba.dt.total)  # as the first process of a machine does
    texts = _corpus_sample("builtin:peoples-daily", 5, seed=21) + _adversarial(100, seed=22)
    texts = [t for t in texts if "\ud800" not in t]  # not encodable by SentencePiece on either path
    code = ("import json, sys\nfrom paddle_pangu.tokenizer import fastseg, PanGuSentencePiece\n"
            "c = PanGuSentencePiece()\nids = [c.encode_ids(t) for t in json.loads(sys.stdin.read())]\n"
            "jb = sys.modules.get('jieba')\n"
            "print(json.dumps({'ids': ids, 'jieba_loaded': bool(jb and jb.dt.initialized), "
            "'cached': fastseg._STATE['dict'][0] is None, 'backend': fastseg.backend()}))")
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["backend"], got["cached"], got["jieba_loaded"]) == ("compiled", True, False)
    codec = PanGuSentencePiece()
    assert got["ids"] == [codec.sp.encode(fastseg.python_segment(t)) for t in texts]
