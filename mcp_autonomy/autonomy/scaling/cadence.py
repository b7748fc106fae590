"""When the measured load can change: the update cadence of the load metric, learned from readings.

A load metric is rarely continuous. A per-minute TPM counter, a 5-minute rollup or a half-hourly
export holds its value between updates, and the scaler reads it more often than it changes
(every 15 s). Between two updates the load the scaler acts on cannot move, so a pod provisioned
"in case it rises" is wasted until the next update is due; at the update the new value may jump
by far more than a continuous load would in the same time.

`LoadCadence` learns that cadence from the readings alone: the shortest interval between two
changes of the reading over its recent window (the shortest, so one early update makes it more
careful, never less), anchored at the last change. It answers whether a change may fall inside a
window ahead (`may_change_within`), and keeps the relative size of past changes against what was
provisioned for them (`surprise_quantile`). A load that changes at every reading has no cadence
worth using (`known` is False) and the predictive policy treats it as continuous.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from mcp_autonomy.autonomy.scaling.forecast import LevelQuantiles

DEFAULT_CADENCE_WINDOW: Final = 32  # change intervals remembered
MIN_CADENCE_CHANGES: Final = 8  # intervals seen before the cadence is used
CHANGE_SIZES_KEPT: Final = 2_880  # relative change sizes kept (two days of minute updates)
MIN_CHANGE_SIZES: Final = 20  # sizes seen before their quantile is used
CADENCE_SLACK: Final = 0.1  # an update may come this fraction of the cadence early
STALE_AFTER_INTERVALS: Final = 5  # a reading unchanged for this many update intervals is stale


class LoadCadence:
    """The interval at which the load reading changes, and how far it jumps when it does.

    `observe(now_s, load)` at every reading. `interval_s` is the shortest interval between
    changes among the last `window` (None until `MIN_CADENCE_CHANGES` were seen). A change may
    come from `last change + k x interval - slack` on (slack: `CADENCE_SLACK` of the interval
    plus the longest gap between two readings lately), so jittered or early updates count as
    possible. A reading that does not change for longer than the cadence (a hole in the metric,
    a quiet night) keeps every later window "may change": only the next change re-anchors it.
    """

    __slots__ = ("_gaps", "_intervals", "_last_change_s", "_last_s", "_last_value", "_sizes")

    def __init__(self, window: int = DEFAULT_CADENCE_WINDOW) -> None:
        if not isinstance(window, int) or window < MIN_CADENCE_CHANGES:
            raise ValueError(
                f"LoadCadence.window must be an integer >= {MIN_CADENCE_CHANGES}, got {window!r}"
            )
        self._intervals: deque[float] = deque(maxlen=window)
        self._gaps: deque[float] = deque(maxlen=window)
        self._sizes = LevelQuantiles(CHANGE_SIZES_KEPT, MIN_CHANGE_SIZES)
        self._last_value: float | None = None
        self._last_s: float | None = None
        self._last_change_s: float | None = None

    @property
    def interval_s(self) -> float | None:
        """The learned update interval in seconds (None until enough changes were seen)."""
        if len(self._intervals) < MIN_CADENCE_CHANGES:
            return None
        return min(self._intervals)

    @property
    def last_change_s(self) -> float | None:
        """When the reading last changed."""
        return self._last_change_s

    def observe(self, now_s: float, load_tpm: float) -> bool:
        """Record a reading; True when it differs from the previous one (a change)."""
        changed = False
        if self._last_s is not None and now_s > self._last_s:
            self._gaps.append(now_s - self._last_s)
        if self._last_value is not None and load_tpm != self._last_value:
            changed = True
            if self._last_change_s is not None and now_s > self._last_change_s:
                self._intervals.append(now_s - self._last_change_s)
            self._last_change_s = now_s
        self._last_value = load_tpm
        self._last_s = now_s
        return changed

    def known(self, horizon_s: float) -> bool:
        """Whether the cadence is longer than `horizon_s`: only then can a window be quiet."""
        interval = self.interval_s
        return interval is not None and interval > horizon_s + self._slack_s(interval)

    def _slack_s(self, interval_s: float) -> float:
        return CADENCE_SLACK * interval_s + max(self._gaps, default=0.0)

    def may_change_within(self, now_s: float, horizon_s: float) -> bool:
        """Whether the reading may change in (now_s, now_s + horizon_s]; True when unknown."""
        interval = self.interval_s
        anchor = self._last_change_s
        if interval is None or anchor is None:
            return True
        elapsed = now_s - anchor
        if elapsed < 0:
            return True
        slack = self._slack_s(interval)
        if elapsed + slack >= interval:
            return True  # the next update is due (or overdue): any moment now
        next_due = anchor + interval - slack
        return now_s + horizon_s >= next_due

    def stale(self, now_s: float) -> bool:
        """Whether the reading has not changed for `STALE_AFTER_INTERVALS` update intervals.

        A metric that moves every minute and then holds one value for five is no longer being
        reported (a collector down, a hole in the trace); what it holds is not the load. A held
        0 is no traffic (a night with none, a business-hours service), never stale: a stopped
        collector holds its last figure or reports nothing.
        """
        interval = self.interval_s
        anchor = self._last_change_s
        if interval is None or anchor is None or not self._last_value:
            return False
        return now_s - anchor > STALE_AFTER_INTERVALS * interval

    def record_change_size(self, relative_excess: float, level: float) -> None:
        """How far a new reading rose above what was expected (relative; <= 0: it did not).

        `level` is the expected load in units of one instance's target: relative jumps are
        larger at low load (counts are Poisson), so each level keeps its own sizes.
        """
        if math.isfinite(relative_excess):
            self._sizes.add(relative_excess, level)

    def surprise_quantile(self, quantile: float, level: float) -> float | None:
        """The `quantile` of the change sizes seen at this level (pooled while it has fewer than
        `MIN_CHANGE_SIZES`); None until `MIN_CHANGE_SIZES` were seen in all."""
        if len(self._sizes) < MIN_CHANGE_SIZES:
            return None
        return self._sizes.quantile(quantile, level)
