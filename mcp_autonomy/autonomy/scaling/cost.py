"""Cost accounting for the predictive policy: its spend against what the reactive policy would spend."""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Final

from mcp_autonomy.autonomy.scaling.reactive import ReactivePolicy

if TYPE_CHECKING:
    from mcp_autonomy.autonomy.scaling.predictive import PredictiveConfig

DEFAULT_COST_BUDGET: Final = 0.998  # the reactive spend, less the matcher's ~0.1 % overshoot
DEFAULT_COST_WINDOW_S: Final = 86_400.0  # spend is compared over the last day (a whole daily cycle)
DEFAULT_COST_GAIN: Final = 1.0  # safety-quantile log-odds moved per hour per unit of log overspend
DEFAULT_MIN_SAFETY_QUANTILE: Final = 0.5  # the cost budget never pushes the quantile below this ...
DEFAULT_MAX_SAFETY_QUANTILE: Final = 0.99  # ... or above this
_COST_BUCKET_S: Final = 3600.0  # spend is tallied per hour and the quantile adjusted hourly
_MIN_COST_BUCKETS: Final = 3  # adjust after three hours; a partial day is better than waiting a day
_MAX_GAP_S: Final = 300.0  # a longer gap between calls counts as this long (a paused loop is not spend)


def _logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


class CostMatcher:
    """Holds the predictive policy's spend at `cost_budget` x what the reactive policy would spend.

    Why: a predictive policy can always buy fewer minutes short with more instances; the question
    operators ask is whether it does better for the same money. A shadow `ReactivePolicy` runs on
    the same load with its own replica count; both spends (replica-seconds) are tallied per hour
    over the last `cost_window_s` (a whole number of days, so the daily cycle cancels out). Every
    hour, once three hours are tallied, the safety quantile's log-odds move by `cost_gain x
    log(budget x reactive spend / own spend)`, within [min_safety_quantile, max_safety_quantile].
    Spend is not tallied while a guard blocks scale-downs (the shadow knows no incidents).
    """

    __slots__ = (
        "_buckets",
        "_budget",
        "_gain",
        "_hour",
        "_last_s",
        "_logit",
        "_logit_max",
        "_logit_min",
        "_own_s",
        "_reactive_s",
        "_shadow",
        "_shadow_replicas",
        "_window_hours",
    )

    def __init__(self, config: PredictiveConfig) -> None:
        assert config.cost_budget is not None
        self._budget = config.cost_budget
        self._gain = config.cost_gain
        self._shadow = ReactivePolicy(config.reactive)
        self._shadow_replicas: int | None = None
        self._window_hours = max(1, int(config.cost_window_s // _COST_BUCKET_S))
        self._buckets: deque[tuple[float, float]] = deque(maxlen=self._window_hours)
        self._hour: int | None = None
        self._own_s = 0.0
        self._reactive_s = 0.0
        self._last_s: float | None = None
        self._logit_min = _logit(config.min_safety_quantile)
        self._logit_max = _logit(config.max_safety_quantile)
        start = _logit(config.forecast.safety_quantile)
        self._logit = min(max(start, self._logit_min), self._logit_max)

    @property
    def quantile(self) -> float:
        """The safety quantile to provision at now."""
        return 1.0 / (1.0 + math.exp(-self._logit))

    @property
    def spend_ratio(self) -> float | None:
        """Own spend / reactive spend over the window so far (None before any)."""
        own = sum(b[0] for b in self._buckets)
        reactive = sum(b[1] for b in self._buckets)
        return own / reactive if reactive > 0 else None

    def observe(self, now_s: float, load_tpm: float, current_replicas: int, *, paused: bool) -> None:
        """Tally the spend since the previous call and step the shadow reactive policy."""
        shadow = self._shadow_replicas if self._shadow_replicas is not None else current_replicas
        if self._last_s is not None and not paused:
            elapsed_s = min(now_s - self._last_s, _MAX_GAP_S)
            self._own_s += current_replicas * elapsed_s
            self._reactive_s += shadow * elapsed_s
        self._last_s = now_s
        self._shadow_replicas = self._shadow.decide(now_s, load_tpm, shadow)[0]
        hour = int(now_s // _COST_BUCKET_S)
        if self._hour is None:
            self._hour = hour
        elif hour != self._hour:
            self._buckets.append((self._own_s, self._reactive_s))
            self._hour = hour
            self._own_s = self._reactive_s = 0.0
            if len(self._buckets) >= _MIN_COST_BUCKETS:
                self._adjust()

    def _adjust(self) -> None:
        own = sum(b[0] for b in self._buckets)
        reactive = sum(b[1] for b in self._buckets)
        if own <= 0 or reactive <= 0:
            return
        error = math.log(self._budget * reactive / own)
        self._logit = min(max(self._logit + self._gain * error, self._logit_min), self._logit_max)
