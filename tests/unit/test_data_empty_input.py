"""Input that yields nothing is an error; undecodable input is named; --encoding gb18030 reads GBK."""
import json
import logging
import os

import pytest

from paddle_pangu.cli import main

TEXT = ["北京是中华人民共和国的首都，也是全国的政治和文化中心。", "上海是中国最大的经济中心城市之一，位于长江入海口。",
        "广州是广东省的省会，历史悠久，是海上丝绸之路的起点。", "深圳是改革开放的前沿城市，科技创新能力很强。"]


def _prepare(tmp_path, inp, *extra):
    out = tmp_path / "out"
    code = main(["prepare-data", "--input", str(inp), "--output", str(out), "--stages", "clean", "--min-chars", "5",
                 "--workers", "1", "--no-progress", *extra])
    return code, out


@pytest.mark.parametrize("kind", ["binary", "latin1", "gbk", "empty"])
def test_input_without_a_decodable_document_exits_non_zero(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.txt"
    data = {"binary": os.urandom(4096).replace(b"\n", b"\xff") + b"\n" + bytes(range(128, 256)) * 8,
            "latin1": "Ça coûte très cher, naïve élève façade\n".encode("latin-1") * 5,
            "gbk": "\n".join(TEXT).encode("gbk"), "empty": b""}[kind]
    path.write_bytes(data)
    code, out = _prepare(tmp_path, path)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    line = [l for l in err.splitlines() if "error:" in l][-1]
    assert "no document survived" in line and str(path) in line and "nothing was written" in line
    if kind == "empty":
        assert "empty_file 1" in line
    elif kind == "latin1":  # Latin-1 bytes are invalid UTF-8 too
        assert "undecodable_line 5" in line and "--encoding gb18030" in line
    else:
        assert "undecodable_line" in line and "--encoding gb18030" in line


def test_gb18030_encoding_reads_gbk_files(tmp_path, capsys):
    path = tmp_path / "gbk.txt"
    path.write_bytes("\n".join(TEXT).encode("gbk"))
    code, out = _prepare(tmp_path, path, "--encoding", "gb18030")
    assert code == 0, capsys.readouterr().err
    with open(out / "documents.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    assert texts == TEXT


def test_unknown_encoding_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "a.txt"
    path.write_text("\n".join(TEXT), encoding="utf-8")
    code, _ = _prepare(tmp_path, path, "--encoding", "klingon-8")
    assert code == 2 and "--encoding 'klingon-8'" in capsys.readouterr().err


def test_many_undecodable_lines_warn_but_the_rest_is_kept(tmp_path, caplog):
    path = tmp_path / "mixed.txt"
    path.write_bytes("\n".join(TEXT).encode("utf-8") + b"\n" + "坏的一行".encode("gbk") + b"\n")
    with caplog.at_level(logging.WARNING):
        code, out = _prepare(tmp_path, path)
    assert code == 0
    assert "1 of 5 lines (20.0%) are not valid utf-8" in caplog.text and "mixed.txt line 5" in caplog.text
    with open(out / "documents.jsonl", encoding="utf-8") as f:
        assert len(f.readlines()) == 4
