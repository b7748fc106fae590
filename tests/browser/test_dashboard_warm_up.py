"""The dashboard's predictions panel says why it is empty: on a fresh server, that no provider has
had traffic yet (then, as calls arrive, which series warm up until when)."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.browser.conftest import chromium, open_page
from tests.server.harness import HttpServer

pytestmark = pytest.mark.anyio
LIVE_TIMEOUT_MS = 30_000


async def test_empty_predictions_panel_says_why(dashboard_server: HttpServer) -> None:
    errors: list[str] = []
    async with chromium() as browser, open_page(browser, errors) as page:
        await page.goto(f"{dashboard_server.base_url}/dashboard")
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
        warm_up = page.get_by_test_id("prediction-warm-up")
        await expect(warm_up).not_to_be_empty()
        # This module's server has made no payment (probes are no traffic).
        await expect(warm_up).to_have_text(re.compile("no provider has had traffic yet"))
        rows = page.get_by_test_id("predictions").locator("tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("no predictions: no provider has had traffic yet")
    assert errors == []
