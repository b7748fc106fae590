"""The dashboard in a real browser against the real server and its sandbox: it loads, lists the
providers, changes live when a fault is injected, and heal / scale from the page go through their
confirmation and show up in the events log. The same page as an MCP App, inside a host page that
forwards its tool calls to the server over MCP."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from playwright.async_api import Page, expect

from tests.browser.conftest import chromium, open_page
from tests.server.harness import HttpServer

pytestmark = pytest.mark.anyio

PROVIDERS = ["mpesa", "paystack", "mtn_momo", "airtel_money", "intasend", "flutterwave"]
LIVE_TIMEOUT_MS = 30_000
"""How long the page may take to load or show a result."""
FAULT_SEEN_TIMEOUT_MS = 45_000
"""How long an injected fault may take to show: probes run every 0.5 s, but an adapter answers a probe
from its cache for up to 10 s, and two failed probes make a provider unhealthy."""
SCREENSHOT_ENV = "DASHBOARD_SCREENSHOT"
"""Where to keep a copy of the screenshot (`make screenshot` points it at docs/dashboard.png)."""


async def load_dashboard(page: Page, server: HttpServer) -> None:
    await page.goto(f"{server.base_url}/dashboard")
    for name in PROVIDERS:
        await expect(page.get_by_test_id(f"health-{name}")).to_be_visible()
    await expect(page.get_by_test_id("live")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)


async def test_dashboard_loads_and_lists_the_providers(dashboard_server: HttpServer) -> None:
    errors: list[str] = []
    async with chromium() as browser, open_page(browser, errors) as page:
        await load_dashboard(page, dashboard_server)
        rows = page.get_by_test_id("providers").locator("tbody tr")
        await expect(rows).to_have_count(len(PROVIDERS))
        mpesa = page.locator('tr[data-provider="mpesa"]')
        await expect(mpesa).to_contain_text("mpesa → intasend → paystack")
        await expect(mpesa).to_contain_text("15 s")  # its documented timeout
        await expect(page.get_by_test_id("overall")).not_to_have_text("unknown")
        await expect(
            page.get_by_test_id("events").locator('li[data-type="provider_registered"]').first
        ).to_be_visible()
        await expect(page.get_by_test_id("scaling-summary")).to_contain_text("desired")
        await expect(page.get_by_test_id("scaling-chart").locator("path.capacity")).to_have_count(1)
        await expect(page.locator("#token-form")).to_be_hidden()
        # Times arrive as ISO 8601 strings: shown as clock times, drawn at numeric positions.
        clock_time = re.compile(r"\d{1,2}:\d{2}:\d{2}")
        await expect(page.locator("#updated")).to_have_text(clock_time)
        await expect(page.get_by_test_id("events").locator("li time").first).to_have_text(clock_time)
        capacity = await page.get_by_test_id("scaling-chart").locator("path.capacity").get_attribute("d")
        assert capacity and "NaN" not in capacity, capacity
    assert errors == []


async def test_page_changes_live_when_a_fault_is_injected(
    dashboard_server: HttpServer, tmp_path: Path
) -> None:
    errors: list[str] = []
    async with (
        chromium() as browser,
        open_page(browser, errors) as page,
        Client(dashboard_server.url, read_timeout_seconds=60) as client,  # type: ignore[arg-type]
    ):
        # Some real payments first, so the figures on the page (and in the screenshot) are measured.
        for i in range(8):
            paid = await client.call_tool(
                "request_payment",
                {
                    "idempotency_key": f"browser-collect-{i:04d}",
                    "amount_minor": 15_000 + i,
                    "currency": "KES",
                    "phone": "0712345678",
                    "country": "KE",
                },
            )
            assert not paid.is_error, paid.content
        await load_dashboard(page, dashboard_server)
        await expect(page.locator('tr[data-provider="mpesa"] td.num').first).not_to_have_text(
            "\u2013"
        )  # measured, not the dash of "not yet"
        await expect(page.get_by_test_id("health-mtn_momo")).to_have_text("healthy", timeout=LIVE_TIMEOUT_MS)
        await page.evaluate("window.__notReloaded = true")
        # Snapshots blocked: whatever reaches the page now comes over the event stream.
        await page.route("**/autonomous/dashboard", lambda route: route.abort())
        injected = await client.call_tool(
            "inject_fault",
            {
                "provider": "mtn_momo",
                "kind": "outage",
                "params": {"mode": "refused"},
                "reason": "browser test",
            },
        )
        assert not injected.is_error, injected.content
        try:
            changed = page.get_by_test_id("events").locator('li[data-type="provider_health_changed"]')
            await expect(changed.filter(has_text="mtn_momo: degraded -> unhealthy").first).to_be_visible(
                timeout=FAULT_SEEN_TIMEOUT_MS
            )
            # Snapshots again: the event stream's events make the page refresh its tables.
            await page.unroute("**/autonomous/dashboard")
            await expect(page.get_by_test_id("health-mtn_momo")).to_have_text(
                "unhealthy", timeout=LIVE_TIMEOUT_MS
            )
            await expect(page.get_by_test_id("overall")).not_to_have_text("healthy")
            await expect(page.locator("#error")).to_be_hidden()
            assert await page.evaluate("window.__notReloaded") is True  # live, not a reload
            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])
        finally:
            await client.call_tool(
                "inject_fault", {"provider": "mtn_momo", "kind": "clear", "reason": "browser test"}
            )
        await expect(page.get_by_test_id("health-mtn_momo")).to_have_text(
            "healthy", timeout=FAULT_SEEN_TIMEOUT_MS
        )
    assert [e for e in errors if "ERR_FAILED" not in e] == []


async def test_heal_from_the_page_asks_for_confirmation_and_shows_in_the_events_log(
    dashboard_server: HttpServer,
) -> None:
    errors: list[str] = []
    async with chromium() as browser, open_page(browser, errors) as page:
        await load_dashboard(page, dashboard_server)
        dialog = page.get_by_test_id("confirm")

        # Cancelled: nothing happens.
        await page.get_by_test_id("heal-paystack").click()
        await expect(dialog).to_be_visible()
        await expect(dialog).to_contain_text("Heal paystack now?")
        await page.locator("#confirm-reason").fill("browser test: cancelled heal")
        await page.locator("#confirm-cancel").click()
        await expect(dialog).to_be_hidden()

        # No reason: the dialog stays open.
        await page.get_by_test_id("heal-paystack").click()
        await page.locator("#confirm-ok").click()
        await expect(dialog).to_be_visible()
        await expect(page.locator("#confirm-problem")).to_contain_text("at least 3 characters")

        await page.locator("#confirm-reason").fill("browser test heal")
        await page.locator("#confirm-ok").click()
        await expect(dialog).to_be_hidden()
        healing = page.get_by_test_id("events").locator('li[data-type="healing_event"]')
        await expect(
            healing.filter(has_text="paystack: manual healing succeeded (browser test heal)")
        ).to_be_visible()
        audit = page.get_by_test_id("events").locator('li[data-type="manual_action"]')
        await expect(audit.filter(has_text="heal_provider by rest:127.0.0.1").first).to_be_visible()
    assert errors == []
    async with httpx.AsyncClient(base_url=dashboard_server.base_url) as api:
        response = await api.get("/autonomous/events", params={"type": "manual_action", "limit": 100})
    events = response.json()["events"]
    reasons = [e["data"]["arguments"].get("reason") for e in events]
    assert "browser test heal" in reasons and "browser test: cancelled heal" not in reasons


async def test_scale_from_the_page_asks_for_confirmation(dashboard_server: HttpServer) -> None:
    errors: list[str] = []
    async with chromium() as browser, open_page(browser, errors) as page:
        await load_dashboard(page, dashboard_server)
        await page.locator("#scale-replicas").fill("4")
        await page.get_by_test_id("scale-button").click()
        dialog = page.get_by_test_id("confirm")
        await expect(dialog).to_contain_text("to 4 replicas?")
        await page.locator("#confirm-reason").fill("browser test scale")
        await page.locator("#confirm-ok").click()
        await expect(page.get_by_test_id("scaling-summary")).to_contain_text("4 desired")
        scaled = page.get_by_test_id("events").locator('li[data-type="scaled_up"]')
        await expect(scaled.filter(has_text="browser test scale").first).to_be_visible()
        await expect(page.get_by_test_id("scaling-chart").locator("path.capacity")).to_have_count(1)

        # Out of bounds: the server's refusal is shown, naming the field.
        await page.locator("#scale-replicas").evaluate("input => input.removeAttribute('max')")
        await page.locator("#scale-replicas").fill("500")
        await page.get_by_test_id("scale-button").click()
        await page.locator("#confirm-reason").fill("browser test scale too far")
        await page.locator("#confirm-ok").click()
        await expect(page.locator("#error")).to_contain_text("replicas")
        await expect(page.get_by_test_id("scaling-summary")).to_contain_text("4 desired")
    assert [e for e in errors if "422" not in e] == []


HOST_PAGE = """<!doctype html><html><body>
<iframe id="app" sandbox="allow-scripts" title="app"></iframe>
<script>
const frame = document.getElementById('app');
frame.style.width = '1380px'; frame.style.height = '960px';
window.hostLog = [];
const post = (message) => frame.contentWindow.postMessage({jsonrpc: '2.0', ...message}, '*');
window.addEventListener('message', async (event) => {
  if (event.source !== frame.contentWindow) return;
  const m = event.data;
  window.hostLog.push(m.method || 'response');
  if (m.method === 'ui/initialize') {
    post({id: m.id, result: {protocolVersion: m.params.protocolVersion, hostInfo: {name: 'test-host', version: '1'},
          hostCapabilities: {serverTools: {}}, hostContext: {}}});
  } else if (m.method === 'ui/notifications/initialized') {
    post({method: 'ui/notifications/tool-result', params: await window.callTool('show_dashboard', {})});
  } else if (m.method === 'tools/call') {
    post({id: m.id, result: await window.callTool(m.params.name, m.params.arguments)});
  }
});
</script></body></html>"""


async def test_dashboard_as_an_mcp_app_in_a_host(dashboard_server: HttpServer) -> None:
    """A minimal MCP Apps host: renders the ui:// resource in a sandboxed iframe and forwards the
    page's tools/call requests to the server through the SDK's client."""
    errors: list[str] = []
    calls: list[tuple[str, dict[str, Any]]] = []
    async with (
        Client(dashboard_server.url, read_timeout_seconds=60) as client,  # type: ignore[arg-type]
        chromium() as browser,
        open_page(browser, errors) as page,
    ):
        tool = next(t for t in (await client.list_tools()).tools if t.name == "show_dashboard")
        assert tool.meta is not None
        uri = tool.meta["ui"]["resourceUri"]
        app_html = (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]

        async def call_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
            calls.append((name, arguments))
            result = await client.call_tool(name, arguments)
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)

        await page.expose_function("callTool", call_tool)
        await page.set_content(HOST_PAGE)
        await page.evaluate("html => { document.getElementById('app').srcdoc = html; }", app_html)
        app = page.frame_locator("#app")
        for name in PROVIDERS:
            await expect(app.get_by_test_id(f"health-{name}")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
        await expect(app.get_by_test_id("live")).to_have_text("polling")
        assert "ui/initialize" in await page.evaluate("window.hostLog")

        await app.get_by_test_id("heal-intasend").click()
        await app.locator("#confirm-reason").fill("mcp app heal")
        await app.locator("#confirm-ok").click()
        healing = app.get_by_test_id("events").locator('li[data-type="healing_event"]')
        await expect(
            healing.filter(has_text="intasend: manual healing succeeded (mcp app heal)")
        ).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    assert ("heal_provider", {"provider": "intasend", "reason": "mcp app heal"}) in calls
    assert errors == []
