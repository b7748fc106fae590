"""The MCP server: one `McpApp` per engine, assembling the tools, resources, prompt and handlers.

The tools live in `mcp_autonomy.server.mcp_tools`, one module per concern, each tool a signature
and one engine call; `mcp_tools.tool` is where every call is validated strictly, where engine
exceptions become tool errors (one sentence naming the field, the problem and what is allowed).
Operator actions are audited by the engine (`AutonomousSystem.audited`), once, with the `caller`
each tool passes (REST does the same). This module wires them to the SDK's
`MCPServer` and keeps the protocol handlers (subscriptions, logging level, completions).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server import MCPServer
from mcp.server.apps import Apps
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    EmptyResult,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    UnsubscribeRequestParams,
)

from mcp_autonomy import __version__
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.providers.registry import UnknownProviderError
from mcp_autonomy.server.dashboard import (
    APP_URI,
    DashboardSnapshot,
    app_html,
    dashboard_snapshot,
    dashboard_summary,
)
from mcp_autonomy.server.mcp_tools import (
    maintenance,
    optimization,
    payments,
    providers,
    resources,
    scaling,
    status,
)
from mcp_autonomy.server.mcp_tools import (
    sandbox as sandbox_tools,
)
from mcp_autonomy.server.mcp_tools.models import (
    READ_ONLY,
    AmountMinor,
    AutonomyChange,
    CallbackList,
    Country,
    Currency,
    EventList,
    IdempotencyKey,
    IncidentList,
    MaintenanceWindowList,
    OptimizationList,
    PaymentList,
    Phone,
    PredictionList,
    ProviderList,
    ProviderName,
    Reason,
)
from mcp_autonomy.server.mcp_tools.schema import compact_schema
from mcp_autonomy.server.mcp_tools.tool import ToolSet
from mcp_autonomy.server.notifier import ResourceNotifier

if TYPE_CHECKING:
    from mcp_autonomy.sandbox.embedded import EmbeddedSandbox

__all__ = [
    "INSTRUCTIONS",
    "READ_ONLY",
    "AmountMinor",
    "AutonomyChange",
    "CallbackList",
    "Country",
    "Currency",
    "EventList",
    "IdempotencyKey",
    "IncidentList",
    "MaintenanceWindowList",
    "McpApp",
    "OptimizationList",
    "PaymentList",
    "Phone",
    "PredictionList",
    "ProviderList",
    "ProviderName",
    "Reason",
    "compact_schema",
]

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
mcp-autonomy keeps a payments gateway's providers (M-Pesa, Paystack, MTN MoMo, Airtel Money, ...)
running: self-healing, auto-scaling, predictive maintenance and auto-optimization loops.
Start with `get_status` (overall health, each provider, each loop's mode) and `get_events`
(what the loops decided and why). `heal_provider` and `scale_to` act now and are audited;
`set_autonomy` is the kill switch for each loop (on | off | dry_run). Every figure is measured;
null means not measured yet, never zero."""

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def _connection_of(session: Any) -> Any:
    """The client connection behind a request's session proxy.

    The SDK builds a new `ServerSession` proxy per request; the `Connection` it wraps lives as
    long as the client, so subscriptions and log levels are keyed by it and released when its
    exit stack unwinds (the client went away).
    """
    return getattr(session, "_connection", session)


class McpApp:
    """The MCP server bound to one `AutonomousSystem`."""

    def __init__(self, system: AutonomousSystem, *, sandbox: EmbeddedSandbox | None = None) -> None:
        self.system = system
        self.sandbox = sandbox
        self.subscriptions = InMemorySubscriptionBus()
        tools = ToolSet(system)
        for module in (status, providers, scaling, maintenance, optimization, payments):
            module.register(tools)
        if sandbox is not None:
            sandbox_tools.register(tools, sandbox)
        self.mcp: MCPServer = MCPServer(
            "mcp-autonomy",
            title="mcp-autonomy",
            description="Autonomous operations for an African payments gateway",
            instructions=INSTRUCTIONS,
            version=__version__,
            subscriptions=self.subscriptions,
            log_level=system.settings.log_level,
            tools=list(tools.tools),
            extensions=[self._dashboard_app()],
        )
        self.notifier = ResourceNotifier(system.events, self.subscriptions)
        self.log_levels: dict[int, str] = {}
        self._tracked_connections: set[int] = set()
        resources.register(self.mcp, system)
        self._register_prompt()
        self._register_protocol_handlers()
        self._compact_output_schemas()

    def _dashboard_app(self) -> Apps:
        """The dashboard as an MCP App: the `show_dashboard` tool bound to its `ui://` page.

        Hosts that render MCP Apps show the page and feed it this tool's result; the page then calls
        `show_dashboard`, `heal_provider` and `scale_to` through the host. Other clients get the same
        snapshot as structured content.
        """
        system = self.system
        apps = Apps()

        @apps.tool(
            resource_uri=APP_URI,
            name="show_dashboard",
            title="Show the live dashboard",
            description=(
                "Everything the operator dashboard shows, as one snapshot: overall health, each provider's health, "
                "breaker, route order and tunables, the newest events, the last six hours of measured load and "
                "replica changes, predictions with precision/recall, incidents and optimizations. Hosts that "
                "render MCP Apps display it as the interactive dashboard (heal and scale with confirmation); for "
                "a quick look get_status is smaller."
            ),
            annotations=READ_ONLY,
        )
        async def show_dashboard() -> Annotated[CallToolResult, DashboardSnapshot]:
            snapshot = await dashboard_snapshot(system)
            # The text is for clients without MCP Apps: a summary, not 100 events of JSON.
            return CallToolResult(
                content=[TextContent(type="text", text=dashboard_summary(snapshot))],
                structured_content=snapshot.model_dump(mode="json"),
            )

        apps.add_html_resource(
            APP_URI,
            app_html(),
            name="dashboard",
            title="mcp-autonomy dashboard",
            description="The live operator dashboard as an MCP App (rendered by hosts that support MCP Apps)",
            prefers_border=False,
        )
        return apps

    def _compact_output_schemas(self) -> None:
        """Publish each tool's output schema in the form clients validate fastest (see `compact_schema`).

        Runs before anything lists the tools: `Tool.output_schema` caches the first value it reads.
        """
        for tool in self.mcp._tool_manager.list_tools():  # the SDK has no public tool accessor
            if tool.fn_metadata.output_schema is not None:
                tool.fn_metadata.output_schema = compact_schema(tool.fn_metadata.output_schema)

    def _forget_connection(self, key: int) -> None:
        self._tracked_connections.discard(key)
        self.log_levels.pop(key, None)
        self.notifier.forget_connection(key)

    # --- prompt -------------------------------------------------------------------------

    def _register_prompt(self) -> None:
        system = self.system

        @self.mcp.prompt(
            name="incident_report",
            title="Incident report",
            description="Gather one provider's status, recent events and predictions for an incident write-up",
        )
        async def incident_report(provider: str) -> str:
            try:
                status = system.provider_status(provider)
            except UnknownProviderError as exc:
                raise MCPError(INVALID_PARAMS, f"provider: {exc}") from None
            events = system.query_events(provider=provider, limit=50)
            predictions = system.predictive_maintenance.predictions(provider=provider)
            incidents = system.get_incidents(provider=provider, limit=10)
            lines = [
                f"Write an incident report for payment provider `{provider}`.",
                "Use only the measured data below; say 'not measured' where a figure is null.",
                "Structure: summary, impact, timeline (from the events), actions taken by the autonomy "
                "loops and operators, current state, predictions, follow-ups.",
                "",
                "## Provider status",
                status.model_dump_json(indent=2),
                "",
                f"## Recent events ({len(events)}, oldest first)",
                *(f"- {e.time_iso} [{e.severity.value}] {e.type.value}: {e.message}" for e in events),
                "",
                f"## Predictions ({len(predictions)})",
                *(p.model_dump_json() for p in predictions),
                "",
                f"## Incidents ({len(incidents)}, newest first)",
                *(i.model_dump_json() for i in incidents),
            ]
            return "\n".join(lines)

    # --- protocol handlers: subscribe, logging level, completions ------------------------

    def _register_protocol_handlers(self) -> None:
        lowlevel = self.mcp._lowlevel_server  # the SDK exposes these methods only on the low-level server
        notifier = self.notifier

        def track(ctx: ServerRequestContext[Any, Any]) -> int:
            connection = _connection_of(ctx.session)
            key = id(connection)
            if key not in self._tracked_connections:
                self._tracked_connections.add(key)
                exit_stack = getattr(connection, "exit_stack", None)
                if exit_stack is not None:
                    exit_stack.callback(self._forget_connection, key)
            return key

        async def on_subscribe(
            ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
        ) -> EmptyResult:
            notifier.subscribe_legacy(str(params.uri), ctx.session, track(ctx))
            return EmptyResult()

        async def on_unsubscribe(
            ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
        ) -> EmptyResult:
            notifier.unsubscribe_legacy(str(params.uri), track(ctx))
            return EmptyResult()

        async def on_set_level(
            ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
        ) -> EmptyResult:
            self.log_levels[track(ctx)] = params.level
            return EmptyResult()

        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)

        @self.mcp.completion()  # type: ignore[no-untyped-call, untyped-decorator]  # SDK decorator is untyped
        async def complete(
            ref: PromptReference | ResourceTemplateReference,
            argument: CompletionArgument,
            context: CompletionContext | None,
        ) -> Completion | None:
            if argument.name not in ("provider", "name"):
                return None
            names = [n for n in self.system.providers.names() if n.startswith(argument.value)]
            return Completion(values=names[:100], total=len(names), has_more=len(names) > 100)
