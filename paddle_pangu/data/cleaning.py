"""Stage 2: the paper's rule-based cleaning (REF "Data pipeline": PanGu-alpha section 3).

Per document, in this order:
  1. normalise: traditional -> simplified (OpenCC t2s), full-width digits and
     Latin letters -> ASCII, special symbols removed (control / format /
     private-use / unassigned characters and "other symbols" such as emoji
     and bullets, except a keep list like ○ ℃), runs of spaces collapsed;
  2. paragraph level: navigation lines (short lines with navigation keywords
     or several "|" / ">" separators), advertisement lines (short lines with
     ad keywords) and repeated paragraphs are removed;
  3. document level drops, first failing rule wins: empty, title only, too
     short (< min_chars, REF 150), Chinese ratio below min_chinese_ratio (REF
     60%), too many advertisement keyword hits, more than `sensitive_threshold`
     hits from the sensitive-word list (REF "more than 3").

Every rule is a field of `CleaningConfig`; every drop and modification is
counted in a `StageStats`. `Cleaner` is picklable (its regexes are built on
first use) so worker processes can run it.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..kernels.native_build import cache_root
from ..io.json_cache import cached_json
from .stats import Document, StageStats

DEFAULT_NAV_KEYWORDS = (
    "首页", "上一页", "下一页", "上一篇", "下一篇", "返回顶部", "返回首页", "网站地图", "联系我们",
    "关于我们", "版权所有", "版权声明", "Copyright", "ICP备", "设为首页", "加入收藏", "当前位置", "网站导航",
    "您的位置", "快捷导航", "友情链接", "免责声明", "用户登录", "免费注册", "登录注册",
)
DEFAULT_AD_KEYWORDS = (
    "点击进入", "点击查看", "点击下载", "扫码关注", "扫一扫", "关注公众号", "微信公众号", "免费领取",
    "限时优惠", "立即购买", "优惠券", "加微信", "咨询热线", "广告位", "广告招商", "立即抢购", "包邮", "代理加盟",
)
# The paper's list is not public; this is a small stand-in (gambling, porn,
# fraud spam). Pass your own with `sensitive_words_file`.
DEFAULT_SENSITIVE_WORDS = (
    "博彩", "赌博网站", "网上赌场", "六合彩", "时时彩", "百家乐", "老虎机", "色情", "裸聊", "约炮",
    "一夜情", "成人影片", "代开发票", "办证刻章", "迷药", "冰毒", "私服外挂", "刷单", "高利贷", "套现",
)
SPECIAL_CATEGORIES = ("Cc", "Cf", "Co", "Cs", "Cn", "So")
KEEP_SYMBOLS = "○℃°№§\n\t"
NAV_SEPARATORS = "|｜>»›"
SENTENCE_END = "。！？!?….；;"
CLAUSE_PUNCT = SENTENCE_END + "，,、：:"
TITLE_MAX_CHARS = 64


@dataclasses.dataclass
class CleaningConfig:
    """Every cleaning rule, configurable (defaults follow the paper where it gives a number).

    Attributes:
        min_chinese_ratio: drop when Chinese characters / counted characters is
            below this (REF 0.6).
        ratio_ignore_punctuation: leave punctuation out of the ratio's
            denominator (digits and Latin letters still count against it), so
            ordinary Chinese punctuation does not push news text under 60%.
        min_chars: drop when fewer non-whitespace characters remain (REF 150).
        drop_title_only: drop single-paragraph documents of at most 64
            characters without any sentence or clause punctuation (REF "only a
            title"; most such documents are also under min_chars).
        t2s: convert traditional to simplified with OpenCC.
        t2s_min_changed: ...but only when at least this share of the Chinese
            characters changes (a traditional document changes 10-30%; a
            simplified one with a stray 乾 or 藉 far under 1%).
        fullwidth_to_ascii: map full-width digits and Latin letters to ASCII
            (full-width punctuation such as ，。（） is kept).
        remove_special_symbols: strip characters of `special_categories`
            except those in `keep_symbols`.
        dedup_paragraphs: remove repeats of a paragraph within a document.
        min_dup_paragraph_chars: shorter paragraphs may repeat.
        nav_keywords / nav_max_line_chars: a line at most this long, not ending
            like a sentence, holding a navigation keyword (or >= 3 separators
            |>») is removed.
        ad_keywords / ad_max_line_chars: same for advertisement lines;
            ad_doc_threshold: drop the document when ad-keyword hits exceed it.
        sensitive_words / sensitive_threshold: drop when hits exceed the
            threshold (REF "more than 3").
    """

    min_chinese_ratio: float = 0.6
    ratio_ignore_punctuation: bool = True
    min_chars: int = 150
    drop_title_only: bool = True
    t2s: bool = True
    t2s_min_changed: float = 0.02
    fullwidth_to_ascii: bool = True
    remove_special_symbols: bool = True
    special_categories: tuple[str, ...] = SPECIAL_CATEGORIES
    keep_symbols: str = KEEP_SYMBOLS
    dedup_paragraphs: bool = True
    min_dup_paragraph_chars: int = 5
    nav_keywords: tuple[str, ...] = DEFAULT_NAV_KEYWORDS
    nav_max_line_chars: int = 60
    ad_keywords: tuple[str, ...] = DEFAULT_AD_KEYWORDS
    ad_max_line_chars: int = 100
    ad_doc_threshold: int = 3
    sensitive_words: tuple[str, ...] = DEFAULT_SENSITIVE_WORDS
    sensitive_threshold: int = 3

    def validate(self) -> None:
        if not 0.0 <= self.min_chinese_ratio <= 1.0:
            raise ValueError(f"CleaningConfig.min_chinese_ratio={self.min_chinese_ratio}: expected a value in [0, 1]")
        for name in ("min_chars", "nav_max_line_chars", "ad_max_line_chars", "ad_doc_threshold", "sensitive_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"CleaningConfig.{name}={getattr(self, name)}: must be >= 0")
        bad = [c for c in self.special_categories if len(c) != 2]
        if bad:
            raise ValueError(f"CleaningConfig.special_categories: {bad} are not Unicode categories like 'So'")


def load_word_list(path: str | Path) -> tuple[str, ...]:
    """One word per line; blank lines and lines starting with '#' are ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"word list {str(path)!r}: no such file")
    words = [w.strip() for w in p.read_text(encoding="utf-8").splitlines()]
    words = tuple(w for w in words if w and not w.startswith("#"))
    if not words:
        raise ValueError(f"word list {str(path)!r} is empty: expected one word per line")
    return words


def _compute_category_runs() -> tuple[tuple[str, int, int], ...]:
    """One pass of `unicodedata.category` over every code point (0.25-1.3 s)."""
    runs: list = []
    cats = map(unicodedata.category, map(chr, range(sys.maxunicode + 1)))
    start = 0
    for cat, group in itertools.groupby(cats):
        n = sum(1 for _ in group)
        runs.append((cat, start, start + n - 1))
        start += n
    return tuple(runs)


def _category_runs_cache() -> Path:
    """The cache file of the runs, keyed by this Python's Unicode database version (beside the compiled
    kernels: `$PANGU_KERNEL_CACHE`, default ~/.cache/paddle_pangu/kernels)."""
    return cache_root("kernels") / f"unicode_categories_{unicodedata.unidata_version}_{sys.maxunicode:x}.json"


def _runs_are_valid(runs) -> bool:
    """Runs that tile U+0000..sys.maxunicode in order, with this interpreter's category at both ends of each
    (8 k lookups: a cache from another Unicode database or a damaged one fails)."""
    expect = 0
    for cat, first, last in runs:
        if first != expect or last < first or unicodedata.category(chr(first)) != cat or \
                unicodedata.category(chr(last)) != cat:
            return False
        expect = last + 1
    return expect == sys.maxunicode + 1


@lru_cache(maxsize=1)
def _category_runs() -> tuple[tuple[str, int, int], ...]:
    """(category, first, last) runs of equal Unicode category over every code point, shared by every
    `_category_ranges` call (each used to make its own pass: three of them were most of a Ray worker's
    first-task start-up). Read from a JSON cache written by the first process (sha256 and the runs checked;
    a cache that fails is computed and written again: temporary name + rename), since the pass itself was
    still the largest part of a scan worker's warm-up (docs/DATA.md, Ray timeline)."""
    def decode(rows):
        runs = tuple((str(c), int(a), int(b)) for c, a, b in rows)
        if not _runs_are_valid(runs):
            raise ValueError("runs from another Unicode database")
        return runs

    return cached_json(_category_runs_cache(), _compute_category_runs, decode)


@lru_cache(maxsize=8)
def _category_ranges(categories: tuple[str, ...], keep: str) -> list[tuple[int, int]]:
    """Inclusive code point ranges of every character in `categories`, minus `keep`."""
    ranges: list[list[int]] = []
    keep_cps = sorted(ord(c) for c in set(keep))
    for cat, first, last in _category_runs():
        if cat not in categories:
            continue
        cuts = [cp for cp in keep_cps if first <= cp <= last]
        for lo, hi in zip([first] + [c + 1 for c in cuts], [c - 1 for c in cuts] + [last]):
            if lo > hi:
                continue
            if ranges and ranges[-1][1] == lo - 1:
                ranges[-1][1] = hi
            else:
                ranges.append([lo, hi])
    return [(a, b) for a, b in ranges]


def _class(ranges) -> str:
    parts = [re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges]
    return "[" + "".join(parts) + "]"


def _category_class(categories: tuple[str, ...], keep: str) -> str:
    """A regex character class of every code point in `categories`, minus `keep`."""
    return _class(_category_ranges(categories, keep))


@lru_cache(maxsize=8)
def category_regex(categories: tuple[str, ...], keep: str = "") -> re.Pattern:
    """`_category_class` compiled once per process, matching one character at a time.

    Split in two for speed (same characters matched): re compiles the BMP part to a bitmap lookup, but a
    class that also holds supplementary-plane ranges (Cn, Co have hundreds) tests every BMP character
    that is not in the bitmap against each of those ranges in turn. The supplementary class is only tried
    after a one-range check that the character is outside the BMP.
    """
    ranges = _category_ranges(categories, keep)
    bmp = [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]
    astral = [(max(a, 0x10000), b) for a, b in ranges if b > 0xFFFF]
    branches = ([_class(bmp)] if bmp else []) + ([f"(?=[\U00010000-\U0010ffff]){_class(astral)}"] if astral else [])
    return re.compile("|".join(branches) if branches else "(?!)")


PUNCTUATION = ("Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps")
# CJK unified ideographs (+ extension A, compatibility, extensions B-F and 〇): the characters the Chinese
# ratio counts
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F), (0x3007, 0x3007))
_CJK_RE = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _CJK_RANGES) + "]")
_LAST_SPACE = 0x3000  # no code point above U+3000 (ideographic space) is Unicode whitespace (`\s`, isspace)
_SPACE_RUN_RE = re.compile(r"[ \t\u3000\xa0]+")
_FULLWIDTH_ALNUM = {cp: cp - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)) for cp in range(r[0], r[1] + 1)}


def _t2s_changeable(t2s) -> dict | None:
    """{code point: None} of every character that some entry of `t2s`'s dictionaries rewrites (a key
    character where the entry's value - the first alternative, as opencc-python takes it - differs); None
    when an entry changes the length. Built once per Cleaner (`Cleaner._regexes`)."""
    chars: set[str] = set()
    preserving = True

    def walk(node):
        nonlocal preserving
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        for k, v in node[2].items():  # (max_len, min_len, {key: "value [alternatives]"})
            first = v.split(" ")[0]
            if len(first) != len(k):
                preserving = False
            chars.update(a for a, b in zip(k, first) if a != b)

    t2s.convert("")  # loads the dictionaries
    walk(t2s._dict_chain_data)
    return dict.fromkeys(map(ord, chars)) if preserving else None


def _codepoints(text: str) -> np.ndarray:
    """(len(text),) uint32: the code points of `text` (a lone surrogate as its own value, as re sees it)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@lru_cache(maxsize=1)
def _char_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool[code point] tables of what `\\s`, the punctuation class and `_CJK_RE` match, from the ranges those
    regexes are built from (`\\s` by running it over U+0000..U+3000, the last whitespace character), so a
    lookup counts exactly what the regex would (test_table_counts_equal_the_regex_definitions_...); a few ms
    per process (running the three regexes over every code point took ~0.5-1 s per worker)."""

    def ranges_table(ranges) -> np.ndarray:
        table = np.zeros(sys.maxunicode + 1, dtype=bool)
        for a, b in ranges:
            table[a:b + 1] = True
        return table

    space = _keys_table(map(ord, re.findall(r"\s", "".join(map(chr, range(_LAST_SPACE + 1))))))
    return space, ranges_table(_category_ranges(PUNCTUATION, "")), ranges_table(_CJK_RANGES)


def _keys_table(keys) -> np.ndarray:
    table = np.zeros(sys.maxunicode + 1, dtype=bool)
    table[np.fromiter(keys, dtype=np.int64)] = True
    return table


def _char_counts(cp: np.ndarray, ignore_punctuation: bool) -> tuple[int, int, int]:
    """(non-whitespace characters, of those the ones counted by chinese_ratio, Chinese characters among
    those) of the code points `cp`: `re.sub(r"\\s+", "", text)`, then the punctuation removed, then
    `_CJK_RE` counted, as table lookups instead of three new strings and a list per document."""
    space, punctuation, cjk = _char_tables()
    dense = ~space[cp]
    n_chars = int(dense.sum())
    if ignore_punctuation:
        dense &= ~punctuation[cp]
    return n_chars, int(dense.sum()), int((dense & cjk[cp]).sum())


def chinese_ratio(text: str, ignore_punctuation: bool = True) -> float:
    """Chinese characters / non-whitespace characters (punctuation optionally not counted)."""
    _, dense, cjk = _char_counts(_codepoints(text), ignore_punctuation)
    return cjk / dense if dense else 0.0


def _looks_like_title(line: str) -> bool:
    """Short and without any sentence or clause punctuation (REF "only a title")."""
    return len(line) <= TITLE_MAX_CHARS and not any(p in line for p in CLAUSE_PUNCT)


def _keyword_regex(words: tuple[str, ...]) -> re.Pattern | None:
    if not words:
        return None
    return re.compile("|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)))


class Cleaner:
    """Applies `CleaningConfig` to documents; counts into a `StageStats`."""

    def __init__(self, cfg: CleaningConfig | None = None):
        self.cfg = cfg or CleaningConfig()
        self.cfg.validate()
        self._compiled = None

    def __getstate__(self):
        return {"cfg": self.cfg, "_compiled": None}

    def _regexes(self):
        if self._compiled is None:
            c = self.cfg
            special = category_regex(tuple(c.special_categories), c.keep_symbols) if c.remove_special_symbols else None
            t2s = None
            if c.t2s:
                import opencc  # opencc-python-reimplemented

                t2s = opencc.OpenCC("t2s")
            _char_tables()  # built here, with the regexes: start-up, not the first document's cost
            changeable = _t2s_changeable(t2s) if t2s is not None else None
            self._compiled = {
                "special": special, "t2s": t2s,
                "t2s_changeable": None if changeable is None else _keys_table(changeable),
                "fullwidth": _keys_table(_FULLWIDTH_ALNUM),
                "nav": _keyword_regex(tuple(c.nav_keywords)),
                "ad": _keyword_regex(tuple(c.ad_keywords)),
                "sensitive": _keyword_regex(tuple(c.sensitive_words)),
            }
        return self._compiled

    # ---- step 1: character-level normalisation ---------------------------
    def _normalise(self, text: str, stats: StageStats) -> str:
        rx = self._regexes()
        cp = _codepoints(text)
        if rx["t2s"] is not None and self._may_look_traditional(text, cp, rx["t2s_changeable"]):
            converted = rx["t2s"].convert(text)
            if converted != text and self._looks_traditional(text, converted, cp):
                stats.modified["t2s_converted"] += 1
                text = converted
                cp = _codepoints(text)
        if self.cfg.fullwidth_to_ascii:
            fullwidth = rx["fullwidth"][cp]  # [n] bool: Ａ-Ｚ ａ-ｚ ０-９, each 0xFEE0 above its ASCII form
            if fullwidth.any():  # = text.translate(_FULLWIDTH_ALNUM), without a dict lookup per character
                stats.modified["fullwidth_normalised"] += 1
                text = np.where(fullwidth, cp - 0xFEE0, cp).astype(np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
        if rx["special"] is not None:
            text, n = rx["special"].subn("", text)
            if n:
                stats.modified["special_symbols_removed"] += 1
        return _SPACE_RUN_RE.sub(" ", text)

    def _may_look_traditional(self, text: str, cp: np.ndarray, changeable: np.ndarray | None) -> bool:
        """False only when OpenCC's conversion could not pass `_looks_traditional`, so skipping it changes
        nothing (most simplified documents: 4 of 2,757 People's Daily articles need the OpenCC call).

        A character changes only inside a dictionary match, where the key's character differs from the
        value's: with length-preserving dictionaries, changed <= the count of such characters in `text`.
        """
        if changeable is None:  # a dictionary entry changes the length: always convert
            return True
        possible = int(changeable[cp].sum())  # `cp` = text's code points, `changeable` a table of them
        return possible >= self._t2s_needed(cp)

    def _looks_traditional(self, text: str, converted: str, cp: np.ndarray) -> bool:
        """Convert only documents written in traditional characters: OpenCC also rewrites
        a few characters that are valid in simplified text (乾隆 -> 干隆)."""
        if len(converted) != len(text):
            return True
        return sum(a != b for a, b in zip(text, converted)) >= self._t2s_needed(cp)

    def _t2s_needed(self, cp: np.ndarray) -> float:
        """The 2% rule: changed characters needed for a conversion, t2s_min_changed x the Chinese characters
        of the text whose code points are `cp` (at least 1)."""
        return self.cfg.t2s_min_changed * max(1, int(_char_tables()[2][cp].sum()))

    # ---- step 2: paragraph-level removals --------------------------------
    def _is_nav(self, line: str) -> bool:
        rx = self._regexes()["nav"]
        if len(line) > self.cfg.nav_max_line_chars or line.endswith(tuple(SENTENCE_END)):
            return False  # navigation bars are short and are not sentences
        return (rx is not None and rx.search(line) is not None) or sum(line.count(s) for s in NAV_SEPARATORS) >= 3

    def _is_ad(self, line: str) -> bool:
        rx = self._regexes()["ad"]
        return rx is not None and len(line) <= self.cfg.ad_max_line_chars and rx.search(line) is not None

    def _paragraphs(self, text: str, stats: StageStats) -> list[str]:
        kept: list[str] = []
        seen: set[str] = set()
        removed = {"nav_lines": 0, "ad_lines": 0, "dup_paragraphs": 0}
        for line in (s.strip() for s in text.split("\n")):
            if not line:
                continue
            if self._is_nav(line):
                removed["nav_lines"] += 1
                continue
            if self._is_ad(line):
                removed["ad_lines"] += 1
                continue
            if self.cfg.dedup_paragraphs and len(line) >= self.cfg.min_dup_paragraph_chars:
                if line in seen:
                    removed["dup_paragraphs"] += 1
                    continue
                seen.add(line)
            kept.append(line)
        for what, n in removed.items():
            if n:
                stats.modified[f"{what}_removed"] += 1
        return kept

    # ---- step 3: document-level drops --------------------------------------
    def drop_reason(self, paragraphs: list[str]) -> str | None:
        """The first rule the (normalised) paragraphs fail, or None to keep."""
        c, rx = self.cfg, self._regexes()
        text = "\n".join(paragraphs)
        n_chars, dense, cjk = _char_counts(_codepoints(text), c.ratio_ignore_punctuation)
        if n_chars == 0:
            return "empty"
        if c.drop_title_only and len(paragraphs) == 1 and _looks_like_title(text):
            return "title_only"
        if n_chars < c.min_chars:
            return "too_short"
        if (cjk / dense if dense else 0.0) < c.min_chinese_ratio:  # chinese_ratio(text, ...)
            return "low_chinese_ratio"
        if rx["ad"] is not None and len(rx["ad"].findall(text)) > c.ad_doc_threshold:
            return "advertisement"
        if rx["sensitive"] is not None and len(rx["sensitive"].findall(text)) > c.sensitive_threshold:
            return "sensitive_words"
        return None

    def clean(self, doc: Document, stats: StageStats) -> Document | None:
        """The cleaned document, or None (the drop reason is counted in `stats`)."""
        stats.count_in(doc)
        paragraphs = self._paragraphs(self._normalise(doc.text, stats), stats)
        reason = self.drop_reason(paragraphs)
        if reason is not None:
            stats.drop(reason)
            return None
        out = dataclasses.replace(doc, text="\n".join(paragraphs))
        stats.count_out(out)
        return out


def clean_chunk(cleaner: Cleaner, docs: list[Document]) -> tuple[list[Document], StageStats]:
    """Worker entry point: clean a list of documents, return survivors and counters."""
    stats = StageStats("clean")
    kept = [d for d in (cleaner.clean(doc, stats) for doc in docs) if d is not None]
    return kept, stats
