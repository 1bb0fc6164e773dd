"""Selective augmentation: calibrate the score below which sending no context is at least as good.

Given, per calibration question, the compressor's decision score (best sentence score) and the
reader's gain (EM or F1) with the compressed context and with no context:

- rule "strict" (default): drop only below the lowest-scored question that the context helped
  (gain with > gain without): on the calibration set no dropped question loses anything.
- rule "net": the cut that maximises the summed gain of dropping the questions below it (trades a
  loss for a larger gain elsewhere; tighter fit, so it transfers worse from a small sample).

Either way dropping nothing is a candidate, the threshold sits halfway between the last dropped
and the first kept score, and it is None when no drop is justified. Calibrate per embedding
configuration: scores of different modes are not on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lodestar.errors import InvalidInput

RULES = ("strict", "net")


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # skip context when score < threshold; None: the data justify no skipping
    questions: int
    dropped: int  # calibration questions below the threshold
    gain_always: float  # mean gain when always augmenting
    gain_selective: float  # mean gain with the threshold applied (>= gain_always by construction)
    margin: float
    rule: str = "strict"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_threshold(
    scores: Sequence[float],
    gain_with: Sequence[float],
    gain_without: Sequence[float],
    *,
    rule: str = "strict",
    margin: float = 0.0,
) -> Calibration:
    """Threshold under `rule` (strict | net, see the module docstring).

    `margin` > 0 counts context as helping when it gains more than `margin` less (strict), or makes
    each dropped question pay `margin` (net): both more conservative."""
    if rule not in RULES:
        raise InvalidInput(f"unknown calibration rule {rule!r}: valid are {', '.join(RULES)}")
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(gain_with, dtype=np.float64)
    wo = np.asarray(gain_without, dtype=np.float64)
    if not (s.shape == w.shape == wo.shape) or s.ndim != 1:
        raise InvalidInput("scores, gain_with and gain_without must be equal-length 1-D sequences")
    if s.size == 0:
        raise InvalidInput("calibration needs at least one question")
    if not np.isfinite(s).all():
        raise InvalidInput("calibration scores must be finite")
    order = np.argsort(s, kind="stable")
    s, delta = s[order], (wo - w - margin)[order]  # (N,) gain of dropping each question
    gains = np.concatenate([[0.0], np.cumsum(delta)])  # (N+1,) gain of dropping the i lowest
    # A cut can only fall between distinct scores: dropping i questions needs s[i-1] < s[i].
    valid = np.concatenate([[True], s[:-1] < s[1:], [True]])  # (N+1,)
    gains = np.where(valid, gains, -np.inf)
    if rule == "net":
        dropped = int(np.argmax(gains > gains.max() - 1e-12))  # the lowest of the best cuts
    else:
        helped = np.flatnonzero(delta < -1e-12)  # context gained more than the margin here
        first = int(helped[0]) if helped.size else s.size
        # every question scored below the first helped one, ties with it excluded
        dropped = int(np.searchsorted(s, s[first], side="left")) if first < s.size else s.size
    threshold: float | None
    if dropped == 0:
        threshold = None  # dropping even the lowest-scored question does not pay
    elif dropped < s.size:
        threshold = float((s[dropped - 1] + s[dropped]) / 2)  # halfway between the last dropped and first kept
    else:
        threshold = float(np.nextafter(s[-1], np.inf))
    keep = np.ones(s.size, dtype=bool)
    keep[:dropped] = False
    w_sorted, wo_sorted = w[order], wo[order]
    selective = np.where(keep, w_sorted, wo_sorted).mean()
    return Calibration(
        threshold=threshold,
        questions=int(s.size),
        dropped=dropped,
        gain_always=float(w.mean()),
        gain_selective=float(selective),
        margin=margin,
        rule=rule,
    )
