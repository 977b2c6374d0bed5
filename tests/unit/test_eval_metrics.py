"""EM / F1 (CMRC2018 script: mixed segmentation + longest common run), Rouge-1, cloze accuracy, intervals.

Expected values are worked out by hand in the comments.
"""
import math

import pytest

from paddle_pangu.evaluation.metrics import (cloze_correct, exact_match, f1_score, longest_common_run, mean_ci95,
                                             mixed_segmentation, rouge1)


def test_mixed_segmentation_splits_cjk_characters_and_keeps_ascii_words():
    assert mixed_segmentation("我爱 Python 3.8！") == ["我", "爱", "python", "3.8", "！"]
    assert mixed_segmentation("我爱 Python 3.8！", remove_punctuation=True) == ["我", "爱", "python", "3.8"]
    assert mixed_segmentation("iPhone7手机") == ["iphone7", "手", "机"]


def test_longest_common_run_is_contiguous():
    assert longest_common_run(list("abcde"), list("xbcdy")) == 3
    assert longest_common_run(list("abab"), list("ba")) == 2
    assert longest_common_run(list("acb"), list("ab")) == 1  # a common subsequence would be 2 ("ab")


def test_f1_chinese_characters():
    # answer 北京大学 (4 segs), prediction 北京 (2 segs): lcs 2, P = 1, R = 1/2, F1 = 2/3
    assert f1_score("北京", ["北京大学"]) == pytest.approx(2 / 3)
    # prediction 在北京大学城 (6 segs) vs 北京大学: lcs 4, P = 4/6, R = 1, F1 = 0.8
    assert f1_score("在北京大学城", ["北京大学"]) == pytest.approx(0.8)
    assert f1_score("上海", ["北京"]) == 0.0 and f1_score("", ["北京"]) == 0.0


def test_f1_mixed_ascii_takes_max_over_references_and_ignores_punctuation():
    # segs: pred [2008, 年, 北, 京] vs ref1 [北, 京, 奥, 运] -> lcs 2: P 2/4, R 2/4, F1 0.5
    #                             vs ref2 [2008, 年]       -> lcs 2: P 2/4, R 1,   F1 2/3
    assert f1_score("2008年，北京", ["北京奥运", "2008年"]) == pytest.approx(2 / 3)
    # "NBA总决赛" -> [nba, 总, 决, 赛]; "nba" -> [nba]: P 1/4, R 1, F1 0.4
    assert f1_score("NBA总决赛", ["nba"]) == pytest.approx(0.4)


def test_exact_match_after_punctuation_and_case():
    assert exact_match("《红楼梦》", ["红楼梦"]) == 1.0
    assert exact_match("ABC", ["x", "abc"]) == 1.0
    assert exact_match("红楼", ["红楼梦"]) == 0.0


def test_rouge1_unigram_overlap():
    # pred [今, 天, 很, 热] vs ref [今, 天, 热]: overlap 3, P 3/4, R 1 -> F 6/7
    assert rouge1("今天很热", ["今天热"]) == pytest.approx(6 / 7)
    # repeated units are clipped: pred [好, 好, 好] vs ref [好, 人]: overlap 1, P 1/3, R 1/2 -> F 0.4
    assert rouge1("好好好", ["好人", "坏"]) == pytest.approx(0.4)
    assert rouge1("abc", ["xyz"]) == 0.0


def test_cloze_correct_prefix_of_generation():
    assert cloze_correct("啄木鸟 每天", ["啄木鸟"]) == 1.0
    assert cloze_correct("啄木", ["啄木鸟"]) == 0.0
    assert cloze_correct("x", [""]) == 0.0


def test_confidence_intervals():
    mean, lo, hi = mean_ci95([1, 0, 1, 1], binary=True)
    # Wilson, p = 0.75, n = 4, z = 1.96: centre (0.75 + z^2/8) / (1 + z^2/4), half z sqrt(p(1-p)/4 + z^2/64) / (1 + z^2/4)
    z = 1.959964
    d = 1 + z * z / 4
    assert mean == 0.75
    assert lo == pytest.approx((0.75 + z * z / 8) / d - z * math.sqrt(0.75 * 0.25 / 4 + z * z / 64) / d)
    assert hi == pytest.approx((0.75 + z * z / 8) / d + z * math.sqrt(0.75 * 0.25 / 4 + z * z / 64) / d)
    mean, lo, hi = mean_ci95([0.2, 0.4], binary=False)  # std = sqrt(0.02), half = z * std / sqrt(2) = z * 0.1
    assert (mean, lo, hi) == pytest.approx((0.3, 0.3 - z * 0.1, 0.3 + z * 0.1))
