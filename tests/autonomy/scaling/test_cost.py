"""Cost and shortfall accounting: counterfactual readiness, the shadow ledger's trust, the matcher."""

from __future__ import annotations

import pytest

from mcp_autonomy.autonomy.scaling.cost import (
    DEFAULT_COST_WINDOW_S,
    CostMatcher,
    CounterfactualReplicas,
    ShadowLedger,
    _Tally,
)
from mcp_autonomy.autonomy.scaling.reactive import ReactiveConfig

MONDAY_S = 1_767_571_200.0
HOUR_S = 3600.0
CONFIG = ReactiveConfig(target_tpm_per_instance=100.0, min_replicas=1, max_replicas=50)


def test_counterfactual_pods_are_ready_one_start_up_after_they_were_added() -> None:
    pods = CounterfactualReplicas(60.0, initial=2)
    assert pods.ready(MONDAY_S) == 2  # the initial pods are serving
    pods.set(MONDAY_S, 6)
    assert (pods.replicas, pods.ready(MONDAY_S + 45.0)) == (6, 2)
    assert pods.ready(MONDAY_S + 60.0) == 6
    pods.set(MONDAY_S + 75.0, 3)  # removed pods go at once
    assert pods.ready(MONDAY_S + 75.0) == 3
    pods.set(MONDAY_S + 90.0, 5)
    assert pods.ready(MONDAY_S + 120.0) == 3
    assert pods.ready(MONDAY_S + 150.0) == 5


def step_load(now_s: float) -> float:
    """200 tpm, but 1000 tpm during the second half of every hour (a step the HPA is late for)."""
    return 1000.0 if (now_s % HOUR_S) >= HOUR_S / 2 else 200.0


def run_ledger(candidate_for: object, hours: int = 8, budget: float = 1.0) -> ShadowLedger:
    ledger = ShadowLedger(CONFIG, startup_s=60.0, window_s=24 * HOUR_S, cost_budget=budget, min_trust_hours=6)
    now = MONDAY_S
    while now < MONDAY_S + hours * HOUR_S:
        ledger.observe(now, step_load(now), 2, paused=False)
        ledger.set_candidate(now, candidate_for(now))  # type: ignore[operator]
        now += 15.0
    return ledger


def test_a_candidate_ready_before_each_step_is_trusted() -> None:
    # 8 pods (1000 / 125) from two minutes before the step, 2 otherwise: cheaper than the HPA's
    # 10 pods, and never short while the HPA is short for a start-up at every step.
    def ahead(now_s: float) -> int:
        return 8 if step_load(now_s) > 200.0 or step_load(now_s + 120.0) > 200.0 else 2

    ledger = run_ledger(ahead)
    totals = ledger.totals()
    assert totals.candidate_short_s == 0
    assert totals.shadow_short_s > 0
    assert totals.candidate_spend_s < totals.shadow_spend_s
    assert ledger.trusted
    ratio = ledger.spend_ratio
    assert ratio is not None and ratio < 1


def test_a_candidate_short_longer_than_the_hpa_is_not_trusted() -> None:
    ledger = run_ledger(lambda now_s: 2)  # never scales: short for the whole high half hour
    assert ledger.totals().candidate_short_s > ledger.totals().shadow_short_s
    assert not ledger.trusted


def test_a_candidate_dearer_than_the_budget_is_not_trusted() -> None:
    ledger = run_ledger(lambda now_s: 30)  # never short, but three times the spend
    assert ledger.totals().candidate_short_s == 0
    assert not ledger.trusted
    assert run_ledger(lambda now_s: 30, budget=5.0).trusted


def test_no_trust_before_enough_hours() -> None:
    assert not run_ledger(lambda now_s: 30, hours=5, budget=5.0).trusted


@pytest.mark.parametrize(("candidate", "lower"), [(30, True), (4, False)])
def test_the_matcher_gives_margin_back_only_when_over_budget(candidate: int, lower: bool) -> None:
    matcher = CostMatcher(
        cost_budget=1.0, cost_gain=1.0, start_quantile=0.9, min_quantile=0.5, max_quantile=0.999
    )
    ledger = run_ledger(lambda now_s: candidate, hours=6)
    matcher.adjust(ledger)
    assert (matcher.quantile < 0.9) is lower
    assert 0.5 <= matcher.quantile <= 0.999


class _EvenLedger:
    """A ledger whose candidate spent exactly what the reactive rule did over six hours."""

    comparable_hours = 6
    last_hour = _Tally(candidate_spend_s=3600.0, shadow_spend_s=3600.0, candidate_seen=True)

    def totals(self) -> _Tally:
        return _Tally(candidate_spend_s=6 * 3600.0, shadow_spend_s=6 * 3600.0, candidate_seen=True)


class _DailyLedger:
    """A ledger fed by hand: the reactive rule's spend follows a day (1 pod at night, 9 by day) and
    the candidate spends `spend(quantile)` x that, so the matcher's quantile moves its spend."""

    def __init__(self) -> None:
        self.hours: list[_Tally] = []

    @property
    def comparable_hours(self) -> int:
        return min(len(self.hours), 48)

    @property
    def last_hour(self) -> _Tally | None:
        return self.hours[-1] if self.hours else None

    def totals(self) -> _Tally:
        total = _Tally(candidate_seen=True)
        for tally in self.hours[-48:]:
            total.candidate_spend_s += tally.candidate_spend_s
            total.shadow_spend_s += tally.shadow_spend_s
        return total

    def close_hour(self, hour: int, quantile: float) -> None:
        reactive = 3600.0 * (9.0 if 8 <= hour % 24 < 20 else 1.0)
        # Dearer by day: a margin costs pods in proportion to the load it rides on.
        busy = 1.0 + (0.6 if 8 <= hour % 24 < 20 else 0.1) * (quantile - 0.7)
        self.hours.append(
            _Tally(candidate_spend_s=reactive * busy, shadow_spend_s=reactive, candidate_seen=True)
        )


def test_the_matcher_aims_just_under_the_budget() -> None:
    # Spending exactly the budget is not yet under it: the hourly noise around the aim would carry
    # the spend over the budget half the time, so the matcher gives a little margin back.
    matcher = CostMatcher(
        cost_budget=1.0, cost_gain=1.0, start_quantile=0.9, min_quantile=0.5, max_quantile=0.999
    )
    matcher.adjust(_EvenLedger())  # type: ignore[arg-type]
    assert 0.89 < matcher.quantile < 0.9


@pytest.mark.parametrize(
    ("spend_ratio", "extra_short_s", "trusted"),
    [
        (1.01, 0.0, True),  # the matcher's noise around its aim
        (1.03, 0.0, False),  # dearer than the budget beyond that noise
        (1.0, 60.0, True),  # one pod start-up more short over the window: one miss, noise
        (1.0, 90.0, False),  # more than that: the forecast lost
    ],
)
def test_trust_tolerates_the_matchers_noise_and_one_miss_not_a_loss(
    spend_ratio: float, extra_short_s: float, trusted: bool
) -> None:
    ledger = ShadowLedger(CONFIG, startup_s=60.0, window_s=24 * HOUR_S, cost_budget=1.0, min_trust_hours=6)
    for _ in range(6):  # six comparable hours; the shadow is short 2 minutes in each
        ledger._buckets.append(
            _Tally(
                candidate_spend_s=3600.0 * spend_ratio,
                shadow_spend_s=3600.0,
                candidate_short_s=120.0 + extra_short_s / 6,
                shadow_short_s=120.0,
                candidate_seen=True,
            )
        )
    ledger._judge()
    assert ledger.trusted is trusted


def test_the_matchers_total_spend_tracks_the_budget_weighing_each_hour_by_its_spend() -> None:
    # A margin costs more by day than at night. A correction by the hours' spend ratios would
    # weigh a night hour like a day hour; the total would settle away from the aim. Weighed by
    # what each hour spent, the total spend over days 2-7 is just under the budget.
    matcher = CostMatcher(
        cost_budget=1.0, cost_gain=1.0, start_quantile=0.9, min_quantile=0.5, max_quantile=0.999
    )
    ledger = _DailyLedger()
    for hour in range(7 * 24):
        ledger.close_hour(hour, matcher.quantile)
        matcher.adjust(ledger)  # type: ignore[arg-type]
    settled = ledger.hours[24:]
    spent = sum(t.candidate_spend_s for t in settled) / sum(t.shadow_spend_s for t in settled)
    assert 0.985 <= spent <= 1.0


def test_a_busy_hours_overspend_moves_the_quantile_more_than_a_quiet_hours() -> None:
    def quantile_after(last_hour: _Tally) -> float:
        ledger = _DailyLedger()
        for _hour in range(6):  # six even hours of 5 pods
            ledger.hours.append(
                _Tally(candidate_spend_s=5 * 3600.0, shadow_spend_s=5 * 3600.0, candidate_seen=True)
            )
        ledger.hours.append(last_hour)
        matcher = CostMatcher(
            cost_budget=1.0, cost_gain=1.0, start_quantile=0.9, min_quantile=0.5, max_quantile=0.999
        )
        matcher.adjust(ledger)  # type: ignore[arg-type]
        return matcher.quantile

    busy = quantile_after(
        _Tally(candidate_spend_s=12 * 3600.0, shadow_spend_s=10 * 3600.0, candidate_seen=True)
    )
    quiet = quantile_after(
        _Tally(candidate_spend_s=1.2 * 3600.0, shadow_spend_s=1 * 3600.0, candidate_seen=True)
    )
    assert busy < quiet < 0.9  # both 20 % over; the busy hour overspent ten times the pods


def test_trust_follows_the_last_day_not_an_older_record() -> None:
    # A cold start: for a day the forecast was short longer than the HPA (its margin still
    # unlearned), then for a day it was short half as long at 95 % of the spend. Over two days it
    # would still be behind (and the policy would follow the HPA for a second day); the default
    # window holds the last day, a whole daily cycle, and trusts it.
    ledger = ShadowLedger(CONFIG, startup_s=60.0, window_s=DEFAULT_COST_WINDOW_S, cost_budget=1.0)
    worse = _Tally(3000.0, 3600.0, 600.0, 120.0, True)
    better = _Tally(3420.0, 3600.0, 60.0, 120.0, True)
    for tally in [worse] * 24 + [better] * 24:
        ledger._buckets.append(tally)
    ledger._judge()
    assert ledger.trusted
    two_days = ShadowLedger(CONFIG, startup_s=60.0, window_s=2 * 24 * HOUR_S, cost_budget=1.0)
    for tally in [worse] * 24 + [better] * 24:
        two_days._buckets.append(tally)
    two_days._judge()
    assert not two_days.trusted


@pytest.mark.parametrize(
    ("deployed", "acting", "over"), [(30, True, True), (2, True, False), (30, False, False)]
)
def test_over_budget_counts_what_the_deployment_ran_while_the_forecast_decided(
    deployed: int, acting: bool, over: bool
) -> None:
    # The HPA's count on step_load averages about 6 pods. A forecast that ran 30 is over the
    # budget, one that ran 2 is not; 30 pods run while the policy followed the reactive rule are
    # not the forecast's spending. Not before the forecast decided in six closed hours.
    ledger = ShadowLedger(CONFIG, startup_s=60.0, window_s=24 * HOUR_S, cost_budget=1.0)
    now, verdicts = MONDAY_S, []
    while now < MONDAY_S + 8 * HOUR_S:
        ledger.observe(now, step_load(now), deployed, paused=False, forecast_acting=acting)
        ledger.set_candidate(now, 8)
        verdicts.append((now, ledger.over_budget))
        now += 15.0
    assert not any(over_budget for at, over_budget in verdicts if at < MONDAY_S + 6 * HOUR_S)
    assert verdicts[-1][1] is over
    assert all(t.acting_spend_s == (deployed * HOUR_S if acting else 0) for t in ledger._buckets)


def test_over_budget_leaves_out_time_with_a_stale_reading() -> None:
    # 30 pods while the reading was stale: the forecast provisioned through a hole in the metric,
    # the reactive rule followed a frozen value; no comparison, so no overspend on record.
    ledger = ShadowLedger(CONFIG, startup_s=60.0, window_s=24 * HOUR_S, cost_budget=1.0)
    now = MONDAY_S
    while now < MONDAY_S + 8 * HOUR_S:
        ledger.observe(now, step_load(now), 30, paused=False, load_known=False, forecast_acting=True)
        now += 15.0
    assert not ledger.over_budget
    assert all(t.acting_spend_s == 0 and t.shadow_spend_s > 0 for t in ledger._buckets)
