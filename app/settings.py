"""Settings: read once at startup from the environment (and an optional `.env`), then passed around.

Nothing here runs at import time. A bad value raises `ConfigError` naming the variable, which the
CLI prints as one line before exiting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import msgspec

__all__ = ["ConfigError", "Settings", "load_settings", "to_asyncpg_url"]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EMBEDDING_PROVIDERS: Final = ("local", "openai")
_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A configuration value is wrong; `variable` names the environment variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    """asyncpg-flavoured SQLAlchemy URL; None means: start the embedded PostgreSQL."""
    ecs_database_url: str | None = None
    """Where ECS tables live; None means: the chronicle database."""
    redis_url: str | None = None
    """None means: start the embedded Valkey server."""
    embedding_provider: str = "local"
    embedding_url: str | None = None
    embedding_model: str | None = None
    embedding_api_key: str | None = None
    embedding_dimension: int | None = None
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_format: str = ""
    """json or text; empty: json for `lore serve` (log pipelines), text for other commands."""
    db_timeout_ms: int = 5_000
    """Statement and connect timeout; an outage answers 503 after this, never hangs."""
    db_pool_size: int = 20
    max_request_bytes: int = 16 * 1024 * 1024
    run_projector: bool = True
    """Run the ECS projector inside the service (off when dedicated `lore worker`s do it)."""
    projector_batch_size: int = 1_000
    projector_max_attempts: int = 5
    projector_coalesce_ms: int = 100
    ecs_timeout_ms: int = 250
    """Total time one request may wait on ECS reads before it falls back to a chronicle replay."""
    breaker_window: int = 20
    breaker_minimum_calls: int = 5
    breaker_failure_rate: float = 0.5
    breaker_open_ms: int = 1_000
    breaker_max_open_ms: int = 30_000
    breaker_probes: int = 3
    max_lag_events: int = 1_000
    max_lag_seconds: float = 30.0
    stale_policy: str = "degrade"
    """degrade: a too-stale chronicle gets chronicle-only bundles; warn: full bundles with a warning."""
    ecs_enrichment: bool = True
    """Initial value of the runtime flag (flip it without a restart through the admin route)."""
    replay_events_per_entity: int = 200
    rate_limit_per_minute: int = 6_000
    """Requests per API key per minute (each replica); 0 turns the limit off."""
    rate_limit_burst: int = 1_000

    def redacted(self) -> dict[str, object]:
        """The settings as they may be logged: secrets and URL passwords masked."""
        values = msgspec.structs.asdict(self)
        if values["embedding_api_key"]:
            values["embedding_api_key"] = "***"
        for key in ("database_url", "ecs_database_url", "redis_url"):
            if values[key]:
                values[key] = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", str(values[key]))
        values["data_dir"] = str(values["data_dir"])
        return values


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    """Build the settings; the process environment wins over `.env`."""
    values: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        values.update(_read_dotenv(dotenv))
    values.update(os.environ if environ is None else environ)

    def get(name: str) -> str | None:
        raw = values.get(name)
        return raw.strip() if raw is not None and raw.strip() else None

    database_url = _optional(get, "DATABASE_URL", to_asyncpg_url)
    ecs_database_url = _optional(get, "ECS_DATABASE_URL", to_asyncpg_url)
    redis_url = _optional(get, "REDIS_URL", _check_redis_url)

    provider = (get("EMBEDDING_PROVIDER") or "local").lower()
    if provider not in EMBEDDING_PROVIDERS:
        raise ConfigError(
            "EMBEDDING_PROVIDER", f"must be one of {', '.join(EMBEDDING_PROVIDERS)}, got {provider!r}"
        )
    embedding_url = get("EMBEDDING_URL")
    embedding_model = get("EMBEDDING_MODEL")
    embedding_dimension = _int(get, "EMBEDDING_DIMENSION", None, 1, 16_000)
    if provider == "openai":
        if embedding_url is None:
            raise ConfigError("EMBEDDING_URL", "is required when EMBEDDING_PROVIDER=openai")
        if not re.match(r"^https?://", embedding_url):
            raise ConfigError("EMBEDDING_URL", f"must be an http(s) URL, got {embedding_url!r}")
        if embedding_model is None:
            raise ConfigError("EMBEDDING_MODEL", "is required when EMBEDDING_PROVIDER=openai")
        if embedding_dimension is None:
            raise ConfigError("EMBEDDING_DIMENSION", "is required when EMBEDDING_PROVIDER=openai")

    log_level = (get("LORE_LOG_LEVEL") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError("LORE_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    return Settings(
        database_url=database_url,
        ecs_database_url=ecs_database_url,
        redis_url=redis_url,
        embedding_provider=provider,
        embedding_url=embedding_url,
        embedding_model=embedding_model,
        embedding_api_key=get("EMBEDDING_API_KEY"),
        embedding_dimension=embedding_dimension,
        data_dir=Path(get("LORE_DATA_DIR") or ".data"),
        host=get("LORE_HOST") or "127.0.0.1",
        port=_int(get, "LORE_PORT", 8000, 0, 65_535) or 0,
        log_level=log_level,
        log_format=_choice(get, "LORE_LOG_FORMAT", "", ("json", "text", "")),
        db_timeout_ms=_int(get, "LORE_DB_TIMEOUT_MS", 5_000, 100, 600_000) or 5_000,
        db_pool_size=_int(get, "LORE_DB_POOL_SIZE", 20, 1, 500) or 20,
        max_request_bytes=_int(get, "LORE_MAX_REQUEST_BYTES", 16 * 1024 * 1024, 1024, 1 << 30) or 0,
        run_projector=parse_bool("LORE_RUN_PROJECTOR", get("LORE_RUN_PROJECTOR"), True),
        projector_batch_size=_int(get, "LORE_PROJECTOR_BATCH_SIZE", 1_000, 1, 100_000) or 1_000,
        projector_max_attempts=_int(get, "LORE_PROJECTOR_MAX_ATTEMPTS", 5, 1, 1_000) or 5,
        projector_coalesce_ms=_int(get, "LORE_PROJECTOR_COALESCE_MS", 100, 0, 60_000) or 0,
        ecs_timeout_ms=_int(get, "LORE_ECS_TIMEOUT_MS", 250, 10, 60_000) or 250,
        breaker_window=_int(get, "LORE_BREAKER_WINDOW", 20, 1, 10_000) or 20,
        breaker_minimum_calls=_int(get, "LORE_BREAKER_MINIMUM_CALLS", 5, 1, 10_000) or 5,
        breaker_failure_rate=_float(get, "LORE_BREAKER_FAILURE_RATE", 0.5, 0.01, 1.0),
        breaker_open_ms=_int(get, "LORE_BREAKER_OPEN_MS", 1_000, 10, 3_600_000) or 1_000,
        breaker_max_open_ms=_int(get, "LORE_BREAKER_MAX_OPEN_MS", 30_000, 10, 3_600_000) or 30_000,
        breaker_probes=_int(get, "LORE_BREAKER_PROBES", 3, 1, 1_000) or 3,
        max_lag_events=_int(get, "LORE_MAX_LAG_EVENTS", 1_000, 0, 1_000_000_000) or 0,
        max_lag_seconds=_float(get, "LORE_MAX_LAG_SECONDS", 30.0, 0.0, 1e9),
        stale_policy=_choice(get, "LORE_STALE_POLICY", "degrade", ("degrade", "warn")),
        ecs_enrichment=parse_bool("LORE_ECS_ENRICHMENT", get("LORE_ECS_ENRICHMENT"), True),
        replay_events_per_entity=_int(get, "LORE_REPLAY_EVENTS_PER_ENTITY", 200, 1, 1_000_000) or 200,
        rate_limit_per_minute=_int(get, "LORE_RATE_LIMIT_PER_MINUTE", 6_000, 0, 10_000_000) or 0,
        rate_limit_burst=_int(get, "LORE_RATE_LIMIT_BURST", 1_000, 1, 10_000_000) or 1_000,
    )


def parse_bool(variable: str, raw: str | None, default: bool) -> bool:
    """`bool("false")` is True; this is not."""
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(variable, f"must be true or false, got {raw!r}")


def to_asyncpg_url(raw: str, variable: str = "DATABASE_URL") -> str:
    """Accept the libpq forms users paste and return a `postgresql+asyncpg://` URL.

    Handles `postgres://`, `postgresql://`, other driver prefixes, `?host=/socket/dir` (what
    embedded PostgreSQL prints) and keyword/value strings such as `host=/tmp dbname=lore user=me`.
    """
    text = raw.strip()
    if "://" not in text:
        text = _keyword_dsn_to_url(text, variable)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme.split("+")[0] not in ("postgres", "postgresql"):
        raise ConfigError(variable, f"must be a postgresql:// URL, got scheme {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    translated: list[tuple[str, str]] = []
    for key, value in query:
        # asyncpg names libpq's sslmode `ssl`; the other libpq options it does not know are dropped
        # rather than failing at connect time with an obscure TypeError.
        if key == "sslmode":
            translated.append(("ssl", value))
        elif key in ("host", "port", "ssl", "application_name", "options"):
            translated.append((key, value))
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(variable, f"has an invalid port: {exc}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigError(variable, "must name a database (postgresql://user@host/DATABASE)")
    host = parts.hostname or ""
    if not host and not any(k == "host" for k, _ in translated):
        host = "localhost"
    auth = ""
    if parts.username:
        auth = quote(unquote(parts.username), safe="")
        if parts.password is not None:
            auth += ":" + quote(unquote(parts.password), safe="")
        auth += "@"
    netloc = f"{auth}{host}{':' + str(port) if port else ''}"
    suffix = f"?{urlencode(translated)}" if translated else ""
    return f"postgresql+asyncpg://{netloc}/{quote(database)}{suffix}"


def _keyword_dsn_to_url(text: str, variable: str) -> str:
    pairs = re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", text)
    if not pairs:
        raise ConfigError(
            variable, "must be a postgresql:// URL or a libpq keyword string (host=... dbname=...)"
        )
    fields = {k: v.strip("'") for k, v in pairs}
    database = fields.pop("dbname", None)
    if not database:
        raise ConfigError(variable, "libpq keyword string needs dbname=...")
    user = fields.pop("user", "")
    password = fields.pop("password", None)
    host = fields.pop("host", "")
    port = fields.pop("port", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    query: dict[str, str] = {k: v for k, v in fields.items() if k in ("sslmode", "application_name")}
    netloc = ""
    if host.startswith("/"):
        query["host"] = host
    else:
        netloc = host + (":" + port if port else "")
    if host.startswith("/") and port:
        query["port"] = port
    return f"postgresql://{auth + '@' if auth else ''}{netloc}/{quote(database)}" + (
        f"?{urlencode(query)}" if query else ""
    )


def _check_redis_url(raw: str, variable: str = "REDIS_URL") -> str:
    if not re.match(r"^(redis|rediss|unix|valkey)://", raw):
        raise ConfigError(variable, f"must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw.replace("valkey://", "redis://", 1)


def _optional(get: object, name: str, convert: object) -> str | None:
    raw = get(name)  # type: ignore[operator]
    return None if raw is None else convert(raw, name)  # type: ignore[operator, no-any-return]


def _int(get: object, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = get(name)  # type: ignore[operator]
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


def _float(get: object, name: str, default: float, low: float, high: float) -> float:
    raw = get(name)  # type: ignore[operator]
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


def _choice(get: object, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = get(name)  # type: ignore[operator]
    if raw is None:
        return default
    value = str(raw).lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").strip()
        key, sep, value = stripped.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ConfigError(f"{path}:{number}", "is not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values
