"""The buyer's funnel: image viewed, checkout started, paid. Bots are not counted.

Checkouts started and payments are written in the transaction of their job. Image views are
many and carry no state, so a page view never waits for the database's write lock: it is pushed
to a buffer in Redis (`record_image_view`), and the sweeper folds the buffer into
`funnel_events` (`fold_buffered_views`). Counts stay exact: the dashboard adds the views still in
the buffer (`buffered_views`), and each view has an id that the table keeps unique, so a fold
that stops halfway and runs again adds nothing twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Iterable, Sequence

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import insert, select

from storefront import transactions
from storefront.extensions import db
from storefront.models import FunnelEvent, utcnow

log = logging.getLogger("smi.funnel")

IMAGE_VIEWED = "image_viewed"
CHECKOUT_STARTED = "checkout_started"
PAID = "paid"

BUFFER_KEY = "smi:funnel:views"  # views waiting to be folded, oldest first
FOLDING_KEY = "smi:funnel:views:folding"  # the batch being folded now
FOLD_LOCK_KEY = "smi:funnel:views:lock"
FOLD_BATCH = 500
FOLD_MAX_BATCHES = 200  # per fold: a flood of views cannot keep the sweeper from its jobs
FOLD_LOCK_SECONDS = 300

BOT_PATTERN = re.compile(
    r"bot|crawl|spider|slurp|bingpreview|facebookexternalhit|headless|curl|wget|python-requests"
    r"|httpclient|monitor|preview|scanner|lighthouse",
    re.IGNORECASE,
)


def is_bot(user_agent: str | None) -> bool:
    """Whether a user agent looks like a robot (or is missing, as robots' often are)."""
    return not user_agent or bool(BOT_PATTERN.search(user_agent))


def record(
    kind: str,
    *,
    post_id: int | None,
    attachment_id: int | None,
    job_id: str | None = None,
    user_agent: str | None = "",
) -> None:
    """Add a funnel event to the session, unless a robot caused it (the caller commits)."""
    if user_agent is not None and is_bot(user_agent):
        return
    db.session.add(
        FunnelEvent(kind=kind, post_id=post_id, attachment_id=attachment_id, job_id=job_id)
    )


@dataclasses.dataclass(frozen=True)
class BufferedView:
    """An image view waiting in Redis."""

    id: str
    post_id: int | None
    attachment_id: int | None
    at: dt.datetime


def new_image_view(*, attachment_id: int, post_id: int | None) -> BufferedView:
    """An image view made now, with the id the buffer and the table know it by."""
    return BufferedView(uuid.uuid4().hex, post_id, attachment_id, utcnow())


def buffer_entry(view: BufferedView) -> str:
    """A view as the buffer keeps it."""
    return json.dumps(
        {
            "id": view.id,
            "post_id": view.post_id,
            "attachment_id": view.attachment_id,
            "at": view.at.isoformat(),
        }
    )


def record_image_view(
    connection: Redis,
    *,
    attachment_id: int,
    post_id: int,
    user_agent: str,
    view: BufferedView | None = None,
) -> None:
    """A person opened an image's page: buffer the view in Redis (a robot's visit is not counted).

    While Redis is unreachable the row is written at once, in its own commit, as before the
    buffer: the page still shows, the count stays exact, and a line says so. A `view` given is
    one that may have reached the buffer already (its pipeline failed): its id makes it count
    once whichever way it arrives.
    """
    if is_bot(user_agent):
        return
    view = view or new_image_view(attachment_id=attachment_id, post_id=post_id)
    try:
        # Sent twice by a retry, it is still folded once: the id is the same.
        connection.rpush(BUFFER_KEY, buffer_entry(view))
    except RedisError as exc:
        log.warning("image view written to the database: Redis is unreachable (%s)", exc)
        db.session.add(
            FunnelEvent(
                kind=IMAGE_VIEWED,
                post_id=post_id,
                attachment_id=attachment_id,
                buffer_id=view.id,
            )
        )
        transactions.commit()


def withdraw_image_view(connection: Redis, view: BufferedView) -> None:
    """Take back a view buffered for a page that then did not show it (the image was gone)."""
    entry = buffer_entry(view)
    try:
        with connection.pipeline(transaction=True) as pipe:
            pipe.lrem(BUFFER_KEY, 1, entry)
            pipe.lrem(FOLDING_KEY, 1, entry)
            pipe.execute()
    except RedisError as exc:
        log.warning("a view of a removed image stays counted: Redis is unreachable (%s)", exc)


def fold_buffered_views(connection: Redis) -> int:
    """Move the buffered image views into `funnel_events`; the number of rows added.

    A batch moves atomically (one MULTI) from the buffer to a folding list, is written in one
    commit, and only then leaves Redis. A fold that stops halfway leaves its batch in the folding
    list; the next one writes the views of it that the table does not have yet.
    """
    if not connection.set(FOLD_LOCK_KEY, "1", nx=True, ex=FOLD_LOCK_SECONDS):
        log.info("image views: another fold is under way, skipped")
        return 0
    added = 0
    try:
        for _ in range(FOLD_MAX_BATCHES):
            batch = connection.lrange(FOLDING_KEY, 0, -1)
            if not batch:
                waiting = min(int(connection.llen(BUFFER_KEY)), FOLD_BATCH)
                if not waiting:
                    break
                with connection.pipeline(transaction=True) as pipe:
                    for _ in range(waiting):
                        pipe.lmove(BUFFER_KEY, FOLDING_KEY, "LEFT", "RIGHT")
                    batch = [item for item in pipe.execute() if item is not None]
            added += _write_new(_parsed(batch))
            connection.ltrim(FOLDING_KEY, len(batch), -1)
    finally:
        connection.delete(FOLD_LOCK_KEY)
    if added:
        log.info("image views: %d folded into funnel_events", added)
    return added


def buffered_views(connection: Redis, since: dt.datetime, until: dt.datetime) -> int:
    """Image views made in [since, until) that are in Redis and not yet in `funnel_events`."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.lrange(FOLDING_KEY, 0, -1)
        pipe.lrange(BUFFER_KEY, 0, -1)
        folding, waiting = pipe.execute()
    views = {view.id for view in _parsed([*folding, *waiting]) if since <= view.at < until}
    return len(views) - len(_already_folded(sorted(views)))


def _parsed(items: Iterable[bytes | str]) -> list[BufferedView]:
    views = []
    for item in items:
        try:
            raw = json.loads(item)
            views.append(
                BufferedView(
                    str(raw["id"]),
                    raw["post_id"],
                    raw["attachment_id"],
                    dt.datetime.fromisoformat(raw["at"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            log.warning("image views: dropped an unreadable buffer entry %r", item[:200])
    return views


def _already_folded(ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), FOLD_BATCH):
        chunk = ids[start : start + FOLD_BATCH]
        found.update(
            db.session.scalars(
                select(FunnelEvent.buffer_id).where(FunnelEvent.buffer_id.in_(chunk))
            )
        )
    return found


def _write_new(views: list[BufferedView]) -> int:
    unique = {view.id: view for view in views}
    folded = _already_folded(list(unique))
    rows = [
        {
            "kind": IMAGE_VIEWED,
            "post_id": view.post_id,
            "attachment_id": view.attachment_id,
            "buffer_id": view.id,
            "created_at": view.at,
        }
        for view in unique.values()
        if view.id not in folded
    ]
    if rows:
        db.session.execute(insert(FunnelEvent), rows)
    transactions.commit()
    return len(rows)
