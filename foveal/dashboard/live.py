"""The live feed: PostgreSQL `NOTIFY foveal_inspections` → server-sent events.

One `LiveHub` per process LISTENs on the channel the ingest worker notifies inside its write
transaction (so a notification means the rows are committed), looks the inspection up and fans
it out to every connected browser. Each event's id is the inspection id; a browser that
reconnects sends `Last-Event-ID` and first gets a catch-up query of what it missed (ids above it,
oldest first), then the live events, deduplicated. The hub reconnects by itself after a database
outage and catches up on what was committed meanwhile. Identity ids are taken before commit, so
two transactions can commit out of id order: a catch-up can miss a row committed in that gap;
the live path, keyed on the notified frame id, does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from foveal.storage.models import Frame, Inspection
from foveal.storage.repository import INSPECTIONS_CHANNEL

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
RECONNECT_S = 1.0
CATCH_UP_LIMIT = 500
QUEUE_BOUND = 1000  # a browser this far behind is dropped; it reconnects and catches up
T = TypeVar("T")


@dataclass(frozen=True)
class LiveItem:
    id: int
    frame_id: str
    line: str
    station: str
    product: str
    verdict: str
    defect_type: str
    confidence: float
    model_version: str
    created_at: str

    def event(self) -> str:
        return f"id: {self.id}\nevent: inspection\ndata: {json.dumps(asdict(self))}\n\n"


def _items(session: Session, *where: Any, limit: int = CATCH_UP_LIMIT) -> list[LiveItem]:
    i, f = Inspection, Frame
    rows = session.execute(
        select(i.id, i.frame_id, f.line, f.station, f.product, i.verdict, i.defect_type, i.confidence,
               i.model_version, i.created_at).join(f, f.frame_id == i.frame_id)
        .where(*where).order_by(i.id).limit(limit)).all()
    return [LiveItem(r.id, str(r.frame_id), r.line, r.station, r.product, r.verdict, r.defect_type,
                     round(r.confidence, 4), r.model_version, _iso(r.created_at)) for r in rows]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def catch_up(session: Session, after_id: int) -> list[LiveItem]:
    return _items(session, Inspection.id > after_id)


def by_frame(session: Session, frame_id: uuid.UUID) -> list[LiveItem]:
    return _items(session, Inspection.frame_id == frame_id, limit=1)


def latest_id(session: Session) -> int:
    return int(session.scalar(select(Inspection.id).order_by(Inspection.id.desc()).limit(1)) or 0)


class LiveHub:
    """LISTEN once, fan out to every subscriber queue."""

    def __init__(self, database_url: str, sessions: sessionmaker[Session]) -> None:
        self.conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
        self.sessions = sessions
        self.subscribers: set[asyncio.Queue[LiveItem | None]] = set()
        self.listening = asyncio.Event()
        self._last_id = 0

    def subscribe(self) -> asyncio.Queue[LiveItem | None]:
        queue: asyncio.Queue[LiveItem | None] = asyncio.Queue(QUEUE_BOUND)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LiveItem | None]) -> None:
        self.subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self.subscribers):
            _offer(queue, None)

    async def _read(self, fn: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.sessions() as session, session.begin():
                return fn(session)
        return await asyncio.to_thread(run)

    def _publish(self, items: list[LiveItem]) -> None:
        for item in items:
            self._last_id = max(self._last_id, item.id)
            for queue in list(self.subscribers):
                if not _offer(queue, item):
                    self.subscribers.discard(queue)
                    _offer(queue, None, force=True)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after failures."""
        first = True
        while True:
            try:
                await self._listen(catch_up_first=not first)
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("live feed: lost the database (%s); reconnecting in %.0f s", exc, RECONNECT_S)
                await asyncio.sleep(RECONNECT_S)
            first = False

    async def _listen(self, catch_up_first: bool) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {INSPECTIONS_CHANNEL}")
            if catch_up_first:  # rows committed while we were away
                last = self._last_id
                self._publish(await self._read(lambda s: catch_up(s, last)))
            else:
                self._last_id = await self._read(latest_id)
            self.listening.set()
            log.info("live feed: listening on %s", INSPECTIONS_CHANNEL)
            async for notify in conn.notifies():
                try:
                    frame_id = uuid.UUID(notify.payload)
                except ValueError:
                    log.warning("live feed: ignored a notification that is not a frame id: %r",
                                notify.payload[:80])
                    continue
                self._publish(await self._read(_by_frame(frame_id)))

    async def stream(self, last_event_id: int | None,
                     disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """The SSE body for one browser: a catch-up after `last_event_id`, then live events."""
        queue = self.subscribe()
        try:
            yield f"retry: {int(RECONNECT_S * 2000)}\n\n"
            sent: set[int] = set()
            if last_event_id is not None:
                after = last_event_id
                for missed in await self._read(lambda s: catch_up(s, after)):
                    sent.add(missed.id)
                    yield missed.event()
            while not await disconnected():
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(KEEPALIVE_S):
                        item = await queue.get()
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is None:
                    return
                if item.id in sent:
                    continue  # already in the catch-up
                yield item.event()
        finally:
            self.unsubscribe(queue)


def _by_frame(frame_id: uuid.UUID) -> Callable[[Session], list[LiveItem]]:
    return lambda session: by_frame(session, frame_id)


def _offer(queue: asyncio.Queue[LiveItem | None], item: LiveItem | None, force: bool = False) -> bool:
    try:
        queue.put_nowait(item)
        return True
    except asyncio.QueueFull:
        if force:
            queue.get_nowait()
            queue.put_nowait(item)
        return False
