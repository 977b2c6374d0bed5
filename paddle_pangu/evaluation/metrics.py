"""Answer metrics as the tasks' official scripts define them (docs/REFERENCE.md "Generation tasks").

EM / F1 follow the official CMRC2018 evaluation script (ymcui/cmrc2018,
`cmrc2018_evaluate.py`, also used for DRCD), reimplemented:
- mixed segmentation: lower-case, strip; every CJK character (U+4E00..U+9FA5)
  and every listed punctuation mark is its own segment; runs of other
  characters are word-tokenized (the script calls nltk.word_tokenize; here a
  regex: ASCII words / numbers, and each other non-space symbol);
- F1 = the longest common *contiguous* run of segments (LCS substring, as the
  script's `find_lcs`) between answer and prediction, punctuation removed,
  precision = lcs / len(prediction), recall = lcs / len(answer); max over answers;
- EM = 1 if prediction equals some answer after punctuation removal.
Rouge-1 (DuReader, REF "Rouge-1 (DuReader)"): unigram-overlap F-measure over
the same segments, max over references. All values are fractions in [0, 1].
"""
from __future__ import annotations

import math
import re
from collections import Counter

# the punctuation list of the official script
PUNCTUATION = frozenset(["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”",
                         "；", "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"])
_CJK = re.compile(r"[\u4e00-\u9fa5]")
_WORDS = re.compile(r"[A-Za-z0-9]+(?:[.'][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def mixed_segmentation(text: str, remove_punctuation: bool = False) -> list[str]:
    """CJK characters one by one, ASCII runs as words (CMRC2018 script's segmentation)."""
    segments, run = [], ""
    for ch in str(text).lower().strip():
        if remove_punctuation and ch in PUNCTUATION:
            continue
        if _CJK.match(ch) or ch in PUNCTUATION:
            segments.extend(_WORDS.findall(run))
            run = ""
            segments.append(ch)
        else:
            run += ch
    segments.extend(_WORDS.findall(run))
    return segments


def remove_punctuation(text: str) -> str:
    return "".join(ch for ch in str(text).lower().strip() if ch not in PUNCTUATION)


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous sub-sequence (the script's `find_lcs`)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def f1_score(prediction: str, references: list[str]) -> float:
    """Max over references of the LCS-based F1 on mixed segments (punctuation removed)."""
    pred = mixed_segmentation(prediction, remove_punctuation=True)
    scores = [0.0]
    for ref in references:
        ans = mixed_segmentation(ref, remove_punctuation=True)
        lcs = longest_common_run(ans, pred)
        if lcs:
            p, r = lcs / len(pred), lcs / len(ans)
            scores.append(2 * p * r / (p + r))
    return max(scores)


def exact_match(prediction: str, references: list[str]) -> float:
    pred = remove_punctuation(prediction)
    return float(any(remove_punctuation(ref) == pred for ref in references))


def rouge1(prediction: str, references: list[str]) -> float:
    """Unigram F-measure over mixed segments (punctuation removed), max over references."""
    pred = Counter(mixed_segmentation(prediction, remove_punctuation=True))
    best = 0.0
    for ref in references:
        ref_counts = Counter(mixed_segmentation(ref, remove_punctuation=True))
        overlap = sum((pred & ref_counts).values())
        if overlap:
            p, r = overlap / sum(pred.values()), overlap / sum(ref_counts.values())
            best = max(best, 2 * p * r / (p + r))
    return best


def cloze_correct(prediction: str, references: list[str]) -> float:
    """Cloze accuracy: the generated text, spaces removed, starts with the answer word."""
    pred = re.sub(r"\s+", "", prediction)
    return float(any(pred.startswith(re.sub(r"\s+", "", ref)) and ref.strip() for ref in references))


def mean_ci95(values: list[float], binary: bool) -> tuple[float, float, float]:
    """Mean and a 95% interval: Wilson for 0/1 scores, normal (sample std) for graded scores."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean, z = sum(values) / n, 1.959964
    if binary:
        denom = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
        return mean, max(0.0, centre - half), min(1.0, centre + half)
    if n == 1:
        return mean, mean, mean
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * std / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)
