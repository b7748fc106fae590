"""The dashboard behind named tokens, in a real browser: it asks for a token, shows data with a
read-only one, and when an action needs a scope that token lacks it says which and asks again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from playwright.async_api import expect

from tests.browser.conftest import chromium, open_page
from tests.server.harness import HttpServer, http_server

pytestmark = pytest.mark.anyio

READER, OPERATOR = "browser-reader-t0ken", "browser-operator-t0ken"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    directory = tmp_path_factory.mktemp("guarded-dashboard")
    tokens = directory / "tokens.json"
    tokens.write_text(
        json.dumps(
            [
                {
                    "name": "reader",
                    "token_sha256": hashlib.sha256(READER.encode()).hexdigest(),
                    "scopes": ["autonomy:read"],
                },
                {
                    "name": "operator",
                    "token_sha256": hashlib.sha256(OPERATOR.encode()).hexdigest(),
                    "scopes": ["autonomy:read", "autonomy:operate"],
                },
            ]
        )
    )
    with http_server(directory, env={"MCP_AUTONOMY_TOKENS_FILE": str(tokens)}) as server:
        yield server


async def test_the_dashboard_asks_for_a_token_with_the_scope_an_action_needs(
    guarded_server: HttpServer,
) -> None:
    errors: list[str] = []
    async with chromium() as browser, open_page(browser, errors) as page:
        await page.goto(f"{guarded_server.base_url}/dashboard")
        form = page.locator("#token-form")
        await expect(form).to_be_visible(timeout=TIMEOUT_MS)
        await expect(form).to_contain_text("needs an access token")
        await page.locator("#token").fill(READER)
        await page.locator("#token-form button[type=submit]").click()
        await expect(form).to_be_hidden()
        await expect(page.get_by_test_id("health-paystack")).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)

        # Healing needs autonomy:operate, which the reader's token does not hold.
        await page.get_by_test_id("heal-paystack").click()
        await page.locator("#confirm-reason").fill("browser test: reader heals")
        await page.locator("#confirm-ok").click()
        await expect(form).to_be_visible(timeout=TIMEOUT_MS)
        await expect(form).to_contain_text("needs a token with scope autonomy:operate")
        await expect(page.locator("#error")).to_contain_text("autonomy:operate")

        await page.locator("#token").fill(OPERATOR)
        await page.locator("#token-form button[type=submit]").click()
        await page.get_by_test_id("heal-paystack").click()
        await page.locator("#confirm-reason").fill("browser test: operator heals")
        await page.locator("#confirm-ok").click()
        audit = page.get_by_test_id("events").locator('li[data-type="manual_action"]')
        await expect(audit.filter(has_text="heal_provider by token:operator via rest:").first).to_be_visible(
            timeout=TIMEOUT_MS
        )
    # The browser logs each refused request (401 before the token, 403 for the heal); nothing else.
    assert all("401" in e or "403" in e for e in errors), errors
