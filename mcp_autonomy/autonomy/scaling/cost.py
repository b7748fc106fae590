"""Cost and shortfall accounting for the predictive policy, against the reactive (HPA) rule it must beat.

`ShadowLedger` runs the Kubernetes HPA's rule (`hpa.HorizontalPodAutoscaler` with Kubernetes'
defaults, aimed at the target) on the same load with its own replica count and replays,
counterfactually, what that count and the predictive candidate count would have cost (replica-
seconds) and how long each would have been short of capacity (pods take `startup_s` to become
ready, removed pods go at once). Per-hour tallies over a window tell the policy whether its
forecast has earned its keep (`forecast_trusted`). `CostMatcher` lowers the safety quantile when
the candidate spends more than `cost_budget` x the reactive rule and raises it back when it spends
less. Both are driven by the timestamps they are given, never by a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from mcp_autonomy.autonomy.scaling.hpa import HorizontalPodAutoscaler, HpaConfig
from mcp_autonomy.autonomy.scaling.reactive import ReactiveConfig

DEFAULT_COST_BUDGET: Final = 1.0  # spend at most what the reactive rule would
DEFAULT_COST_WINDOW_S: Final = 86_400.0  # spend and shortfall compared over the last day
DEFAULT_COST_GAIN: Final = 1.0  # quantile log-odds moved per average hour's spend over or under
DEFAULT_MIN_SAFETY_QUANTILE: Final = 0.5  # the cost budget never pushes the quantile below this ...
DEFAULT_MAX_SAFETY_QUANTILE: Final = 0.999  # ... or above this
DEFAULT_MIN_TRUST_HOURS: Final = 6  # hours of counterfactual record before the forecast may act
_COST_BUCKET_S: Final = 3600.0  # tallies are kept per hour; the quantile and the trust move hourly
_MIN_COST_BUCKETS: Final = 3  # adjust the quantile after three hours
_MIN_BUDGET_HOURS: Final = 6  # hold the budget once the forecast decided in six hours (the trust minimum)
_COST_AIM: Final = 0.99  # the matcher steers to 99 % of the budget: its hourly noise stays under it
_SPEND_TOLERANCE: Final = 1.02  # the ledger distrusts a candidate spending 2 % over the budget: less
# is the matcher's noise around its aim, which it corrects by itself
DEFAULT_BUDGET_WINDOW_S: Final = 7 * 86_400.0  # the budget is held over the last week's spend
_MAX_GAP_S: Final = 300.0  # a longer gap between calls counts as this long (a paused loop is not spend)


def _logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


class CounterfactualReplicas:
    """Ready replicas of a replica count that changes at given times, as a ReplicaSet would serve it.

    Added pods are ready `startup_s` after they were added; removed pods go at once, the newest
    first. So the ready count at t is the lowest count set within [t - startup_s, t] (including
    the one in force at t - startup_s): a pod is ready iff it has been there since then.
    """

    __slots__ = ("_entries", "_startup_s")

    def __init__(self, startup_s: float, initial: int) -> None:
        self._startup_s = startup_s
        self._entries: deque[tuple[float, int]] = deque([(-math.inf, initial)])

    @property
    def replicas(self) -> int:
        """The count in force now."""
        return self._entries[-1][1]

    def set(self, now_s: float, replicas: int) -> None:
        entries = self._entries
        if replicas != entries[-1][1]:
            entries.append((now_s, replicas))
        cutoff = now_s - self._startup_s
        while len(entries) >= 2 and entries[1][0] <= cutoff:
            entries.popleft()

    def ready(self, now_s: float) -> int:
        cutoff = now_s - self._startup_s
        entries = self._entries
        while len(entries) >= 2 and entries[1][0] <= cutoff:
            entries.popleft()
        return min(replicas for _, replicas in entries)


@dataclass(slots=True)
class _Tally:
    """One hour's figures, in seconds: replica-seconds spent and seconds short of capacity.

    `acting_spend_s` is what the deployment actually ran while the forecast decided and
    `acting_shadow_spend_s` what the reactive rule would have run meanwhile: the budget is held
    on them. The candidate's and the shadow's other figures are counterfactual.
    """

    candidate_spend_s: float = 0.0
    shadow_spend_s: float = 0.0
    candidate_short_s: float = 0.0
    shadow_short_s: float = 0.0
    candidate_seen: bool = False
    acting_spend_s: float = 0.0
    acting_shadow_spend_s: float = 0.0


class ShadowLedger:
    """What the reactive rule and the predictive candidate would have cost and missed, per hour.

    Why: the predictive policy must never do worse than the HPA it replaces. Both counts are
    replayed on the measured load with the same start-up delay; over the last `window_s` the
    candidate is trusted only if it was short of capacity no longer than the reactive rule and
    spent no more than `cost_budget` x it. On load with no pattern the forecast loses that
    comparison and the policy follows the reactive rule. Spend is not tallied while `paused`
    (a guard blocks scale-downs: the shadow knows no incidents).
    """

    __slots__ = (
        "_buckets",
        "_budget",
        "_budget_acting_hours",
        "_budget_hours",
        "_budget_spend_s",
        "_candidate",
        "_capacity_tpm",
        "_hour",
        "_last_s",
        "_min_trust_hours",
        "_shadow",
        "_shadow_replicas",
        "_tally",
        "startup_s",
        "trusted",
    )

    def __init__(
        self,
        reactive: ReactiveConfig,
        *,
        startup_s: float,
        window_s: float,
        cost_budget: float,
        min_trust_hours: int = DEFAULT_MIN_TRUST_HOURS,
        budget_window_s: float = DEFAULT_BUDGET_WINDOW_S,
    ) -> None:
        # The HPA an operator would run instead: Kubernetes' defaults, aimed at the target (an
        # HPA's minReplicas is at least 1). Falling back means doing exactly what it would do.
        self._shadow = HorizontalPodAutoscaler(
            HpaConfig(
                target_tpm_per_instance=reactive.target_tpm_per_instance,
                min_replicas=max(1, reactive.min_replicas),
                max_replicas=reactive.max_replicas,
            )
        )
        self._capacity_tpm = reactive.capacity_tpm_per_instance
        self._budget = cost_budget
        self._min_trust_hours = min_trust_hours
        self._shadow_replicas: CounterfactualReplicas | None = None
        self._candidate: CounterfactualReplicas | None = None
        self._buckets: deque[_Tally] = deque(maxlen=max(1, int(window_s // _COST_BUCKET_S)))
        # (deployed, reactive) replica-seconds while the forecast decided, per closed hour over the
        # budget window; their running sums; how many of those hours it decided in.
        self._budget_hours: deque[tuple[float, float]] = deque(
            maxlen=max(1, int(budget_window_s // _COST_BUCKET_S))
        )
        self._budget_spend_s = [0.0, 0.0]
        self._budget_acting_hours = 0
        self._tally = _Tally()
        self._hour: int | None = None
        self._last_s: float | None = None
        self.startup_s = startup_s
        self.trusted = False
        """Whether, over the window, the candidate beat the reactive rule (set hourly)."""

    @property
    def shadow_replicas(self) -> int | None:
        """What the reactive rule runs now (None before the first observation)."""
        return None if self._shadow_replicas is None else self._shadow_replicas.replicas

    @property
    def hours(self) -> int:
        """Closed hours in the window."""
        return len(self._buckets)

    def totals(self) -> _Tally:
        """The window's sums over the closed hours in which the candidate ran (comparable hours)."""
        total = _Tally()
        for tally in self._buckets:
            if not tally.candidate_seen:
                continue
            total.candidate_seen = True
            total.candidate_spend_s += tally.candidate_spend_s
            total.shadow_spend_s += tally.shadow_spend_s
            total.candidate_short_s += tally.candidate_short_s
            total.shadow_short_s += tally.shadow_short_s
        return total

    @property
    def last_hour(self) -> _Tally | None:
        """The most recently closed hour's tally (None before the first hour closes)."""
        return self._buckets[-1] if self._buckets else None

    @property
    def over_budget(self) -> bool:
        """Whether, while the forecast decided, the deployment spent more than `cost_budget` x
        what the reactive rule would have, over the budget window (the open hour included).

        Counted from what the deployment ran (its replicas at each call), once the forecast has
        decided in `_MIN_BUDGET_HOURS` of the window's closed hours. The matcher steers the
        candidate's spend to just under the budget, but it answers an hour late, so after a level
        shift or a change of shape the spend can run over for hours. While this is True the
        policy runs no more than the reactive rule's count. Not counted: time in which the policy
        followed that rule (it then runs what the rule runs, a pod more where the rule's own
        arithmetic needs it), and time with a stale reading (through a hole in the metric the
        forecast provisions for the load it expects, the rule for a frozen value: no comparison).
        """
        if self._budget_acting_hours < _MIN_BUDGET_HOURS:
            return False
        spent = self._tally.acting_spend_s + self._budget_spend_s[0]
        reactive = self._tally.acting_shadow_spend_s + self._budget_spend_s[1]
        return spent > self._budget * reactive

    @property
    def spend_ratio(self) -> float | None:
        """Candidate spend / reactive spend over the window so far (None before any)."""
        total = self.totals()
        return total.candidate_spend_s / total.shadow_spend_s if total.shadow_spend_s > 0 else None

    def observe(
        self,
        now_s: float,
        load_tpm: float,
        current_replicas: int,
        *,
        paused: bool,
        load_known: bool = True,
        forecast_acting: bool = False,
    ) -> bool:
        """Tally the interval since the previous call, then step the shadow reactive rule.

        With `load_known` False (a stale reading) spend is tallied but neither side is judged
        short against a figure that is not the load. `forecast_acting` says whether the forecast
        decided the deployment's count over that interval: its spend is then held to the budget,
        unless the reading is stale (the reactive rule's count then follows a frozen value, and
        what the forecast provisions through a hole in the metric is not compared with it).
        Returns True when an hour closed (the caller may then adjust its quantile).
        """
        if self._shadow_replicas is None:
            self._shadow_replicas = CounterfactualReplicas(self.startup_s, current_replicas)
        shadow = self._shadow_replicas
        if self._last_s is not None and not paused:
            elapsed_s = min(now_s - self._last_s, _MAX_GAP_S)
            tally = self._tally
            capacity = self._capacity_tpm
            tally.shadow_spend_s += shadow.replicas * elapsed_s
            if forecast_acting and load_known:
                tally.acting_spend_s += current_replicas * elapsed_s
                tally.acting_shadow_spend_s += shadow.replicas * elapsed_s
            if load_known and load_tpm > shadow.ready(now_s) * capacity:
                tally.shadow_short_s += elapsed_s
            candidate = self._candidate
            if candidate is not None:
                tally.candidate_seen = True
                tally.candidate_spend_s += candidate.replicas * elapsed_s
                if load_known and load_tpm > candidate.ready(now_s) * capacity:
                    tally.candidate_short_s += elapsed_s
        self._last_s = now_s
        decision = self._shadow.recommend(now_s, load_tpm, shadow.replicas, shadow.ready(now_s))
        shadow.set(now_s, decision.desired_replicas)
        hour = int(now_s // _COST_BUCKET_S)
        if self._hour is None:
            self._hour = hour
            return False
        if hour == self._hour:
            return False
        self._buckets.append(self._tally)
        self._hold_budget(self._tally)
        self._tally = _Tally()
        self._hour = hour
        self._judge()
        return True

    def _hold_budget(self, closed: _Tally) -> None:
        """Move the closed hour's acting spend into the budget window's running sums."""
        hours, sums = self._budget_hours, self._budget_spend_s
        if len(hours) == hours.maxlen:
            spent, reactive = hours[0]
            sums[0] -= spent
            sums[1] -= reactive
            self._budget_acting_hours -= reactive > 0
        hours.append((closed.acting_spend_s, closed.acting_shadow_spend_s))
        sums[0] += closed.acting_spend_s
        sums[1] += closed.acting_shadow_spend_s
        self._budget_acting_hours += closed.acting_shadow_spend_s > 0

    def set_candidate(self, now_s: float, replicas: int) -> None:
        """The count the forecast alone would run from now on (None-free once the forecast is up)."""
        if self._candidate is None:
            self._candidate = CounterfactualReplicas(self.startup_s, replicas)
        self._candidate.set(now_s, replicas)

    @property
    def comparable_hours(self) -> int:
        """Closed hours in the window in which the candidate ran."""
        return sum(1 for tally in self._buckets if tally.candidate_seen)

    def _judge(self) -> None:
        if self.comparable_hours < self._min_trust_hours:
            self.trusted = False
            return
        total = self.totals()
        # One pod start-up of slack on the shortfall: a single miss more than the reactive rule
        # over the window is noise, not a forecast that lost.
        self.trusted = (
            total.candidate_short_s <= total.shadow_short_s + self.startup_s
            and total.candidate_spend_s <= _SPEND_TOLERANCE * self._budget * total.shadow_spend_s
        )


class CostMatcher:
    """Keeps the candidate's spend within `cost_budget` x what the reactive rule would spend.

    Every hour, once three hours are tallied, the safety quantile's log-odds move by `cost_gain x
    (0.99 x budget x reactive spend - candidate spend)` of the hour just closed, in units of an
    average hour's reactive spend over the ledger's window, within [min_safety_quantile,
    max_safety_quantile]. That is an integral controller on the spend itself: the log-odds sum
    every hour's over- and underspend, so the candidate's total spend tracks 99 % of the budget
    (aiming 1 % under it keeps an hour's noise from carrying the spend over), and an hour weighs
    what it costs (a busy hour's overspend moves the quantile more than a quiet hour's). A
    forecast cheaper than the reactive rule buys the highest quantile allowed, a dearer one gives
    margin back until it fits the budget.

    Why not the window's spend ratio: each hour's correction then acts on a two-day average that
    answers slowly, so the quantile overshoots and the spend swings by +/-8 % from day to day;
    a log ratio also weighs a quiet hour like a busy one.
    """

    __slots__ = ("_budget", "_gain", "_logit", "_logit_max", "_logit_min")

    def __init__(
        self,
        *,
        cost_budget: float,
        cost_gain: float,
        start_quantile: float,
        min_quantile: float,
        max_quantile: float,
    ) -> None:
        self._budget = cost_budget
        self._gain = cost_gain
        self._logit_min = _logit(min_quantile)
        self._logit_max = _logit(max_quantile)
        self._logit = min(max(_logit(start_quantile), self._logit_min), self._logit_max)

    @property
    def quantile(self) -> float:
        """The safety quantile to provision at now."""
        return 1.0 / (1.0 + math.exp(-self._logit))

    def adjust(self, ledger: ShadowLedger) -> None:
        """Move the quantile after an hour closed in `ledger`."""
        hours = ledger.comparable_hours
        last = ledger.last_hour
        if hours < _MIN_COST_BUCKETS or last is None or not last.candidate_seen:
            return
        average_hour_s = ledger.totals().shadow_spend_s / hours
        if average_hour_s <= 0:
            return
        error = (_COST_AIM * self._budget * last.shadow_spend_s - last.candidate_spend_s) / average_hour_s
        self._logit = min(max(self._logit + self._gain * error, self._logit_min), self._logit_max)
