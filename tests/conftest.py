"""Shared fixtures: the anyio backend, settings in a temporary state dir, a manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings, load_settings
from tests.postgres import PostgresServer, start_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # Tests must not pick up a developer's .env or environment.
    monkeypatch.chdir(tmp_path)
    return load_settings(state_dir=tmp_path / "state")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see tests/postgres.py)."""
    server = start_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh database at the current schema, for this test only."""
    return postgres_server.create_database()
