"""Cleaning rules of the paper: each rule drops/modifies and is counted by reason."""
import pytest

from paddle_pangu.data.builtin import read_builtin
from paddle_pangu.data.cleaning import Cleaner, CleaningConfig, _codepoints, chinese_ratio, load_word_list
from paddle_pangu.data.stats import Document, IssueLog, StageStats

BODY = "我国经济在改革开放以来保持了长期稳定的增长，人民生活水平不断提高，社会事业全面进步。" * 4  # ~170 chars


def _clean(text, **cfg):
    stats = StageStats("clean")
    out = Cleaner(CleaningConfig(**cfg)).clean(Document(text, "t", "t:1"), stats)
    return out, stats


def test_keeps_good_document_and_counts_in_out():
    out, stats = _clean(BODY)
    assert out is not None and out.text == BODY
    assert (stats.docs_in, stats.docs_out, dict(stats.dropped)) == (1, 1, {})


@pytest.mark.parametrize(
    "text, reason",
    [
        ("短文本。", "too_short"),
        ("只有一个标题没有句子", "title_only"),
        ("", "empty"),
        ("This article is mostly English text with a few 汉字 inside. " * 5, "low_chinese_ratio"),
        (BODY + "博彩" * 4, "sensitive_words"),
        (BODY + "优惠券，包邮，加微信，限时优惠。" + BODY, "advertisement"),
    ],
)
def test_drop_reasons(text, reason):
    out, stats = _clean(text)
    assert out is None and dict(stats.dropped) == {reason: 1}


def test_sensitive_threshold_is_strictly_more_than():
    assert _clean(BODY + "博彩" * 3)[0] is not None  # REF: more than 3 hits
    assert _clean(BODY + "博彩" * 3, sensitive_threshold=2)[0] is None


def test_chinese_ratio_and_punctuation():
    assert chinese_ratio("中文，中文。") == 1.0
    assert chinese_ratio("中文，中文。", ignore_punctuation=False) == pytest.approx(4 / 6)
    assert chinese_ratio("中文12") == 0.5


def test_normalisation_t2s_fullwidth_special_symbols():
    trad = "我國經濟在改革開放以來保持了長期穩定的增長，人民生活水準不斷提高，社會事業全面進步。" * 4
    out, stats = _clean(trad)
    assert out.text == "我国经济在改革开放以来保持了长期稳定的增长，人民生活水准不断提高，社会事业全面进步。" * 4
    assert stats.modified["t2s_converted"] == 1
    qianlong = "乾隆年间的故事。" + BODY  # simplified text with a character OpenCC would rewrite
    assert _clean(qianlong)[0].text == qianlong
    text = "汉字😀\u200b，１９９８年ＡＢ，一九九○年●" + BODY
    out, stats = _clean(text)
    assert out.text == "汉字，1998年AB，一九九○年" + BODY
    assert {"fullwidth_normalised", "special_symbols_removed"} <= set(stats.modified)
    out, _ = _clean(trad + text, t2s=False, fullwidth_to_ascii=False, remove_special_symbols=False)
    assert out.text == trad + text


def test_paragraph_rules_nav_ads_duplicates():
    text = "\n".join(["首页 | 新闻 | 体育 | 财经", BODY, "扫码关注我们的微信公众号", BODY, "上一篇 下一篇"])
    out, stats = _clean(text)
    assert out.text == BODY
    assert {"nav_lines_removed", "ad_lines_removed", "dup_paragraphs_removed"} <= set(stats.modified)
    out, _ = _clean(text, nav_keywords=(), ad_keywords=(), dedup_paragraphs=False, nav_max_line_chars=0)
    assert out.text.count(BODY) == 2


def test_config_errors_and_word_list(tmp_path):
    with pytest.raises(ValueError, match="min_chinese_ratio"):
        Cleaner(CleaningConfig(min_chinese_ratio=60))
    f = tmp_path / "words.txt"
    f.write_text("# comment\n坏词\n\n另一个\n", encoding="utf-8")
    assert load_word_list(f) == ("坏词", "另一个")
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_word_list(tmp_path / "empty.txt")


def test_defaults_keep_most_peoples_daily_articles():
    cleaner, stats = Cleaner(), StageStats("clean")
    docs = list(read_builtin("builtin:peoples-daily", IssueLog()))[:800]
    kept = [d for d in (cleaner.clean(d, stats) for d in docs) if d is not None]
    long_docs = sum(len(d.text) >= 170 for d in docs)
    assert len(kept) >= 0.95 * long_docs  # real news passes the 60% Chinese rule
    assert stats.dropped["low_chinese_ratio"] < 0.02 * len(docs)
    assert stats.docs_in == len(docs) and stats.docs_out == len(kept)


class _AlwaysOpenCC(Cleaner):
    """The rule before the OpenCC pre-check: every document goes through OpenCC."""

    def _may_look_traditional(self, text, cp, changeable):
        return True


def test_opencc_precheck_changes_no_output():
    # reviews hold traditional-character documents (t2s conversions) next to simplified ones, and simplified
    # text with characters OpenCC rewrites (乾, 著...): the pre-check must skip only calls that change nothing
    import random

    docs = list(read_builtin("builtin:reviews", IssueLog()))
    sample = random.Random(24).sample(docs, 1500)
    trad = [d for d in docs if "們" in d.text or "這" in d.text][:150]
    fast, slow = Cleaner(), _AlwaysOpenCC()
    fast_stats, slow_stats = StageStats("clean"), StageStats("clean")
    for doc in sample + trad:
        assert fast.clean(doc, fast_stats) == slow.clean(doc, slow_stats), doc.text[:60]
    assert fast_stats.modified == slow_stats.modified and fast_stats.dropped == slow_stats.dropped
    assert fast_stats.modified["t2s_converted"] >= 50  # the sample exercises the conversion
    # and the pre-check does skip most documents (a check that always says "convert" would pass the above)
    changeable = fast._regexes()["t2s_changeable"]
    skipped = sum(not fast._may_look_traditional(d.text, _codepoints(d.text), changeable) for d in sample)
    assert skipped >= len(sample) // 2


def test_table_counts_equal_the_regex_definitions_on_every_kind_of_character():
    """chinese_ratio and the cleaner's character counts are table lookups (one per code point, built by running
    each regex over every code point); they must count exactly what the regexes count: every Unicode space
    (\\x1c, \\x85, \\u2028, \\u3000 ...), punctuation of every category, CJK incl. extension B and 〇, emoji,
    full-width forms and lone surrogates, in random mixtures."""
    import random
    import re

    from paddle_pangu.data.cleaning import _CJK_RE, PUNCTUATION, category_regex

    def by_regex(text, ignore_punctuation):  # the definition: strip whitespace (and punctuation), count CJK
        dense = re.sub(r"\s+", "", text)
        if ignore_punctuation:
            dense = category_regex(PUNCTUATION).sub("", dense)
        return len(_CJK_RE.findall(dense)) / len(dense) if dense else 0.0

    pool = [chr(c) for c in [*range(0x00, 0x250), *range(0x2000, 0x2070), *range(0x3000, 0x3040), *range(0x4E00, 0x4E40),
                             *range(0xFF00, 0xFF70), 0x3400, 0x9FFF, 0xF900, 0x20000, 0x2FA1F, 0x1F600, 0xD800, 0xDFFF]]
    rng = random.Random(7)
    texts = ["", " \u3000\n", "，。"] + ["".join(rng.choice(pool) for _ in range(rng.randint(1, 120))) for _ in range(400)]
    for text in texts:
        for ignore in (True, False):
            assert chinese_ratio(text, ignore) == by_regex(text, ignore), (text, ignore)
    # and the tables, built from ranges, hold exactly the code points each regex matches, over all of them
    import sys

    import numpy as np

    from paddle_pangu.data.cleaning import _char_tables

    every = "".join(map(chr, range(sys.maxunicode + 1)))
    for table, regex in zip(_char_tables(), (re.compile(r"\s"), category_regex(PUNCTUATION), _CJK_RE)):
        hits = np.fromiter(map(ord, regex.findall(every)), dtype=np.int64)
        assert np.array_equal(np.flatnonzero(table), hits), regex.pattern[:40]
    from paddle_pangu.data.cleaning import _FULLWIDTH_ALNUM, _SPACE_RUN_RE

    plain = Cleaner(CleaningConfig(t2s=False))  # full-width forms by a code-point table: as str.translate does
    special = plain._regexes()["special"]
    for text in texts:
        expected = _SPACE_RUN_RE.sub(" ", special.sub("", text.translate(_FULLWIDTH_ALNUM)))
        assert plain._normalise(text, StageStats("c")) == expected, text
    cleaner, stats = Cleaner(CleaningConfig(min_chars=1, min_chinese_ratio=0.3, drop_title_only=False)), StageStats("c")
    for text in texts:  # the drop rule that counts characters: empty vs too short vs the ratio, as by regex
        n_chars = len(re.sub(r"\s+", "", text))
        expected = "empty" if n_chars == 0 else ("low_chinese_ratio" if by_regex(text, True) < 0.3 else None)
        got = cleaner.drop_reason([text])
        assert got == expected or (expected is None and got in ("advertisement", "sensitive_words")), (text, got)


def test_split_category_regex_matches_the_same_characters_as_one_class():
    # category_regex splits its class in a BMP bitmap and a guarded supplementary part (speed): every code
    # point must be matched exactly as by the one big class it replaces
    import re
    import sys

    from paddle_pangu.data.cleaning import PUNCTUATION, _category_class, _category_ranges, category_regex

    c = CleaningConfig()
    for cats, keep in [(PUNCTUATION, ""), (PUNCTUATION + ("Sm", "So", "Sk", "Sc"), ""),
                       (tuple(c.special_categories), c.keep_symbols)]:
        # every range edge and its neighbours, the BMP / astral seam, and a stride through all code points
        # (the one big class takes ~50 s over all 1.1M code points)
        edges = {x for a, b in _category_ranges(cats, keep) for x in (a - 1, a, b, b + 1)}
        points = sorted({p for p in edges | {0xFFFF, 0x10000} | set(range(0, sys.maxunicode + 1, 61))
                         if 0 <= p <= sys.maxunicode})
        every = "".join(map(chr, points))
        one_class = re.compile(_category_class(cats, keep))
        assert category_regex(cats, keep).sub("", every) == one_class.sub("", every), cats
        assert category_regex(cats, keep).findall(every) == one_class.findall(every), cats


def test_category_runs_cache_is_the_pass_and_a_bad_cache_is_recomputed(tmp_path, monkeypatch):
    """Workers read the Unicode category runs from a cache instead of a 0.25-1.3 s pass: the cached runs are
    the pass's own, and a cache with a wrong digest, or a right digest over runs this Unicode database does
    not have, is not used (computed and written again)."""
    import hashlib
    import json

    from paddle_pangu.data import cleaning

    monkeypatch.setenv("PANGU_KERNEL_CACHE", str(tmp_path))
    truth = cleaning._compute_category_runs()
    path = cleaning._category_runs_cache()
    try:
        cleaning._category_runs.cache_clear()
        assert cleaning._category_runs() == truth and path.exists()  # computed, then written
        cleaning._category_runs.cache_clear()
        assert cleaning._category_runs() == truth  # read back
        lied = [list(r) for r in truth]
        lied[100][0] = "Zs" if lied[100][0] != "Zs" else "Lu"  # a run of the wrong category...
        body = json.dumps(lied)
        path.write_text(hashlib.sha256(body.encode()).hexdigest() + "\n" + body, encoding="utf-8")  # ...signed
        for text in (path.read_text(encoding="utf-8"), "0" * 64 + "\n" + json.dumps(truth)):
            path.write_text(text, encoding="utf-8")
            cleaning._category_runs.cache_clear()
            assert cleaning._category_runs() == truth
            digest, body = path.read_text(encoding="utf-8").split("\n", 1)
            assert json.loads(body) == [list(r) for r in truth]  # rewritten
            assert hashlib.sha256(body.encode()).hexdigest() == digest
    finally:
        cleaning._category_runs.cache_clear()
