"""The `lore` commands as a user runs them, on the embedded default in a fresh data directory.

Covers: `lore serve --demo` starting embedded PostgreSQL and Valkey and printing a key, other
commands sharing the running servers, SIGTERM stopping everything cleanly, reuse on the next start,
and recovery after the service was killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.embedded import EmbeddedPostgres, EmbeddedValkey

pytestmark = pytest.mark.timeout(300)
LORE = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir():
    root = Path(tempfile.mkdtemp(prefix="lore-cli-"))
    yield root
    EmbeddedPostgres(root).stop()
    EmbeddedValkey(root).stop()
    shutil.rmtree(root, ignore_errors=True)


def lore_env(data_dir: Path, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "LORE_"))}
    env["LORE_DATA_DIR"] = str(data_dir)
    env.pop("ECS_DATABASE_URL", None)
    if port is not None:
        env["LORE_PORT"] = str(port)
    return env


def run_lore(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LORE, *args], env=env, capture_output=True, text=True, timeout=120, input=stdin, check=False
    )


class Server:
    def __init__(self, data_dir: Path, demo: bool = True) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (data_dir / f"serve-{self.port}.log").open("w+")
        self.process = subprocess.Popen(
            [*LORE, "serve", *(["--demo"] if demo else [])],
            env=lore_env(data_dir, self.port), stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)


def test_serve_demo_share_servers_and_stop_cleanly(data_dir: Path) -> None:
    server = Server(data_dir)
    try:
        server.wait_ready()
        output = server.output()
        key = re.search(r"API key \(tenant 'demo'\): (lk_\S+)", output).group(1)
        chronicle = re.search(r"demo chronicle: ([0-9a-f-]{36})", output).group(1)
        headers = {"Authorization": f"Bearer {key}"}
        events = httpx.get(
            f"{server.base}/api/chronicles/{chronicle}/events?limit=500", headers=headers
        ).json()
        assert len(events["items"]) >= 30
        assert any(e["effects"] for e in events["items"])

        # Another command on the same data dir uses the running servers.
        postgres_pid = EmbeddedPostgres(data_dir).pid()
        created = run_lore(["tenant", "create", "second"], lore_env(data_dir))
        assert created.returncode == 0, created.stderr
        second_key = created.stdout.strip()
        assert second_key.startswith("lk_")
        assert EmbeddedPostgres(data_dir).pid() == postgres_pid
        assert httpx.get(f"{server.base}/api/chronicles", headers={"Authorization": f"Bearer {second_key}"}
                         ).json()["items"] == []  # fmt: skip
        duplicate = run_lore(["tenant", "create", "second"], lore_env(data_dir))
        assert duplicate.returncode == 1 and "exists already" in duplicate.stderr

        # `lore ingest` with a progress bar, into a new chronicle, idempotent on re-run.
        story = data_dir / "story.jsonl"
        story.write_text(
            "\n".join(json.dumps({"summary": f"step {i}", "external_id": f"s{i}"}) for i in range(25))
        )
        ingested = run_lore(
            ["ingest", str(story), "--tenant", "second", "--batch-size", "10"], lore_env(data_dir)
        )
        assert ingested.returncode == 0, ingested.stderr
        assert "25 events stored" in ingested.stderr
        assert "ingest" in ingested.stderr  # the progress bar
        new_chronicle = ingested.stdout.strip()
        again = run_lore(["ingest", str(story), "--tenant", "second", "--chronicle", new_chronicle],
                         lore_env(data_dir))  # fmt: skip
        assert again.returncode == 0 and "0 events stored, 25 duplicates" in again.stderr
        assert "warning" not in again.stderr
        edited = data_dir / "edited.jsonl"
        edited.write_text(json.dumps({"summary": "step 3, told otherwise", "external_id": "s3"}))
        told_otherwise = run_lore(["ingest", str(edited), "--tenant", "second", "--chronicle", new_chronicle],
                                  lore_env(data_dir))  # fmt: skip
        assert told_otherwise.returncode == 0, told_otherwise.stderr
        assert "warning: 1 skipped duplicates differ from the stored events" in told_otherwise.stderr
        assert told_otherwise.stderr.rstrip().endswith(": s3")
        bad = data_dir / "bad.jsonl"
        bad.write_text('{"summary": "fine"}\n{"summary": ""}\n')
        rejected = run_lore(["ingest", str(bad), "--tenant", "second"], lore_env(data_dir))
        assert (
            rejected.returncode == 1
            and "bad.jsonl:2" in rejected.stderr
            and "nothing was ingested" in rejected.stderr
        )

        assert server.terminate() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    # The clean shutdown stopped both embedded servers (no other holder was left).
    assert not EmbeddedPostgres(data_dir).is_running()
    assert not EmbeddedValkey(data_dir).is_running()

    # The next start reuses the data and the stored demo key.
    server = Server(data_dir)
    try:
        server.wait_ready()
        assert key in server.output()
        response = httpx.get(f"{server.base}/api/chronicles/{chronicle}", headers=headers)
        assert response.status_code == 200
        assert response.json()["event_count"] == len(events["items"])  # the demo was not loaded twice
    finally:
        server.terminate()


def test_killed_service_is_recovered_on_next_start(data_dir: Path) -> None:
    server = Server(data_dir, demo=False)
    server.wait_ready()
    service = psutil.Process(server.process.pid)
    postgres_pid = EmbeddedPostgres(data_dir).pid()
    valkey_pid = EmbeddedValkey(data_dir).pid()
    # A power cut: the service and both servers die without any cleanup.
    service.kill()
    server.process.wait(30)
    victims = []
    for pid in (postgres_pid, valkey_pid):
        process = psutil.Process(pid)
        victims += [process, *process.children(recursive=True)]
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    _, alive = psutil.wait_procs(victims, timeout=30)
    assert alive == []
    assert (data_dir / "postgres" / "postmaster.pid").exists()  # stale, left behind

    server = Server(data_dir, demo=False)
    try:
        server.wait_ready()
        assert httpx.get(f"{server.base}/health").json() == {"status": "ok"}
    finally:
        assert server.terminate() == 0
    assert not EmbeddedPostgres(data_dir).is_running()


def test_bad_configuration_fails_with_one_line(data_dir: Path) -> None:
    env = lore_env(data_dir) | {"DATABASE_URL": "mysql://root@localhost/db"}
    result = run_lore(["serve"], env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL" in result.stderr
