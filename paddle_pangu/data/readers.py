"""Stage 1: stream documents out of plain text, JSONL and gzip files.

Nothing is loaded whole: files are read line by line in binary and decoded
per line, so one undecodable line is skipped and counted (with file and line)
instead of killing the run. Malformed JSON lines, missing text fields and
empty files are handled the same way: skipped, counted in the `IssueLog`.

Document boundaries for plain text (`doc_mode`):
  * "line"  - every non-empty line is a document;
  * "blank" - blocks separated by blank lines (lines inside become paragraphs);
  * "file"  - the whole file is one document.
JSONL: one document per line, text under `text_field` (dotted paths such as
"meta.body" reach into nested objects).
"""
from __future__ import annotations

import codecs
import dataclasses
import gzip
import json
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import DataError
from .stats import Document, IssueLog

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
DOC_MODES = ("line", "blank", "file")
FORMATS = ("auto", "text", "jsonl")


@dataclasses.dataclass
class ReaderConfig:
    """How to turn files into documents.

    Attributes:
        format: "auto" (by suffix, after stripping ".gz"), "text" or "jsonl".
        doc_mode: document boundary for plain text, one of DOC_MODES.
        text_field: JSONL field holding the text (dotted path allowed).
        encoding: text encoding of the input files (`gb18030` reads GBK / GB2312 Chinese legacy files;
            a line that does not decode is skipped and counted, and prepare-data warns above 1%).
    """

    format: str = "auto"
    doc_mode: str = "line"
    text_field: str = "text"
    encoding: str = "utf-8"

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"ReaderConfig.format={self.format!r}: expected one of {FORMATS}")
        if self.doc_mode not in DOC_MODES:
            raise DataError(f"ReaderConfig.doc_mode={self.doc_mode!r}: expected one of {DOC_MODES}")
        try:
            codecs.lookup(self.encoding)
        except (LookupError, TypeError):
            raise DataError(f"--encoding {self.encoding!r}: not a text encoding Python knows "
                            "(e.g. utf-8, gb18030 for Chinese legacy files, big5, latin-1)") from None


class ProgressTracker:
    """Receives the number of raw bytes consumed, for a byte-based progress bar."""

    def __init__(self, callback: Callable[[int], None] | None = None):
        self.callback = callback

    def __call__(self, nbytes: int) -> None:
        if self.callback is not None:
            self.callback(nbytes)


def list_input_files(path: str | os.PathLike) -> list[Path]:
    """A file, or every regular file below a directory (sorted, hidden files skipped)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(
            f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
    raise FileNotFoundError(f"input {str(path)!r}: no such file or directory")


def _file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "jsonl" if name.endswith(JSONL_SUFFIXES) else "text"


def _raw_lines(path: Path, issues: IssueLog, progress: ProgressTracker,
               span: ByteRange | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a plain or gzip file (or of the byte range `span` of a plain one: its lines,
    numbered from `span.first_line`); a corrupt gzip stops that file, counted.

    Progress is reported in on-disk bytes (compressed bytes for .gz) so it matches the ETA total.
    """
    if span is not None and span.first_line is None:
        raise ValueError(f"{path}: byte range {span.start}-{span.end} read before its first line was counted")
    lineno = 0 if span is None else span.first_line - 1
    with open(path, "rb") as raw:
        fh = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
        seen = 0
        if span is not None:
            raw.seek(span.start)
            seen = span.start
            fh = _lines_until(raw, span.end)
        try:
            for lineno, line in enumerate(fh, start=lineno + 1):
                pos = raw.tell()
                progress(pos - seen)
                seen = pos
                yield lineno, line
        except (EOFError, OSError, zlib.error) as exc:  # truncated / not gzip / unreadable
            issues.add("unreadable_file", str(path), lineno + 1, f"{type(exc).__name__}: {exc}")
            # said where the user looks, not only in stats.txt (issue 29): the rest of the file is lost
            print(f"pangu prepare-data: warning: {path}: unreadable after line {lineno} ({type(exc).__name__}: "
                  f"{exc}); the rest of this file was skipped", file=sys.stderr, flush=True)
            return
    if lineno == 0 and span is None:
        issues.add("empty_file", str(path), None, "no lines")


def _lines_until(raw, end: int) -> Iterator[bytes]:
    """The lines of `raw` from its position up to byte `end` (a range always ends at a line end)."""
    while raw.tell() < end:
        line = raw.readline()
        if not line:
            return
        yield line


@dataclasses.dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of a plain input file, cut at line ends; its first line is line `first_line` (None
    until counted: `count_newlines` over the ranges before it; the range's spec does not hold it)."""

    start: int
    end: int
    first_line: int | None = None

    def spec(self, path) -> str:
        return f"{path}#bytes={self.start}-{self.end}"


_RANGE_SPEC = re.compile(r"^(.*)#bytes=(\d+)-(\d+)$")


def parse_range_spec(spec: str) -> tuple[Path, ByteRange | None]:
    """(path, range) of a shard spec written by `ByteRange.spec` (its first line not yet known), or
    (path, None) for a whole file."""
    m = _RANGE_SPEC.match(spec)
    if m is None or Path(spec).exists():
        return Path(spec), None
    return Path(m.group(1)), ByteRange(int(m.group(2)), int(m.group(3)))


def splittable(path: Path, cfg: ReaderConfig) -> bool:
    """Whether documents never span lines (JSONL, or text with one document per line) in an uncompressed file."""
    return not path.name.endswith(".gz") and (_file_format(path, cfg.format) == "jsonl" or cfg.doc_mode == "line")


def byte_ranges(path: Path, target_bytes: int) -> list[ByteRange]:
    """`path` cut into ranges of about `target_bytes`, each ending at a line end (so a range holds whole
    documents): a seek and one line read per cut, whatever the file size. The ranges' first line numbers are
    not counted here: that is a pass over the data, which the Ray engine runs as tasks beside the scan
    (`count_newlines`), not on the driver before any work starts."""
    size = path.stat().st_size
    out: list[ByteRange] = []
    start = 0
    with open(path, "rb") as fh:
        while start < size:
            end = size
            if start + target_bytes < size:
                fh.seek(start + target_bytes - 1)
                end = min(size, start + target_bytes - 1 + len(fh.readline()))  # to the end of that line
            out.append(ByteRange(start, end))
            start = end
    return out


def count_newlines(path: Path, start: int, end: int, block: int = 1 << 24) -> int:
    """The number of b"\\n" in bytes [start, end) of `path`, `block` bytes at a time (memory: one block). For a
    range that ends at a line end this is its number of lines, so a range's first line is 1 + the counts of
    the ranges before it."""
    newlines = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(block, left))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            left -= len(chunk)
    return newlines


def _decoded_lines(path: Path, cfg: ReaderConfig, issues: IssueLog, progress: ProgressTracker,
                   span: ByteRange | None = None) -> Iterator[tuple[int, str]]:
    for lineno, raw in _raw_lines(path, issues, progress, span):
        try:
            yield lineno, raw.decode(cfg.encoding).rstrip("\r\n")
        except UnicodeDecodeError as exc:
            issues.add("undecodable_line", str(path), lineno, str(exc))


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate in `text` (only a JSON escape can put one there), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _get_field(obj, dotted: str):
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _read_jsonl(path: Path, cfg: ReaderConfig, issues: IssueLog, progress: ProgressTracker,
                span: ByteRange | None = None) -> Iterator[Document]:
    for lineno, line in _decoded_lines(path, cfg, issues, progress, span):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.add("malformed_json", str(path), lineno, str(exc))
            continue
        text = _get_field(obj, cfg.text_field)
        if not isinstance(text, str):
            issues.add("missing_text_field", str(path), lineno, f"no string field {cfg.text_field!r}")
            continue
        bad = lone_surrogate(text)
        if bad is not None:  # a JSON escape such as "\ud800": not Unicode text, as an undecodable line is not
            issues.add("lone_surrogate", str(path), lineno, f"U+{ord(text[bad]):04X} at character {bad} of "
                       f"{cfg.text_field!r}: not encodable as UTF-8")
            continue
        yield Document(text=text, source=path.name, ref=f"{path}:{lineno}")


def _read_text(path: Path, cfg: ReaderConfig, issues: IssueLog, progress: ProgressTracker,
               span: ByteRange | None = None) -> Iterator[Document]:
    if span is not None and cfg.doc_mode != "line":
        raise ValueError(f"{path}: a byte range of a --doc-mode {cfg.doc_mode} file (documents span lines)")
    block: list[str] = []
    start = 0
    for lineno, line in _decoded_lines(path, cfg, issues, progress, span):
        if cfg.doc_mode == "line":
            if line.strip():
                yield Document(text=line, source=path.name, ref=f"{path}:{lineno}")
            continue
        if cfg.doc_mode == "blank" and not line.strip():
            if block:
                yield Document(text="\n".join(block), source=path.name, ref=f"{path}:{start}")
            block = []
            continue
        if not block:
            start = lineno
        block.append(line)
    if block and any(s.strip() for s in block):
        yield Document(text="\n".join(block), source=path.name, ref=f"{path}:{start}")


def read_file(path: Path, cfg: ReaderConfig, issues: IssueLog, progress: ProgressTracker | None = None,
              span: ByteRange | None = None) -> Iterator[Document]:
    """Documents of one file (or of its byte range `span`, see `byte_ranges`), in order."""
    progress = progress or ProgressTracker()
    if _file_format(path, cfg.format) == "jsonl":
        yield from _read_jsonl(path, cfg, issues, progress, span)
    else:
        yield from _read_text(path, cfg, issues, progress, span)


def read_documents(
    inputs: Iterable[str | os.PathLike],
    cfg: ReaderConfig | None = None,
    issues: IssueLog | None = None,
    progress: ProgressTracker | None = None,
) -> Iterator[Document]:
    """Stream documents from files/directories (no "builtin:" handling; see builtin.py).

    Raises FileNotFoundError for a path that does not exist: a typo in the
    command line is an error, a bad line inside a file is not.
    """
    cfg = cfg or ReaderConfig()
    cfg.validate()
    issues = issues if issues is not None else IssueLog()
    files = [f for spec in inputs for f in list_input_files(spec)]
    for path in files:
        yield from read_file(path, cfg, issues, progress)


def input_size_bytes(inputs: Iterable[str | os.PathLike]) -> int:
    """Total on-disk size of the inputs (for the progress bar's ETA)."""
    return sum(f.stat().st_size for spec in inputs for f in list_input_files(spec))
