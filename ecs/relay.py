"""The outbox relay: publishes the ECS outbox to Redis streams, one stream per chronicle.

The projector writes `ecs_outbox` rows in the same transaction as the state changes they describe.
The relay moves them to Redis: one unit of work (`OutboxRelay.publish_once`) is ONE transaction on
the ECS database that

1. claims chronicles whose oldest pending row is due, oldest first, taking
   `pg_try_advisory_xact_lock(LOCK_NAMESPACE, hashtext(chronicle_id::text))` for each and skipping
   chronicles another relay holds, so any number of relays can run and a chronicle is only ever
   published by one of them at a time;
2. reads each claimed chronicle's pending rows in `id` order (at most `batch_size` per chronicle),
   in a new statement, hence a new READ COMMITTED snapshot taken *after* the lock: rows another
   relay published and committed are never read again;
3. XADDs them in `id` order to `{stream_prefix}{chronicle_id}` through a non-transactional
   pipeline, with fields `outbox_id`, `event_id`, `entity_id` ('' when null), `change_type`,
   `sequence` and `payload` (the JSONB as JSON text), trimming with `MAXLEN ~ max_stream_length`;
4. marks the published rows `sent_at = now()` and commits.

Delivery is AT LEAST ONCE. If Redis fails mid-batch (connection lost, timeout, server loading, out
of memory, read-only replica...) or the relay dies or the commit fails, the transaction rolls
back, the rows stay pending and the rows XADDed before the failure are published again by the
next unit of work. Nothing is ever lost; a few entries may be duplicated. Consumers dedupe by
`outbox_id` (or by `event_id` + `change_type`): every re-publication is a re-send of a suffix of
what was already sent, so per stream the *first* occurrences are in `outbox_id` order, and a
consumer that remembers the highest `outbox_id` it applied per chronicle can skip anything at or
below it.

Order: within a chronicle (hence within an entity) entries are appended in `outbox_id` order. The
projector writes a chronicle's rows under its checkpoint lock, so within a chronicle the ids are
also in commit order, and "pending rows in id order" never overtakes a row that commits late.

A row Redis *rejects* (a deterministic error reply, e.g. WRONGTYPE because something else owns the
stream key) is retried with backoff: `attempts`, `last_error` and `next_attempt_at` are recorded
on the row and, after `max_attempts`, it is dead-lettered (`dead_lettered_at`). While a
chronicle's oldest pending row is not yet due, the whole chronicle waits (head-of-line blocking,
like a parked chronicle in the projector): publishing later rows first would break the order.
Redis being unreachable never counts as an attempt: that is an outage, retried forever by `run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from rag.outages import is_unavailable_error

__all__ = [
    "DEFAULT_STREAM_PREFIX",
    "LOCK_NAMESPACE",
    "OutboxRelay",
    "RedisUnavailable",
    "RelayStats",
    "main",
]

log = logging.getLogger("lore.ecs.relay")

DEFAULT_STREAM_PREFIX: Final = "lore:ecs:"
LOCK_NAMESPACE: Final = 7_420_002
"""First key of the two-key advisory lock a relay holds on a chronicle while publishing it."""
PENDING_COUNT_CAP: Final = 100_000
"""`RelayStats.pending_estimate` counts at most this many rows (a bounded index scan)."""
_PIPELINE_CHUNK: Final = 1_000

_TRANSIENT_REPLY_PREFIXES: Final = (
    "OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
    "MISCONF", "NOAUTH", "NOPERM", "WRONGPASS",
)  # fmt: skip
"""Error replies that describe the server's state, not the row: an outage, never an attempt."""

_REDIS_OUTAGE_ERRORS: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    TimeoutError,
)

RedisSource = Redis | Callable[[], Redis]
"""A client (the caller owns it) or a factory called once, lazily (the relay owns and closes it)."""
Sleep = Callable[[float], Awaitable[None]]

_CLAIM_CHRONICLES: Final = text(
    """
    WITH RECURSIVE heads AS (
        (SELECT o.chronicle_id, o.id, o.next_attempt_at
           FROM ecs_outbox o
          WHERE o.sent_at IS NULL AND o.dead_lettered_at IS NULL
          ORDER BY o.chronicle_id, o.id
          LIMIT 1)
        UNION ALL
        SELECT nxt.chronicle_id, nxt.id, nxt.next_attempt_at
          FROM heads h
          CROSS JOIN LATERAL (
              SELECT o.chronicle_id, o.id, o.next_attempt_at
                FROM ecs_outbox o
               WHERE o.sent_at IS NULL AND o.dead_lettered_at IS NULL
                 AND o.chronicle_id > h.chronicle_id
               ORDER BY o.chronicle_id, o.id
               LIMIT 1
          ) nxt
    )
    SELECT due.chronicle_id
      FROM (
          SELECT heads.chronicle_id, heads.id
            FROM heads
           WHERE heads.next_attempt_at IS NULL OR heads.next_attempt_at <= now()
           ORDER BY heads.id
          OFFSET 0
      ) due
     WHERE pg_try_advisory_xact_lock(:namespace, hashtext(due.chronicle_id::text))
     LIMIT :max_chronicles
    """
)
"""Chronicles whose oldest pending row is due, oldest first, that this transaction could lock.

`heads` is a loose index scan of the partial pending index (one probe per chronicle, not one per
row). The lock is taken in the outer query, after the ORDER BY and before the LIMIT (a volatile
function is never pushed down, and OFFSET 0 fences the subquery), so exactly the returned
chronicles are locked; the locks last until the transaction ends.
"""

_READ_ROWS: Final = text(
    """
    SELECT o.id, o.chronicle_id, o.event_id, o.entity_id, o.change_type, o.sequence,
           o.payload::text AS payload, o.attempts,
           (o.next_attempt_at IS NOT NULL AND o.next_attempt_at > now()) AS not_due
      FROM unnest(CAST(:chronicles AS uuid[])) AS claimed(chronicle_id)
      CROSS JOIN LATERAL (
          SELECT p.id, p.chronicle_id, p.event_id, p.entity_id, p.change_type, p.sequence,
                 p.payload, p.attempts, p.next_attempt_at
            FROM ecs_outbox p
           WHERE p.chronicle_id = claimed.chronicle_id
             AND p.sent_at IS NULL AND p.dead_lettered_at IS NULL
           ORDER BY p.id
           LIMIT :batch_size
      ) o
     ORDER BY o.id
    """
)

_MARK_SENT: Final = text("UPDATE ecs_outbox SET sent_at = now() WHERE id = ANY(CAST(:ids AS bigint[]))")

_RECORD_REJECTION: Final = text(
    """
    UPDATE ecs_outbox
       SET attempts = attempts + 1,
           last_error = :error,
           next_attempt_at = now() + make_interval(secs => :delay),
           dead_lettered_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END
     WHERE id = :id
    """
)

_COUNT_PENDING: Final = text(
    """
    SELECT count(*) FROM (
        SELECT 1 FROM ecs_outbox
         WHERE sent_at IS NULL AND dead_lettered_at IS NULL
         LIMIT :cap
    ) pending
    """
)


class RedisUnavailable(Exception):
    """Redis could not take the batch (unreachable, timed out, loading, OOM...): back off and retry.

    The unit of work was rolled back: its rows are still pending, nothing was lost.
    """


class RelayStats(msgspec.Struct, kw_only=True):
    """What an ops endpoint shows about a relay. Times are Unix timestamps (seconds)."""

    published: int = 0
    """Rows published and committed as sent by this relay since it started."""
    batches: int = 0
    """Units of work that published at least one row."""
    rejected: int = 0
    """Rows Redis rejected (each rejection is one attempt on the row)."""
    dead_lettered: int = 0
    failures: int = 0
    """Units of work that failed (outages included)."""
    consecutive_failures: int = 0
    pending_estimate: int | None = None
    """Pending rows (not sent, not dead-lettered) at `pending_estimated_at`, capped at PENDING_COUNT_CAP."""
    pending_estimated_at: float | None = None
    last_published_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    outage: str | None = None
    """None, or what `run` is currently backing off from: 'redis', 'database' or 'error'."""
    outage_since: float | None = None
    running: bool = False


class _Row(msgspec.Struct, frozen=True):
    id: int
    chronicle_id: uuid.UUID
    event_id: uuid.UUID
    entity_id: uuid.UUID | None
    change_type: str
    sequence: int
    payload: str
    attempts: int


class OutboxRelay:
    """Publishes `ecs_outbox` rows to per-chronicle Redis streams; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisSource,
        *,
        batch_size: int = 500,
        stream_prefix: str = DEFAULT_STREAM_PREFIX,
        max_stream_length: int | None = 1_000_000,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        max_attempts: int = 20,
        poll_interval: float = 0.5,
        max_chronicles: int = 32,
        redis_timeout: float = 10.0,
        delay_per_row: float = 0.0,
        stats_interval: float = 5.0,
        sleep: Sleep | None = None,
    ) -> None:
        """
        Args:
            engine: the ECS database (where `ecs_outbox` lives).
            redis: a client, or a zero-argument factory (then the relay owns the client and
                `aclose` closes it). Give the client a bounded socket timeout.
            batch_size: rows read per claimed chronicle per unit of work.
            max_stream_length: approximate `MAXLEN ~` trimming of each stream; None: no trimming.
            backoff_base, backoff_max: `run` waits `min(max, base * 2 ** (failures - 1))` after
                consecutive failures; a rejected row waits `min(max, base * 2 ** attempts)`.
            max_attempts: rejections after which a row is dead-lettered.
            poll_interval: how long `run` waits for `notify()` when nothing is pending.
            max_chronicles: chronicles claimed per unit of work.
            redis_timeout: bound on each Redis round trip (a hung Redis must not hold the
                transaction and its locks forever); exceeding it is an outage.
            delay_per_row: sleep between XADDs, which are then sent one at a time instead of
                pipelined. Only for tests that kill the relay mid-batch.
            stats_interval: minimum seconds between two pending counts in `run`.
            sleep: replaces `asyncio.sleep` for `run`'s waits (tests).
        """
        if batch_size < 1 or max_chronicles < 1 or max_attempts < 1:
            raise ValueError("batch_size, max_chronicles and max_attempts must be at least 1")
        if backoff_base < 0 or backoff_max < 0 or poll_interval < 0 or delay_per_row < 0:
            raise ValueError("backoff, poll interval and delay must not be negative")
        self._engine = engine
        self._redis_source = redis
        self._redis: Redis | None = redis if isinstance(redis, Redis) else None
        self._owns_redis = not isinstance(redis, Redis)
        self.batch_size = batch_size
        self.stream_prefix = stream_prefix
        self.max_stream_length = max_stream_length
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.max_chronicles = max_chronicles
        self.redis_timeout = redis_timeout
        self.delay_per_row = delay_per_row
        self.stats_interval = stats_interval
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._wake = asyncio.Event()
        self._stats = RelayStats()

    # ------------------------------------------------------------------------------------------
    # Public API

    @property
    def stats(self) -> RelayStats:
        """A snapshot copy of the relay's counters."""
        return msgspec.structs.replace(self._stats)

    def stream_name(self, chronicle_id: uuid.UUID | str) -> str:
        return f"{self.stream_prefix}{chronicle_id}"

    def notify(self) -> None:
        """Wake `run` now (new outbox rows were committed). From another thread, use
        `loop.call_soon_threadsafe(relay.notify)`."""
        self._wake.set()

    def backoff_delay(self, failures: int) -> float:
        """The wait after `failures` (>= 1) consecutive failures."""
        return min(self.backoff_max, self.backoff_base * 2.0 ** min(max(failures - 1, 0), 32))

    async def publish_once(self) -> int:
        """One unit of work; returns the number of rows published (0: nothing was due).

        Raises `RedisUnavailable` when Redis failed (the transaction was rolled back: the rows
        stay pending, rows already XADDed will be published again: at-least-once, consumers
        dedupe by `outbox_id`/`event_id`), and lets database errors propagate. `run` backs off on
        both.
        """
        try:
            published, rejected, dead = await self._publish_batch()
        except Exception as error:
            self._stats.failures += 1
            self._stats.last_error = _describe(error)
            self._stats.last_error_at = time.time()
            raise
        if published:
            self._stats.published += published
            self._stats.batches += 1
            self._stats.last_published_at = time.time()
        self._stats.rejected += rejected
        self._stats.dead_lettered += dead
        return published

    async def refresh_pending(self) -> int:
        """Count pending rows (capped at PENDING_COUNT_CAP) into `stats.pending_estimate`."""
        async with self._engine.connect() as conn:
            count = int((await conn.execute(_COUNT_PENDING, {"cap": PENDING_COUNT_CAP})).scalar_one())
        self._stats.pending_estimate = count
        self._stats.pending_estimated_at = time.time()
        return count

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set. Never raises on Redis or database outages: it backs off
        exponentially, logs one WARNING when an outage starts and one INFO when it ends."""
        self._stats.running = True
        failures = 0
        outage: str | None = None
        outage_started = 0.0
        last_count = float("-inf")
        try:
            while not stop.is_set():
                # Cleared before the work, so a notify() arriving during it is not lost.
                self._wake.clear()
                try:
                    published = await self.publish_once()
                    if time.monotonic() - last_count >= self.stats_interval:
                        last_count = time.monotonic()
                        await self.refresh_pending()
                except Exception as error:  # the loop must survive any outage
                    failures += 1
                    kind = _classify(error)
                    delay = self.backoff_delay(failures)
                    if kind != outage:
                        if outage is None:
                            outage_started = time.monotonic()
                            self._stats.outage_since = time.time()
                        log.warning(
                            "outbox relay: %s, backing off (retrying from %.1fs up to every %.1fs): %s",
                            "publishing failed" if kind == "error" else f"{kind} unavailable",
                            delay, self.backoff_max, _describe(error),
                            exc_info=error if kind == "error" else None,
                        )  # fmt: skip
                        outage = kind
                    else:
                        log.debug("outbox relay: still failing (%d in a row): %s", failures, _describe(error))
                    self._stats.outage = outage
                    self._stats.consecutive_failures = failures
                    await self._wait(stop, None, delay)
                    continue
                if outage is not None:
                    log.info(
                        "outbox relay: publishing again after %d failed attempts over %.1fs (%s)",
                        failures, time.monotonic() - outage_started, outage,
                    )  # fmt: skip
                    outage = None
                    failures = 0
                    self._stats.outage = None
                    self._stats.outage_since = None
                    self._stats.consecutive_failures = 0
                if published:
                    continue  # there may be more: go again at once
                await self._wait(stop, self._wake, self.poll_interval)
        finally:
            self._stats.running = False

    async def aclose(self) -> None:
        """Close the Redis client if the relay created it from a factory."""
        if self._owns_redis and self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()

    async def __aenter__(self) -> OutboxRelay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------
    # The unit of work

    def _client(self) -> Redis:
        if self._redis is None:
            source = self._redis_source
            assert not isinstance(source, Redis)
            self._redis = source()
        return self._redis

    async def _publish_batch(self) -> tuple[int, int, int]:
        """Returns (published, rejected, dead-lettered)."""
        async with self._engine.connect() as raw_conn:
            # The row read must see commits made before the lock was granted: READ COMMITTED.
            conn = await raw_conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                chronicles = await self._claim(conn)
                if not chronicles:
                    return 0, 0, 0
                rows = await self._read(conn, chronicles)
                if not rows:
                    return 0, 0, 0
                results = await self._xadd(rows)
                sent, rejections = self._sort_results(rows, results)
                if sent:
                    await conn.execute(_MARK_SENT, {"ids": sent})
                dead = 0
                for row, error in rejections:
                    attempts = row.attempts + 1
                    dead += attempts >= self.max_attempts
                    await conn.execute(
                        _RECORD_REJECTION,
                        {
                            "id": row.id,
                            "error": error[:2_000],
                            "delay": min(self.backoff_max, self.backoff_base * 2.0 ** min(row.attempts, 32)),
                            "max_attempts": self.max_attempts,
                        },
                    )
        for row, error in rejections:
            if row.attempts + 1 >= self.max_attempts:
                log.error(
                    "outbox row %d (chronicle %s) dead-lettered after %d rejections: %s",
                    row.id, row.chronicle_id, row.attempts + 1, error,
                )  # fmt: skip
            else:
                log.warning(
                    "Redis rejected outbox row %d (chronicle %s, attempt %d of %d): %s",
                    row.id, row.chronicle_id, row.attempts + 1, self.max_attempts, error,
                )  # fmt: skip
        return len(sent), len(rejections), dead

    async def _claim(self, conn: AsyncConnection) -> list[uuid.UUID]:
        result = await conn.execute(
            _CLAIM_CHRONICLES, {"namespace": LOCK_NAMESPACE, "max_chronicles": self.max_chronicles}
        )
        return [row[0] for row in result]

    async def _read(self, conn: AsyncConnection, chronicles: list[uuid.UUID]) -> list[_Row]:
        result = await conn.execute(_READ_ROWS, {"chronicles": chronicles, "batch_size": self.batch_size})
        rows: list[_Row] = []
        blocked: set[uuid.UUID] = set()
        for record in result.mappings():
            chronicle_id: uuid.UUID = record["chronicle_id"]
            if chronicle_id in blocked:
                continue
            if record["not_due"]:
                blocked.add(chronicle_id)  # head-of-line: later rows wait for this one
                continue
            rows.append(
                _Row(
                    id=record["id"],
                    chronicle_id=chronicle_id,
                    event_id=record["event_id"],
                    entity_id=record["entity_id"],
                    change_type=record["change_type"],
                    sequence=record["sequence"],
                    payload=record["payload"],
                    attempts=record["attempts"],
                )
            )
        return rows

    def _fields(self, row: _Row) -> dict[FieldT, EncodableT]:
        return {
            "outbox_id": str(row.id),
            "event_id": str(row.event_id),
            "entity_id": "" if row.entity_id is None else str(row.entity_id),
            "change_type": row.change_type,
            "sequence": str(row.sequence),
            "payload": row.payload,
        }

    async def _xadd(self, rows: Sequence[_Row]) -> list[Any]:
        """XADD every row in order; per row, the entry id or the error reply (an exception)."""
        client = self._client()
        results: list[Any] = []
        try:
            if self.delay_per_row > 0:
                for index, row in enumerate(rows):
                    if index:
                        await asyncio.sleep(self.delay_per_row)
                    try:
                        async with asyncio.timeout(self.redis_timeout):
                            entry = await client.xadd(
                                self.stream_name(row.chronicle_id), self._fields(row),
                                maxlen=self.max_stream_length, approximate=True,
                            )  # fmt: skip
                    except redis_errors.ResponseError as reply:
                        if _is_transient_reply(reply):
                            raise RedisUnavailable(_describe(reply)) from reply
                        results.append(reply)
                    else:
                        results.append(entry)
            else:
                for start in range(0, len(rows), _PIPELINE_CHUNK):
                    async with client.pipeline(transaction=False) as pipe:
                        for row in rows[start : start + _PIPELINE_CHUNK]:
                            pipe.xadd(
                                self.stream_name(row.chronicle_id), self._fields(row),
                                maxlen=self.max_stream_length, approximate=True,
                            )  # fmt: skip
                        async with asyncio.timeout(self.redis_timeout):
                            results.extend(await pipe.execute(raise_on_error=False))
        except _REDIS_OUTAGE_ERRORS as error:
            raise RedisUnavailable(_describe(error)) from error
        for result in results:
            if isinstance(result, BaseException) and _is_transient_reply(result):
                raise RedisUnavailable(_describe(result)) from result
        return results

    @staticmethod
    def _sort_results(
        rows: Sequence[_Row], results: Sequence[Any]
    ) -> tuple[list[int], list[tuple[_Row, str]]]:
        """Rows that made it, and per chronicle the first rejected row.

        Rows after a chronicle's first rejection stay pending even if Redis took them, so that the
        rejected row is retried before them (they will be re-sent: at-least-once).
        """
        if len(results) != len(rows):
            raise RedisUnavailable(f"pipeline answered {len(results)} replies for {len(rows)} commands")
        sent: list[int] = []
        rejections: list[tuple[_Row, str]] = []
        stopped: set[uuid.UUID] = set()
        for row, result in zip(rows, results, strict=True):
            if row.chronicle_id in stopped:
                continue
            if isinstance(result, BaseException):
                stopped.add(row.chronicle_id)
                rejections.append((row, _describe(result)))
            else:
                sent.append(row.id)
        return sent, rejections

    async def _wait(self, stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
        """Sleep `seconds` (through the injectable sleep) unless `stop` or `wake` is set first."""
        if stop.is_set() or (wake is not None and wake.is_set()):
            return
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._sleep(seconds)),
            asyncio.ensure_future(stop.wait()),
        ]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)


def _describe(error: BaseException) -> str:
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _is_transient_reply(error: BaseException) -> bool:
    if isinstance(
        error,
        redis_errors.OutOfMemoryError
        | redis_errors.ReadOnlyError
        | redis_errors.NoPermissionError
        | redis_errors.BusyLoadingError
        | redis_errors.TryAgainError
        | redis_errors.ClusterDownError
        | redis_errors.ConnectionError
        | redis_errors.TimeoutError,
    ):
        return True
    return str(error).lstrip().upper().startswith(_TRANSIENT_REPLY_PREFIXES)


def _classify(error: BaseException) -> str:
    if isinstance(error, RedisUnavailable):
        return "redis"
    if is_unavailable_error(error):
        return "database"
    return "error"


# ----------------------------------------------------------------------------------------------
# Command line: python -m ecs.relay --database-url URL --redis-url URL


def main(argv: Sequence[str] | None = None) -> int:
    """Run a relay until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m ecs.relay", description="Publish the ECS outbox to Redis streams until SIGTERM."
    )
    parser.add_argument("--database-url", required=True, help="the ECS database (postgresql:// URL)")
    parser.add_argument("--redis-url", required=True, help="redis:// URL")
    parser.add_argument("--batch-size", type=_positive_int, default=500, help="rows per chronicle per batch")
    parser.add_argument("--delay-per-row", type=_non_negative_float, default=0.0,
                        help="sleep between XADDs (tests: lets a test kill the relay mid-batch)")  # fmt: skip
    parser.add_argument("--poll-interval", type=_non_negative_float, default=0.5)
    parser.add_argument("--stream-prefix", default=DEFAULT_STREAM_PREFIX)
    parser.add_argument("--max-stream-length", type=_positive_int, default=1_000_000)
    parser.add_argument("--timeout", type=_non_negative_float, default=5.0,
                        help="database statement and Redis socket timeout, seconds")  # fmt: skip
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from sqlalchemy.ext.asyncio import create_async_engine

    timeout: float = args.timeout
    engine = create_async_engine(
        _asyncpg_url(args.database_url),
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,
        pool_timeout=timeout,
        connect_args={
            "timeout": timeout,
            "command_timeout": timeout + 1,
            "server_settings": {
                "statement_timeout": str(int(timeout * 1000)),
                "lock_timeout": str(int(timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(timeout * 4000)),
                "application_name": "lorekeeper-ecs-relay",
            },
        },
    )
    redis_url: str = args.redis_url

    def redis_factory() -> Redis:
        return Redis.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    relay = OutboxRelay(
        engine,
        redis_factory,
        batch_size=args.batch_size,
        stream_prefix=args.stream_prefix,
        max_stream_length=args.max_stream_length,
        poll_interval=args.poll_interval,
        redis_timeout=timeout * 2,
        delay_per_row=args.delay_per_row,
    )
    log.info("outbox relay started (batch size %d, stream prefix %r)", args.batch_size, args.stream_prefix)
    try:
        async with relay:
            await relay.run(stop)
    finally:
        await engine.dispose()
        log.info("outbox relay stopped: %s", msgspec.json.encode(relay.stats).decode())


def _asyncpg_url(url: str) -> str:
    """`postgres://` / `postgresql://` / `postgresql+driver://` -> `postgresql+asyncpg://`.

    libpq query options asyncpg does not know are the caller's business (app.settings.to_asyncpg_url
    translates the full libpq zoo; pass its output here).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.split("+")[0].lower() not in ("postgres", "postgresql"):
        raise SystemExit(f"--database-url must be a postgresql:// URL, got scheme {scheme!r}")
    return f"postgresql+asyncpg://{rest}"


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {raw}")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {raw}")
    return value


if __name__ == "__main__":
    sys.exit(main())
