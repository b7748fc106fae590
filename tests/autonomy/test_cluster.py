"""The cluster plumbing on one process (SQLite, manual clock): shared decisions applied, route
changes written, store health, retention. Across real replicas: tests/pg/test_cluster_engine.py."""

from __future__ import annotations

import anyio
import pytest

from mcp_autonomy.autonomy.cluster import (
    DAY_S,
    FAILOVER_KEY,
    RETENTION_INTERVAL_S,
    ROUTER_COMPONENT,
    RetentionPruner,
)
from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.optimizer import STATE_TUNABLES
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.store import StoreUnavailable
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio


def _system(settings: Settings, clock: ManualClock) -> AutonomousSystem:
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("intasend"))
    system.register_provider(ScriptedAdapter("mpesa"), backups=["intasend"])
    return system


async def test_a_mode_stored_by_another_replica_applies_without_being_published_again(
    settings: Settings, clock: ManualClock
) -> None:
    system = _system(settings, clock)
    async with system.running():
        published = system.events.published_total
        system.shared_state.on_state("auto_optimizer", "mode", "dry_run")
        assert system.auto_optimizer.mode is Mode.DRY_RUN
        assert system.auto_optimizer.status().mode_source == "operator"
        system.shared_state.on_state("auto_optimizer", "mode", None)  # deleted: back to settings
        assert system.auto_optimizer.mode is Mode.ON
        assert system.auto_optimizer.status().mode_source == "settings"
        system.shared_state.on_state("auto_optimizer", "mode", "bogus")  # unknown: ignored
        assert system.auto_optimizer.mode is Mode.ON
        assert system.events.published_total == published


async def test_route_changes_are_written_and_a_shared_map_is_applied_silently(
    settings: Settings, clock: ManualClock
) -> None:
    system = _system(settings, clock)
    async with system.running():
        system.router.fail_over("mpesa", "intasend", reason="drill")
        assert system.store.get_state(ROUTER_COMPONENT, FAILOVER_KEY) == {"mpesa": "intasend"}
        system.router.fail_back("mpesa", reason="drill over")
        assert system.store.get_state(ROUTER_COMPONENT, FAILOVER_KEY) == {}
        before = len(system.events.history(types=[EventType.FAILOVER_TRIGGERED]))
        system.shared_state.on_state(ROUTER_COMPONENT, FAILOVER_KEY, {"mpesa": "intasend", "ghost": "mpesa"})
        assert system.router.failed_over == {"mpesa": "intasend"}, "providers not served here are ignored"
        assert len(system.events.history(types=[EventType.FAILOVER_TRIGGERED])) == before


async def test_the_failover_map_survives_a_restart(settings: Settings, clock: ManualClock) -> None:
    first = _system(settings, clock)
    async with first.running():
        first.router.fail_over("mpesa", "intasend", reason="drill")
    second = _system(settings, clock)
    async with second.running():
        assert second.router.failed_over == {}, "one process: the healer decides again from evidence"
        second.shared_state.load()
        assert second.router.failed_over == {"mpesa": "intasend"}


async def test_shared_tunables_apply_on_a_replica_that_does_not_lead_the_optimizer(
    settings: Settings, clock: ManualClock
) -> None:
    system = _system(settings, clock)
    async with system.running():
        lane = system.router.lane("mpesa").tunables
        changed = lane.model_copy(update={"timeout_s": lane.timeout_s + 1.0}).model_dump()
        system.shared_state.on_state("auto_optimizer", STATE_TUNABLES, {"mpesa": changed})
        # One process leads every loop: its own optimizer's values are the truth, nothing applied.
        assert system.router.lane("mpesa").tunables.timeout_s == lane.timeout_s
        system.auto_optimizer.apply_shared_state(STATE_TUNABLES, {"mpesa": changed, "ghost": changed})
        assert system.router.lane("mpesa").tunables.timeout_s == lane.timeout_s + 1.0


async def test_store_health_gates_readiness_and_payments(settings: Settings, clock: ManualClock) -> None:
    system = _system(settings, clock)
    async with system.running():
        assert system.ready and system.store_health.reachable is True
        status = await system.get_status()
        assert status.store.backend == "sqlite" and not status.store.shared
        assert set(status.leadership) == {
            "self_healer",
            "auto_scaler",
            "predictive_maintenance",
            "auto_optimizer",
            "reconciler",
        }
        assert all(leader.is_leader for leader in status.leadership.values())
        system.store_health.reachable = False  # what a failed ping leaves
        system.store_health.last_error = "connection refused"
        assert not system.ready
        with pytest.raises(StoreUnavailable, match="refuses new payments"):
            await system.submit_payment(
                PaymentRequest(
                    idempotency_key="refused-key-1",
                    operation=Operation.COLLECT,
                    money=Money(amount_minor=100, currency="KES"),
                    phone="+254712345678",
                    country="KE",
                )
            )
        assert await system.payments.get_payment("refused-key-1") is None
        assert await system.store_health.check()
        assert system.ready


async def test_retention_prunes_old_events_and_final_payments_only_on_the_leader(
    settings: Settings, clock: ManualClock
) -> None:
    system = _system(settings, clock)
    async with system.running():
        for key in ("old-final-key-1", "old-open-key-01"):
            await system.submit_payment(
                PaymentRequest(
                    idempotency_key=key,
                    operation=Operation.COLLECT,
                    money=Money(amount_minor=100, currency="KES"),
                    phone="+254712345678",
                    country="KE",
                )
            )
        final = await system.payments.get_payment("old-final-key-1")
        assert final is not None
        final.status = TransactionStatus.SUCCEEDED
        await system.payments.save_payment(final)
        system.record_manual_action(
            tool="drill", arguments={}, caller="test", reason="an old audit entry", ok=True, result=None
        )
        audits_before = system.store.count_audit()
        system.recorder.flush()
        events_before = system.store.count_events()
        later = ManualClock(start_epoch_s=clock.now())  # its own clock: the loops stay where they are
        pruner = RetentionPruner(
            store=system.store,
            payments=system.payments,
            clock=later,
            events_days=30,
            payments_days=400,
            is_leader=lambda: False,
        )
        assert await pruner.prune_once() == (0, 0), "nothing is old yet"
        await later.advance(401 * DAY_S)
        events, payments = await pruner.prune_once()
        assert events == events_before and payments == 1
        assert await system.payments.get_payment("old-final-key-1") is None
        assert await system.payments.get_payment("old-open-key-01") is not None, "open payments stay"
        assert system.store.count_audit() == audits_before, "the audit log is never pruned"
        runs = pruner.runs
        async with anyio.create_task_group() as tg:  # a follower's pruner never prunes
            await tg.start(pruner.run)
            await later.advance(3 * RETENTION_INTERVAL_S)
            tg.cancel_scope.cancel()
        assert pruner.runs == runs
        keep_all = RetentionPruner(
            store=system.store,
            payments=system.payments,
            clock=clock,
            events_days=0,
            payments_days=0,
            is_leader=lambda: True,
        )
        assert await keep_all.prune_once() == (0, 0)
        with pytest.raises(ValueError, match="retention must be >= 0 days"):
            RetentionPruner(
                store=system.store,
                payments=system.payments,
                clock=clock,
                events_days=-1,
                payments_days=1,
                is_leader=lambda: True,
            )
