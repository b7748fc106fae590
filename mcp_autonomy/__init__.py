"""mcp-autonomy: an MCP server and library that keeps an African payments gateway running.

The public API is small: `AutonomousSystem` (the engine), `Settings` (configuration), the four
components, the event types and the clocks.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.healer import SelfHealer
from mcp_autonomy.autonomy.optimizer import AutoOptimizer
from mcp_autonomy.autonomy.predictor import PredictiveMaintenance
from mcp_autonomy.autonomy.scaler import AutoScaler
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import Clock, ManualClock, SystemClock
from mcp_autonomy.config import Settings, load_settings
from mcp_autonomy.events import Event, EventBus, EventType, Severity

__all__ = [
    "AutoOptimizer",
    "AutoScaler",
    "AutonomousSystem",
    "Clock",
    "Event",
    "EventBus",
    "EventType",
    "ManualClock",
    "Mode",
    "PredictiveMaintenance",
    "SelfHealer",
    "Settings",
    "Severity",
    "SystemClock",
    "__version__",
    "load_settings",
]
