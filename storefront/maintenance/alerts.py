"""Alerts to ADMIN_EMAIL about the system: a paid job waiting too long, no worker heartbeat,
storage or the database unreachable from a worker.

Each condition mails once when it starts (then at most once an hour while it lasts) and once
when it clears. Its state lives in Redis (`smi:alerts:state:<condition>`), so every checker
shares it: the sweeper after each run (`watch_from_worker`), the web app at most once a minute on
requests (the worker heartbeats only: it is what still runs when every worker is gone), and
`flask smi check-alerts` from cron. Workers note what they could not reach
(`smi:alerts:note:<condition>`, with the reason and a TTL); the checker mails about the notes.
The mails go straight to SMTP, never through the outbox: the database may be what is down.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, render_template
from flask_mail import Message
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from storefront.extensions import db
from storefront.jobs.emails import send, sender
from storefront.maintenance.system import naive_utc
from storefront.models import Job, utcnow
from storefront.queues import redis_connection
from storefront.storage import NotInStorage, StorageError, backend

log = logging.getLogger("smi.alerts")

TITLES = {
    "queue": "A paid job is waiting to be processed",
    "workers": "No worker heartbeat",
    "storage": "Storage is unreachable from a worker",
    "database": "The database is unreachable from a worker",
}
CONDITIONS = tuple(TITLES)
NOTED = ("storage", "database")  # conditions the workers note, the checker only reads
REPEAT = dt.timedelta(hours=1)  # at most one alert mail per condition in this time
CHECK_EVERY_SECONDS = 60  # the web app checks at most this often, all its processes together
STATE_KEY = "smi:alerts:state:{}"
NOTE_KEY = "smi:alerts:note:{}"
HEARTBEAT_SEEN_KEY = "smi:alerts:heartbeat_seen"
LOCK_KEY = "smi:alerts:lock"
DUE_KEY = "smi:alerts:due"


@dataclass(frozen=True)
class Finding:
    """Whether a condition holds now, and what the mail says about it."""

    condition: str
    firing: bool
    detail: str


def _stamp(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp()


def _time(stamp: float | str | bytes) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(stamp), dt.UTC).replace(tzinfo=None)


def _at(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


# What the workers note ---------------------------------------------------------------------


def note_failure(app: Flask, condition: str, reason: str) -> None:
    """Note that this worker could not reach `condition`'s service (never raises)."""
    ttl = max(900, 3 * int(app.config["SWEEP_INTERVAL_SECONDS"]))
    value = {"reason": reason[:300], "host": socket.gethostname(), "at": _stamp(utcnow())}
    try:
        redis_connection(app).set(NOTE_KEY.format(condition), json.dumps(value), ex=ttl)
    except RedisError:
        log.warning("cannot note in Redis that %s is unreachable: %s", condition, reason)
    log.warning("%s unreachable from this worker: %s", condition, reason)


def clear_note(app: Flask, condition: str) -> None:
    """Note that this worker reached `condition`'s service (never raises)."""
    try:
        redis_connection(app).delete(NOTE_KEY.format(condition))
    except RedisError:
        pass


def note_task_failure(app: Flask, exc: BaseException) -> None:
    """A task failed: note it when storage or the database was what failed."""
    if isinstance(exc, StorageError) and not isinstance(exc, NotInStorage):
        note_failure(app, "storage", str(exc))
    elif isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        note_failure(app, "database", f"{type(exc.orig).__name__}: {exc.orig}")


def probe_from_worker(app: Flask) -> None:
    """Try storage and the database from this worker, and note what answers and what not."""
    try:
        backend(app).check()
        clear_note(app, "storage")
    except StorageError as exc:
        note_failure(app, "storage", str(exc))
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        clear_note(app, "database")
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        note_failure(app, "database", f"{type(cause).__name__}: {cause}")


def watch_from_worker(app: Flask) -> list[str]:
    """The sweeper's part: probe storage and the database, then check every condition."""
    probe_from_worker(app)
    return check_alerts(app)


# The conditions ----------------------------------------------------------------------------


def queue_finding(app: Flask, now: dt.datetime) -> Finding | None:
    """Paid jobs still pending after ALERT_QUEUE_MINUTES; None when the database can't tell."""
    minutes = int(app.config["ALERT_QUEUE_MINUTES"])
    try:
        count, oldest = db.session.execute(
            select(func.count(Job.id), func.min(Job.paid_at)).where(
                Job.status == "pending",
                Job.payment_status == "paid",
                Job.paid_at < now - dt.timedelta(minutes=minutes),
            )
        ).one()
    except SQLAlchemyError:
        db.session.rollback()
        return None
    if not count or oldest is None:
        return Finding("queue", False, f"No paid job has waited longer than {minutes} minutes.")
    waited = int((now - oldest).total_seconds() // 60)
    return Finding(
        "queue",
        True,
        f"{count} paid job(s) waiting longer than {minutes} minutes; "
        f"the oldest was paid {_at(oldest)} ({waited} minutes ago).",
    )


def workers_finding(app: Flask, connection: Redis, now: dt.datetime) -> Finding:
    """No RQ worker's heartbeat for ALERT_WORKER_MINUTES (none registered, or all silent).

    The newest heartbeat ever seen is kept, so that workers that are gone (and took their
    records with them) count as silent since then; with none ever seen, the clock starts now.
    """
    minutes = int(app.config["ALERT_WORKER_MINUTES"])
    workers = Worker.all(connection=connection)
    beats = [beat for w in workers if (beat := naive_utc(w.last_heartbeat)) is not None]
    raw = connection.get(HEARTBEAT_SEEN_KEY)
    seen = _time(raw) if raw is not None else None
    newest = max(beats, default=None)
    if newest is not None and (seen is None or newest > seen):
        seen = newest
        connection.set(HEARTBEAT_SEEN_KEY, _stamp(seen))
    elif seen is None:
        seen = now
        connection.set(HEARTBEAT_SEEN_KEY, _stamp(seen))
    silent = now - seen
    registered = f"{len(workers)} worker(s) registered" if workers else "no worker is registered"
    detail = (
        f"{registered}; the last heartbeat seen was at {_at(seen)} "
        f"({int(silent.total_seconds() // 60)} minutes ago)."
    )
    return Finding("workers", silent > dt.timedelta(minutes=minutes), detail)


def noted_finding(connection: Redis, condition: str) -> Finding:
    """What the workers noted about `condition`'s service."""
    raw = connection.get(NOTE_KEY.format(condition))
    if raw is None:
        return Finding(condition, False, "The workers reach it again.")
    note = json.loads(raw)
    return Finding(
        condition,
        True,
        f"Worker host {note['host']} at {_at(_time(note['at']))}: {note['reason']}",
    )


def findings(
    app: Flask, connection: Redis, now: dt.datetime, conditions: Iterable[str]
) -> list[Finding]:
    """The findings of `conditions` now (a condition that can't be told now is left out)."""
    found: list[Finding | None] = []
    for condition in conditions:
        if condition == "queue":
            found.append(queue_finding(app, now))
        elif condition == "workers":
            found.append(workers_finding(app, connection, now))
        else:
            found.append(noted_finding(connection, condition))
    return [finding for finding in found if finding is not None]


# Checking and mailing ----------------------------------------------------------------------


def check_alerts(
    app: Flask, now: dt.datetime | None = None, conditions: Iterable[str] = CONDITIONS
) -> list[str]:
    """Check `conditions` and mail what started, goes on (hourly) or cleared; what was mailed,
    as `condition: alert|reminder|cleared`. Never raises: a checker that fails logs it."""
    now = now or utcnow()
    connection = redis_connection(app)
    try:
        if not connection.set(LOCK_KEY, "1", nx=True, ex=60):
            return []  # another process is checking right now
        try:
            return [
                f"{finding.condition}: {outcome}"
                for finding in findings(app, connection, now, conditions)
                if (outcome := _apply(app, connection, finding, now))
            ]
        finally:
            connection.delete(LOCK_KEY)
    except RedisError as exc:
        log.warning("alerts not checked: Redis is unreachable (%s)", type(exc).__name__)
        return []


def check_if_due(app: Flask, conditions: Iterable[str] = ("workers",)) -> list[str]:
    """Check, unless some process checked in the last minute (the web app's lazy check)."""
    try:
        due = redis_connection(app).set(DUE_KEY, "1", nx=True, ex=CHECK_EVERY_SECONDS)
    except RedisError:
        return []
    return check_alerts(app, conditions=conditions) if due else []


def _apply(app: Flask, connection: Redis, finding: Finding, now: dt.datetime) -> str | None:
    """Move the condition's state on, and mail when it opens, goes on past the hour, or
    clears after a mail; what was mailed."""
    key = STATE_KEY.format(finding.condition)
    state = {_text(k): _text(v) for k, v in connection.hgetall(key).items()}
    is_open = state.get("open") == "1"
    mailed = is_open and state.get("mailed") == "1"
    since = _time(state["since"]) if is_open and state.get("since") else now
    last_mail = _time(state["last_mail"]) if state.get("last_mail") else None
    may_mail = last_mail is None or now - last_mail >= REPEAT
    if finding.firing:
        if is_open and not may_mail:
            return None
        kind = "reminder" if mailed else "alert"
        sent = may_mail and _mail(app, finding, kind, since)
        update: dict[Any, Any] = {"open": "1", "since": _stamp(since)}
        update["mailed"] = "1" if sent or mailed else "0"
        if sent:
            update["last_mail"] = _stamp(now)
        connection.hset(key, mapping=update)
        return kind if sent else None
    if not is_open:
        return None
    if mailed and not _mail(app, finding, "cleared", since):
        return None  # mail the clearing at the next check
    connection.hset(key, mapping={"open": "0", "mailed": "0"})
    return "cleared" if mailed else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mail(app: Flask, finding: Finding, kind: str, since: dt.datetime) -> bool:
    """Send one alert mail to ADMIN_EMAIL over SMTP; whether it went."""
    recipient = app.config.get("ADMIN_EMAIL")
    title = TITLES[finding.condition]
    log.warning("alert %s %s: %s", finding.condition, kind, finding.detail)
    if not recipient:
        return False
    prefix = "Cleared" if kind == "cleared" else "Alert"
    message = Message(
        subject=f"[Sell My Images] {prefix}: {title}",
        sender=sender(),
        recipients=[recipient],
        body=render_template(
            "email/system_alert.txt",
            title=title,
            kind=kind,
            detail=finding.detail,
            since=_at(since),
            base=app.config["PUBLIC_BASE_URL"],
        ),
    )
    try:
        send(message)
    except Exception as exc:  # SMTP refused or unreachable: try again at the next check
        log.error("alert %s not mailed: %s", finding.condition, exc)
        return False
    return True
