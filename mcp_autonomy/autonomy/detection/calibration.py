"""Score calibration: how a detector statistic becomes a score in [0, 1], and what sensitivity does.

Every statistic a detector computes is first divided by its own threshold, giving a ratio that is
1.0 exactly where that statistic would alarm. The ratio goes through one smooth, monotone map,

    score = 1 - 2 ** (-(ratio ** steepness))

so a score of 0.5 always means "at the alarm threshold", 0 means "nothing at all", and the score
approaches 1 as the evidence grows (ratio 1.5 gives 0.97 with the default steepness of 3). The same
map for every statistic makes scores comparable across statistics and across series.

Sensitivity does not change the map: it scales the thresholds (a low sensitivity asks for 30 %
more evidence, a high one for 20 % less), so a score of 0.5 keeps meaning "alarm here".
"""

from __future__ import annotations

import math
from typing import Final

from mcp_autonomy.config import Sensitivity

SCORE_AT_THRESHOLD: Final = 0.5
DEFAULT_STEEPNESS: Final = 3.0  # ratio 0.5 -> 0.08, 1.0 -> 0.5, 1.5 -> 0.97
SENSITIVITY_THRESHOLD_SCALE: Final[dict[Sensitivity, float]] = {
    Sensitivity.LOW: 1.3,
    Sensitivity.MEDIUM: 1.0,
    Sensitivity.HIGH: 0.8,
}
_LN2: Final = math.log(2.0)


def score_from_ratio(ratio: float, steepness: float = DEFAULT_STEEPNESS) -> float:
    """The score of a statistic that stands at `ratio` times its threshold (0 for ratio <= 0)."""
    if not ratio > 0.0:
        return 0.0
    if ratio > 1e3:  # the score is 1.0 to machine precision long before; avoids overflow
        return 1.0
    return -math.expm1(-_LN2 * ratio**steepness)


def ratio_from_score(score: float, steepness: float = DEFAULT_STEEPNESS) -> float:
    """The inverse of `score_from_ratio` on [0, 1): how many thresholds a score stands for."""
    if not 0.0 <= score < 1.0:
        raise ValueError(f"score must be in [0, 1), got {score!r}")
    if score == 0.0:
        return 0.0
    return float((-math.log1p(-score) / _LN2) ** (1.0 / steepness))


def threshold_scale(sensitivity: Sensitivity) -> float:
    """The factor every alarm threshold is multiplied by at this sensitivity."""
    return SENSITIVITY_THRESHOLD_SCALE[Sensitivity(sensitivity)]
