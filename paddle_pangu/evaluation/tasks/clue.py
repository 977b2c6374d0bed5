"""CLUE / FewCLUE tasks scored by candidates (docs/REFERENCE.md "Templates", "Classification-like tasks").

Files as published by CLUEbenchmark (CLUE `*_public/{train,dev}.json`, FewCLUE
`datasets/<task>/{train,dev}_few_all.json`): JSON lines.
"""
from __future__ import annotations

import random

from ..loaders import read_json_lines
from .base import Example, TaskSpec, fill

CLUE = "CLUEbenchmark/CLUE (https://github.com/CLUEbenchmark/CLUE) or FewCLUE (https://github.com/CLUEbenchmark/FewCLUE, datasets/{task})"

# REF: TNEWS/IFLYTEK are reduced to the true label + 3 random labels
RANDOM_LABELS = 3
# TNEWS label_desc -> Chinese label word (FewCLUE label_index2en2zh.json)
TNEWS_LABELS = {"news_story": "故事", "news_culture": "文化", "news_entertainment": "娱乐", "news_sports": "体育",
                "news_finance": "财经", "news_house": "房产", "news_car": "汽车", "news_edu": "教育",
                "news_tech": "科技", "news_military": "军事", "news_travel": "旅游", "news_world": "国际",
                "news_stock": "股票", "news_agriculture": "农业", "news_game": "电竞"}
NLI_LABELS = {"entailment": "对", "neutral": "或许", "contradiction": "错"}  # REF `$S1?对/或许/错，$S2`


def _files(task: str) -> dict:
    return {"eval_files": ("dev_few_all.json", "dev.json"), "train_files": ("train_few_all.json", "train.json"),
            "folders": (task, f"fewclue/{task}", f"{task}_public"), "source": CLUE.format(task=task)}


def _true_plus_random(records: list, seed: int, label_of, passage_of) -> list[Example]:
    """The gold label word and RANDOM_LABELS other label words drawn per example (seeded)."""
    words = sorted({label_of(r) for r in records})
    out = []
    for i, r in enumerate(records):
        gold = label_of(r)
        others = random.Random(f"{seed}:{i}").sample([w for w in words if w != gold], min(RANDOM_LABELS, len(words) - 1))
        cands = sorted([gold] + others)
        out.append(Example({"passage": passage_of(r)}, cands, cands.index(gold), passage_key="passage",
                           uid=str(r.get("id", i))))
    return out


def _fixed(records: list, label_key: str, words: dict, fields) -> list[Example]:
    out = []
    for i, r in enumerate(records):
        label = str(r.get(label_key))
        if label not in words:  # CMNLI marks unlabelled pairs with "-": not evaluable
            continue
        cands = list(dict.fromkeys(words.values()))
        out.append(Example(fields(r), cands, cands.index(words[label]), passage_key="passage",
                           uid=str(r.get("id", r.get("idx", i)))))
    return out


tnews = TaskSpec(
    name="tnews", kind="candidates", **_files("tnews"), metric="accuracy", paper={"accuracy": 60.95},
    read=lambda p: read_json_lines(p, ("sentence", "label_desc")),
    build=lambda rs, seed: _true_plus_random(rs, seed, lambda r: TNEWS_LABELS.get(r["label_desc"], r["label_desc"]),
                                             lambda r: r["sentence"]),
    render=lambda ex, c: fill("这是关于$label的文章：$passage", label=ex.candidates[c], **ex.fields),
)

iflytek = TaskSpec(
    name="iflytek", kind="candidates", **_files("iflytek"), metric="accuracy", paper={"accuracy": 74.26},
    read=lambda p: read_json_lines(p, ("sentence", "label_des")),
    build=lambda rs, seed: _true_plus_random(rs, seed, lambda r: r["label_des"], lambda r: r["sentence"]),
    render=lambda ex, c: fill("这是关于$label的应用程序：$passage", label=ex.candidates[c], **ex.fields),
)

afqmc = TaskSpec(
    name="afqmc", kind="candidates", **_files("afqmc"), metric="accuracy", paper={"accuracy": 59.29},
    read=lambda p: read_json_lines(p, ("sentence1", "sentence2", "label")),
    build=lambda rs, seed: _fixed(rs, "label", {"1": "相同", "0": "不同"},
                                  lambda r: {"S1": r["sentence1"], "passage": r["sentence2"]}),
    render=lambda ex, c: fill("下面两个句子语义$label：$S1。$passage", label=ex.candidates[c], **ex.fields),
)

csl = TaskSpec(
    name="csl", kind="candidates", **_files("csl"), metric="accuracy", paper={"accuracy": 50.50},
    read=lambda p: read_json_lines(p, ("abst", "keyword", "label")),
    build=lambda rs, seed: _fixed(rs, "label", {"1": "是", "0": "不是"},
                                  lambda r: {"passage": r["abst"], "keyword": "，".join(r["keyword"])}),
    render=lambda ex, c: fill("摘要：$passage，关键词：$keyword$label真实关键词", label=ex.candidates[c], **ex.fields),
)


def _nli(name: str, paper: float) -> TaskSpec:
    return TaskSpec(
        name=name, kind="candidates", **_files(name), metric="accuracy", paper={"accuracy": paper},
        read=lambda p: read_json_lines(p, ("sentence1", "sentence2", "label")),
        build=lambda rs, seed: _fixed(rs, "label", NLI_LABELS,
                                      lambda r: {"passage": r["sentence1"], "S2": r["sentence2"]}),
        render=lambda ex, c: fill("$passage?$label，$S2", label=ex.candidates[c], **ex.fields),
    )


cmnli = _nli("cmnli", 50.20)
ocnli = _nli("ocnli", 42.61)

# The paper gives no CLUEWSC template; ours asks whether the pronoun (span2) means span1 and scores 是 / 否.
cluewsc2020 = TaskSpec(
    name="cluewsc2020", kind="candidates", metric="accuracy", paper={"accuracy": 73.36},
    **{**_files("cluewsc2020"), "folders": ("cluewsc2020", "cluewsc", "fewclue/cluewsc", "cluewsc2020_public")},
    read=lambda p: read_json_lines(p, ("text", "target", "label")),
    build=lambda rs, seed: _fixed(rs, "label", {"true": "是", "false": "否"},
                                  lambda r: {"passage": r["text"], "span1": r["target"]["span1_text"],
                                             "span2": r["target"]["span2_text"]}),
    render=lambda ex, c: fill("$passage\n这里的“$span2”指的是“$span1”吗？$label", label=ex.candidates[c], **ex.fields),
)


def first_sentence(text: str, limit: int = 40) -> str:
    """Text up to and including the first sentence end (。！？!?), at most `limit` characters."""
    for i, ch in enumerate(text[:limit]):
        if ch in "。！？!?":
            return text[: i + 1]
    return text[:limit]


def _chid(records: list, seed: int) -> list[Example]:
    """The passage before the blank is what the over-long policy may cut; after it, one sentence is scored."""
    out = []
    for i, r in enumerate(records):
        if "#idiom#" not in r["content"]:
            continue
        left, right = r["content"].split("#idiom#", 1)
        out.append(Example({"passage": left, "right": first_sentence(right)}, list(r["candidates"]), int(r["answer"]),
                           passage_key="passage", uid=str(r.get("id", i))))
    return out


# FewCLUE CHID: `content` with one `#idiom#` blank, 7 `candidates`, `answer` index
chid = TaskSpec(
    name="chid", kind="candidates", **_files("chid"), metric="accuracy", paper={"accuracy": 68.73},
    read=lambda p: read_json_lines(p, ("content", "candidates", "answer")),
    build=_chid,
    render=lambda ex, c: ex.fields["passage"] + ex.candidates[c] + ex.fields["right"],
)

TASKS = [tnews, iflytek, afqmc, csl, cmnli, ocnli, cluewsc2020, chid]
