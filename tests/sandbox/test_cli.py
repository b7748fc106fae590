"""`mcp-autonomy sandbox` standalone and `mcp-autonomy chaos` against it, as an operator runs them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def chaos(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_autonomy", "chaos", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}


def test_sandbox_and_chaos_commands(tmp_path: Path) -> None:
    log = (tmp_path / "sandbox.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_autonomy", "sandbox", "--port", "0"], stderr=log, cwd=tmp_path, text=True
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            match = re.search(r"sandbox control API: (\S+)/_control", (tmp_path / "sandbox.log").read_text())
            url = match.group(1) if match else None
            time.sleep(0.05)
        assert url is not None, (tmp_path / "sandbox.log").read_text()
        assert "mpesa: http://127.0.0.1:" in (tmp_path / "sandbox.log").read_text()

        code, added = chaos(
            url, "--provider", "mpesa", "--kind", "outage", "--param", "mode=503", "--duration-s", "60"
        )
        assert code == 0 and added["fault"]["kind"] == "outage"
        code, storm = chaos(
            url,
            "--provider",
            "mpesa",
            "--kind",
            "customer_errors",
            "--param",
            "rate=0.8",
            "--param",
            "code=1032",
        )
        assert code == 0 and storm["fault"]["params"] == {"rate": 0.8, "code": "1032", "synchronous": False}
        code, listed = chaos(url, "--list")
        assert code == 0 and [f["provider"] for f in listed["faults"]] == ["mpesa", "mpesa"]
        code, refused = chaos(
            url, "--provider", "mpesa", "--kind", "latency", "--param", "distribution=fixed"
        )
        assert code == 1 and "fixed_ms" in json.dumps(refused)
        code, _ = chaos(url, "--clear")
        assert code == 0
        code, listed = chaos(url, "--list")
        assert listed["faults"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()
