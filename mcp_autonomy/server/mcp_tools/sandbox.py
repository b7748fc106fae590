"""The sandbox tool (only with --sandbox): inject a fault into an emulated provider."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field, TypeAdapter, ValidationError

from mcp_autonomy.sandbox.faults import EndpointKind, FaultSpec
from mcp_autonomy.server.mcp_tools.errors import EngineErrors, describe_validation_error, echo
from mcp_autonomy.server.mcp_tools.models import ProviderName, Reason
from mcp_autonomy.server.mcp_tools.tool import ToolSet, client_of

if TYPE_CHECKING:
    from mcp_autonomy.sandbox.embedded import EmbeddedSandbox

__all__ = ["register"]

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(FaultSpec)


def fault_spec(kind: str, params: dict[str, Any]) -> Any:
    """The fault's spec from `kind` and `params`, or a tool error naming each bad parameter."""
    try:
        return _SPEC_ADAPTER.validate_python({"kind": kind, **params})
    except ValidationError as exc:
        schema = _SPEC_ADAPTER.json_schema()
        # The union is tagged by kind: name the branch's own parameters, under `params.`.
        branch: dict[str, Any] = next(
            (
                definition
                for definition in schema.get("$defs", {}).values()
                if definition.get("properties", {}).get("kind", {}).get("const") == kind
            ),
            {"properties": {}},
        )
        # Locations start with the union's tag (the kind): drop it, name the fields under params.
        raise ToolError(
            describe_validation_error(
                exc, {**branch, "$defs": schema.get("$defs", {})}, params, "params.", skip=1
            )
        ) from exc


def register(tools: ToolSet, sandbox: EmbeddedSandbox) -> None:
    """Register inject_fault against `sandbox`'s fault table (audited through the engine)."""
    faults = sandbox.state.faults
    system = tools.system

    @tools.tool(
        title="Inject a fault into the sandbox (demo)",
        description=(
            "Sandbox mode only: schedule a fault on an emulated provider so the autonomy loops have "
            "something real to react to. kind: outage (params.mode refused|503|reset), latency "
            "(distribution fixed: fixed_ms; lognormal: median_ms, p99_ms; ramp: from_ms, to_ms), error_rate "
            "(rate 0..1, http_status, after_processing: a 5xx after the payment was taken), accept_then_hang "
            "(rate, hang_s), throttle (max_per_s), flapping (period_s, down_fraction), credential_expiry, "
            "customer_errors (rate, code, synchronous: most payers fail on their side, e.g. M-Pesa 1037; "
            "no breaker should trip). Starts after start_s seconds and lasts duration_s (omit: "
            "until cleared with kind=clear). Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
        errors=EngineErrors(field="params"),
    )
    async def inject_fault(
        provider: ProviderName,
        kind: Annotated[
            Literal[
                "outage",
                "latency",
                "error_rate",
                "accept_then_hang",
                "throttle",
                "flapping",
                "credential_expiry",
                "customer_errors",
                "clear",
            ],
            Field(description="The fault, or clear to remove this provider's faults"),
        ],
        reason: Reason,
        ctx: Context,
        params: Annotated[dict[str, Any], Field(description="Parameters of the fault kind")] | None = None,
        endpoints: Annotated[
            list[EndpointKind] | None, Field(description="Only these endpoints (default: all)")
        ] = None,
        start_s: Annotated[float, Field(ge=0, le=86_400, description="Seconds from now")] = 0.0,
        duration_s: Annotated[float | None, Field(gt=0, le=86_400, description="How long it lasts")] = None,
    ) -> dict[str, Any]:
        arguments = {
            "provider": provider,
            "kind": kind,
            "reason": reason,
            "params": params,
            "endpoints": endpoints,
            "start_s": start_s,
            "duration_s": duration_s,
        }
        with system.audited("inject_fault", arguments, caller=client_of(ctx), reason=reason) as action:
            result = inject(provider, kind, params, endpoints, start_s, duration_s)
            action.result = {k: v for k, v in result.items() if k != "faults"}
        return result

    def inject(
        provider: str,
        kind: str,
        params: dict[str, Any] | None,
        endpoints: list[EndpointKind] | None,
        start_s: float,
        duration_s: float | None,
    ) -> dict[str, Any]:
        if provider not in sandbox.adapters:
            raise ToolError(
                f"provider: {echo(provider)} is not emulated; emulated: {', '.join(sandbox.adapters)}"
            )
        if kind == "clear":
            return {
                "cleared": faults.clear(provider),
                "faults": [faults.describe(f) for f in faults.faults(provider)],
            }
        fault = faults.add(
            provider,
            fault_spec(kind, params or {}),
            endpoints=endpoints or (),
            start_s=start_s,
            end_s=None if duration_s is None else start_s + duration_s,
        )
        return {
            "injected": faults.describe(fault),
            "faults": [faults.describe(f) for f in faults.faults(provider)],
        }
