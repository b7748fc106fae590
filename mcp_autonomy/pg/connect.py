"""Connections to the shared PostgreSQL database, and a URL that is safe to print.

The URL may hold a password: it is kept in a `SecretStr` and only `redact_url` (scheme, host,
port, database; never user or password) ever reaches a log line, an error or a status.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg

CONNECT_TIMEOUT_S = 5
"""How long opening a connection may take before the database counts as unreachable."""
STATEMENT_TIMEOUT_MS = 5_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 1_000
"""A session left inside a transaction this long is ended by the server: a writer frozen mid-write
(SIGSTOP, a stalled VM) would otherwise hold its `FOR SHARE` lock on the leadership row and block
every takeover. No transaction of this engine waits on anything but the database."""
"""Server-side bound on any one statement (a stuck lock or a slow disk fails instead of hanging the
replica; anyio timeouts would make psycopg drop the connection instead, DESIGN section 9)."""
APPLICATION_NAME = "mcp-autonomy"


def redact_url(url: str) -> str:
    """`postgresql://host:port/db`: what may be shown of a database URL (no user, no password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://<unparseable url>"
    database = parts.path.lstrip("/") or "postgres"
    # A unix socket directory travels in the query (`?host=/run/postgresql`): show it (it holds
    # no secret), or the URL would claim a TCP localhost.
    socket_dir = next((v for k, v in parse_qsl(parts.query) if k == "host" and v.startswith("/")), None)
    if socket_dir is not None and parts.hostname is None:
        return f"{parts.scheme}:///{database}?host={socket_dir}"
    return f"{parts.scheme}://{host}{port}/{database}"


def connect_kwargs(
    *, application_name: str = APPLICATION_NAME, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS
) -> dict[str, Any]:
    """Keyword arguments for `psycopg.connect` / pool `kwargs` every backend connection uses."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": application_name,
        "options": f"-c statement_timeout={statement_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
        "autocommit": True,
    }


def connect(url: str, **overrides: Any) -> psycopg.Connection[Any]:
    """A synchronous autocommit connection; `psycopg.OperationalError` (its message never holds the
    password) when the database cannot be reached."""
    kwargs = connect_kwargs()
    kwargs.update(overrides)
    return psycopg.connect(url, **kwargs)
