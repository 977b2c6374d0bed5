"""Evaluation task files in their published formats, written by the tests that need them (never copied
from the real data): FewCLUE OCNLI (`*_few_all.json` lines) and CMRC2018 (SQuAD-style JSON)."""
import json
from pathlib import Path


def write_lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_ocnli_and_cmrc(root: Path, ocnli_rows: int) -> None:
    """A candidate task (ocnli: `ocnli_rows` examples in dev and in train) and a generation task (cmrc2018:
    two dev and two train questions) under `root`, laid out as `pangu evaluate --data-dir` expects."""
    labels = ["entailment", "neutral", "contradiction"]
    for split in ("dev", "train"):
        write_lines(root / "fewclue" / "ocnli" / f"{split}_few_all.json",
                    [{"id": i, "sentence1": f"{split}前提{i}说明天下雨", "sentence2": f"假设{i}", "label": labels[i % 3]}
                     for i in range(ocnli_rows)])
    paras = [{"context": f"第{i}段：小明住在杭州，喜欢西湖。", "qas": [{"id": f"{split}{i}", "question": "小明住在哪里？",
                                                              "answers": [{"text": "杭州", "answer_start": 6}]}]}
             for split in ("d", "t") for i in range(2)]
    (root / "cmrc2018").mkdir(parents=True)
    for name, part in (("dev", paras[:2]), ("train", paras[2:])):
        (root / "cmrc2018" / f"cmrc2018_{name}.json").write_text(json.dumps({"data": [{"paragraphs": part}]}),
                                                                 encoding="utf-8")
