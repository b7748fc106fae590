from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_autonomy.config import Sensitivity, SettingsError, load_settings

ORIGINAL_DEFAULTS = {
    "self_healing_enabled": True,
    "self_healing_interval_ms": 10_000,
    "max_healing_attempts": 5,
    "auto_scaling_enabled": True,
    "min_instances": 2,
    "max_instances": 20,
    "target_tpm_per_instance": 100,
    "predictive_maintenance_enabled": True,
    "prediction_sensitivity": Sensitivity.MEDIUM,
    "auto_schedule_maintenance": True,
    "auto_optimization_enabled": True,
    "optimization_interval_ms": 120_000,
    "conservative_mode": False,
}


def test_defaults_match_the_original_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    for name, value in ORIGINAL_DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREDICTION_SENSITIVITY", "high")
    monkeypatch.setenv("MIN_INSTANCES", "3")
    monkeypatch.setenv("CONSERVATIVE_MODE", "true")
    settings = load_settings()
    assert settings.prediction_sensitivity is Sensitivity.HIGH
    assert settings.min_instances == 3
    assert settings.conservative_mode is True


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MIN_INSTANCES": "30"}, "MIN_INSTANCES=30 must be <= MAX_INSTANCES=20"),
        (
            {"SELF_HEALING_INTERVAL_MS": "-5"},
            "SELF_HEALING_INTERVAL_MS=-5 is invalid: allowed is an integer in [100,",
        ),
        ({"OPTIMIZATION_INTERVAL_MS": "0"}, "OPTIMIZATION_INTERVAL_MS=0 is invalid"),
        (
            {"PREDICTION_SENSITIVITY": "extreme"},
            "PREDICTION_SENSITIVITY=extreme is invalid: allowed is one of low",
        ),
        (
            {"AUTO_SCALING_ENABLED": "maybe"},
            "AUTO_SCALING_ENABLED=maybe is invalid: allowed is true or false",
        ),
        (
            {"SCALE_UP_THRESHOLD": "1.5"},
            "SCALE_UP_THRESHOLD=1.5 is invalid: allowed is a number in [0.1, 1.0]",
        ),
        (
            {"MCP_AUTONOMY_PORT": "70000"},
            "MCP_AUTONOMY_PORT=70000 is invalid: allowed is an integer in [0, 65535]",
        ),
    ],
)
def test_invalid_settings_name_variable_value_and_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_bearer_token_value_never_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_AUTONOMY_BEARER_TOKEN", "s3cret-token")
    settings = load_settings()
    assert "s3cret-token" not in repr(settings)


def test_start_up_stops_with_one_clear_line(tmp_path: Path) -> None:
    env = {"MIN_INSTANCES": "9", "MAX_INSTANCES": "3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_autonomy", "serve", "--transport", "stdio"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == ["mcp-autonomy: invalid settings: MIN_INSTANCES=9 must be <= MAX_INSTANCES=3"]


def test_beyond_loopback_requires_a_token(tmp_path: Path) -> None:
    env = {"MCP_AUTONOMY_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_autonomy", "serve", "--transport", "http", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "MCP_AUTONOMY_BEARER_TOKEN" in proc.stderr
