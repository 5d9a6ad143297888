"""Settings: defaults, DATABASE_URL forms, one-line ConfigErrors naming the variable, `.env`, redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.settings import ConfigError, Settings, load_settings, to_asyncpg_url

SPECIAL = "p@ss:w/rd"  # a password that needs percent-encoding in a URL
LORE_BIN = Path(sys.executable).parent / "lore"


def _error(environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(environ, dotenv=None)
    error = info.value
    message = str(error)
    assert "\n" not in message, f"message spans lines: {message!r}"
    assert message.startswith(f"{error.variable}: "), message
    return error


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_with_empty_environ() -> None:
    settings = load_settings({}, dotenv=None)
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.ecs_database_url is None
    assert settings.redis_url is None
    assert settings.embedding_provider == "local"
    assert settings.embedding_url is None
    assert settings.embedding_model is None
    assert settings.embedding_api_key is None
    assert settings.embedding_dimension is None
    assert settings.data_dir == Path(".data")
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.log_level == "INFO"
    assert settings.db_timeout_ms == 5_000
    assert settings.db_pool_size == 20
    assert settings.max_request_bytes == 16 * 1024 * 1024


def test_process_environment_is_not_read_when_environ_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORE_PORT", "abc")
    monkeypatch.setenv("DATABASE_URL", "mysql://x/y")
    assert load_settings({}, dotenv=None).port == 8000


def test_blank_values_mean_unset() -> None:
    settings = load_settings({"DATABASE_URL": "  ", "LORE_PORT": "", "LORE_LOG_LEVEL": " "}, dotenv=None)
    assert settings.database_url is None
    assert settings.port == 8000
    assert settings.log_level == "INFO"


def test_explicit_values() -> None:
    settings = load_settings(
        {
            "LORE_DATA_DIR": "/var/lib/lore",
            "LORE_HOST": "10.1.2.3",
            "LORE_PORT": "9001",
            "LORE_LOG_LEVEL": "debug",
            "LORE_DB_TIMEOUT_MS": "250",
            "LORE_DB_POOL_SIZE": "3",
            "LORE_MAX_REQUEST_BYTES": "2048",
            "REDIS_URL": "valkey://cache:6379/1",
        },
        dotenv=None,
    )
    assert settings.data_dir == Path("/var/lib/lore")
    assert settings.host == "10.1.2.3"
    assert settings.port == 9001
    assert settings.log_level == "DEBUG"
    assert settings.db_timeout_ms == 250
    assert settings.db_pool_size == 3
    assert settings.max_request_bytes == 2048
    assert settings.redis_url == "redis://cache:6379/1"


# --- DATABASE_URL forms -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
        ("postgresql://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("  postgres://u@h/db  ", "postgresql+asyncpg://u@h/db"),
        ("postgresql:///db", "postgresql+asyncpg://localhost/db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql+asyncpg://u@h/db?ssl=require"),
        ("postgresql://u@h/db?sslmode=require&connect_timeout=5", "postgresql+asyncpg://u@h/db?ssl=require"),
    ],
)
def test_url_forms(raw: str, expected: str) -> None:
    assert to_asyncpg_url(raw) == expected
    assert load_settings({"DATABASE_URL": raw}, dotenv=None).database_url == expected


def test_socket_dir_is_kept_as_host_query_parameter() -> None:
    url = make_url(to_asyncpg_url("postgresql://user@/db?host=/socket/dir"))
    assert url.drivername == "postgresql+asyncpg"
    assert url.username == "user"
    assert url.host is None  # no "localhost" invented next to a socket directory
    assert url.database == "db"
    assert url.query == {"host": "/socket/dir"}


def test_sslmode_becomes_ssl() -> None:
    url = make_url(to_asyncpg_url("postgres://u:p@h:5433/db?sslmode=require&application_name=lore"))
    assert url.query == {"ssl": "require", "application_name": "lore"}
    assert "sslmode" not in str(url)


def test_libpq_keyword_string_with_socket_dir() -> None:
    url = make_url(to_asyncpg_url("host=/tmp dbname=lore user=me port=5433"))
    assert url.drivername == "postgresql+asyncpg"
    assert url.username == "me"
    assert url.password is None
    assert url.host is None
    assert url.database == "lore"
    assert url.query == {"host": "/tmp", "port": "5433"}  # noqa: S108 - a socket dir in a string


def test_libpq_keyword_string_with_tcp_host() -> None:
    url = make_url(
        to_asyncpg_url("host=db.example port=6543 dbname=lore user=me password='p@ss:w/rd' sslmode=require")
    )
    assert (url.host, url.port, url.database, url.username) == ("db.example", 6543, "lore", "me")
    assert url.password == SPECIAL
    assert url.query == {"ssl": "require"}


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:p%40ss%3Aw%2Frd@h:5432/db",
        "postgres://u:p%40ss%3Aw%2Frd@h:5432/db?sslmode=require",
    ],
)
def test_special_characters_in_password_survive(raw: str) -> None:
    converted = to_asyncpg_url(raw)
    url = make_url(converted)
    assert url.password == SPECIAL
    assert url.username == "u"
    assert url.host == "h"
    assert url.port == 5432
    assert url.database == "db"
    # Converting twice is harmless (a configured URL may already be the converted one).
    assert to_asyncpg_url(converted) == converted


def test_special_characters_in_user_survive() -> None:
    url = make_url(to_asyncpg_url("postgresql://me%40corp:pw@h/db"))
    assert url.username == "me@corp"
    assert url.password == "pw"


def test_ecs_database_url_converts_too() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgres://u@h/chronicle",
            "ECS_DATABASE_URL": "postgres://u:p@ecs:5433/ecs?sslmode=require",
        },
        dotenv=None,
    )
    assert settings.database_url == "postgresql+asyncpg://u@h/chronicle"
    assert settings.ecs_database_url == "postgresql+asyncpg://u:p@ecs:5433/ecs?ssl=require"


# --- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": "mysql://u:p@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://u@h"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://u@h/"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://u@h:notaport/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "host=/tmp user=me"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"ECS_DATABASE_URL": "mysql://u@h/db"}, "ECS_DATABASE_URL"),
        ({"LORE_PORT": "abc"}, "LORE_PORT"),
        ({"LORE_PORT": "70000"}, "LORE_PORT"),
        ({"LORE_PORT": "-1"}, "LORE_PORT"),
        ({"LORE_LOG_LEVEL": "loud"}, "LORE_LOG_LEVEL"),
        ({"LORE_DB_POOL_SIZE": "0"}, "LORE_DB_POOL_SIZE"),
        ({"LORE_DB_TIMEOUT_MS": "soon"}, "LORE_DB_TIMEOUT_MS"),
        ({"EMBEDDING_PROVIDER": "magic"}, "EMBEDDING_PROVIDER"),
        ({"EMBEDDING_DIMENSION": "many"}, "EMBEDDING_DIMENSION"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
    ],
)
def test_bad_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    error = _error(environ)
    assert error.variable == variable
    assert error.reason


def test_bad_values_quote_what_was_given() -> None:
    assert "'abc'" in str(_error({"LORE_PORT": "abc"}))
    assert "70000" in str(_error({"LORE_PORT": "70000"}))
    assert "mysql" in str(_error({"DATABASE_URL": "mysql://u@h/db"}))
    assert "'magic'" in str(_error({"EMBEDDING_PROVIDER": "magic"}))
    assert "LOUD" in str(_error({"LORE_LOG_LEVEL": "loud"})).upper()


def test_bad_url_error_does_not_leak_the_password() -> None:
    error = _error({"DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in str(error)


OPENAI = {
    "EMBEDDING_PROVIDER": "openai",
    "EMBEDDING_URL": "https://api.example/v1",
    "EMBEDDING_MODEL": "text-embedding-3-small",
    "EMBEDDING_DIMENSION": "1536",
}


@pytest.mark.parametrize("missing", ["EMBEDDING_URL", "EMBEDDING_MODEL", "EMBEDDING_DIMENSION"])
def test_openai_provider_requires_each_setting(missing: str) -> None:
    environ = {k: v for k, v in OPENAI.items() if k != missing}
    error = _error(environ)
    assert error.variable == missing


def test_openai_provider_requires_http_url() -> None:
    error = _error({**OPENAI, "EMBEDDING_URL": "ftp://api.example"})
    assert error.variable == "EMBEDDING_URL"


def test_openai_provider_complete() -> None:
    settings = load_settings(
        {**OPENAI, "EMBEDDING_PROVIDER": "OpenAI", "EMBEDDING_API_KEY": "sk-1"}, dotenv=None
    )
    assert settings.embedding_provider == "openai"
    assert settings.embedding_url == "https://api.example/v1"
    assert settings.embedding_model == "text-embedding-3-small"
    assert settings.embedding_dimension == 1536
    assert settings.embedding_api_key == "sk-1"


# --- .env -------------------------------------------------------------------------------------


def test_dotenv_is_read(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "LORE_PORT=9100\n"
        'export LORE_HOST="10.1.2.3"\n'
        "LORE_LOG_LEVEL='warning'\n"
        'EMBEDDING_API_KEY = "sk-with # hash and = sign"\n'
        "DATABASE_URL=postgres://u:p%40ss@h/db\n",
        encoding="utf-8",
    )
    settings = load_settings({}, dotenv=dotenv)
    assert settings.port == 9100
    assert settings.host == "10.1.2.3"
    assert settings.log_level == "WARNING"
    assert settings.embedding_api_key == "sk-with # hash and = sign"
    assert settings.database_url == "postgresql+asyncpg://u:p%40ss@h/db"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LORE_PORT=9100\nLORE_HOST=10.0.0.1\n", encoding="utf-8")
    settings = load_settings({"LORE_PORT": "9200"}, dotenv=dotenv)
    assert settings.port == 9200
    assert settings.host == "10.0.0.1"


def test_missing_dotenv_is_fine(tmp_path: Path) -> None:
    assert load_settings({}, dotenv=tmp_path / "absent.env") == Settings()


def test_bad_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LORE_PORT=abc\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({}, dotenv=dotenv)
    assert info.value.variable == "LORE_PORT"


@pytest.mark.parametrize("bad_line", ["this is not an assignment", "1BAD=x", "=value", "BAD KEY=x"])
def test_malformed_dotenv_line_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"# header\nLORE_PORT=9000\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({}, dotenv=dotenv)
    assert info.value.variable == f"{dotenv}:3"
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{dotenv}:3: ")


# --- redaction --------------------------------------------------------------------------------


def test_redacted_masks_passwords_and_api_key() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgres://u:s3cret@h/db",
            "ECS_DATABASE_URL": "postgres://e:p%40ss%3Aw%2Frd@h/ecs",
            "REDIS_URL": "redis://:r3dis@cache:6379/0",
            **OPENAI,
            "EMBEDDING_API_KEY": "sk-topsecret",
        },
        dotenv=None,
    )
    redacted = settings.redacted()
    text = repr(redacted)
    for secret in ("s3cret", "p%40ss", "r3dis", "sk-topsecret"):
        assert secret not in text
    assert redacted["database_url"] == "postgresql+asyncpg://u:***@h/db"
    assert redacted["ecs_database_url"] == "postgresql+asyncpg://e:***@h/ecs"
    assert redacted["redis_url"] == "redis://:***@cache:6379/0"
    assert redacted["embedding_api_key"] == "***"
    assert redacted["data_dir"] == ".data"
    assert redacted["port"] == 8000
    # The settings themselves are untouched.
    assert settings.embedding_api_key == "sk-topsecret"


def test_redacted_without_secrets() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://user@/db?host=/socket/dir"}, dotenv=None)
    redacted = settings.redacted()
    assert redacted["database_url"] == settings.database_url
    assert redacted["embedding_api_key"] is None
    assert redacted["redis_url"] is None


# --- the CLI's one-line failure -----------------------------------------------------------------


def test_cli_reports_bad_configuration_in_one_line(tmp_path: Path) -> None:
    assert LORE_BIN.exists(), LORE_BIN
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LORE_PORT": "abc"}
    result = subprocess.run(
        [str(LORE_BIN), "tenant", "create", "x"],
        env=env,
        cwd=tmp_path,  # no stray .env from the working directory
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "LORE_PORT" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
