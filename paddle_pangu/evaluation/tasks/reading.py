"""Reading comprehension, closed-book QA and C3 (docs/REFERENCE.md "Templates", "Decoding per task")."""
from __future__ import annotations

from ..loaders import read_c3, read_json_lines, read_squad, read_webqa
from .base import Decoding, Example, TaskSpec, fill

RC_TEMPLATE = "阅读文章：$passage\n问：$question\n答："  # REF RC template ($Document -> passage)
QA_TEMPLATE = "问：$question\n答："  # REF WebQA template


def _generation_render(template: str):
    """None -> the prompt; 0 -> the prompt plus the first reference (a demonstration)."""
    def render(ex: Example, c):
        prompt = fill(template, **ex.fields)
        return prompt if c is None else prompt + ex.references[0]
    return render


def _qa_examples(records: list, seed: int) -> list[Example]:
    return [Example({"passage": r["passage"], "question": r["question"]}, references=r["answers"],
                    passage_key="passage", uid=r["id"]) for r in records if r["answers"]]


cmrc2018 = TaskSpec(
    name="cmrc2018", kind="generation", metric="em_f1", paper={"em": 1.21, "f1": 16.65},
    eval_files=("cmrc2018_dev.json", "cmrc2018_trial.json"), train_files=("cmrc2018_train.json",),
    folders=("cmrc2018", "cmrc2018/squad-style-data"),
    source="ymcui/cmrc2018 squad-style-data/ (https://github.com/ymcui/cmrc2018)",
    read=read_squad, build=_qa_examples, render=_generation_render(RC_TEMPLATE),
    decoding=Decoding(top_p=0.8, temperature=0.8, max_new_tokens=24),
)

drcd = TaskSpec(
    name="drcd", kind="generation", metric="em_f1", paper={"em": 0.8, "f1": 9.99},
    eval_files=("DRCD_dev.json", "DRCD_test.json"), train_files=("DRCD_training.json",), folders=("drcd", "DRCD"),
    source="DRCKnowledgeTeam/DRCD (https://github.com/DRCKnowledgeTeam/DRCD), SQuAD-style JSON",
    read=read_squad, build=_qa_examples, render=_generation_render(RC_TEMPLATE),
    decoding=Decoding(top_p=0.8, temperature=0.8, max_new_tokens=24),
)


def _dureader(records: list, seed: int) -> list[Example]:
    """DuReader 2.0: the passage is the most related paragraph of each selected document."""
    out = []
    for i, r in enumerate(records):
        docs = r.get("documents") or []
        chosen = [d for d in docs if d.get("is_selected")] or docs[:1]
        paras = [d["paragraphs"][d.get("most_related_para", 0)] for d in chosen if d.get("paragraphs")]
        if r.get("answers") and paras:
            out.append(Example({"passage": "".join(paras), "question": r["question"]}, references=list(r["answers"]),
                               passage_key="passage", uid=str(r.get("question_id", i))))
    return out


dureader = TaskSpec(
    name="dureader", kind="generation", metric="rouge1", paper={"rouge1": 21.07},
    eval_files=("search.dev.json", "zhidao.dev.json", "dev.json"),
    train_files=("search.train.json", "zhidao.train.json", "train.json"),
    folders=("dureader", "dureader/devset", "dureader/trainset", "preprocessed/devset", "raw/devset"),
    source="baidu/DuReader 2.0 (https://github.com/baidu/DuReader), JSON lines",
    read=lambda p: read_json_lines(p, ("question", "answers", "documents")), build=_dureader,
    render=_generation_render(RC_TEMPLATE),
    decoding=Decoding(top_p=0.9, temperature=0.7, max_new_tokens=48),
)

webqa = TaskSpec(
    name="webqa", kind="generation", metric="em_f1", paper={"em": 4.43, "f1": 13.71},
    eval_files=("me_test.ann.json", "me_validation.ann.json", "me_test.ir.json"), train_files=("me_train.json",),
    folders=("webqa", "WebQA.v1.0"),
    source="Baidu WebQA v1.0 (http://paddlepaddle.bj.bcebos.com/dataset/webqa/WebQA.v1.0.zip)",
    read=read_webqa,
    build=lambda rs, seed: [Example({"question": r["question"]}, references=r["answers"], uid=r["id"]) for r in rs],
    render=_generation_render(QA_TEMPLATE),
    decoding=Decoding(top_k=5, max_new_tokens=16),
)

c3 = TaskSpec(
    name="c3", kind="candidates", metric="accuracy", paper={"accuracy": 53.42},
    eval_files=("c3-*-dev.json", "c3-*-test.json"), train_files=("c3-*-train.json",), folders=("c3", "c3/data"),
    source="nlpdata/c3 data/ (https://github.com/nlpdata/c3)",
    read=read_c3,
    build=lambda rs, seed: [Example({"passage": r["passage"], "question": r["question"]}, r["choices"], r["answer"],
                                    passage_key="passage", uid=r["id"]) for r in rs],
    render=lambda ex, c: fill("问：$question\n答：$choice\n该答案来自对话：$passage", choice=ex.candidates[c], **ex.fields),
)

TASKS = [cmrc2018, drcd, dureader, webqa, c3]
