"""Every task loader on a few-line fixture in its published format (invented text, real layouts)."""
import json

import pytest

from paddle_pangu.errors import DataError
from paddle_pangu.evaluation.tasks import PAPER_ORDER, TASKS, load_examples, resolve_files


def _lines(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _load(name, path, seed=0):
    return load_examples(TASKS[name], resolve_files(TASKS[name], str(path)), seed)


def test_registry_has_every_task_of_the_paper_with_its_number():
    assert list(PAPER_ORDER) == ["wplc", "chid", "pdcft", "cmrc2017", "cmrc2019", "cmrc2018", "drcd", "dureader",
                                 "webqa", "cluewsc2020", "c3", "cmnli", "ocnli", "tnews", "iflytek", "afqmc", "csl"]
    assert TASKS["cmrc2018"].paper == {"em": 1.21, "f1": 16.65} and TASKS["chid"].paper == {"accuracy": 68.73}
    assert TASKS["dureader"].decoding.top_p == 0.9 and TASKS["dureader"].decoding.temperature == 0.7
    assert not TASKS["wplc"].decoding.do_sample and TASKS["webqa"].decoding.top_k == 5


def test_tnews_true_label_plus_three_random_labels(tmp_path):
    rows = [{"label": "10%d" % i, "label_desc": d, "sentence": f"新闻{i}", "keywords": "", "id": i}
            for i, d in enumerate(["news_story", "news_culture", "news_sports", "news_finance", "news_car"])]
    ex = _load("tnews", _lines(tmp_path / "dev_few_all.json", rows))
    assert len(ex) == 5 and all(len(e.candidates) == 4 for e in ex)
    assert ex[2].candidates[ex[2].gold] == "体育" and len(set(ex[2].candidates)) == 4
    assert TASKS["tnews"].render(ex[2], ex[2].gold) == "这是关于体育的文章：新闻2"
    assert [e.candidates for e in _load("tnews", tmp_path / "dev_few_all.json")] == [e.candidates for e in ex]


def test_iflytek_afqmc_csl_templates(tmp_path):
    ifly = _load("iflytek", _lines(tmp_path / "i.json", [{"label": "1", "label_des": l, "sentence": "应用"}
                                                          for l in ["办公", "旅游", "音乐", "社交", "购物"]]))
    assert TASKS["iflytek"].render(ifly[0], ifly[0].gold) == "这是关于办公的应用程序：应用"
    af = _load("afqmc", _lines(tmp_path / "a.json", [{"sentence1": "甲", "sentence2": "乙", "label": "1"}]))
    assert [TASKS["afqmc"].render(af[0], c) for c in (0, 1)] == ["下面两个句子语义相同：甲。乙", "下面两个句子语义不同：甲。乙"]
    assert af[0].gold == 0
    cs = _load("csl", _lines(tmp_path / "c.json", [{"id": 0, "abst": "摘要文字", "keyword": ["甲", "乙"], "label": "0"}]))
    assert TASKS["csl"].render(cs[0], cs[0].gold) == "摘要：摘要文字，关键词：甲，乙不是真实关键词"


def test_nli_skips_unlabelled_pairs(tmp_path):
    rows = [{"sentence1": "天晴", "sentence2": "下雨", "label": "contradiction"},
            {"sentence1": "x", "sentence2": "y", "label": "-"},
            {"sentence1": "他来了", "sentence2": "有人来", "label": "entailment"}]
    ex = _load("cmnli", _lines(tmp_path / "dev.json", rows))
    assert len(ex) == 2 and [e.candidates[e.gold] for e in ex] == ["错", "对"]
    assert TASKS["ocnli"].render(ex[0], 1) == "天晴?或许，下雨"


def test_cluewsc_and_chid(tmp_path):
    wsc = _load("cluewsc2020", _lines(tmp_path / "w.json", [{"target": {"span1_text": "小狗", "span2_text": "它",
                                                                          "span1_index": 0, "span2_index": 4},
                                                               "idx": 0, "label": "false", "text": "小狗跑了，它累了。"}]))
    assert wsc[0].candidates[wsc[0].gold] == "否"
    assert TASKS["cluewsc2020"].render(wsc[0], 0) == "小狗跑了，它累了。\n这里的“它”指的是“小狗”吗？是"
    chid = _load("chid", _lines(tmp_path / "c.json", [{"id": 3, "candidates": ["画蛇添足", "雪中送炭"],
                                                        "content": "朋友#idiom#，令人感动。后面还有很多话", "answer": 1}]))
    assert chid[0].gold == 1 and TASKS["chid"].render(chid[0], 1) == "朋友雪中送炭，令人感动。"


def test_squad_style_cmrc2018_and_drcd(tmp_path):
    doc = {"version": "v1.0", "data": [{"paragraphs": [{"id": "P1", "context": "北京是中国的首都。",
                                                        "qas": [{"question": "中国的首都是哪里？", "id": "Q1",
                                                                 "answers": [{"text": "北京", "answer_start": 0},
                                                                             {"text": "北京市", "answer_start": 0}]}]}]}]}
    for name, fname in (("cmrc2018", "cmrc2018_dev.json"), ("drcd", "DRCD_dev.json")):
        (tmp_path / fname).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        ex = _load(name, tmp_path)
        assert ex[0].references == ["北京", "北京市"] and ex[0].uid == "Q1"
        assert TASKS[name].render(ex[0], None) == "阅读文章：北京是中国的首都。\n问：中国的首都是哪里？\n答："
        assert TASKS[name].render(ex[0], 0).endswith("答：北京")
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json: data\[0\].paragraphs\[0\]: missing field 'context'"):
        _load("cmrc2018", tmp_path / "bad.json")


def test_c3_nested_lists_and_dureader_lines(tmp_path):
    c3 = [[["男：你好。", "女：明天见。"], [{"question": "女的说什么？", "choice": ["你好", "明天见"], "answer": "明天见"}],
           "m1-1"]]
    (tmp_path / "c3-m-dev.json").write_text(json.dumps(c3, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "c3-d-dev.json").write_text(json.dumps(c3, ensure_ascii=False), encoding="utf-8")
    ex = _load("c3", tmp_path)
    assert len(ex) == 2 and ex[0].gold == 1  # both the -m- and the -d- file
    assert TASKS["c3"].render(ex[0], 0) == "问：女的说什么？\n答：你好\n该答案来自对话：男：你好。\n女：明天见。"
    rows = [{"question_id": 7, "question": "怎么煮饭", "answers": ["加水加热"], "question_type": "DESCRIPTION",
             "documents": [{"is_selected": False, "most_related_para": 0, "paragraphs": ["无关"]},
                           {"is_selected": True, "most_related_para": 1, "paragraphs": ["标题", "先洗米再加水"]}]},
            {"question_id": 8, "question": "无答案", "answers": [], "documents": []}]
    du = _load("dureader", _lines(tmp_path / "search.dev.json", rows))
    assert len(du) == 1 and du[0].fields["passage"] == "先洗米再加水" and du[0].references == ["加水加热"]


def test_cloze_rc_formats_cmrc2017_and_pdcft(tmp_path):
    (tmp_path / "cloze.valid.doc_query").write_text(
        "1 ||| 小 猴 在 树 上 。\n2 ||| XXXXX 在 地 上 跑 。\n<qid_0> ||| XXXXX 在 地 上 跑 。\n"
        "1 ||| 他 用 iPhone 7 拍照 。\n<qid_1> ||| 他 用 XXXXX 拍照 。\n", encoding="utf-8")
    (tmp_path / "cloze.valid.answer").write_text("<qid_0> ||| 小狗\n<qid_1> ||| iPhone\n", encoding="utf-8")
    ex = _load("cmrc2017", tmp_path)
    assert [e.references for e in ex] == [["小狗"], ["iPhone"]]
    assert ex[0].fields["passage"] == "小猴在树上。XXXXX在地上跑。" and ex[1].fields["passage"] == "他用iPhone 7拍照。"
    assert TASKS["cmrc2017"].render(ex[1], None) == "他用iPhone 7拍照。\n他用"
    (tmp_path / "pd.test").write_text("1 ||| 今天 天气 好 。\n2 ||| 我们 去 XXXXX 玩 。 ||| 公园\n", encoding="utf-8")
    pd = _load("pdcft", tmp_path)
    assert pd[0].references == ["公园"] and TASKS["pdcft"].render(pd[0], 0) == "今天天气好。\n我们去公园"
    (tmp_path / "user.doc_query").write_text("<qid_0> ||| XXXXX 跑 。\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"user.answer"):
        load_examples(TASKS["cmrc2017"], [str(tmp_path / "user.doc_query")])


def test_cmrc2019_one_example_per_blank_and_webqa_wplc(tmp_path):
    doc = {"data": [{"context_id": "T1", "context": "他很饿。[BLANK1]，然后睡觉了。[BLANK2]。",
                     "choices": ["他吃了饭", "天亮了"], "answers": [0, 1]}]}
    (tmp_path / "cmrc2019_dev.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    ex = _load("cmrc2019", tmp_path)
    assert [e.uid for e in ex] == ["T1#1", "T1#2"] and [e.gold for e in ex] == [0, 1]
    assert TASKS["cmrc2019"].render(ex[0], 1) == "他很饿。天亮了，然后睡觉了。"
    web = {"Q_1": {"question": "长城在哪个国家", "evidences": {"Q_1_1": {"answer": ["中国"], "evidence": "…"},
                                                                "Q_1_2": {"answer": ["no_answer"], "evidence": "…"}}}}
    (tmp_path / "me_test.ann.json").write_text(json.dumps(web, ensure_ascii=False), encoding="utf-8")
    w = _load("webqa", tmp_path)
    assert w[0].references == ["中国"] and TASKS["webqa"].render(w[0], None) == "问：长城在哪个国家\n答："
    wp = _load("wplc", _lines(tmp_path / "dev.json", [{"masked_text": "他走进[MASK]买菜。", "correct_word": "市场"}]))
    assert TASKS["wplc"].render(wp[0], None) == "他走进" and wp[0].references == ["市场"]


def test_missing_data_names_the_file_and_where_it_is_published(tmp_path):
    with pytest.raises(DataError, match=r"task c3: no eval file \(c3-\*-dev.json or c3-\*-test.json\) under .*"
                                         r"published at nlpdata/c3"):
        resolve_files(TASKS["c3"], str(tmp_path))
    (tmp_path / "fewclue" / "ocnli").mkdir(parents=True)
    _lines(tmp_path / "fewclue" / "ocnli" / "dev_few_all.json", [{"sentence1": "a", "sentence2": "b", "label": "neutral"}])
    assert resolve_files(TASKS["ocnli"], str(tmp_path))[0].endswith("fewclue/ocnli/dev_few_all.json")
    (tmp_path / "bad.json").write_text('{"sentence1": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json:1: missing field 'sentence2'"):
        load_examples(TASKS["ocnli"], [str(tmp_path / "bad.json")])
