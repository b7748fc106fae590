"""The shape every autonomy loop shares: a mode (the kill switch), a clock-driven loop, status.

A component runs its `tick()` every `interval_s` seconds of the injected clock while its mode is
`on` or `dry_run`. In `dry_run` it decides and reports (events flagged `dry_run`) but acts on
nothing; in `off` the loop stays alive but idle, so an operator can turn it back on at run time.
An operator's mode survives a restart (it is stored), and wins over the settings until changed.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Literal, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Mode(StrEnum):
    """What a component may do: act (`on`), only decide and report (`dry_run`), or nothing."""

    ON = "on"
    OFF = "off"
    DRY_RUN = "dry_run"


ModeSource = Literal["settings", "operator"]


class ComponentStatus(BaseModel):
    """A component's true, measured state. Figures not measured yet are null."""

    name: str
    mode: Mode
    mode_source: ModeSource = Field(
        description="`operator` when set at run time (persisted), else `settings`"
    )
    running: bool
    interval_s: float
    started_at: float | None = None
    ticks: int = 0
    last_tick_at: float | None = None
    last_tick_duration_ms: float | None = None
    errors: int = 0
    last_error: str | None = None
    actions_taken: int = 0
    actions_skipped_dry_run: int = 0
    details: dict[str, Any] = Field(default_factory=dict)


class Component(ABC):
    """Base class of SelfHealer, AutoScaler, PredictiveMaintenance and AutoOptimizer."""

    name: str = "component"

    def __init__(
        self, *, clock: Clock, bus: EventBus, store: Store, enabled: bool, interval_s: float
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
                    if self._mode is not Mode.OFF:
                        await self.run_tick()
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
            details=self.details(),
        )
