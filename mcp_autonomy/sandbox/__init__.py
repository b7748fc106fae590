"""A protocol-faithful emulator of the payment providers, with scheduled fault injection.

`create_sandbox_app(clock)` builds the Starlette app; `serve_sandbox` / `running_sandbox` run it
on real loopback sockets; `sandbox_of(app)` reaches its faults, ledger and customers.
"""

from __future__ import annotations

from mcp_autonomy.sandbox.app import PROVIDERS, Sandbox, create_sandbox_app, sandbox_of
from mcp_autonomy.sandbox.core import CustomerBehavior, SandboxCredentials
from mcp_autonomy.sandbox.faults import (
    AcceptThenHangSpec,
    CredentialExpirySpec,
    CustomerErrorsSpec,
    EndpointKind,
    ErrorRateSpec,
    Fault,
    FaultEngine,
    FlappingSpec,
    LatencySpec,
    OutageSpec,
    ThrottleSpec,
)
from mcp_autonomy.sandbox.ledger import Ledger, LedgerEntry, LedgerOperation, LedgerStatus
from mcp_autonomy.sandbox.mpesa import MpesaSandboxConfig
from mcp_autonomy.sandbox.paystack import PaystackSandboxConfig
from mcp_autonomy.sandbox.server import SandboxAddress, running_sandbox, serve_sandbox

__all__ = [
    "PROVIDERS",
    "AcceptThenHangSpec",
    "CredentialExpirySpec",
    "CustomerBehavior",
    "CustomerErrorsSpec",
    "EndpointKind",
    "ErrorRateSpec",
    "Fault",
    "FaultEngine",
    "FlappingSpec",
    "LatencySpec",
    "Ledger",
    "LedgerEntry",
    "LedgerOperation",
    "LedgerStatus",
    "MpesaSandboxConfig",
    "OutageSpec",
    "PaystackSandboxConfig",
    "Sandbox",
    "SandboxAddress",
    "SandboxCredentials",
    "ThrottleSpec",
    "create_sandbox_app",
    "running_sandbox",
    "sandbox_of",
    "serve_sandbox",
]
