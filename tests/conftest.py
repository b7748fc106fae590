"""Shared fixtures: the anyio backend, settings in a temporary state dir, a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings, load_settings


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
