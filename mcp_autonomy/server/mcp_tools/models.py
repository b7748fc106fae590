"""The MCP tools' shared argument types and result models (REST and the dashboard reuse them)."""

from __future__ import annotations

from typing import Annotated, Any

from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.incidents import Incident
from mcp_autonomy.autonomy.maintenance import MaintenanceWindow
from mcp_autonomy.autonomy.optimizer import Optimization
from mcp_autonomy.autonomy.predictor import Prediction, PredictionWarmUp
from mcp_autonomy.autonomy.system import ProviderStatus
from mcp_autonomy.events import Event
from mcp_autonomy.payments import InboxCallback, PaymentRecord
from mcp_autonomy.providers.base import COUNTRY_RE, CURRENCY_RE, MAX_AMOUNT_MINOR

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)

Reason = Annotated[
    str,
    Field(
        min_length=3,
        max_length=500,
        description="Why you are doing this; recorded in the audit log and events",
    ),
]
ProviderName = Annotated[
    str,
    Field(min_length=1, max_length=64, description="A registered provider name, e.g. mpesa (see get_status)"),
]


class PaymentList(BaseModel):
    """Payments, newest first."""

    payments: list[PaymentRecord]
    oldest_open_age_s: dict[str, float] = Field(
        description="Per provider, the age of its oldest payment not yet final (seconds)"
    )


class CallbackList(BaseModel):
    """Provider callbacks as received, newest first, with what became of each."""

    callbacks: list[InboxCallback]


class PredictionList(BaseModel):
    """Predictions matching the filters, newest first, with the predictor's scores."""

    predictions: list[Prediction]
    scores: dict[str, Any]
    warm_up: PredictionWarmUp | None = Field(
        None,
        description="Which series are learning their baseline until when, and why predictions may be absent",
    )


class IncidentList(BaseModel):
    """Incidents (all runs) newest first, with the statistics computed from them."""

    incidents: list[Incident]
    stats: dict[str, Any]


class MaintenanceWindowList(BaseModel):
    """Maintenance windows (all runs), latest start first."""

    windows: list[MaintenanceWindow]


class OptimizationList(BaseModel):
    """Optimization history, newest first."""

    optimizations: list[Optimization]


class EventList(BaseModel):
    """Stored events (across restarts), oldest first."""

    events: list[Event]
    count: int


class ProviderList(BaseModel):
    """Every registered provider: capabilities, measured health, breaker, tunables (never secrets)."""

    providers: list[ProviderStatus]
    backup_map: dict[str, list[str]]
    failed_over: dict[str, str]


IdempotencyKey = Annotated[
    str,
    Field(
        min_length=8,
        max_length=100,
        pattern=r"^[A-Za-z0-9_\-.:]+$",
        description="Your unique key for this payment (8-100 of A-Z a-z 0-9 _ - . :); a retry with the same key "
        "returns the first result and never pays twice",
    ),
]
AmountMinor = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_AMOUNT_MINOR,
        description="Amount in integer minor units (cents, kobo): KES 150.00 is 15000",
    ),
]
Currency = Annotated[
    str, Field(pattern=CURRENCY_RE.pattern, description="ISO 4217 code in capitals, e.g. KES, NGN")
]
Country = Annotated[
    str, Field(pattern=COUNTRY_RE.pattern, description="ISO 3166-1 alpha-2 in capitals, e.g. KE")
]
Phone = Annotated[
    str,
    Field(
        min_length=6,
        max_length=20,
        description="Customer phone: E.164 (+254712345678) or national (0712345678, normalised by country)",
    ),
]


class AutonomyChange(BaseModel):
    """The result of a kill-switch change."""

    component: str
    previous_mode: Mode
    mode: Mode
    reason: str
    audit_id: int
