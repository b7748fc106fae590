"""The shape every autonomy loop shares: a mode (the kill switch), a clock-driven loop, status.

A component runs its `tick()` every `interval_s` seconds of the injected clock while its mode is
`on` or `dry_run`. In `dry_run` it decides and reports (events flagged `dry_run`) but acts on
nothing; in `off` the loop stays alive but idle, so an operator can turn it back on at run time.
An operator's mode survives a restart (it is stored), and wins over the settings until changed.

Across replicas (PostgreSQL store) each loop has one leader: a component given a `LoopLeader`
runs `tick()` only while this replica leads it, and `follower_tick()` (measure, never act)
otherwise. Becoming leader runs the `elected_hooks` first (reload the shared state the previous
leader left), and a write refused by the leadership epoch (`LeadershipLost`) makes the component
step down at once: a leader that froze and woke up never acts on stale leadership.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.store import Fence, LeadershipLost, StateStore
from mcp_autonomy.timefmt import TimestampOrNone

logger = logging.getLogger(__name__)

T = TypeVar("T")

_LOOP_TASK: ContextVar[str | None] = ContextVar("mcp_autonomy_loop_task", default=None)
"""The component whose loop runs in this task: its writes are leader writes, so they are fenced.
Writes made elsewhere (an operator's tool call on any replica) carry no fence."""


class Mode(StrEnum):
    """What a component may do: act (`on`), only decide and report (`dry_run`), or nothing."""

    ON = "on"
    OFF = "off"
    DRY_RUN = "dry_run"


ModeSource = Literal["settings", "operator"]


class LoopLeader(Protocol):
    """Who leads one loop across the replicas, as this replica sees it."""

    @property
    def is_leader(self) -> bool:
        """True while this replica leads the loop (re-checked against its deadline on every read)."""
        ...

    @property
    def leader_identity(self) -> str | None:
        """The replica that leads the loop now; None when nobody does (or it is unknown)."""
        ...

    def fence(self) -> Fence | None:
        """The fence a leader write carries. None: writes are not fenced (one process). Raises
        `LeadershipLost` when fencing is required and this replica no longer leads."""
        ...

    def step_down(self, reason: str) -> None:
        """Stop leading now (a fenced write was refused)."""
        ...


class SoleLeader:
    """One process, one engine: this process always leads every loop, and writes are unfenced."""

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader_identity(self) -> str | None:
        return None

    def fence(self) -> Fence | None:
        return None

    def step_down(self, reason: str) -> None:
        logger.warning("a single-process loop was asked to step down (%s): ignored", reason)


SOLE_LEADER = SoleLeader()


class FencedLeader:
    """A loop led by one replica of several: every leader write must carry a fence.

    Wraps an elector whose `fence()` returns None when this replica does not lead; here that
    becomes `LeadershipLost`, so a write can never slip through unfenced."""

    def __init__(self, loop: str, elector: LoopLeader) -> None:
        self.loop = loop
        self.elector = elector

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader

    @property
    def leader_identity(self) -> str | None:
        return self.elector.leader_identity

    def fence(self) -> Fence:
        fence = self.elector.fence()
        if fence is None:
            raise LeadershipLost(self.loop, 0, "this replica does not lead the loop")
        return fence

    def step_down(self, reason: str) -> None:
        self.elector.step_down(reason)


class ComponentStatus(BaseModel):
    """A component's true, measured state. Figures not measured yet are null."""

    name: str
    mode: Mode
    mode_source: ModeSource = Field(
        description="`operator` when set at run time (persisted), else `settings`"
    )
    running: bool
    interval_s: float
    started_at: TimestampOrNone = None
    ticks: int = 0
    last_tick_at: TimestampOrNone = None
    last_tick_duration_ms: float | None = None
    errors: int = 0
    last_error: str | None = None
    actions_taken: int = 0
    actions_skipped_dry_run: int = 0
    is_leader: bool = Field(
        True, description="Whether this replica leads the loop (acts); followers measure and apply"
    )
    leader: str | None = Field(
        None, description="The replica leading the loop (null: this single process, or nobody yet)"
    )
    leadership_lost: int = Field(0, description="Times a write of this loop was refused by the epoch check")
    details: dict[str, Any] = Field(default_factory=dict)


class Component(ABC):
    """Base class of SelfHealer, AutoScaler, PredictiveMaintenance and AutoOptimizer."""

    name: str = "component"

    def __init__(
        self, *, clock: Clock, bus: EventBus, store: StateStore, enabled: bool, interval_s: float
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"{self.name}: interval_s must be > 0, got {interval_s}")
        self.clock = clock
        self.bus = bus
        self.store = store
        self.interval_s = interval_s
        self._settings_mode = Mode.ON if enabled else Mode.OFF
        self._mode = self._settings_mode
        self._mode_source: ModeSource = "settings"
        self._scope: anyio.CancelScope | None = None
        self._running = False
        self._started_at: float | None = None
        self._ticks = 0
        self._tick_done: anyio.Event | None = None
        self._last_tick_at: float | None = None
        self._last_tick_duration_ms: float | None = None
        self._errors = 0
        self._last_error: str | None = None
        self._actions_taken = 0
        self._actions_dry_run = 0
        self.leadership: LoopLeader = SOLE_LEADER
        self._gated = False
        self._leading = True
        self._leadership_lost = 0
        self.elected_hooks: list[Callable[[], None]] = []
        """Run (in order) when this replica becomes the loop's leader, before its first tick."""
        self.deposed_hooks: list[Callable[[], None]] = []
        """Run when this replica stops leading the loop (undo what only a leader may keep)."""

    # --- mode (the kill switch) ---------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def dry_run(self) -> bool:
        return self._mode is Mode.DRY_RUN

    def load_persisted_mode(self) -> None:
        """Apply an operator's mode stored by an earlier run, if any."""
        stored = self.store.get_state(self.name, "mode")
        if stored is not None:
            self._mode = Mode(stored)
            self._mode_source = "operator"

    def apply_stored_mode(self, value: object) -> None:
        """Apply a mode another replica stored (the shared kill switch); None: back to settings.

        Not persisted again and not published again: the replica that set it did both."""
        if value is None:
            mode, source = self._settings_mode, "settings"
        else:
            try:
                mode, source = Mode(str(value)), "operator"
            except ValueError:
                logger.warning("%s: ignoring unknown stored mode %r", self.name, value)
                return
        if mode is not self._mode:
            logger.info("%s: mode %s -> %s (set on another replica)", self.name, self._mode.value, mode.value)
        self._mode = mode
        self._mode_source = "operator" if source == "operator" else "settings"

    def set_mode(self, mode: Mode, *, reason: str, actor: str = "operator") -> Mode:
        """Change the mode now, persist it, and publish the change. Returns the previous mode."""
        previous = self._mode
        self._mode = mode
        self._mode_source = "operator"
        self.store.set_state(self.name, "mode", mode.value, timestamp=self.clock.now())
        self.bus.emit(
            EventType.AUTONOMY_MODE_CHANGED,
            component=self.name,
            message=f"{self.name}: {previous.value} -> {mode.value} ({reason})",
            severity=Severity.WARNING if mode is not Mode.ON else Severity.INFO,
            data={"from": previous.value, "to": mode.value, "reason": reason, "actor": actor},
        )
        return previous

    # --- leadership ---------------------------------------------------------------------

    def use_leadership(self, leader: LoopLeader, *, gate: bool = True) -> None:
        """Lead this loop only while `leader` says so. `gate=False`: the component checks
        leadership itself (the scaler), and only its writes are fenced."""
        self.leadership = leader
        self._gated = gate
        self._leading = False

    def fence(self) -> Fence | None:
        """The fence for a leader write now (raises `LeadershipLost` when no longer leading)."""
        return self.leadership.fence()

    def write_fence(self) -> Fence | None:
        """The fence a write made now must carry: the leader's when made by this loop's own task
        (raises `LeadershipLost` if that leadership is gone), none for an operator's action."""
        if _LOOP_TASK.get() == self.name:
            return self.leadership.fence()
        return None

    def _deposed(self) -> None:
        if not self._leading:
            return
        self._leading = False
        logger.warning("%s: this replica no longer leads the loop", self.name)
        for hook in self.deposed_hooks:
            try:
                hook()
            except Exception:  # undoing is best effort: the new leader starts from the store
                logger.exception("%s: a deposed hook failed", self.name)

    def _lost_leadership(self, exc: LeadershipLost) -> None:
        self._leadership_lost += 1
        self._deposed()
        logger.warning("%s: stepping down: %s", self.name, exc)
        self.leadership.step_down(str(exc))
        self.bus.emit(
            EventType.COMPONENT_ERROR,
            component=self.name,
            severity=Severity.WARNING,
            message=f"{self.name} stepped down: {exc}",
            data={"leadership_lost": True, "epoch": exc.epoch},
        )

    def _become_leader(self) -> None:
        logger.info("%s: this replica leads the loop now", self.name)
        for hook in self.elected_hooks:
            hook()
        self._leading = True

    async def _step(self) -> None:
        """One turn of the loop: the leader ticks, a follower only measures."""
        if self._gated:
            leading = self.leadership.is_leader
            if leading and not self._leading:
                try:
                    self._become_leader()
                except LeadershipLost as exc:
                    self._lost_leadership(exc)
                    return
                except Exception as exc:  # a reload that failed: stay a follower, try again next turn
                    self._errors += 1
                    self._last_error = f"taking over failed: {type(exc).__name__}: {exc}"
                    logger.exception("%s: taking over failed", self.name)
                    return
            elif not leading:
                self._deposed()
            if not leading:
                if self._mode is not Mode.OFF:
                    await self._contain(self.follower_tick)
                return
        if self._mode is not Mode.OFF:
            await self.run_tick()

    async def follower_tick(self) -> None:  # noqa: B027 - optional hook
        """What a replica that does not lead the loop does each turn: measure, never act."""

    async def _contain(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception as exc:  # a follower's measurement failing must not kill the loop
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("%s follower tick failed", self.name)

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self, task_group: TaskGroup) -> None:
        """Start the loop in `task_group`; returns once it is running."""
        if self._running:
            return
        await task_group.start(self._run_scoped)

    def stop(self) -> None:
        """Cancel the loop (returns at once; the loop ends at its next checkpoint)."""
        if self._scope is not None:
            self._scope.cancel()

    async def _run_scoped(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        _LOOP_TASK.set(self.name)
        with anyio.CancelScope() as scope:
            self._scope = scope
            self._running = True
            self._started_at = self.clock.now()
            self.bus.emit(
                EventType.COMPONENT_STARTED,
                component=self.name,
                message=f"{self.name} started in mode {self._mode.value}",
                data={"mode": self._mode.value, "interval_s": self.interval_s},
            )
            task_status.started()
            try:
                await self.on_start()
                while True:
                    await self._step()
                    await self.clock.sleep(self.interval_s)
            finally:
                self._running = False
                self._scope = None
                self.bus.emit(
                    EventType.COMPONENT_STOPPED, component=self.name, message=f"{self.name} stopped"
                )

    async def run_tick(self) -> None:
        """Run one tick now, measuring it and containing its errors (a loop must not die)."""
        started = self.clock.monotonic()
        try:
            await self.tick()
        except LeadershipLost as exc:  # stale leadership: nothing was written, stop acting now
            self._lost_leadership(exc)
        except Exception as exc:  # a failing tick is reported, and the loop lives on
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("%s tick failed", self.name)
            self.bus.emit(
                EventType.COMPONENT_ERROR,
                component=self.name,
                message=f"{self.name} tick failed: {self._last_error}",
                severity=Severity.WARNING,
            )
        finally:
            self._ticks += 1
            self._last_tick_at = self.clock.now()
            self._last_tick_duration_ms = (self.clock.monotonic() - started) * 1000.0
            if self._tick_done is not None:
                self._tick_done.set()
                self._tick_done = None

    async def wait_ticks(self, count: int) -> None:
        """Return once `count` ticks have finished (replays await real I/O with it, not a delay)."""
        while self._ticks < count:
            if self._tick_done is None:
                self._tick_done = anyio.Event()
            await self._tick_done.wait()

    async def on_start(self) -> None:  # noqa: B027 - optional hook
        """Called once when the loop starts, before the first tick."""

    @abstractmethod
    async def tick(self) -> None:
        """One pass of the loop: measure, decide, act (or report in dry-run)."""

    # --- acting -------------------------------------------------------------------------

    async def act(self, description: str, action: Callable[[], Awaitable[T]]) -> T | None:
        """Carry out `action` unless in dry-run, counting both; returns its result or None."""
        if self.dry_run:
            self._actions_dry_run += 1
            logger.info("%s dry-run: would %s", self.name, description)
            return None
        result = await action()
        self._actions_taken += 1
        return result

    def count_action(self) -> None:
        """Count an action carried out outside `act()` (e.g. by an operator's tool call)."""
        self._actions_taken += 1

    # --- status -------------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        """Component-specific measured state for `status()`."""
        return {}

    def status(self) -> ComponentStatus:
        return ComponentStatus(
            name=self.name,
            mode=self._mode,
            mode_source=self._mode_source,
            running=self._running,
            interval_s=self.interval_s,
            started_at=self._started_at,
            ticks=self._ticks,
            last_tick_at=self._last_tick_at,
            last_tick_duration_ms=self._last_tick_duration_ms,
            errors=self._errors,
            last_error=self._last_error,
            actions_taken=self._actions_taken,
            actions_skipped_dry_run=self._actions_dry_run,
            is_leader=self.leadership.is_leader,
            leader=self.leadership.leader_identity,
            leadership_lost=self._leadership_lost,
            details=self.details(),
        )
