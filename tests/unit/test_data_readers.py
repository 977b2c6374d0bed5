"""Readers: formats, document modes, and bad input skipped-and-counted with file:line."""
import gzip
import json

import pytest

from paddle_pangu.data.builtin import _group_articles, read_builtin, split_line_id, strip_tags
from paddle_pangu.data.readers import ReaderConfig, read_documents, read_file
from paddle_pangu.data.stats import IssueLog


def _read(paths, **kw):
    issues = IssueLog()
    docs = list(read_documents(paths, ReaderConfig(**kw), issues))
    return docs, issues


def test_text_doc_modes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("第一段\n第二段\n\n第三段\n\n\n", encoding="utf-8")
    assert [d.text for d in _read([f], doc_mode="line")[0]] == ["第一段", "第二段", "第三段"]
    assert [d.text for d in _read([f], doc_mode="blank")[0]] == ["第一段\n第二段", "第三段"]
    docs, _ = _read([f], doc_mode="file")
    assert len(docs) == 1 and docs[0].text.startswith("第一段\n第二段\n\n第三段")
    assert docs[0].ref == f"{f}:1"


def test_jsonl_nested_field_gzip_and_directory(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    with gzip.open(d / "sub" / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"meta": {"body": "压缩文件里的文档"}}, ensure_ascii=False) + "\n")
    (d / "a.jsonl").write_text(json.dumps({"meta": {"body": "普通文档"}}, ensure_ascii=False) + "\n", encoding="utf-8")
    (d / ".hidden.jsonl").write_text("not read\n", encoding="utf-8")
    docs, issues = _read([d], text_field="meta.body")
    assert [x.text for x in docs] == ["普通文档", "压缩文件里的文档"]
    assert not issues.counts


def test_bad_input_is_skipped_and_counted_with_file_and_line(tmp_path):
    j = tmp_path / "x.jsonl"
    j.write_bytes(
        b'{"text": "ok one"}\n{"text": broken\n{"other": 1}\n' + '{"text": "好"}'.encode() + b"\n"
    )
    t = tmp_path / "y.txt"
    t.write_bytes("第一行\n".encode() + b"\xff\xfe bad bytes\n" + "第三行\n".encode())
    e = tmp_path / "z.txt"
    e.write_bytes(b"")
    g = tmp_path / "w.txt.gz"
    g.write_bytes(gzip.compress("行一\n行二\n".encode() * 200)[:-30])  # truncated gzip
    docs, issues = _read([j, t, e, g])
    texts = [d.text for d in docs]
    assert texts[:4] == ["ok one", "好", "第一行", "第三行"]
    assert issues.counts["malformed_json"] == 1 and issues.examples["malformed_json"][0]["line"] == 2
    assert issues.counts["missing_text_field"] == 1 and issues.examples["missing_text_field"][0]["line"] == 3
    assert issues.counts["undecodable_line"] == 1
    assert issues.examples["undecodable_line"][0] == {"file": str(t), "line": 2, "detail": issues.examples["undecodable_line"][0]["detail"]}
    assert issues.counts["empty_file"] == 1 and issues.examples["empty_file"][0]["file"] == str(e)
    assert issues.counts["unreadable_file"] == 1 and issues.examples["unreadable_file"][0]["file"] == str(g)


def test_missing_path_and_bad_config_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        _read([tmp_path / "nope"])
    with pytest.raises(ValueError, match="doc_mode"):
        _read([tmp_path], doc_mode="paragraph")


def test_strip_tags_and_article_grouping():
    assert strip_tags("迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w") == "迈向充满希望的新世纪——"
    lines = ["标题一", "副标题", "正文第一段。", "（新华社记者摄）", "正文第二段。", "标题二", "作者", "正文。"]
    groups = [g for _, g in _group_articles(iter(enumerate(lines, 1)))]
    assert groups == [lines[:5], lines[5:]]
    with_ids = ["19980101-01-001-001/m  标题/n", "19980101-01-001-002/m  正文/n  。/w", "19980101-01-002-001/m  另/r  一篇/m"]
    items = [(i, (lambda a, r: (a, strip_tags(r)))(*split_line_id(x))) for i, x in enumerate(with_ids, 1)]
    assert [g for _, g in _group_articles(iter(items))] == [["标题", "正文。"], ["另一篇"]]


def test_builtin_peoples_daily_articles_and_reviews():
    issues = IssueLog()
    docs = list(read_builtin("builtin:peoples-daily", issues))
    assert 2000 < len(docs) < 5000  # ~19.5k paragraph lines grouped into articles
    assert all("/" not in d.text[:50] or "/" in strip_tags(d.text[:50]) for d in docs[:50])
    long_docs = sum(len(d.text) >= 150 for d in docs)
    assert long_docs / len(docs) > 0.9
    assert docs[1].text.startswith("在十五大精神指引下胜利前进") and docs[1].text.count("\n") >= 5
    assert "  " not in docs[1].text and "/n" not in docs[1].text
    reviews = list(read_builtin("builtin:reviews", issues))
    assert len(reviews) > 30000 and {d.source for d in reviews} == {"reviews-pos", "reviews-neg"}
    with pytest.raises(ValueError, match="unknown builtin"):
        read_builtin("builtin:nope", issues)


def test_byte_ranges_end_at_line_ends_and_read_the_whole_file_in_order(tmp_path):
    """Every cut size, including one byte and ones that fall inside a multi-byte character: the ranges, each
    numbered from 1 + the newlines counted in the ranges before it, read one after another give the
    documents (text and file:line ref) and issues of the whole file; a range whose first line was never
    counted is refused, not read from line 1."""
    import dataclasses

    from paddle_pangu.data.readers import byte_ranges, count_newlines, parse_range_spec

    f = tmp_path / "x.jsonl"
    lines = [json.dumps({"text": "文本" * (i % 7 + 1) + str(i)}, ensure_ascii=False) for i in range(40)]
    lines[5], lines[17] = '{"text": broken', ""  # a malformed line and an empty one keep their numbers
    f.write_text("\n".join(lines) + "\n" + '{"text": "no newline at the end"}', encoding="utf-8")
    whole, whole_issues = _read([f])
    for target in (1, 7, 64, 333, f.stat().st_size):
        ranges = byte_ranges(f, target)
        assert ranges[0].start == 0 and ranges[-1].end == f.stat().st_size
        assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
        data = f.read_bytes()
        assert all(data[r.end - 1:r.end] == b"\n" for r in ranges[:-1])
        docs, issues, newlines = [], IssueLog(), 0
        for r in ranges:
            path, span = parse_range_spec(r.spec(f))
            assert (path, span) == (f, r) and span.first_line is None
            docs += list(read_file(path, ReaderConfig(), issues, span=dataclasses.replace(span, first_line=1 + newlines)))
            newlines += count_newlines(path, r.start, r.end, block=5)  # blocks smaller than a line
        assert newlines == data.count(b"\n")
        assert [(d.text, d.ref) for d in docs] == [(d.text, d.ref) for d in whole], target
        assert issues.to_dict() == whole_issues.to_dict(), target
    with pytest.raises(ValueError, match="before its first line was counted"):
        list(read_file(f, ReaderConfig(), IssueLog(), span=ranges[-1]))
