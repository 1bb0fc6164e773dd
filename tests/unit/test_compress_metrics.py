"""SQuAD metrics, the selective-augmentation calibration, the faithfulness report and lexical scores
(pure functions: no model)."""

from __future__ import annotations

import pytest

from lodestar.compress_ctx.eval.selective import calibrate_threshold
from lodestar.compress_ctx.faithfulness import faithfulness
from lodestar.compress_ctx.lexical import coverage_scores
from lodestar.compress_ctx.metrics import answer_in_context, exact_match, f1_score, normalize_answer
from lodestar.errors import InvalidInput


def test_squad_normalisation_and_scores() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Atlantic Ocean.", ["Atlantic Ocean"]) == 1.0
    assert exact_match("Pacific", ["Atlantic Ocean", "Atlantic"]) == 0.0
    assert f1_score("Atlantic", ["the Atlantic Ocean"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1_score("", ["x"]) == 0.0


def test_answer_in_context_matches_whole_words() -> None:
    assert answer_in_context("It was built in 1889, for the fair.", ["1889"]) == 1.0
    assert answer_in_context("In 18890 it rained.", ["1889"]) == 0.0
    assert answer_in_context("", ["1889"]) == 0.0
    assert answer_in_context("The Normans, in France.", ["france"]) == 1.0


def test_calibration_drops_only_where_context_never_helped() -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    with_ctx = [0.0, 0.0, 1.0, 0.0, 1.0]
    without = [0.0, 1.0, 0.0, 0.0, 0.0]
    cal = calibrate_threshold(scores, with_ctx, without)
    # Context first helps at 0.3: drop 0.1 and 0.2 (one gains, one is neutral).
    assert cal.threshold == pytest.approx(0.25) and cal.dropped == 2 and cal.rule == "strict"
    assert cal.gain_selective >= cal.gain_always
    assert cal.gain_selective == pytest.approx(3 / 5)
    # net: dropping through 0.4 still breaks even (+1 -1 +0), but the lowest best cut is 2.
    assert calibrate_threshold(scores, with_ctx, without, rule="net").dropped == 2
    # strict never trades: one loss below a bigger gain stops it; net takes the trade.
    trade = ([0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0])
    assert calibrate_threshold(*trade).dropped == 0
    assert calibrate_threshold(*trade, rule="net").dropped == 3
    with pytest.raises(InvalidInput, match="valid are strict, net"):
        calibrate_threshold(*trade, rule="greedy")


def test_calibration_keeps_everything_when_the_lowest_needs_context() -> None:
    cal = calibrate_threshold([0.1, 0.9], [1.0, 1.0], [0.0, 0.0])
    assert cal.dropped == 0 and cal.threshold is None


def test_calibration_never_splits_ties_and_checks_input() -> None:
    cal = calibrate_threshold([0.2, 0.2, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert cal.dropped == 0 and cal.threshold is None  # the two 0.2s go together, and together they lose
    assert calibrate_threshold([0.2, 0.2, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], rule="net").dropped == 0
    with pytest.raises(InvalidInput, match="equal-length"):
        calibrate_threshold([0.1], [1.0, 0.0], [0.0])
    with pytest.raises(InvalidInput, match="at least one"):
        calibrate_threshold([], [], [])


def test_faithfulness_reports_unsupported_content_words() -> None:
    passages = ["The Normans settled in Normandy in the 10th century.", "Rollo led them."]
    f = faithfulness("The Normans settled in Normandy, led by Rollo, in 911 with dragons.", passages)
    assert f.unsupported == ["911", "dragons"]
    assert f.content_words == 7  # normans settled normandy led rollo 911 dragons
    assert f.supported_ratio == pytest.approx(5 / 7)
    assert faithfulness("", passages).supported_ratio == 1.0


def test_lexical_coverage_weights_rare_terms() -> None:
    sents = ["Normandy is in France.", "The Normans came from Normandy.", "Rollo was a Viking."]
    s = coverage_scores("In what country is Normandy located?", sents)
    assert s.shape == (3,) and 0.0 <= s.min() and s.max() <= 1.0
    assert s[0] > s[2]
    assert coverage_scores("the of and", sents).tolist() == [0.0, 0.0, 0.0]  # only stopwords
