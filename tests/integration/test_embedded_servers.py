"""Embedded PostgreSQL and Valkey as real processes: leases, stale pid recovery, persistence.

Every test gets its own short data directory under /tmp; servers are stopped (and any leftovers
killed) before it is removed. Every wait is bounded in iterations and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.runtime import open_endpoints
from app.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from app.embedded import EmbeddedPostgres, EmbeddedValkey

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from app.embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
print(server.acquire(), flush=True)
sys.stdin.readline()
server.release()
print("released", flush=True)
"""


# --- helpers ----------------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return condition()


def _gone(pid: int) -> bool:
    """Exited: reaped, or a zombie whose threads have all exited too (so its sockets are closed).

    The parent of a daemonized server is init, which may reap late; and a multi-threaded server's
    leader turns zombie while its other threads still hold the listening socket for a moment.
    """
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (psutil.NoSuchProcess, FileNotFoundError):
        return True


def _kill_and_wait(pids: list[int], timeout: float = 15.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert _wait_for(lambda: all(_gone(pid) for pid in pids), timeout), f"processes survived SIGKILL: {pids}"


def _postgres_tree(server: EmbeddedPostgres) -> list[int]:
    """The postmaster and all its children (each child is its own session, so no killpg)."""
    pid = server.pid()
    assert pid is not None
    postmaster = psutil.Process(pid)
    return [pid, *(child.pid for child in postmaster.children(recursive=True))]


def _psql(server: EmbeddedPostgres, url: str, sql: str) -> str:
    result = subprocess.run(
        [str(server.bin / "psql"), url, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _leases(root: Path, name: str) -> list[int]:
    return list(json.loads((root / f"{name}.leases").read_text()))


def _readline(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "child did not answer in time"
    return process.stdout.readline().strip()


def _cleanup(root: Path) -> None:
    for server_class in (EmbeddedPostgres, EmbeddedValkey):
        with contextlib.suppress(Exception):
            server_class(root).stop()
    # Anything still running from this directory (a test that failed half-way): kill it.
    leftovers: list[int] = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and any(
                str(root) in part for part in process.info["cmdline"] or []
            ):
                leftovers.append(process.pid)
                leftovers.extend(child.pid for child in process.children(recursive=True))
    with contextlib.suppress(AssertionError):
        _kill_and_wait(leftovers, timeout=10)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lore-emb-", dir="/tmp"))
    try:
        yield path
    finally:
        _cleanup(path)


def _spawn_holder(root: Path) -> subprocess.Popen[str]:
    with (root / "holder.stderr").open("a") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(root)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def _finish(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


# --- PostgreSQL -------------------------------------------------------------------------------


def test_postgres_is_shared_and_the_last_release_stops_it(root: Path) -> None:
    first = EmbeddedPostgres(root)
    url = first.acquire()
    assert url.startswith("postgresql://postgres@/lore?host=")
    assert first.is_running()
    pid = first.pid()
    assert pid is not None
    assert _psql(first, url, "select 1") == "1"

    # A second object on the same directory joins the running server instead of starting one.
    second = EmbeddedPostgres(root)
    assert second.is_running()
    assert second.acquire() == url
    assert second.pid() == pid
    assert _leases(root, "postgres") == [os.getpid()]

    # Another process holds a lease too.
    holder = _spawn_holder(root)
    try:
        assert _readline(holder) == url, (root / "holder.stderr").read_text()
        assert sorted(_leases(root, "postgres")) == sorted([os.getpid(), holder.pid])
        assert first.pid() == pid

        first.release()
        second.release()  # same process: a no-op-safe second release
        assert first.is_running(), "released while another process still holds a lease"
        assert first.pid() == pid
        assert _leases(root, "postgres") == [holder.pid]
        assert _psql(first, url, "select 1") == "1"

        # The holder's release is the last one: the server stops.
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert _readline(holder) == "released"
        assert holder.wait(timeout=30) == 0
    finally:
        _finish(holder)
    assert not first.is_running()
    assert _wait_for(lambda: _gone(pid))
    assert _leases(root, "postgres") == []


def test_concurrent_first_acquires_start_one_server(root: Path) -> None:
    holders = [_spawn_holder(root) for _ in range(3)]
    try:
        urls = {_readline(holder) for holder in holders}
        assert len(urls) == 1, (urls, (root / "holder.stderr").read_text())
        server = EmbeddedPostgres(root)
        assert server.is_running()
        assert sorted(_leases(root, "postgres")) == sorted(holder.pid for holder in holders)
        postmasters = [
            process
            for process in psutil.process_iter(["cmdline"])
            if any(str(server.pgdata) in part for part in process.info["cmdline"] or [])
            and _is_postmaster(process)
        ]
        assert [process.pid for process in postmasters] == [server.pid()]
        pid = server.pid()
        assert pid is not None
        for index, holder in enumerate(holders):
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert _readline(holder) == "released"
            assert holder.wait(timeout=30) == 0
            assert server.is_running() == (index < len(holders) - 1)
    finally:
        for holder in holders:
            _finish(holder)
    assert _wait_for(lambda: _gone(pid))


def _is_postmaster(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(process.name() == "postgres" and "-D" in process.cmdline())
    return False


def test_dead_leases_do_not_keep_postgres_alive(root: Path) -> None:
    server = EmbeddedPostgres(root)
    url = server.acquire()
    pid = server.pid()
    assert pid is not None

    # A holder that was SIGKILLed while holding its lease...
    holder = _spawn_holder(root)
    try:
        assert _readline(holder) == url, (root / "holder.stderr").read_text()
    finally:
        _finish(holder)  # SIGKILL and reap: its lease stays in the file
    assert holder.pid in _leases(root, "postgres")
    # ...and the pid of a process that finished long ago.
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    dead = int(finished.stdout)
    assert _gone(dead)
    leases_file = root / "postgres.leases"
    leases_file.write_text(json.dumps(sorted({*_leases(root, "postgres"), dead})))

    server.release()
    assert not server.is_running()
    assert _wait_for(lambda: _gone(pid))
    assert _leases(root, "postgres") == []


def test_postgres_recovers_after_sigkill_and_keeps_data(root: Path) -> None:
    server = EmbeddedPostgres(root)
    url = server.acquire()
    _psql(
        server,
        url,
        "create table survivor (id int primary key, name text); insert into survivor values (1, 'x')",
    )
    tree = _postgres_tree(server)
    old_pid = tree[0]

    _kill_and_wait(tree)
    assert (server.pgdata / "postmaster.pid").exists(), "a killed postmaster leaves its pid file behind"
    assert not server.is_running()

    restarted = EmbeddedPostgres(root)
    assert restarted.acquire() == url
    assert restarted.is_running()
    assert restarted.pid() not in (None, old_pid)
    assert _psql(restarted, url, "select 1") == "1"
    assert _psql(restarted, url, "select name from survivor where id = 1") == "x"
    restarted.release()
    server.release()
    assert not restarted.is_running()


def test_postgres_recovers_pid_file_naming_a_live_non_postgres_process(root: Path) -> None:
    server = EmbeddedPostgres(root)
    url = server.acquire()
    _psql(server, url, "create table survivor (id int); insert into survivor values (42)")
    server.stop()
    assert not server.is_running()
    pid_file = server.pgdata / "postmaster.pid"
    assert not pid_file.exists()

    # A recycled pid: the file names a live process that is not PostgreSQL (this test process).
    pid_file.write_text(f"{os.getpid()}\n{server.pgdata}\n{int(time.time())}\n5432\n{server.socket_dir}\n\n")
    assert server.pid() == os.getpid()
    assert not server.is_running()

    assert server.acquire() == url
    assert server.is_running()
    assert server.pid() not in (None, os.getpid())
    assert _psql(server, url, "select 1") == "1"
    assert _psql(server, url, "select id from survivor") == "42"
    server.release()
    assert not server.is_running()


def test_stop_and_start_ignore_leases(root: Path) -> None:
    server = EmbeddedPostgres(root)
    url = server.acquire()
    server.stop()
    assert not server.is_running()
    assert _leases(root, "postgres") == [os.getpid()]
    server.start()
    assert server.is_running()
    assert _psql(server, url, "select 1") == "1"
    server.release()
    assert not server.is_running()


# --- Valkey -----------------------------------------------------------------------------------


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_valkey_acquire_ping_and_recover_after_sigkill(root: Path) -> None:
    server = EmbeddedValkey(root)
    url = server.acquire()
    match = re.fullmatch(r"redis://127\.0\.0\.1:(\d+)(/0)?", url)
    assert match, url
    port = int(match.group(1))
    assert _ping(url)
    assert server.is_running()

    other = EmbeddedValkey(root)
    assert other.is_running()
    assert other.acquire() == url

    # Keep a client connection open across the kill, as a running service would.
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.set("before-kill", "1")
        pid = server.pid()
        assert pid is not None
        _kill_and_wait([pid])
        assert not server.is_running()

        new_url = server.acquire()
        new_pid = server.pid()
        assert new_pid not in (None, pid)
        assert _ping(new_url)
        assert new_url == url, f"restarted on another port: {new_url} (was {port})"
    finally:
        client.close()
    server.release()
    other.release()
    assert not server.is_running()


def test_valkey_recovers_pid_file_naming_a_live_non_valkey_process(root: Path) -> None:
    server = EmbeddedValkey(root)
    url = server.acquire()
    server.stop()
    assert not server.is_running()
    (server.dir / "valkey.pid").write_text(str(os.getpid()))
    assert server.pid() == os.getpid()
    assert not server.is_running()
    assert server.acquire() == url
    assert server.pid() not in (None, os.getpid())
    assert _ping(url)
    server.release()
    assert not server.is_running()


def test_valkey_data_survives_a_clean_restart(root: Path) -> None:
    server = EmbeddedValkey(root)
    url = server.acquire()
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.set("chronicle", "salt road")
        client.xadd("outbox", {"event": "created"})
    finally:
        client.close()
    pid = server.pid()
    assert pid is not None
    server.release()
    assert not server.is_running()
    assert _wait_for(lambda: _gone(pid))

    url = server.acquire()
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        assert client.get("chronicle") == b"salt road"
        assert client.xlen("outbox") == 1
    finally:
        client.close()
    server.stop()
    assert not server.is_running()
    server.start()
    client = redis.Redis.from_url(server.url(), socket_timeout=5, socket_connect_timeout=5)
    try:
        assert client.get("chronicle") == b"salt road"
    finally:
        client.close()
    server.release()
    assert not server.is_running()


# --- open_endpoints ---------------------------------------------------------------------------


async def _select_one(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(text("select 1"))).scalar_one())
    finally:
        await engine.dispose()


def test_open_endpoints_starts_and_stops_embedded_servers(root: Path) -> None:
    data_dir = root / "data"
    postgres = EmbeddedPostgres(data_dir)
    valkey = EmbeddedValkey(data_dir)
    with open_endpoints(Settings(data_dir=data_dir)) as endpoints:
        assert endpoints.embedded_postgres
        assert endpoints.embedded_valkey
        assert endpoints.database_url.startswith("postgresql+asyncpg://postgres@/lore?host=")
        assert str(postgres.socket_dir).replace("/", "%2F") in endpoints.database_url
        assert endpoints.ecs_database_url == endpoints.database_url
        assert endpoints.redis_url == valkey.url()
        assert postgres.is_running()
        assert valkey.is_running()
        assert _psql(postgres, postgres.url(), "select 1") == "1"
        assert _ping(endpoints.redis_url)
        assert asyncio.run(_select_one(endpoints.database_url)) == 1
        pg_pid, valkey_pid = postgres.pid(), valkey.pid()
    assert pg_pid is not None
    assert valkey_pid is not None
    assert not postgres.is_running()
    assert not valkey.is_running()
    assert _wait_for(lambda: _gone(pg_pid) and _gone(valkey_pid))


def test_open_endpoints_uses_configured_urls_without_starting_servers(root: Path) -> None:
    settings = Settings(
        data_dir=root / "unused",
        database_url="postgresql+asyncpg://u@db.example/lore",
        redis_url="redis://cache.example:6379/0",
    )
    with open_endpoints(settings) as endpoints:
        assert endpoints.database_url == "postgresql+asyncpg://u@db.example/lore"
        assert endpoints.redis_url == "redis://cache.example:6379/0"
        assert not endpoints.embedded_postgres
        assert not endpoints.embedded_valkey
    assert not (root / "unused").exists()
