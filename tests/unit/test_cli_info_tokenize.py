"""`pangu info` and `pangu tokenize`, run as `python -m paddle_pangu.cli` and through `cli.main`."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import unicodedata

import pytest

from paddle_pangu import cli
from paddle_pangu.tokenizer import PanGuSentencePiece, find_vocab_file

TEXT = "盘古α模型，  支持中文 and English。\n第二行"


@pytest.fixture(scope="module")
def codec() -> PanGuSentencePiece:
    return PanGuSentencePiece()


def pangu(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paddle_pangu.cli", *args], input=stdin, capture_output=True, timeout=300
    )


def test_info_json_subprocess():
    proc = pangu("info", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    assert info["packages"]["paddle"] == importlib.metadata.version("paddlepaddle")
    assert info["packages"]["paddlenlp"] == importlib.metadata.version("paddlenlp")
    assert info["packages"]["sentencepiece"] == importlib.metadata.version("sentencepiece")
    assert info["packages"]["jieba"] == importlib.metadata.version("jieba")
    assert info["packages"]["paddle_pangu"] is not None
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert "cpu" in info["devices"]["available"]
    assert isinstance(info["devices"]["cuda_device_count"], int) and info["devices"]["cpu_count"] >= 1
    assert info["tokenizer"] == {"vocab_file": str(find_vocab_file()), "vocab_size": 40000, "error": None}


def test_info_text_via_main(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert str(find_vocab_file()) in out and "40000 pieces" in out
    for name in ("paddle", "paddlenlp", "paddle_pangu", "sentencepiece", "jieba", "devices"):
        assert name in out


def test_info_reports_missing_vocab(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "vocab.model"
    assert cli.main(["info", "--vocab", str(missing)]) == 1
    out = capsys.readouterr().out
    assert "NOT FOUND" in out and str(missing) in out and "pip install pcl-pangu" in out


def test_tokenize_subprocess_json_and_ids_only(codec):
    proc = pangu("tokenize", "--json", TEXT)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    ids = codec.encode_ids(TEXT)
    assert out["ids"] == ids and out["text"] == TEXT
    assert out["tokens"] == [codec.id_to_piece(i) for i in ids]
    proc = pangu("tokenize", "--ids-only", TEXT)
    assert proc.stdout.decode().split() == [str(i) for i in ids]
    assert b"prefix dict" not in proc.stderr


def test_tokenize_table_via_main(capsys, codec):
    assert cli.main(["tokenize", "今天天气不错"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = codec.encode_ids("今天天气不错")
    assert lines[0].startswith(f"{len(ids)} tokens")
    rows = [line.split() for line in lines[2:]]
    assert [int(r[1]) for r in rows] == ids
    assert [r[2] for r in rows] == [codec.id_to_piece(i) for i in ids]


def test_decode_round_trip_via_main(capsys, codec):
    ids = codec.encode_ids(TEXT)
    assert cli.main(["tokenize", "--decode", " ".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == unicodedata.normalize("NFKC", TEXT) + "\n"
    assert cli.main(["tokenize", "--json", "--decode", ",".join(map(str, ids))]) == 0
    assert json.loads(capsys.readouterr().out) == {"ids": ids, "text": codec.decode_ids(ids)}


def test_tokenize_file_and_per_line(tmp_path, capsys, codec):
    doc = tmp_path / "doc.txt"
    lines = ["第一篇文档。", "second document 第二篇", "第三篇  有两个空格"]
    doc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli.main(["tokenize", "--ids-only", "--file", str(doc)]) == 0
    whole = [int(x) for x in capsys.readouterr().out.split()]
    assert whole == codec.encode_ids("\n".join(lines) + "\n")
    assert cli.main(["tokenize", "--file", str(doc), "--per-line", "--json"]) == 0
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == lines
    assert [r["ids"] for r in rows] == [codec.encode_ids(t) for t in lines]


def test_tokenize_stdin(codec):
    proc = pangu("tokenize", "--ids-only", "-", stdin=TEXT.encode("utf-8"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert [int(x) for x in proc.stdout.split()] == codec.encode_ids(TEXT)


def test_tokenize_non_utf8_file_names_file_and_offset(tmp_path):
    bad = tmp_path / "gbk.txt"
    prefix = "第一行\n".encode("utf-8")
    bad.write_bytes(prefix + "第二行".encode("gbk"))
    proc = pangu("tokenize", "--file", str(bad))
    assert proc.returncode == 2  # the one CLI convention: user errors exit 2
    err = proc.stderr.decode()
    assert str(bad) in err and f"byte offset {len(prefix)}" in err and "line 2" in err
    assert "Traceback" not in err


def test_tokenize_usage_errors(capsys, tmp_path):
    assert cli.main(["tokenize"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert cli.main(["tokenize", "--decode", "1 two"]) == 2
    assert "--decode expects integers" in capsys.readouterr().err
    assert cli.main(["tokenize", "--decode", "40000"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err
    assert cli.main(["tokenize", "--file", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["tokenize", "--vocab", str(tmp_path), "x"]) == 2
    assert str(tmp_path / "vocab.model") in capsys.readouterr().err
