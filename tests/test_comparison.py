import pytest

from lowrank.comparison import mcnemar


def test_no_discordant_examples_means_no_evidence():
    assert mcnemar([True, False, True], [True, False, True]).p_value == 1.0


def test_all_five_discordant_examples_favouring_one_model():
    result = mcnemar([True] * 5 + [False] * 3, [False] * 5 + [False] * 3)
    assert (result.only_first_right, result.only_second_right) == (5, 0)
    assert result.p_value == pytest.approx(2 * 0.5**5)


def test_even_split_is_p_one_and_order_does_not_matter():
    first = [True, False, True, False]
    second = [False, True, False, True]
    assert mcnemar(first, second).p_value == 1.0
    assert mcnemar([True] * 7 + [False] * 2, [False] * 7 + [True] * 2).p_value == pytest.approx(
        mcnemar([False] * 7 + [True] * 2, [True] * 7 + [False] * 2).p_value)


def test_known_value():
    # 8 vs 2 discordant: P(X <= 2 | n=10) = (1 + 10 + 45) / 1024; two-sided doubles it
    result = mcnemar([True] * 8 + [False] * 2, [False] * 8 + [True] * 2)
    assert result.p_value == pytest.approx(2 * 56 / 1024)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="different numbers"):
        mcnemar([True], [True, False])


def test_printed_p_value_never_reads_zero():
    tiny = mcnemar([True] * 30, [False] * 30)
    assert tiny.p_value < 0.001 and "p < 0.001" in str(tiny) and "0.000" not in str(tiny)
    assert "p = 0.109" in str(mcnemar([True] * 8 + [False] * 2, [False] * 8 + [True] * 2))
