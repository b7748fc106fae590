"""Settings: every environment variable the server reads, with its default, in one place.

The variables of the original TypeScript module keep their names (`SELF_HEALING_ENABLED`, ...);
the server's own carry the `MCP_AUTONOMY_` prefix. `load_settings()` turns any invalid value
into one `SettingsError` line that names the variable, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mcp_autonomy.resilience.breaker import DEFAULT_CONSECUTIVE_FAILURES_TO_OPEN


class Sensitivity(StrEnum):
    """How eagerly predictive maintenance raises predictions."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
ScaleBackendName = Literal["local", "kubernetes"]
K8sHpaMode = Literal["floor", "ignore"]

# Bounds, named once so the schema, the validators and the error messages agree.
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 86_400_000
MAX_REPLICAS_LIMIT = 1000
MAX_HEALING_ATTEMPTS_LIMIT = 100
MAX_TARGET_TPM = 10_000_000
# The original module scaled up when the load reached 80 % of what the instances could carry: an
# instance's capacity is TARGET_TPM_PER_INSTANCE / SCALE_UP_THRESHOLD (125 TPM at the defaults).
DEFAULT_SCALE_UP_THRESHOLD = 0.8
MIN_SCALE_UP_THRESHOLD = 0.1
MIN_K8S_LEASE_DURATION_S = 5
MAX_K8S_LEASE_DURATION_S = 300
MIN_K8S_REQUEST_TIMEOUT_S = 0.1
MAX_K8S_REQUEST_TIMEOUT_S = 300.0
DEFAULT_TOKENS_RELOAD_S = 1.0
MIN_TOKENS_RELOAD_S = 0.1
MAX_TOKENS_RELOAD_S = 5.0
"""A changed tokens file takes effect within this (the issue's bound is 5 s)."""
DEFAULT_AUTH_JWKS_CACHE_S = 300.0
DEFAULT_AUTH_LEEWAY_S = 30.0
DEFAULT_AUTH_INTROSPECTION_CACHE_S = 30.0


def _env(name: str, *more: str) -> Any:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Engine and server settings, read from the environment (and a `.env` file if present)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        validate_default=True,
    )

    # --- self-healing (original module) ---
    self_healing_enabled: bool = Field(True, validation_alias=_env("SELF_HEALING_ENABLED"))
    self_healing_interval_ms: int = Field(
        10_000, ge=MIN_INTERVAL_MS, le=MAX_INTERVAL_MS, validation_alias=_env("SELF_HEALING_INTERVAL_MS")
    )
    max_healing_attempts: int = Field(
        5, ge=1, le=MAX_HEALING_ATTEMPTS_LIMIT, validation_alias=_env("MAX_HEALING_ATTEMPTS")
    )

    # --- auto-scaling (original module) ---
    auto_scaling_enabled: bool = Field(True, validation_alias=_env("AUTO_SCALING_ENABLED"))
    min_instances: int = Field(2, ge=0, le=MAX_REPLICAS_LIMIT, validation_alias=_env("MIN_INSTANCES"))
    max_instances: int = Field(20, ge=1, le=MAX_REPLICAS_LIMIT, validation_alias=_env("MAX_INSTANCES"))
    target_tpm_per_instance: int = Field(
        100, ge=1, le=MAX_TARGET_TPM, validation_alias=_env("TARGET_TPM_PER_INSTANCE")
    )
    scale_up_threshold: float = Field(
        DEFAULT_SCALE_UP_THRESHOLD,
        ge=MIN_SCALE_UP_THRESHOLD,
        le=1.0,
        validation_alias=_env("SCALE_UP_THRESHOLD"),
        description=(
            "the fraction of an instance's capacity that TARGET_TPM_PER_INSTANCE is: capacity = target / "
            "threshold, and the deployment is short of capacity when load > ready replicas x capacity"
        ),
    )
    scaling_interval_ms: int = Field(
        15_000,
        ge=MIN_INTERVAL_MS,
        le=MAX_INTERVAL_MS,
        validation_alias=_env("MCP_AUTONOMY_SCALING_INTERVAL_MS"),
    )
    scaling_policy: Literal["predictive", "reactive"] = Field(
        "predictive", validation_alias=_env("MCP_AUTONOMY_SCALING_POLICY")
    )
    scaling_prior: Literal["original", "none"] = Field(
        "original", validation_alias=_env("MCP_AUTONOMY_SCALING_PRIOR")
    )
    pod_startup_s: int = Field(60, ge=0, le=3600, validation_alias=_env("MCP_AUTONOMY_POD_STARTUP_S"))
    breaker_consecutive_failures: int = Field(
        DEFAULT_CONSECUTIVE_FAILURES_TO_OPEN,
        ge=0,
        le=1000,
        validation_alias=_env("MCP_AUTONOMY_BREAKER_CONSECUTIVE_FAILURES"),
        description="provider failures in a row that open a lane's breaker at once (0: the window rule alone)",
    )

    @field_validator("breaker_consecutive_failures")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (off) or 2..1000: one failure is not a pattern")
        return value

    scale_backend: ScaleBackendName = Field("local", validation_alias=_env("MCP_AUTONOMY_SCALE_BACKEND"))
    k8s_namespace: str = Field("default", validation_alias=_env("MCP_AUTONOMY_K8S_NAMESPACE"))
    k8s_deployment: str = Field("mcp-autonomy", validation_alias=_env("MCP_AUTONOMY_K8S_DEPLOYMENT"))
    k8s_service: str = Field("mcp-autonomy", validation_alias=_env("MCP_AUTONOMY_K8S_SERVICE"))
    k8s_lease_name: str = Field("mcp-autonomy-scaler", validation_alias=_env("MCP_AUTONOMY_K8S_LEASE_NAME"))
    k8s_lease_duration_s: int = Field(
        15,
        ge=MIN_K8S_LEASE_DURATION_S,
        le=MAX_K8S_LEASE_DURATION_S,
        validation_alias=_env("MCP_AUTONOMY_K8S_LEASE_DURATION_S"),
    )
    pod_name: str | None = Field(None, validation_alias=_env("POD_NAME", "HOSTNAME"))
    # Peers ask /internal/load by pod IP (EndpointSlices hold addresses, not names), so this
    # address is accepted as a Host on that route beside the configured names.
    pod_ip: str | None = Field(None, validation_alias=_env("POD_IP"))

    @field_validator("pod_ip", mode="before")
    @classmethod
    def _check_pod_ip(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IP address (the downward API's status.podIP)") from None
        return value

    k8s_hpa_mode: K8sHpaMode = Field("floor", validation_alias=_env("MCP_AUTONOMY_K8S_HPA_MODE"))
    k8s_kubeconfig: str | None = Field(None, validation_alias=_env("MCP_AUTONOMY_K8S_KUBECONFIG"))
    k8s_request_timeout_s: float = Field(
        10.0,
        ge=MIN_K8S_REQUEST_TIMEOUT_S,
        le=MAX_K8S_REQUEST_TIMEOUT_S,
        validation_alias=_env("MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S"),
    )

    # --- predictive maintenance (original module) ---
    predictive_maintenance_enabled: bool = Field(
        True, validation_alias=_env("PREDICTIVE_MAINTENANCE_ENABLED")
    )
    prediction_sensitivity: Sensitivity = Field(
        Sensitivity.MEDIUM, validation_alias=_env("PREDICTION_SENSITIVITY")
    )
    auto_schedule_maintenance: bool = Field(True, validation_alias=_env("AUTO_SCHEDULE_MAINTENANCE"))
    prediction_interval_ms: int = Field(
        60_000,
        ge=MIN_INTERVAL_MS,
        le=MAX_INTERVAL_MS,
        validation_alias=_env("MCP_AUTONOMY_PREDICTION_INTERVAL_MS"),
    )

    # --- auto-optimization (original module) ---
    auto_optimization_enabled: bool = Field(True, validation_alias=_env("AUTO_OPTIMIZATION_ENABLED"))
    optimization_interval_ms: int = Field(
        120_000, ge=MIN_INTERVAL_MS, le=MAX_INTERVAL_MS, validation_alias=_env("OPTIMIZATION_INTERVAL_MS")
    )
    optimization_timeout_min_history_s: float = Field(
        3600.0,
        ge=0.0,
        le=7 * 86_400.0,
        validation_alias=_env("OPTIMIZATION_TIMEOUT_MIN_HISTORY_S"),
        description="History a provider needs before the optimizer may cut its timeout",
    )
    conservative_mode: bool = Field(False, validation_alias=_env("CONSERVATIVE_MODE"))

    # --- the server itself ---
    host: str = Field("127.0.0.1", validation_alias=_env("MCP_AUTONOMY_HOST"))
    port: int = Field(8765, ge=0, le=65535, validation_alias=_env("MCP_AUTONOMY_PORT"))
    bearer_token: SecretStr | None = Field(None, validation_alias=_env("MCP_AUTONOMY_BEARER_TOKEN"))

    @field_validator("bearer_token", mode="after")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        """Set but empty is a mistake (an unset shell variable, a missing Secret key), never "no token"."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "MCP_AUTONOMY_BEARER_TOKEN is set but empty: set it to a secret (e.g. "
                "$(openssl rand -hex 32)), or unset it to serve on loopback without a token"
            )
        return value

    # --- authorization (README "Authorization"): static tokens and/or an OAuth 2.1 issuer ---
    tokens_file: Path | None = Field(
        None,
        validation_alias=_env("MCP_AUTONOMY_TOKENS_FILE"),
        description='JSON list of {"name", "token_sha256", "scopes"}: named static tokens, reloaded on change',
    )
    tokens_reload_s: float = Field(
        DEFAULT_TOKENS_RELOAD_S,
        ge=MIN_TOKENS_RELOAD_S,
        le=MAX_TOKENS_RELOAD_S,
        validation_alias=_env("MCP_AUTONOMY_TOKENS_RELOAD_S"),
    )
    peer_token: SecretStr | None = Field(None, validation_alias=_env("MCP_AUTONOMY_PEER_TOKEN"))
    public_url: str | None = Field(
        None,
        validation_alias=_env("MCP_AUTONOMY_PUBLIC_URL"),
        description="the MCP URL clients use (https://mcp.example.com/mcp): the OAuth resource and default audience",
    )
    auth_issuer: str | None = Field(None, validation_alias=_env("MCP_AUTONOMY_AUTH_ISSUER"))
    auth_audience: str | None = Field(None, validation_alias=_env("MCP_AUTONOMY_AUTH_AUDIENCE"))
    auth_jwks_url: str | None = Field(None, validation_alias=_env("MCP_AUTONOMY_AUTH_JWKS_URL"))
    auth_introspection_url: str | None = Field(
        None, validation_alias=_env("MCP_AUTONOMY_AUTH_INTROSPECTION_URL")
    )
    auth_client_id: str | None = Field(None, validation_alias=_env("MCP_AUTONOMY_AUTH_CLIENT_ID"))
    auth_client_secret: SecretStr | None = Field(
        None, validation_alias=_env("MCP_AUTONOMY_AUTH_CLIENT_SECRET")
    )
    auth_jwks_cache_s: float = Field(
        DEFAULT_AUTH_JWKS_CACHE_S, ge=1, le=86_400, validation_alias=_env("MCP_AUTONOMY_AUTH_JWKS_CACHE_S")
    )
    auth_leeway_s: float = Field(
        DEFAULT_AUTH_LEEWAY_S, ge=0, le=300, validation_alias=_env("MCP_AUTONOMY_AUTH_LEEWAY_S")
    )
    auth_introspection_cache_s: float = Field(
        DEFAULT_AUTH_INTROSPECTION_CACHE_S,
        ge=0,
        le=300,
        validation_alias=_env("MCP_AUTONOMY_AUTH_INTROSPECTION_CACHE_S"),
    )

    @field_validator("peer_token", "auth_client_secret", mode="after")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty: set it to a secret, or unset it")
        return value

    @field_validator(
        "tokens_file",
        "public_url",
        "auth_issuer",
        "auth_audience",
        "auth_jwks_url",
        "auth_introspection_url",
        "auth_client_id",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("public_url", "auth_issuer", "auth_jwks_url", "auth_introspection_url", mode="after")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or (parts.scheme == "http" and not local)
        ):
            raise ValueError("must be an https:// URL (http:// only for localhost)")
        if parts.query or parts.fragment:
            raise ValueError("must be a URL without ?query or #fragment")
        return value.strip()

    # /metrics without the bearer token, for a Prometheus that cannot send one; it holds no secrets.
    metrics_public: bool = Field(False, validation_alias=_env("MCP_AUTONOMY_METRICS_PUBLIC"))
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("MCP_AUTONOMY_ALLOWED_HOSTS")
    )
    state_dir: Path = Field(Path("./state"), validation_alias=_env("MCP_AUTONOMY_STATE_DIR"))
    log_level: LogLevel = Field("INFO", validation_alias=_env("MCP_AUTONOMY_LOG_LEVEL"))
    event_history: int = Field(
        10_000, ge=100, le=1_000_000, validation_alias=_env("MCP_AUTONOMY_EVENT_HISTORY")
    )
    sandbox: bool = Field(False, validation_alias=_env("MCP_AUTONOMY_SANDBOX"))
    sandbox_realism: Literal["realistic", "ideal"] = Field(
        "realistic",
        validation_alias=_env("MCP_AUTONOMY_SANDBOX_REALISM"),
        description="realistic: lookups lag and some callbacks are lost, repeated or late, as at the real "
        "providers; ideal: none of that (for unit tests)",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("MCP_AUTONOMY_PROVIDERS")
    )
    backups: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict, validation_alias=_env("MCP_AUTONOMY_BACKUPS")
    )
    callback_token: SecretStr | None = Field(None, validation_alias=_env("MCP_AUTONOMY_CALLBACK_TOKEN"))
    database_url: SecretStr | None = Field(
        None,
        validation_alias=_env("MCP_AUTONOMY_DATABASE_URL"),
        description="postgresql://user:password@host:5432/db: the store every replica shares; unset: the "
        "embedded SQLite file under the state directory (one process)",
    )
    # Retention of what the leader prunes (0 keeps everything); payments only once final.
    retention_events_days: float = Field(
        30.0, ge=0, le=3650, validation_alias=_env("MCP_AUTONOMY_RETENTION_EVENTS_DAYS")
    )
    retention_payments_days: float = Field(
        400.0, ge=0, le=3650, validation_alias=_env("MCP_AUTONOMY_RETENTION_PAYMENTS_DAYS")
    )

    @field_validator("allowed_hosts", "providers", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("backups", mode="before")
    @classmethod
    def _parse_backups(cls, value: Any) -> Any:
        """`mpesa:intasend,paystack;paystack:flutterwave` -> {"mpesa": [...], "paystack": [...]}."""
        if not isinstance(value, str):
            return value
        parsed: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in value.split(";"))):
            primary, sep, rest = part.partition(":")
            if not sep or not primary.strip():
                raise ValueError("expected primary:backup1,backup2;primary2:backup")
            parsed[primary.strip()] = [b.strip() for b in rest.split(",") if b.strip()]
        return parsed

    @field_validator("database_url", mode="after")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        """Only PostgreSQL URLs; the message never repeats the URL (it may hold a password)."""
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = value.get_secret_value().split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"MCP_AUTONOMY_DATABASE_URL must start with postgresql:// (got a {scheme!r} URL); "
                "leave it unset for the embedded SQLite store"
            )
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"MIN_INSTANCES={self.min_instances} must be <= MAX_INSTANCES={self.max_instances}"
            )
        if self.auth_issuer is not None and self.public_url is None:
            raise ValueError(
                "MCP_AUTONOMY_AUTH_ISSUER needs MCP_AUTONOMY_PUBLIC_URL: the MCP URL clients use "
                "(e.g. https://mcp.example.com/mcp), which is this server's OAuth resource"
            )
        if self.auth_issuer is None and (
            self.auth_audience or self.auth_jwks_url or self.auth_introspection_url
        ):
            raise ValueError(
                "MCP_AUTONOMY_AUTH_AUDIENCE/JWKS_URL/INTROSPECTION_URL need MCP_AUTONOMY_AUTH_ISSUER "
                "(the authorization server that issues the tokens)"
            )
        return self

    @property
    def auth_configured(self) -> bool:
        """True when requests must carry a token (any of the bearer token, tokens file, issuer)."""
        return self.bearer_token is not None or self.tokens_file is not None or self.auth_issuer is not None

    @property
    def resolved_audience(self) -> str | None:
        """The `aud` access tokens must carry: MCP_AUTONOMY_AUTH_AUDIENCE, else the public URL."""
        return self.auth_audience or self.public_url

    @property
    def db_path(self) -> Path:
        """Where the SQLite store lives."""
        return self.state_dir / "mcp-autonomy.sqlite3"

    @property
    def listens_beyond_loopback(self) -> bool:
        """True when `host` is not a loopback address (so a bearer token is mandatory)."""
        if self.host in ("localhost",):
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True


class SettingsError(ValueError):
    """Invalid settings, explained in one line that names the variable, value and allowed range."""


_FIELD_TO_ENV: dict[str, str] = {}
for _name, _field in Settings.model_fields.items():
    _alias = _field.validation_alias
    _FIELD_TO_ENV[_name] = _alias.choices[0] if isinstance(_alias, AliasChoices) else _name.upper()  # type: ignore[assignment]


_SECRET_FIELDS = frozenset(
    {"bearer_token", "callback_token", "database_url", "peer_token", "auth_client_secret"}
)
"""Fields whose value never appears in an error (a token, a URL with a password)."""


def _describe_allowed(field_name: str) -> str:
    field = Settings.model_fields[field_name]
    annotation = field.annotation
    if annotation is bool:
        return "true or false"
    if annotation is Sensitivity:
        return "one of low, medium, high"
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    lo = hi = None
    for meta in field.metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    if lo is not None or hi is not None:
        kind = "a number" if annotation is float else "an integer"
        return f"{kind} in [{lo}, {hi}]"
    if field_name == "backups":
        return "primary:backup1,backup2;primary2:backup (e.g. mpesa:intasend,paystack)"
    return "a valid value"


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = first.get("loc") or ()
    message = str(first.get("msg", "invalid settings")).removeprefix("Value error, ")
    if not loc:  # model-level check: the message already names both variables
        return message
    name = str(loc[0])
    field_name = next((f for f, env in _FIELD_TO_ENV.items() if env.lower() == name.lower()), name)
    env_name = _FIELD_TO_ENV.get(field_name, name.upper())
    if first.get("type") == "value_error":
        # A validator of ours: its message says what is wrong and what to do.
        if message.startswith(env_name):
            return message
        if field_name in _SECRET_FIELDS:
            return f"{env_name} is invalid: {message}"
        return f"{env_name}={first.get('input')!s} is invalid: {message}"
    value = "***" if field_name in _SECRET_FIELDS else first.get("input")
    allowed = _describe_allowed(field_name) if field_name in Settings.model_fields else "a valid value"
    return f"{env_name}={value!s} is invalid: allowed is {allowed}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; `overrides` (field names) win over it.

    Raises:
        SettingsError: with one line naming the variable, the value and the allowed range.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
