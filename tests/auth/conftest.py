"""Fixtures for the authorization tests: a real OpenID Connect provider (npm `oidc-provider` on
Node 22, installed by scripts/oidc_provider.sh) and helpers to call the server as someone."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = Path(__file__).with_name("oidc_server.mjs")
START_TIMEOUT_S = 30.0


@dataclass
class Oidc:
    """A running oidc-provider: its issuer, a second issuer signing with the same keys, and admin."""

    issuer: str
    other_issuer: str
    admin: str

    def token(
        self, scopes: str, resource: str, *, client: str = "jwt-client", issuer: str | None = None
    ) -> str:
        """An access token from the client-credentials grant for `resource` with `scopes`."""
        response = httpx.post(
            f"{issuer or self.issuer}/token",
            data={"grant_type": "client_credentials", "scope": scopes, "resource": resource},
            auth=(client, "secret"),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def rotate(self) -> str:
        """Replace the signing key at the issuer; returns the new key id."""
        response = httpx.post(f"{self.admin}/rotate", timeout=10)
        assert response.status_code == 200, response.text
        return str(response.json()["kid"])


def _install() -> tuple[Path, Path]:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "oidc_provider.sh")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"scripts/oidc_provider.sh failed:\n{result.stderr}"
    directory, node = result.stdout.strip().splitlines()[-2:]
    return Path(directory), Path(node)


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oidc]:
    directory, node = _install()
    log_path = tmp_path_factory.mktemp("oidc") / "oidc.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(node), str(SERVER_SCRIPT)],
            env={"OIDC_PROVIDER_DIR": str(directory), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the provider listens (or exits)
            if not line:
                raise RuntimeError(f"oidc-provider did not start:\n{log_path.read_text()}")
            info: dict[str, Any] = json.loads(line)
            yield Oidc(info["issuer"], info["other_issuer"], info["admin"])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def mcp_client(url: str, token: str | None, *, mode: str = "legacy") -> AsyncIterator[Client]:
    """The SDK client over streamable HTTP, sending `token` as a bearer token (legacy: sessions)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http_client,
        Client(streamable_http_client(url, http_client=http_client), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


def wait_until(condition: Any, timeout_s: float, what: str) -> float:
    """Poll `condition()` until true; returns the seconds it took, fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started
