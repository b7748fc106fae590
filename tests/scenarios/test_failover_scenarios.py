"""Failover per fault kind at 100 payments a minute: the issue's targets as tests.

Each case is one run of `benchmarks/failover.py`'s scenario (the real router and reconciler, the
real adapters over HTTP to the sandbox, on the manual clock); the benchmark adds the baseline and
the spread over seeds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.anyio
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "failover.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("failover_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


failover = _load()
SCENARIOS = {s.name: s for s in failover.scenarios()}


@pytest.mark.parametrize("name", ["refused", "flapping"])
async def test_certainly_not_processed_fails_over_within_a_second(name: str) -> None:
    run = await failover.run(SCENARIOS[name], ours=True, seed=0)
    assert run.double_charges == 0
    assert run.first_backup_s is not None and run.first_backup_s <= 1.0
    assert run.failed + run.unknown <= 5


@pytest.mark.parametrize("name", ["503_before_acceptance", "5xx_after_acceptance"])
async def test_ambiguous_errors_are_never_resent_and_trip_within_three_payments(name: str) -> None:
    # No source says these were not processed: each stays with M-Pesa until its status is known,
    # and the fast trip stops sending new payments there after three of them.
    run = await failover.run(SCENARIOS[name], ours=True, seed=0)
    assert run.double_charges == 0
    assert run.breaker_trips >= 1
    assert run.failed + run.unknown <= 5
    assert run.first_backup_s is not None and run.first_backup_s <= 3 * failover.INTERVAL_S + 0.01


async def test_hung_calls_move_new_payments_to_the_backup_within_a_second() -> None:
    run = await failover.run(SCENARIOS["hang"], ours=True, seed=0)
    assert run.double_charges == 0
    assert run.first_backup_s is not None and run.hang_threshold_s is not None
    assert run.first_backup_s - run.hang_threshold_s <= 1.0


@pytest.mark.parametrize("name", ["customer_storm", "busy_customer"])
async def test_customer_errors_trip_nothing_and_fail_nothing_over(name: str) -> None:
    run = await failover.run(SCENARIOS[name], ours=True, seed=0)
    assert run.double_charges == 0
    assert (run.breaker_trips, run.failed_over, run.failed) == (0, 0, 0)
    assert run.customer_failed > 0
    if name == "customer_storm":
        assert run.storm_signals == 1
