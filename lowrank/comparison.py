"""Comparing two classifiers on one test set: McNemar's exact test (notebooks 02, section 6, and 03, section 5).

Two models scored on the *same* examples are paired: what tells them apart is only the examples
where exactly one of them is right. McNemar's test asks whether those discordant examples split
evenly, as they would if neither model were better. An unpaired interval on each accuracy ignores
the pairing and is far too wide for this question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence


@dataclass(frozen=True)
class PairedComparison:
    """Counts of the discordant examples and the exact two-sided McNemar p-value."""

    only_first_right: int
    only_second_right: int
    p_value: float

    def __str__(self) -> str:
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        return (f"only the first right on {self.only_first_right:,}, only the second on "
                f"{self.only_second_right:,}: McNemar exact {p}")


def mcnemar(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> PairedComparison:
    """McNemar's exact test for two classifiers' per-example correctness on the same examples.

    ``p`` is the two-sided binomial probability, under "each discordant example is equally likely
    to favour either model", of a split at least as uneven as the one observed (capped at 1).
    """
    first, second = [bool(x) for x in first_correct], [bool(x) for x in second_correct]
    if len(first) != len(second):
        raise ValueError(f"the two models were scored on different numbers of examples: {len(first)} vs {len(second)}")
    b = sum(f and not s for f, s in zip(first, second))
    c = sum(s and not f for f, s in zip(first, second))
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return PairedComparison(b, c, min(1.0, 2 * tail))
