"""`lore`: the command line. Every command works on its own or beside a running `lore serve` on the
same data directory, sharing its embedded servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import msgspec

from app.logs import configure_logging
from app.settings import ConfigError, Settings, load_settings
from ecs.components import refused_values
from rag.events import EventIn

if TYPE_CHECKING:
    from app.runtime import Endpoints
    from app.services import Services

__all__ = ["main"]

log = logging.getLogger("lore")

DEMO_TENANT = "demo"
DEMO_CHRONICLE_TITLE = "The Salt Road"
DEMO_KEY_FILE = "demo-api-key"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["eval"]:  # `lore eval ...` is the evaluation harness's own command line
        return cmd_eval(arguments[1:])
    parser = _parser()
    args = parser.parse_args(arguments)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"lore: invalid configuration: {error}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level, settings.log_format or ("json" if args.handler is cmd_serve else "text")
    )
    try:
        return int(args.handler(settings, args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as error:
        print(f"lore: {error}", file=sys.stderr)
        return 1


class CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lore", description="Lorekeeper narrative context service")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service (embedded servers unless URLs are set)")
    serve.add_argument("--host", help="bind address (default LORE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default LORE_PORT or 8000)")
    serve.add_argument("--demo", action="store_true", help="create a demo tenant and story, print its key")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema (or --to a revision)")
    migrate.add_argument("--to", default="head", choices=["head", "base"], help="head (default) or base")
    migrate.set_defaults(handler=cmd_migrate)

    tenant = commands.add_parser("tenant", help="manage tenants")
    tenant_commands = tenant.add_subparsers(title="tenant commands", metavar="COMMAND")
    create = tenant_commands.add_parser("create", help="create a tenant and print its API key")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="the key may also use the admin routes")
    create.set_defaults(handler=cmd_tenant_create)

    demo = commands.add_parser("demo", help="load the sample story into a demo chronicle")
    demo.add_argument("--tenant", default=DEMO_TENANT, help="tenant name (created if missing)")
    demo.set_defaults(handler=cmd_demo)

    worker = commands.add_parser("worker", help="run the ECS projector (and outbox relay) without HTTP")
    worker.set_defaults(handler=cmd_worker)

    ecs = commands.add_parser("ecs", help="world-state maintenance")
    ecs_commands = ecs.add_subparsers(title="ecs commands", metavar="COMMAND")
    for name, help_text, handler in (
        ("rebuild", "replay a chronicle from sequence 0 into fresh state and swap it in", "rebuild"),
        ("verify", "replay in memory and report every difference; exit 0 only when none", "verify"),
        ("resume", "un-park a chronicle whose projection failed", "resume"),
    ):
        sub = ecs_commands.add_parser(name, help=help_text)
        sub.add_argument("chronicle", help="chronicle id")
        sub.set_defaults(handler=cmd_ecs, action=handler)

    export = commands.add_parser("export", help="write a chronicle as JSON Lines (a header, then its events)")
    export.add_argument("chronicle", help="chronicle id")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    export.set_defaults(handler=cmd_export)

    import_ = commands.add_parser("import", help="restore an exported chronicle as a new chronicle")
    import_.add_argument("file", type=Path)
    import_.add_argument("--tenant", required=True, help="tenant name")
    import_.set_defaults(handler=cmd_import)

    ingest = commands.add_parser("ingest", help="append events from a JSON Lines file to a chronicle")
    ingest.add_argument("file", type=Path, help="one event object per line ('-' for standard input)")
    ingest.add_argument("--tenant", required=True, help="tenant name")
    ingest.add_argument("--chronicle", help="chronicle id (default: create one titled after the file)")
    ingest.add_argument("--batch-size", type=int, default=100, help="events per transaction (1..1000)")
    ingest.add_argument(
        "--bulk",
        action="store_true",
        help='large loads: stream the file, COPY in chunks; lines may carry a precomputed "embedding"',
    )
    ingest.add_argument(
        "--chunk-size", type=int, default=10_000, help="with --bulk: events per transaction (default 10,000)"
    )
    ingest.set_defaults(handler=cmd_ingest)

    # Listed here for `lore --help`; `main` hands everything after `eval` to evals.cli.
    commands.add_parser("eval", help="evaluation harness (`lore eval run --help`)", add_help=False)
    return parser


def cmd_eval(arguments: Sequence[str]) -> int:
    from evals.cli import main as eval_main

    return eval_main(arguments)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that embedded servers are released on both."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.runtime import open_endpoints

    if args.host:
        settings = msgspec.structs.replace(settings, host=args.host)
    if args.port is not None:
        settings = msgspec.structs.replace(settings, port=args.port)
    with _terminate_as_interrupt(), open_endpoints(settings) as endpoints:
        if args.demo:
            key, chronicle_id = asyncio.run(_prepare_demo(settings, endpoints))
            _print_demo_banner(settings, key, chronicle_id)
        app = create_app(settings, endpoints, freeze_startup_objects=True)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            # "auto" picks uvloop and httptools (dependencies) and falls back to asyncio and h11
            # where they do not build; the event loop thread is what saturates under load.
            loop="auto",
            http="auto",
            # Our handlers (JSON for serve) stay in charge: uvicorn's default dictConfig would
            # otherwise reconfigure logging after start-up and its lines would come out as text.
            log_config=None,
        )
        # uvicorn handles SIGINT/SIGTERM itself while serving, shuts down cleanly, then re-raises
        # the signal; that is the normal way to stop, so it ends here with success. Leaving the
        # `with` block then releases the embedded servers.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run()
    return 0


T = TypeVar("T")


def _run_with_services(
    settings: Settings, work: Callable[[Services], Awaitable[T]], *, need_redis: bool = False
) -> T:
    """Run one piece of async work with the services open (and embedded servers if needed)."""
    from app.runtime import open_endpoints
    from app.services import open_services

    async def run(endpoints: Endpoints) -> T:
        async with open_services(settings, endpoints) as services:
            return await work(services)

    with _terminate_as_interrupt(), open_endpoints(settings, need_redis=need_redis) as endpoints:
        return asyncio.run(run(endpoints))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.database import CHRONICLE_BRANCH, ECS_BRANCH, create_engine, migrate
    from app.runtime import open_endpoints
    from app.services import build_embedder

    dimension = settings.embedding_dimension or build_embedder(settings).dimension

    async def run(url: str, branch: str) -> None:
        engine = create_engine(url, timeout_ms=settings.db_timeout_ms, pool_size=1)
        try:
            await migrate(engine, dimension, args.to, branch=branch)
        finally:
            await engine.dispose()

    with _terminate_as_interrupt(), open_endpoints(settings, need_redis=False) as endpoints:
        # The ECS branch goes first on the way down and last on the way up; they are independent.
        branches = [(endpoints.database_url, CHRONICLE_BRANCH), (endpoints.ecs_database_url, ECS_BRANCH)]
        for url, branch in branches if args.to != "base" else reversed(branches):
            asyncio.run(run(url, branch))
            print(f"{branch} schema migrated to {args.to}")
    return 0


def cmd_tenant_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import create_tenant, find_tenant

    async def work(services: Services) -> str:
        async with services.engine.begin() as conn:
            if await find_tenant(conn, args.name) is not None:
                raise CliError(f"tenant {args.name!r} exists already")
            tenant_id, key = await create_tenant(conn, args.name, admin=args.admin)
        print(f"tenant {args.name} ({tenant_id})", file=sys.stderr)
        return key

    key = _run_with_services(settings, work)
    print(key)
    return 0


async def _ensure_demo(services: Services, tenant_name: str) -> tuple[str | None, uuid.UUID, uuid.UUID, int]:
    """Create the demo tenant and chronicle if missing and load the sample story idempotently."""
    from sqlalchemy import select

    from app.auth import create_tenant, find_tenant
    from rag.ingest import ingest_batch
    from rag.schema import chronicles
    from rag.store import create_chronicle

    events = load_sample_story()
    key = None
    async with services.engine.begin() as conn:
        tenant_id = await find_tenant(conn, tenant_name)
        if tenant_id is None:
            tenant_id, key = await create_tenant(conn, tenant_name)
        chronicle_id = await conn.scalar(
            select(chronicles.c.id).where(
                chronicles.c.tenant_id == tenant_id, chronicles.c.title == DEMO_CHRONICLE_TITLE
            )
        )
        if chronicle_id is None:
            row = await create_chronicle(
                conn,
                tenant_id,
                title=DEMO_CHRONICLE_TITLE,
                description="Sample story shipped with Lorekeeper: a salt caravan, a stolen key, a death.",
                metadata={"demo": True},
                embedding_model=services.embedder.model_id,
            )
            chronicle_id = row.id
    results = await ingest_batch(
        services.engine,
        services.embed,
        tenant_id,
        chronicle_id,
        events,
    )
    assert results is not None
    new = sum(not r.duplicate for r in results)
    return key, tenant_id, chronicle_id, new


def load_sample_story() -> list[EventIn]:
    text = resources.files("app.demo").joinpath("salt_road.jsonl").read_text(encoding="utf-8")
    return [msgspec.json.decode(line, type=EventIn) for line in text.splitlines() if line.strip()]


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    async def work(services: Services) -> tuple[str | None, uuid.UUID, uuid.UUID, int]:
        return await _ensure_demo(services, args.tenant)

    key, _tenant, chronicle_id, new = _run_with_services(settings, work)
    print(f"chronicle {chronicle_id} ({DEMO_CHRONICLE_TITLE}): {new} new events", file=sys.stderr)
    if key:
        print(f"tenant {args.tenant} created; API key (shown once): {key}", file=sys.stderr)
    print(chronicle_id)
    return 0


async def _prepare_demo(settings: Settings, endpoints: Endpoints) -> tuple[str, uuid.UUID]:
    """For `serve --demo`: the demo chronicle plus a key kept in the data dir for local use."""
    from app.auth import find_tenant, issue_key, tenant_for_key
    from app.services import open_services

    key_file = settings.data_dir / DEMO_KEY_FILE
    async with open_services(settings, endpoints) as services:
        new_key, tenant_id, chronicle_id, _ = await _ensure_demo(services, DEMO_TENANT)
        if new_key is None and key_file.is_file():
            stored = key_file.read_text().strip()
            async with services.engine.connect() as conn:
                if await tenant_for_key(conn, stored) == tenant_id:
                    return stored, chronicle_id
        if new_key is None:
            async with services.engine.begin() as conn:
                found = await find_tenant(conn, DEMO_TENANT)
                assert found is not None
                new_key = await issue_key(conn, found)
    key_file.write_text(new_key + "\n")
    key_file.chmod(0o600)
    return new_key, chronicle_id


def _print_demo_banner(settings: Settings, key: str, chronicle_id: uuid.UUID) -> None:
    base = f"http://{settings.host}:{settings.port}"
    print(
        "\n".join(
            [
                "",
                "Lorekeeper demo is starting.",
                f"  API key (tenant '{DEMO_TENANT}'): {key}",
                f"  demo chronicle: {chronicle_id}",
                f"  try: curl -s -H 'Authorization: Bearer {key}' "
                f"{base}/api/chronicles/{chronicle_id}/events?limit=3",
                f"  API docs: {base}/schema",
                "",
            ]
        ),
        flush=True,
    )


def _chronicle_arg(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise CliError(f"{raw!r} is not a chronicle id (a UUID)") from None


def _replay_progress(label: str, every_seconds: float = 5.0) -> Callable[[int], None]:
    """A line on stderr every few seconds while a long chronicle is replayed (silent when quick)."""
    started = time.monotonic()
    last = started

    def report(events: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_seconds:
            last = now
            rate = events / (now - started)
            print(f"{label}: {events:,} events replayed ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    return report


def cmd_ecs(settings: Settings, args: argparse.Namespace) -> int:
    from ecs.maintenance import rebuild_chronicle, verify_chronicle
    from ecs.repository import resume_checkpoint

    chronicle_id = _chronicle_arg(args.chronicle)

    async def work(services: Services) -> int:
        if args.action == "rebuild":
            started = time.monotonic()
            rebuilt = await rebuild_chronicle(
                services.engine, services.ecs_engine, chronicle_id, progress=_replay_progress("rebuild")
            )
            if rebuilt is None:
                raise CliError(f"no chronicle {chronicle_id}")
            print(
                f"rebuilt {chronicle_id}: {rebuilt.events} events, {rebuilt.entities} entities, "
                f"{rebuilt.relationships} relationships in {time.monotonic() - started:.2f}s "
                f"(state hash {rebuilt.state_hash[:16]})"
            )
            return 0
        if args.action == "verify":
            result = await verify_chronicle(
                services.engine, services.ecs_engine, chronicle_id, progress=_replay_progress("verify")
            )
            if result is None:
                raise CliError(f"no chronicle {chronicle_id}")
            for d in result.differences:
                where = (
                    d.entity + (f" {d.component}" if d.component else "") + (f".{d.field}" if d.field else "")
                )
                print(f"{d.kind}: {where}: stored {d.stored!r}, expected {d.expected!r}")
            if not result.checkpoint_hash_matches:
                print("checkpoint hash differs from the replay's")
            print(
                f"{chronicle_id}: {'OK' if result.ok else 'DIFFERENT'} "
                f"({len(result.differences)} differences, replayed to sequence {result.checkpoint_sequence})"
            )
            return 0 if result.ok else 1
        async with services.ecs_engine.begin() as conn:
            if not await resume_checkpoint(conn, chronicle_id):
                raise CliError(f"no checkpoint for chronicle {chronicle_id}")
        print(f"{chronicle_id}: resumed")
        return 0

    return int(_run_with_services(settings, work))


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Projector (and relay) loops until SIGINT/SIGTERM; any number of workers may run."""

    async def work(services: Services) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("worker started")
        loops = [services.projector.run(stop)]
        if services.relay is not None:
            loops.append(services.relay.run(stop))
        await asyncio.gather(*loops)
        log.info("worker stopped")
        return 0

    return int(_run_with_services(settings, work, need_redis=True))


EXPORT_FORMAT = "lorekeeper-chronicle/1"


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Header line, then one line per event in sequence order: a restorable backup of a chronicle."""
    from rag.schema import chronicles
    from rag.store import EventFilters, list_events

    chronicle_id = _chronicle_arg(args.chronicle)

    async def work(services: Services) -> int:
        from sqlalchemy import select

        async with services.engine.connect() as conn:
            row = (
                (await conn.execute(select(chronicles).where(chronicles.c.id == chronicle_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise CliError(f"no chronicle {chronicle_id}")
            out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
            try:
                header = {"format": EXPORT_FORMAT, "chronicle": {
                    "id": str(row["id"]), "title": row["title"], "description": row["description"],
                    "metadata": row["metadata"], "event_count": row["last_sequence"],
                    "embedding_model": row["embedding_model"],
                }}  # fmt: skip
                out.write(msgspec.json.encode(header).decode() + "\n")
                after, written = 0, 0
                while True:
                    page = await list_events(
                        conn,
                        row["tenant_id"],
                        chronicle_id,
                        EventFilters(),
                        after_sequence=after,
                        limit=5_000,
                    )
                    for event in page:
                        body = {
                            "summary": event.summary, "external_id": event.external_id, "kind": event.kind,
                            "actors": event.actors, "location": event.location, "effects": event.effects,
                            "occurred_at": event.occurred_at, "tags": event.tags,
                            "importance": event.importance,
                        }  # fmt: skip
                        line = {"sequence": event.sequence, "recorded_at": event.recorded_at,
                                "event": {k: v for k, v in body.items() if v is not None}}  # fmt: skip
                        out.write(msgspec.json.encode(line).decode() + "\n")
                        written += 1
                    if len(page) < 5_000:
                        break
                    after = page[-1].sequence
            finally:
                if args.out:
                    out.close()
        print(f"exported {written} events of {chronicle_id}", file=sys.stderr)
        return 0

    return _run_with_services(settings, work)


class _ExportedEvent(msgspec.Struct, forbid_unknown_fields=True):
    sequence: int
    recorded_at: str
    event: EventIn


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """A new chronicle with the exported events, in their order (embeddings are recomputed)."""
    from tqdm import tqdm

    from app.auth import find_tenant
    from rag.ingest import ingest_batch
    from rag.store import create_chronicle

    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    lines = [line for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise CliError(f"{args.file}: empty")
    header = msgspec.json.decode(lines[0])
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise CliError(f"{args.file}:1: not a chronicle export ({EXPORT_FORMAT})")
    events: list[EventIn] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            events.append(msgspec.json.decode(line, type=_ExportedEvent).event)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise CliError(f"{args.file}:{number}: {error}; nothing was imported") from None
    meta = header["chronicle"]

    async def work(services: Services) -> uuid.UUID:
        async with services.engine.begin() as conn:
            tenant_id = await find_tenant(conn, args.tenant)
            if tenant_id is None:
                raise CliError(f"no tenant named {args.tenant!r}")
            row = await create_chronicle(
                conn, tenant_id, title=meta["title"], description=meta.get("description"),
                metadata=meta.get("metadata") or {}, embedding_model=services.embedder.model_id,
            )  # fmt: skip
        with tqdm(total=len(events), unit="event", desc="import", file=sys.stderr) as progress:
            for start in range(0, len(events), 500):
                batch = events[start : start + 500]
                await ingest_batch(services.engine, services.embed, tenant_id, row.id, batch)
                progress.update(len(batch))
        return row.id

    chronicle_id = _run_with_services(settings, work)
    print(f"imported {len(events)} events", file=sys.stderr)
    print(chronicle_id)
    return 0


async def _ingest_target(services: Services, args: argparse.Namespace) -> tuple[uuid.UUID, uuid.UUID]:
    """The tenant and chronicle `lore ingest` writes to (the chronicle is created if not given)."""
    from app.auth import find_tenant
    from rag.store import create_chronicle, get_chronicle

    async with services.engine.begin() as conn:
        tenant_id = await find_tenant(conn, args.tenant)
        if tenant_id is None:
            raise CliError(f"no tenant named {args.tenant!r} (create it with `lore tenant create`)")
        if args.chronicle:
            try:
                chronicle_id = uuid.UUID(args.chronicle)
            except ValueError:
                raise CliError(f"--chronicle: {args.chronicle!r} is not a UUID") from None
            if await get_chronicle(conn, tenant_id, chronicle_id) is None:
                raise CliError(f"no chronicle {chronicle_id} for tenant {args.tenant!r}")
            return tenant_id, chronicle_id
        row = await create_chronicle(
            conn, tenant_id, title=Path(str(args.file)).stem, description=None, metadata={},
            embedding_model=services.embedder.model_id,
        )  # fmt: skip
        return tenant_id, row.id


def cmd_ingest_bulk(settings: Settings, args: argparse.Namespace) -> int:
    """Stream the file in chunks through COPY; validation, sequences and idempotence as the API."""
    from tqdm import tqdm

    from rag.bulk import BulkLineError, BulkTotals, bulk_ingest, read_chunks
    from rag.store import refresh_statistics

    if not 1 <= args.chunk_size <= 100_000:
        raise CliError("--chunk-size must be between 1 and 100,000")
    stdin = str(args.file) == "-"
    if not stdin and not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    total_bytes = None if stdin else args.file.stat().st_size
    # The service's database timeout (a few seconds) suits requests, not a chunk of 10,000 rows
    # written into an indexed table or the ANALYZE of a million rows afterwards.
    settings = msgspec.structs.replace(settings, db_timeout_ms=max(settings.db_timeout_ms, 600_000))

    async def work(services: Services) -> tuple[uuid.UUID, BulkTotals]:
        tenant_id, chronicle_id = await _ingest_target(services, args)
        with contextlib.ExitStack() as stack:
            source = sys.stdin.buffer if stdin else stack.enter_context(args.file.open("rb"))
            # Bytes read, not events: the number of lines is unknown until the end of the stream.
            progress = stack.enter_context(
                tqdm(total=total_bytes, unit="B", unit_scale=True, desc="bulk ingest", file=sys.stderr)
            )
            position = 0

            def advance(totals: BulkTotals) -> None:
                nonlocal position
                now = source.tell() if not stdin else position
                progress.update(now - position)
                position = now
                progress.set_postfix(events=totals.lines, stored=totals.stored, refresh=False)

            chunks = read_chunks(
                source,
                dimension=services.embedder.dimension,
                source=str(args.file),
                chunk_size=args.chunk_size,
                refused=refused_values,
            )
            try:
                totals = await bulk_ingest(
                    services.engine, services.embed, tenant_id, chronicle_id, chunks,
                    dimension=services.embedder.dimension, on_chunk=advance,
                )  # fmt: skip
            except BulkLineError as error:
                raise CliError(
                    f"{error}; nothing of its chunk was stored (earlier chunks were: fix the line "
                    "and run again, stored events are skipped by external_id)"
                ) from None
        assert totals is not None  # the chronicle was found or created above
        if totals.stored:
            async with services.engine.begin() as conn:
                await refresh_statistics(conn)
        return chronicle_id, totals

    chronicle_id, totals = _run_with_services(settings, work)
    print(
        f"{totals.stored} events stored, {totals.duplicates} duplicates skipped, "
        f"{totals.embedded} embedded here",
        file=sys.stderr,
    )
    print(chronicle_id)
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    if args.bulk:
        return cmd_ingest_bulk(settings, args)
    from tqdm import tqdm

    from rag.events import MAX_BATCH_EVENTS, EventIn
    from rag.ingest import ingest_batch
    from rag.store import refresh_statistics

    if not 1 <= args.batch_size <= MAX_BATCH_EVENTS:
        raise CliError(f"--batch-size must be between 1 and {MAX_BATCH_EVENTS}")
    source = sys.stdin if str(args.file) == "-" else None
    if source is None and not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    lines = (source.read() if source else args.file.read_text(encoding="utf-8")).splitlines()
    events: list[EventIn] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = msgspec.json.decode(line, type=EventIn)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise CliError(f"{args.file}:{number}: {error}; nothing was ingested") from None
        if problems := refused_values(event.effects):
            field, reason = problems[0]
            raise CliError(f"{args.file}:{number}: {field}: {reason}; nothing was ingested")
        events.append(event)

    async def work(services: Services) -> tuple[uuid.UUID, int, int, list[str]]:
        tenant_id, chronicle_id = await _ingest_target(services, args)
        new = duplicates = 0
        differing: list[str] = []
        with tqdm(total=len(events), unit="event", desc="ingest", file=sys.stderr) as progress:
            for start in range(0, len(events), args.batch_size):
                batch = events[start : start + args.batch_size]
                results = await ingest_batch(
                    services.engine,
                    services.embed,
                    tenant_id,
                    chronicle_id,
                    batch,
                )
                assert results is not None
                new += sum(not r.duplicate for r in results)
                duplicates += sum(r.duplicate for r in results)
                differing += [str(r.external_id) for r in results if r.content_differs]
                progress.update(len(batch))
        if new >= 1_000:
            async with services.engine.begin() as conn:
                await refresh_statistics(conn)
        return chronicle_id, new, duplicates, differing

    chronicle_id, new, duplicates, differing = _run_with_services(settings, work)
    print(f"{new} events stored, {duplicates} duplicates skipped", file=sys.stderr)
    if differing:
        more = f" and {len(differing) - 10} more" if len(differing) > 10 else ""
        shown = ", ".join(differing[:10]) + more
        print(
            f"warning: {len(differing)} skipped duplicates differ from the stored events with their "
            f"external ids (the stored ones were kept): {shown}",
            file=sys.stderr,
        )
    print(chronicle_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
