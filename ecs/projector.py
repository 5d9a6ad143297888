"""The projector: follows each chronicle's event log and keeps its ECS state current.

One unit of work = one chronicle batch: in ONE transaction on the ECS database it locks the
chronicle's checkpoint (`FOR UPDATE SKIP LOCKED`, so any number of workers can run), reads the
events after the checkpoint in sequence order, folds them through the pure reducer, and writes the
state rows, valence history, outbox rows and the new checkpoint (position, running hash, and every
`SNAPSHOT_EVERY_EVENTS` a snapshot of the whole state).
Because the position is stored with the output, re-delivery never double-applies. Sequences are
gap-free and commit-ordered (see `rag.store.append_events`), so "after my checkpoint" never skips
an event that commits late.

A batch that fails is retried with exponential backoff, one event at a time so the failing event
is isolated; after `max_attempts` the chronicle is parked (later events wait: order matters) with
the reason on its checkpoint, until an operator resumes it. An unreachable database is not the
chronicle's fault: it is retried with backoff and never parks anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import asyncpg
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from ecs.reducer import (
    GENESIS_HASH,
    ChronicleEvent,
    EventChanges,
    WorldState,
    apply_event,
    chain_hash,
    decode_state,
    encode_state,
)
from ecs.repository import (
    Checkpoint,
    claim_checkpoint,
    ensure_checkpoints,
    read_checkpoints,
    read_snapshot,
    record_failure,
    save_checkpoint,
    write_batch,
)
from rag.events import ActorRef, Effect
from rag.outages import is_unavailable_error
from rag.store import CHANNEL_EVENTS, EventFilters, StoredEvent, chronicle_heads, list_events

__all__ = ["ProjectionStep", "Projector", "ProjectorStats", "to_chronicle_event"]

log = logging.getLogger("lore.projector")

OnCommitted = Callable[[uuid.UUID, set[str]], Awaitable[None]]
"""Called after a batch commits with the chronicle and the entity ids it touched (cache busting)."""


def to_chronicle_event(event: StoredEvent) -> ChronicleEvent:
    """A stored event as the reducer reads it."""
    return ChronicleEvent(
        id=str(event.id),
        sequence=event.sequence,
        chronicle_id=str(event.chronicle_id),
        summary=event.summary,
        actors=[ActorRef(name=a["name"], role=a.get("role")) for a in event.actors],
        location=event.location,
        effects=msgspec.convert(event.effects, list[Effect]),
    )


class ProjectionStep(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    applied: int
    last_sequence: int
    claimed: bool
    failed: bool = False
    isolating: bool = False
    """A multi-event batch failed; the next steps go one event at a time to find the culprit."""


class ProjectorStats(msgspec.Struct):
    events_applied: int = 0
    batches: int = 0
    failures: int = 0
    restores: int = 0
    """States rebuilt from the snapshot and the events after it."""
    fast_forwards: int = 0
    """States in memory brought up to another process's checkpoint by replaying the gap."""
    last_error: str | None = None
    last_error_at: float | None = None
    running: bool = False


class _CachedState(msgspec.Struct):
    last_sequence: int
    state_hash: str
    state: WorldState
    snapshot_sequence: int
    """Position of the snapshot stored with the checkpoint (it may lag `last_sequence`)."""


_REPLAY_PAGE = 5_000
FAST_FORWARD_MAX_EVENTS = 2_000
"""A state in memory at most this far behind the checkpoint is brought up by replaying the gap
(see `Projector._fast_forward`); farther, the snapshot is restored."""

MAX_CACHED_STATES = 32
"""World states a projector keeps in memory between batches (one per chronicle)."""

SNAPSHOT_EVERY_EVENTS = 10_000
"""How far the stored snapshot may fall behind the checkpoint.

Encoding and writing the whole world with every batch cost more than projecting the batch once
the world grew (100,000 generated events: a 4.8 MB snapshot, 70 ms to encode, against ~40 ms to
reduce 1,000 events). A worker that does not hold the state in memory restores the snapshot and
replays at most this many events from the chronicle (the reducer is deterministic).
"""


class Projector:
    def __init__(
        self,
        chronicle_engine: AsyncEngine,
        ecs_engine: AsyncEngine,
        *,
        batch_size: int = 1_000,
        max_attempts: int = 5,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 60.0,
        poll_interval_seconds: float = 1.0,
        coalesce_seconds: float = 0.0,
        on_committed: OnCommitted | None = None,
        listen_url: str | None = None,
        reducer: Callable[[WorldState, ChronicleEvent], EventChanges] = apply_event,
        snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS,
    ) -> None:
        self.chronicle_engine = chronicle_engine
        self.ecs_engine = ecs_engine
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base_seconds
        self.backoff_max = backoff_max_seconds
        self.poll_interval = poll_interval_seconds
        # After a wake-up, wait this long for more events before projecting: a batch costs about
        # the same few round trips whether it holds one event or fifty, so a stream of small
        # ingests is projected in fewer, larger batches. Readers that need the newest events do
        # not wait for it: they catch the chronicle up themselves (`catch_up`).
        self.coalesce = coalesce_seconds
        self.on_committed = on_committed
        self.listen_url = listen_url
        # The pure reducer; replaceable so that tests can make a chosen event fail.
        self.reducer = reducer
        self.snapshot_every = snapshot_every_events
        self.stats = ProjectorStats()
        # Working states of chronicles this worker projected last, keyed by chronicle: reused when
        # the checkpoint still matches (nobody else moved it), so a batch skips decoding.
        self._states: dict[uuid.UUID, _CachedState] = {}
        self.max_cached_states = MAX_CACHED_STATES
        self._wake = asyncio.Event()
        # Per chronicle: the last sequence of a batch that failed as a whole. Until the checkpoint
        # passes it, events are applied one at a time, so the failure is pinned on one event.
        self._isolate_until: dict[uuid.UUID, int] = {}

    def wake(self) -> None:
        self._wake.set()

    async def project_batch(self, chronicle_id: uuid.UUID, *, wait_for_lock: bool = False) -> ProjectionStep:
        """Apply the next batch of one chronicle, if this worker can claim it."""
        cached = self._states.pop(chronicle_id, None)
        async with self.ecs_engine.begin() as conn:
            checkpoint = await claim_checkpoint(conn, chronicle_id, wait=wait_for_lock)
            if checkpoint is None or checkpoint.parked_at is not None:
                if cached is not None:
                    self._keep(chronicle_id, cached)
                return ProjectionStep(
                    chronicle_id, 0, checkpoint.last_sequence if checkpoint else 0, claimed=False
                )
            isolating = (
                checkpoint.attempts > 0 or self._isolate_until.get(chronicle_id, 0) > checkpoint.last_sequence
            )
            limit = 1 if isolating else self.batch_size
            async with self.chronicle_engine.connect() as chronicle_conn:
                stored = await list_events(
                    chronicle_conn, checkpoint.tenant_id, chronicle_id, EventFilters(),
                    after_sequence=checkpoint.last_sequence, limit=limit,
                )  # fmt: skip
            if cached is None or (cached.last_sequence, cached.state_hash) != (
                checkpoint.last_sequence,
                checkpoint.state_hash,
            ):
                # Another process moved the checkpoint, a batch failed, or this worker is new.
                forwarded = None if cached is None else await self._fast_forward(cached, checkpoint)
                cached = forwarded if forwarded is not None else await self._restore(conn, checkpoint)
            if not stored:
                self._keep(chronicle_id, cached)
                return ProjectionStep(chronicle_id, 0, checkpoint.last_sequence, claimed=True)
            state = cached.state
            running_hash = checkpoint.state_hash
            snapshot_sequence = cached.snapshot_sequence
            try:
                batch: list[EventChanges] = []
                for event in stored:
                    changes = self.reducer(state, to_chronicle_event(event))
                    running_hash = chain_hash(running_hash, changes)
                    batch.append(changes)
                touched = await write_batch(conn, state, batch, checkpoint.tenant_id)
                snapshot = None
                if stored[-1].sequence - snapshot_sequence >= self.snapshot_every:
                    snapshot, snapshot_sequence = encode_state(state), stored[-1].sequence
                await save_checkpoint(
                    conn, chronicle_id, last_sequence=stored[-1].sequence, state_hash=running_hash,
                    snapshot=snapshot,
                )  # fmt: skip
            except Exception as error:
                if is_unavailable_error(error):
                    raise
                await conn.rollback()
                if len(stored) > 1:
                    self._isolate_until[chronicle_id] = stored[-1].sequence
                    log.info(
                        "batch of chronicle %s failed (%s); retrying event by event", chronicle_id, error
                    )
                    return ProjectionStep(
                        chronicle_id, 0, checkpoint.last_sequence, claimed=True, isolating=True
                    )
                # The transaction is lost with the error; record the attempt in a fresh one.
                await self._record_failure(chronicle_id, checkpoint.attempts + 1, stored[0].sequence, error)
                return ProjectionStep(chronicle_id, 0, checkpoint.last_sequence, claimed=True, failed=True)
        self._keep(chronicle_id, _CachedState(stored[-1].sequence, running_hash, state, snapshot_sequence))
        self.stats.events_applied += len(stored)
        self.stats.batches += 1
        if self.on_committed is not None:
            await self.on_committed(chronicle_id, touched)
        return ProjectionStep(chronicle_id, len(stored), stored[-1].sequence, claimed=True)

    def _keep(self, chronicle_id: uuid.UUID, cached: _CachedState) -> None:
        """Keep a chronicle's state for its next batch; the least recently projected go first, so
        a worker following thousands of chronicles does not hold every world in memory."""
        self._states[chronicle_id] = cached  # popped before each batch: re-inserted last (newest)
        while len(self._states) > self.max_cached_states:
            del self._states[next(iter(self._states))]

    def _isolated(self, step: ProjectionStep) -> bool:
        """Still working one event at a time through a failed batch."""
        return step.applied > 0 and self._isolate_until.get(step.chronicle_id, 0) > step.last_sequence

    async def _fast_forward(self, cached: _CachedState, checkpoint: Checkpoint) -> _CachedState | None:
        """The state in memory, brought up to a checkpoint another process moved ahead, by replaying
        the events in between; None when the gap is too long or the replay does not end at the
        checkpoint's hash (the state in memory is then unusable, and the caller restores).

        A service that catches a chronicle up before answering (read-your-writes) and a worker
        take turns on the same chronicle; restoring from the snapshot each time meant replaying up
        to `snapshot_every` events, on every turn, in both processes.
        """
        gap = checkpoint.last_sequence - cached.last_sequence
        if gap <= 0 or gap > FAST_FORWARD_MAX_EVENTS:
            return None
        state = cached.state
        running_hash = await self._replay(checkpoint, state, cached.last_sequence, cached.state_hash)
        if running_hash != checkpoint.state_hash:
            log.warning(
                "chronicle %s: replaying %d events in memory did not reach the checkpoint's hash; restoring",
                checkpoint.chronicle_id, gap,
            )  # fmt: skip
            return None
        self.stats.fast_forwards += 1
        return _CachedState(checkpoint.last_sequence, running_hash, state, cached.snapshot_sequence)

    async def _restore(self, conn: Any, checkpoint: Checkpoint) -> _CachedState:
        """The state at the checkpoint: the stored snapshot, then the events after it replayed."""
        self.stats.restores += 1
        chronicle_id = checkpoint.chronicle_id
        blob = await read_snapshot(conn, chronicle_id)
        state = decode_state(blob) if blob else WorldState(chronicle_id=str(chronicle_id))
        if (state.last_sequence or 0) > checkpoint.last_sequence:
            # The checkpoint was reset behind its snapshot (an operator's reset): start over.
            state = WorldState(chronicle_id=str(chronicle_id))
        snapshot_sequence = state.last_sequence or 0
        # The snapshot's own hash is not stored, so the replay is not hashed: the checkpoint's hash
        # is taken as it is (a rebuild or a verify compares the state with a full replay).
        if await self._replay(checkpoint, state, snapshot_sequence, None) is None:
            raise RuntimeError(
                f"chronicle {chronicle_id} lacks events between {snapshot_sequence} and its checkpoint "
                f"at {checkpoint.last_sequence}"
            )
        return _CachedState(checkpoint.last_sequence, checkpoint.state_hash, state, snapshot_sequence)

    async def _replay(
        self, checkpoint: Checkpoint, state: WorldState, position: int, running_hash: str | None
    ) -> str | None:
        """Apply the events after ``position`` up to the checkpoint to ``state``; the hash chained
        from ``running_hash`` through their changes ("" when not asked for one), or None when some
        of them are missing."""
        async with self.chronicle_engine.connect() as chronicle_conn:
            while position < checkpoint.last_sequence:
                events = await list_events(
                    chronicle_conn, checkpoint.tenant_id, checkpoint.chronicle_id, EventFilters(),
                    after_sequence=position, limit=min(_REPLAY_PAGE, checkpoint.last_sequence - position),
                )  # fmt: skip
                if not events:
                    return None
                for event in events:
                    changes = self.reducer(state, to_chronicle_event(event))
                    if running_hash is not None:
                        running_hash = chain_hash(running_hash, changes)
                position = events[-1].sequence
        return "" if running_hash is None else running_hash

    async def _record_failure(
        self, chronicle_id: uuid.UUID, attempts: int, sequence: int, error: Exception
    ) -> None:
        park = attempts >= self.max_attempts
        message = f"event {sequence}: {type(error).__name__}: {error}"
        retry_in = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1))
        self.stats.failures += 1
        self.stats.last_error, self.stats.last_error_at = message, time.time()
        log.warning(
            "projection of chronicle %s failed (attempt %d%s): %s",
            chronicle_id, attempts, ", parked" if park else f", retry in {retry_in:.1f}s", message,
        )  # fmt: skip
        async with self.ecs_engine.begin() as conn:
            await record_failure(
                conn, chronicle_id, attempts=attempts, retry_in_seconds=retry_in, error=message, park=park
            )

    async def catch_up(self, chronicle_id: uuid.UUID, *, wait_for_lock: bool = True) -> int:
        """Project one chronicle until it has no new events (or it fails). Returns events applied."""
        async with self.chronicle_engine.connect() as conn:
            heads = await chronicle_heads(conn, [chronicle_id])
        async with self.ecs_engine.begin() as conn:
            await ensure_checkpoints(conn, [(h.id, h.tenant_id) for h in heads])
        applied = 0
        while True:
            step = await self.project_batch(chronicle_id, wait_for_lock=wait_for_lock)
            applied += step.applied
            if (step.applied == 0 and not step.isolating) or step.failed:
                return applied

    async def pending_chronicles(self) -> list[uuid.UUID]:
        """Chronicles with events after their checkpoint that are due and not parked."""
        async with self.chronicle_engine.connect() as conn:
            heads = await chronicle_heads(conn)
        async with self.ecs_engine.connect() as conn:
            checkpoints = {c.chronicle_id: c for c in await read_checkpoints(conn)}
        missing = [(h.id, h.tenant_id) for h in heads if h.id not in checkpoints]
        if missing:
            async with self.ecs_engine.begin() as conn:
                await ensure_checkpoints(conn, missing)
        now = time.time()
        due = []
        for head in heads:
            checkpoint = checkpoints.get(head.id)
            if checkpoint is None:
                if head.last_sequence > 0:
                    due.append(head.id)
                continue
            if checkpoint.parked_at is not None or head.last_sequence <= checkpoint.last_sequence:
                continue
            if checkpoint.next_attempt_at is not None and checkpoint.next_attempt_at.timestamp() > now:
                continue
            due.append(head.id)
        return due

    async def run_once(self) -> int:
        """One sweep over every due chronicle; returns events applied."""
        return await self._sweep()

    async def _sweep(self) -> int:
        """Project every due chronicle until each has no full batch left; returns events applied."""
        applied = 0
        for chronicle_id in await self.pending_chronicles():
            while True:
                step = await self.project_batch(chronicle_id)
                applied += step.applied
                if step.failed or (
                    step.applied < self.batch_size and not step.isolating and not self._isolated(step)
                ):
                    break
        return applied

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every chronicle until `stop` is set: wake on NOTIFY from ingest, and poll."""
        self.stats.running = True
        listener = asyncio.create_task(self._listen(stop)) if self.listen_url else None
        failures = 0
        try:
            while not stop.is_set():
                # Cleared before the sweep, so that an event notified during it wakes the next one.
                self._wake.clear()
                try:
                    await self._sweep()
                    failures = 0
                except Exception as error:  # the loop must survive any outage
                    failures += 1
                    self.stats.last_error, self.stats.last_error_at = (
                        f"{type(error).__name__}: {error}",
                        time.time(),
                    )
                    delay = min(self.backoff_max, self.backoff_base * 2 ** min(failures, 10))
                    if failures == 1 or failures % 20 == 0:
                        log.warning("projector sweep failed (%d in a row), retrying in %.1fs: %s",
                                    failures, delay, self.stats.last_error)  # fmt: skip
                    await _wait(stop, delay)
                    continue
                # A sweep ends only when every chronicle it found due has no full batch left, so
                # there is nothing to do until new events are notified (or the poll comes round).
                if not self._wake.is_set():
                    await _wait_any(stop, self._wake, self.poll_interval)
                if self._wake.is_set() and self.coalesce > 0:
                    await _wait(stop, self.coalesce)
        finally:
            self.stats.running = False
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for ingest notifications; reconnects after outages. Polling covers any gap."""
        assert self.listen_url is not None
        while not stop.is_set():
            connection: Any = None
            try:
                connection = await asyncpg.connect(self.listen_url, timeout=5)
                await connection.add_listener(CHANNEL_EVENTS, lambda *_: self._wake.set())
                while not stop.is_set() and not connection.is_closed():
                    await _wait(stop, 1.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                log.debug("event listener disconnected: %s", error)
                await _wait(stop, 2.0)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 2)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class StoryTimeState(msgspec.Struct, frozen=True):
    """The world at a story time (see :func:`replay_to_story_time`)."""

    world: WorldState
    sequence: int
    """The last event recorded that had happened by then (0: none)."""
    later_in_story: list[int]
    """Events recorded before ``sequence`` that happen after that story time."""


def replay_to_story_time(
    events: Sequence[StoredEvent], chronicle_id: uuid.UUID, occurred_by: dt.datetime
) -> StoryTimeState:
    """Fold the stored events (in sequence order) that had happened by ``occurred_by`` into a
    fresh state, in story order: by ``occurred_at``, an event with none right after the event
    recorded before it (one before any story time, at the start), ties in recorded order. Facts
    keep the sequences of the events that set them."""
    keyed = []
    later: list[int] = []
    story_time: dt.datetime | None = None
    for event in events:
        story_time = event.occurred_at or story_time
        if story_time is not None and story_time > occurred_by:
            later.append(event.sequence)
        else:
            keyed.append((story_time is not None, story_time or _DAWN, event.sequence, event))
    state = WorldState(chronicle_id=str(chronicle_id))
    for *_, event in sorted(keyed, key=lambda k: k[:3]):
        # The reducer refuses an event older than its state (the projection's guard against
        # reordering); this replay reorders on purpose.
        state.last_sequence = None
        apply_event(state, to_chronicle_event(event))
    last = max((sequence for _, _, sequence, _ in keyed), default=0)
    state.last_sequence = last or None
    return StoryTimeState(state, last, [sequence for sequence in later if sequence < last])


_DAWN: Final = dt.datetime.min.replace(tzinfo=dt.UTC)


def replay_stored(
    events: Sequence[StoredEvent], chronicle_id: uuid.UUID
) -> tuple[WorldState, list[EventChanges], str]:
    """Fold stored events into a fresh state in memory: the reference the projector must equal."""
    state = WorldState(chronicle_id=str(chronicle_id))
    running_hash = GENESIS_HASH
    history: list[EventChanges] = []
    for event in events:
        changes = apply_event(state, to_chronicle_event(event))
        running_hash = chain_hash(running_hash, changes)
        history.append(changes)
    return state, history, running_hash
