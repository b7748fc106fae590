"""A scripted provider adapter for engine tests that need no HTTP (the outermost edge only).

Tests of the adapters themselves and of the server end to end use the real adapters against the
sandbox over HTTP; this one exists so the engine's own state machines can be driven exactly.
"""

from __future__ import annotations

from mcp_autonomy.providers.base import (
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProbeResult,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
)


class ScriptedAdapter:
    """Answers probes from a script: `probe_ok` (settable) decides every probe's outcome."""

    def __init__(self, name: str, currencies: frozenset[str] = frozenset({"KES"})) -> None:
        self.name = name
        self.capabilities = ProviderCapabilities(
            operations=frozenset({Operation.COLLECT, Operation.PAYOUT}),
            currencies=currencies,
            countries=frozenset({"KE"}),
        )
        self.probe_ok = True
        self.initialize_calls = 0
        self.probe_calls = 0
        self.closed = False
        self.fail_initialize = False

    async def initialize(self) -> None:
        self.initialize_calls += 1
        if self.fail_initialize:
            raise ProviderError(self.name, ErrorClass.AUTH, "credentials rejected", code="401")

    async def refresh_credentials(self) -> None:
        await self.initialize()

    async def probe(self) -> ProbeResult:
        self.probe_calls += 1
        if self.probe_ok:
            return ProbeResult(ok=True, latency_ms=1.0, detail="ok")
        raise ProviderError(self.name, ErrorClass.NOT_PROCESSED, "connection refused")

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        raise NotImplementedError

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        raise NotImplementedError

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        raise NotImplementedError

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True
