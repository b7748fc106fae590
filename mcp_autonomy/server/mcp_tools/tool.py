"""The tool wrapper every MCP tool runs in: strict arguments, errors mapped once.

`ToolSet.tool` registers a function as an `AutonomyTool`. Its `run` is the one call path:
arguments are validated strictly against the tool's own model as JSON (`"500"` is not 500,
`"yes"` is not true, unknown arguments are refused) and a violation becomes one sentence per field
(`errors.describe_validation_error`); the engine's exceptions become tool errors through
`errors.engine_error_message`. Operator actions are audited by the engine itself (once, for MCP
and REST alike): a tool passes `caller=client_of(ctx)`. Each tool module is then a list of
signatures, each with one engine call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.shared.exceptions import MCPError
from mcp_types import ToolAnnotations
from pydantic import ConfigDict, PrivateAttr, ValidationError

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.providers.registry import UnknownProviderError
from mcp_autonomy.server.auth.guard import with_caller
from mcp_autonomy.server.mcp_tools.errors import EngineErrors, describe_validation_error, engine_error_message
from mcp_autonomy.server.mcp_tools.schema import compact_schema

__all__ = [
    "AutonomyTool",
    "ToolSet",
    "check_provider",
    "client_of",
    "progress",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def client_of(ctx: Context[Any, Any]) -> str:
    """`name/version` of the calling client, plus the HTTP session id when there is one, after the
    token's identity when authenticated (`token:ops via Claude/1.0 session=...`): the `caller` an
    operator action's audit entry records."""
    try:
        params = ctx.session.client_params
    except ValueError:
        return "in-process"
    label = "unknown-client"
    if params is not None and params.client_info is not None:
        label = f"{params.client_info.name}/{params.client_info.version}"
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    if headers is not None and headers.get("mcp-session-id"):
        label += f" session={headers.get('mcp-session-id')}"
    scope = getattr(request, "scope", None)
    return with_caller(scope, label) if isinstance(scope, dict) else label


async def progress(ctx: Context[Any, Any], done: int, total: int, message: str) -> None:
    """Report progress if the client asked for it (a client without a progress token gets none)."""
    try:
        await ctx.report_progress(done, total, message)
    except Exception as exc:  # progress is best-effort
        logger.debug("progress not delivered: %s", exc)


def _strict(model: type[ArgModelBase]) -> type[ArgModelBase]:
    """`model` validating strictly and refusing unknown arguments (the published schema is unchanged)."""
    config = ConfigDict(**{**model.model_config, "strict": True, "extra": "forbid"})
    return type(model.__name__, (model,), {"model_config": config, "__module__": __name__})


class AutonomyTool(Tool):
    """A tool whose calls validate strictly and map engine errors in one place."""

    _strict_model: type[ArgModelBase] | None = PrivateAttr(None)
    _errors: EngineErrors = PrivateAttr(default_factory=EngineErrors)

    def configure(self, errors: EngineErrors) -> AutonomyTool:
        """Attach the strict argument model and the error table entry (at registration)."""
        if self.resolved_params:
            raise TypeError(f"{self.name}: Resolve(...) parameters are not supported here")
        self._strict_model = _strict(self.fn_metadata.arg_model)
        self._errors = errors
        return self

    def validated_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Strictly validated keyword arguments, or a ToolError naming each offending field."""
        assert self._strict_model is not None, "configure() runs at registration"
        # The SDK's pre-parse turns a JSON-encoded list or object in a string into the value
        # (some clients send lists that way); scalars stay as sent and must have the right type.
        pre_parsed = self.fn_metadata.pre_parse_json(arguments)
        try:
            model = self._strict_model.model_validate_json(json.dumps(pre_parsed))
        except ValidationError as exc:
            # `from exc` keeps the SDK's log line to field names (the values are the caller's).
            raise ToolError(describe_validation_error(exc, self.parameters, pre_parsed)) from exc
        return model.model_dump_one_level()

    async def run(
        self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False
    ) -> Any:
        validated = self.validated_arguments(arguments)
        pass_directly = {self.context_kwarg: context} if self.context_kwarg is not None else {}
        try:
            result = await self.fn_metadata.call_fn(self.fn, self.is_async, validated, pass_directly)
        except MCPError:
            raise
        except Exception as exc:
            message = engine_error_message(exc, self._errors, arguments)
            if message is None:
                # A crash: its text stays in the server log (the SDK logs it with the traceback).
                raise UnexpectedToolError(
                    f"{self.name}: internal error; the server log has the details"
                ) from exc
            raise ToolError(message) from exc
        if not convert_result:
            return result
        try:
            return self.fn_metadata.convert_result(result)
        except Exception as exc:
            raise UnexpectedToolError(f"{self.name}: internal error; the server log has the details") from exc


class ToolSet:
    """The tools of one server, registered by each tool module with `@tools.tool(...)`."""

    def __init__(self, system: AutonomousSystem) -> None:
        self.system = system
        self.tools: list[AutonomyTool] = []

    def tool(
        self,
        *,
        title: str,
        description: str,
        annotations: ToolAnnotations,
        errors: EngineErrors | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as a tool named after it.

        `errors` says which argument the engine's refusals are about.
        """

        def register(fn: F) -> F:
            tool = AutonomyTool.from_function(
                fn, title=title, description=description, annotations=annotations
            )
            assert isinstance(tool, AutonomyTool)
            if tool.fn_metadata.output_schema is not None:
                tool.fn_metadata.output_schema = compact_schema(tool.fn_metadata.output_schema)
            self.tools.append(tool.configure(errors or EngineErrors()))
            return fn

        return register


def check_provider(system: AutonomousSystem, provider: str | None) -> None:
    """Refuse a filter naming a provider that is not registered (the error lists the known ones)."""
    if provider is not None and provider not in system.providers:
        raise UnknownProviderError(provider, system.providers.names())
