"""Cloze tasks: WPLC, PD&CFT, CMRC2017 generated (accuracy), CMRC2019 by candidates (docs/REFERENCE.md).

REF gives no cloze template: the prompt is the passage, a newline, then the
query up to its blank; the generated text must start with the answer word
(`metrics.cloze_correct`). CMRC2019 fills each blank with each of its
sentence choices and scores the choice plus the rest of its sentence.
"""
from __future__ import annotations

from ..loaders import read_cloze_rc, read_cmrc2019, read_wplc
from .base import Decoding, Example, TaskSpec
from .clue import first_sentence


def _cloze_render(ex: Example, c):
    prompt = ex.fields["passage"] + ex.fields["sep"] + ex.fields["query"]
    return prompt if c is None else prompt + ex.references[0]


def _cloze_rc(records: list, seed: int) -> list[Example]:
    return [Example({"passage": r["passage"], "sep": "\n", "query": r["query"].split("XXXXX", 1)[0]},
                    references=[r["answer"]], passage_key="passage", uid=r["id"]) for r in records]


wplc = TaskSpec(
    name="wplc", kind="generation", metric="cloze_accuracy", paper={},
    eval_files=("dev.json", "test.json", "wplc_dev.json", "wplc_test.json"), train_files=("train.json", "wplc_train.json"),
    folders=("wplc", "WPLC"),
    source="Chinese WPLC (Ge et al., EMNLP 2021; the authors distribute it on request): JSON lines with masked_text + correct_word",
    read=read_wplc,
    build=lambda rs, seed: [Example({"passage": r["left"], "sep": "", "query": ""}, references=[r["answer"]],
                                    passage_key="passage", uid=r["id"]) for r in rs],
    render=_cloze_render,
    decoding=Decoding(top_k=1, max_new_tokens=8),  # REF: WPLC top-k 1
)

pdcft = TaskSpec(
    name="pdcft", kind="generation", metric="cloze_accuracy", paper={"accuracy": 38.47},  # PD; CFT-human 42.39
    eval_files=("pd.test", "pd.valid", "cft.test.human", "cft.test.auto"), train_files=("pd.train",),
    folders=("pdcft", "pd", "people_daily", "cft", "children_fairy_tale"),
    source="ymcui/Chinese-Cloze-RC people_daily/pd.zip, children_fairy_tale/cft.zip (https://github.com/ymcui/Chinese-Cloze-RC)",
    read=read_cloze_rc, build=_cloze_rc, render=_cloze_render,
    decoding=Decoding(top_k=1, temperature=0.9, max_new_tokens=8),  # REF: PD&CFT k 1, T 0.9
)

cmrc2017 = TaskSpec(
    name="cmrc2017", kind="generation", metric="cloze_accuracy", paper={"accuracy": 37.83},
    eval_files=("cloze.valid.doc_query", "cloze.test.doc_query"), train_files=("train.doc_query",),
    folders=("cmrc2017", "cmrc2017/validation", "cmrc2017/test", "cmrc2017/train"),
    source="ymcui/cmrc2017 validation/, test/, train/ (unzip train.doc_query.part.*) (https://github.com/ymcui/cmrc2017)",
    read=read_cloze_rc, build=_cloze_rc, render=_cloze_render,
    decoding=Decoding(top_p=0.9, temperature=1.0, max_new_tokens=8),  # REF: CMRC2017 top-p 0.9, T 1
)


def _cmrc2019(records: list, seed: int) -> list[Example]:
    return [Example({"passage": r["left"], "right": first_sentence(r["right"])}, list(r["choices"]), r["answer"],
                    passage_key="passage", uid=r["id"]) for r in records]


cmrc2019 = TaskSpec(
    name="cmrc2019", kind="candidates", metric="accuracy", paper={"accuracy": 68.22},
    eval_files=("cmrc2019_dev.json", "cmrc2019_trial.json"), train_files=("cmrc2019_train.json",),
    folders=("cmrc2019", "cmrc2019/data"),
    source="ymcui/cmrc2019 data/ (https://github.com/ymcui/cmrc2019)",
    read=read_cmrc2019, build=_cmrc2019,
    render=lambda ex, c: ex.fields["passage"] + ex.candidates[c] + ex.fields["right"],
)

TASKS = [wplc, pdcft, cmrc2017, cmrc2019]
