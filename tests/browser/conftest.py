"""Browser tests: Playwright for Python driving Debian's Chromium headless (`make browser` installs it;
Playwright's own browser download is never used)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.server.harness import HttpServer, http_server

CHROMIUM = Path(os.environ.get("MCP_AUTONOMY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_INSTALLED = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # the tests run as root in CI containers
    "--disable-gpu",
    "--no-first-run",
    # The machine has no network beyond loopback: keep Chromium from reaching for Google's services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """A server with the sandbox whose healer probes twice a second, so a fault shows within seconds."""
    env = {"SELF_HEALING_INTERVAL_MS": "500"}
    with http_server(tmp_path_factory.mktemp("dashboard"), env=env) as server:
        yield server


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not CHROMIUM_INSTALLED:
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium package)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def open_page(browser: Browser, errors: list[str]) -> AsyncIterator[Page]:
    """A fresh page whose console errors and uncaught exceptions are collected in `errors`."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        yield page
    finally:
        await context.close()
