"""Readers for the task files exactly as their authors publish them (docs/EVALUATION.md lists each).

Every reader returns a list of plain dicts (one per evaluable item) and raises
`DataError` naming the file, the record and the field expected. The task
entries in `tasks/` turn these records into `Example`s.

- `read_json_lines`: CLUE / FewCLUE (TNEWS, IFLYTEK, AFQMC, CSL, OCNLI, CMNLI,
  CLUEWSC2020, CHID) and DuReader 2.0 (`{"question", "answers", "documents"}`).
- `read_squad`: SQuAD-style JSON (CMRC2018, DRCD): data/paragraphs/qas.
- `read_c3`: C3's nested lists `[[dialogue lines], [{question, choice, answer}], id]`.
- `read_cloze_rc`: the `N ||| sentence` cloze format of PD&CFT (query line
  `N ||| query ||| answer`) and CMRC2017 (`<qid_K> ||| query`, answers in the
  sibling `.answer` file as `<qid_K> ||| answer`); words are space-separated.
- `read_cmrc2019`: `{"data": [{context with [BLANKk], choices, answers}]}`, one record per blank.
- `read_webqa`: WebQA v1.0 `{qid: {question, evidences: {eid: {answer: [..], evidence}}}}`.
- `read_wplc`: JSON lines with a masked passage and its answer word.
"""
from __future__ import annotations

import os
import re

from ..errors import DataError
from ..utils.json_file import read_json
from ..utils.jsonl import iter_jsonl

_ASCII_WORD = re.compile(r"[A-Za-z0-9]$")


def _load_json(path: str):
    return read_json(path, "a task file", DataError, expect=None)


def _need(path: str, where: str, record, key: str, kind=None):
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"{path}: {where}: missing field {key!r}")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        raise DataError(f"{path}: {where}: field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def read_json_lines(path: str, required: tuple[str, ...] = ()) -> list[dict]:
    """One JSON object per line (blank lines skipped); every `required` field must be present."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field {missing[0]!r} (expected {', '.join(required)})")
        rows.append(row)
    return rows


def read_squad(path: str) -> list[dict]:
    """SQuAD-style JSON -> [{"id", "passage", "question", "answers": [text, ...]}] (CMRC2018, DRCD)."""
    data = _need(path, "top level", _load_json(path), "data", list)
    out = []
    for i, article in enumerate(data):
        for j, para in enumerate(_need(path, f"data[{i}]", article, "paragraphs", list)):
            context = _need(path, f"data[{i}].paragraphs[{j}]", para, "context", str)
            for k, qa in enumerate(_need(path, f"data[{i}].paragraphs[{j}]", para, "qas", list)):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                answers = [_need(path, where, a, "text", str) for a in _need(path, where, qa, "answers", list)]
                out.append({"id": str(qa.get("id", where)), "passage": context,
                            "question": _need(path, where, qa, "question", str), "answers": answers})
    return out


def read_c3(path: str) -> list[dict]:
    """C3 -> [{"id", "passage", "question", "choices", "answer": index}], one per question."""
    docs = _load_json(path)
    if not isinstance(docs, list):
        raise DataError(f"{path}: expected a JSON list of [dialogue, questions, id] documents")
    out = []
    for i, doc in enumerate(docs):
        if not (isinstance(doc, list) and len(doc) >= 2 and isinstance(doc[0], list) and isinstance(doc[1], list)):
            raise DataError(f"{path}: document {i}: expected [[lines], [questions], id]")
        passage = "\n".join(doc[0])
        for k, q in enumerate(doc[1]):
            where = f"document {i} question {k}"
            choices = _need(path, where, q, "choice", list)
            answer = _need(path, where, q, "answer", str)
            if answer not in choices:
                raise DataError(f"{path}: {where}: answer {answer!r} is not one of its choices {choices}")
            out.append({"id": f"{doc[2] if len(doc) > 2 else i}-{k}", "passage": passage,
                        "question": _need(path, where, q, "question", str), "choices": choices,
                        "answer": choices.index(answer)})
    return out


def join_words(words: list[str]) -> str:
    """Undo word segmentation: no space between words unless both sides are ASCII letters/digits."""
    out = ""
    for w in words:
        if out and _ASCII_WORD.search(out) and re.match(r"[A-Za-z0-9]", w):
            out += " "
        out += w
    return out


def _answer_file(path: str) -> dict[str, str]:
    """CMRC2017: `<name>.doc_query` has its answers in `<name>.answer`, lines `<qid_K> ||| answer`."""
    base = path[: -len(".doc_query")] if path.endswith(".doc_query") else path
    answer_path = base + ".answer"
    if not os.path.isfile(answer_path):
        raise DataError(f"{path}: CMRC2017 queries need their answers in {answer_path} (published beside it)")
    answers = {}
    with open(answer_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                parts = [p.strip() for p in line.split("|||")]
                if len(parts) != 2:
                    raise DataError(f"{answer_path}:{lineno}: expected '<qid_K> ||| answer'")
                answers[parts[0]] = parts[1]
    return answers


def read_cloze_rc(path: str) -> list[dict]:
    """PD&CFT / CMRC2017 cloze -> [{"id", "passage", "query" (with XXXXX), "answer"}]."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    answers, out, sentences = None, [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("|||")]
            if len(parts) == 3:  # PD&CFT: the last line of a document is `N ||| query ||| answer`
                qid, query, answer = f"{os.path.basename(path)}:{lineno}", parts[1], parts[2]
            elif len(parts) == 2 and parts[0].startswith("<qid_"):  # CMRC2017 query line
                answers = answers if answers is not None else _answer_file(path)
                qid, query = parts[0], parts[1]
                if qid not in answers:
                    raise DataError(f"{path}:{lineno}: query {qid} has no line in the .answer file")
                answer = answers[qid]
            elif len(parts) == 2:
                sentences.append(join_words(parts[1].split()))
                continue
            else:
                raise DataError(f"{path}:{lineno}: expected 'N ||| sentence' or a query line")
            if "XXXXX" not in query:
                raise DataError(f"{path}:{lineno}: the query has no XXXXX blank")
            out.append({"id": qid, "passage": "".join(sentences), "query": join_words(query.split()),
                        "answer": join_words(answer.split())})
            sentences = []
    return out


def read_cmrc2019(path: str) -> list[dict]:
    """CMRC2019 -> one record per blank: {"id", "left", "right", "choices", "answer": index}.

    `left`/`right` are the context before / after blank k with every other
    `[BLANKj]` removed (the other sentences are unknown to the reader).
    """
    data = _need(path, "top level", _load_json(path), "data", list)
    out = []
    for i, doc in enumerate(data):
        where = f"data[{i}]"
        context = _need(path, where, doc, "context", str)
        choices = _need(path, where, doc, "choices", list)
        answers = _need(path, where, doc, "answers", list)
        for k, answer in enumerate(answers, 1):
            tag = f"[BLANK{k}]"
            if tag not in context or not (0 <= int(answer) < len(choices)):
                raise DataError(f"{path}: {where}: blank {tag} missing from the context or answer {answer} out of range")
            left, right = context.split(tag, 1)
            strip = lambda s: re.sub(r"\[BLANK\d+\]", "", s)  # noqa: E731
            out.append({"id": f"{doc.get('context_id', i)}#{k}", "left": strip(left), "right": strip(right),
                        "choices": choices, "answer": int(answer)})
    return out


def read_webqa(path: str) -> list[dict]:
    """WebQA v1.0 -> [{"id", "question", "answers"}]; answers from every evidence except `no_answer`."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{question id: {{question, evidences}}}}")
    out = []
    for qid, item in data.items():
        question = _need(path, qid, item, "question", str)
        answers = []
        for eid, ev in _need(path, qid, item, "evidences", dict).items():
            for a in _need(path, f"{qid}.{eid}", ev, "answer", list):
                if a != "no_answer" and a not in answers:
                    answers.append(a)
        if answers:
            out.append({"id": qid, "question": question, "answers": answers})
    return out


WPLC_MASKS = ("[MASK]", "<mask>", "<MASK>")


def read_wplc(path: str) -> list[dict]:
    """WPLC JSON lines -> [{"id", "left", "answer"}]: the passage before the masked word and the word."""
    out = []
    for n, row in enumerate(read_json_lines(path)):
        text = row.get("masked_text", row.get("text"))
        answer = row.get("correct_word", row.get("answer"))
        mask = next((m for m in WPLC_MASKS if isinstance(text, str) and m in text), None)
        if mask is None or not isinstance(answer, str):
            raise DataError(f"{path}: record {n + 1}: expected 'masked_text' with one of {WPLC_MASKS} "
                            f"and 'correct_word'")
        out.append({"id": str(row.get("id", n)), "left": text.split(mask, 1)[0], "answer": answer})
    return out
