"""The system page's figures: RQ workers, queues and registries, storage, the database revision,
the app's version, and the last runs of the sweeper and of the daily maintenance.

Everything is read, nothing changed (the failed jobs' buttons are storefront.maintenance.
failed_jobs). Redis down does not stop the page: its sections say Redis is unreachable.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import shutil
import socket
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from storefront.config import PROJECT_ROOT
from storefront.extensions import db
from storefront.models import AdminAction, utcnow
from storefront.queues import DEFAULT_QUEUE, SAMPLES_QUEUE, UPSCALE_QUEUE, redis_connection
from storefront.storage import StorageError, backend

QUEUES = (UPSCALE_QUEUE, DEFAULT_QUEUE, SAMPLES_QUEUE)
LAST_SWEEP_KEY = "smi:system:last_sweep"
REGISTRY_ROWS = 100  # rows shown per registry and queue; the count says how many there are


@dataclass(frozen=True)
class WorkerRow:
    """One RQ worker as it registered itself in Redis."""

    name: str
    host: str
    state: str
    current_job: str | None
    last_heartbeat: dt.datetime | None
    queues: str
    silent: bool  # no heartbeat for ALERT_WORKER_MINUTES


@dataclass(frozen=True)
class QueueRow:
    """One RQ queue: how many jobs wait, and since when the oldest has."""

    name: str
    depth: int
    oldest_enqueued_at: dt.datetime | None
    oldest_seconds: int | None


@dataclass(frozen=True)
class FailedRow:
    """A job in a queue's failed registry."""

    job_id: str
    queue: str
    function: str
    failed_at: dt.datetime | None
    error: str


@dataclass(frozen=True)
class ScheduledRow:
    """A job in a queue's scheduled registry."""

    job_id: str
    queue: str
    function: str
    at: dt.datetime | None


@dataclass
class StorageInfo:
    """The storage backend and whether it answers (local: its folder and free space)."""

    backend: str
    location: str
    endpoint: str = ""
    free_bytes: int | None = None
    total_bytes: int | None = None
    error: str | None = None


@dataclass
class DatabaseInfo:
    """The schema's revision in the database, and the newest in migrations/."""

    current: str | None
    head: str | None
    error: str | None = None

    @property
    def up_to_date(self) -> bool:
        """Whether the database is at the newest revision."""
        return self.error is None and self.current is not None and self.current == self.head


@dataclass
class SystemStatus:
    """Everything the system page shows."""

    now: dt.datetime
    version: str
    host: str
    redis_error: str | None = None
    workers: list[WorkerRow] = field(default_factory=list)
    queues: list[QueueRow] = field(default_factory=list)
    failed: list[FailedRow] = field(default_factory=list)
    failed_count: int = 0
    scheduled: list[ScheduledRow] = field(default_factory=list)
    scheduled_count: int = 0
    last_sweep: dict[str, Any] | None = None
    last_maintenance: AdminAction | None = None
    storage: StorageInfo | None = None
    database: DatabaseInfo | None = None


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """An RQ time (aware or naive UTC) as the naive UTC the app stores and shows."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def app_version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version("sell-my-images")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def system_status(app: Flask, now: dt.datetime | None = None) -> SystemStatus:
    """Gather the page's figures; a part that cannot be read says why instead."""
    now = now or utcnow()
    status = SystemStatus(now=now, version=app_version(), host=socket.gethostname())
    connection = redis_connection(app)
    try:
        connection.ping()
        silent_after = dt.timedelta(minutes=int(app.config["ALERT_WORKER_MINUTES"]))
        status.workers = worker_rows(connection, now, silent_after)
        status.queues = [queue_row(connection, name, now) for name in QUEUES]
        status.failed, status.failed_count = failed_rows(connection)
        status.scheduled, status.scheduled_count = scheduled_rows(connection)
        status.last_sweep = last_sweep(connection)
    except RedisError as exc:
        status.redis_error = f"Redis is unreachable ({type(exc).__name__}: {exc})"
    status.storage = storage_info(app)
    status.database = database_info()
    status.last_maintenance = last_maintenance()
    return status


def worker_rows(connection: Redis, now: dt.datetime, silent_after: dt.timedelta) -> list[WorkerRow]:
    """Every RQ worker registered in Redis, by name."""
    rows = []
    for worker in Worker.all(connection=connection):
        beat = naive_utc(worker.last_heartbeat)
        rows.append(
            WorkerRow(
                name=worker.name,
                host=worker.hostname or "?",
                state=str(worker.get_state()),
                current_job=worker.get_current_job_id(),
                last_heartbeat=beat,
                queues=", ".join(queue.name for queue in worker.queues),
                silent=beat is None or now - beat > silent_after,
            )
        )
    return sorted(rows, key=lambda row: row.name)


def queue_row(connection: Redis, name: str, now: dt.datetime) -> QueueRow:
    """A queue's depth and the age of the job at its head (the one waiting longest)."""
    queue = Queue(name, connection=connection)
    depth = queue.count
    oldest = None
    for job_id in queue.get_job_ids(0, 0):
        job = queue.fetch_job(job_id)
        oldest = naive_utc(job.enqueued_at) if job is not None else None
    seconds = max(0, int((now - oldest).total_seconds())) if oldest else None
    return QueueRow(name, depth, oldest, seconds)


def last_error_line(job: RQJob) -> str:
    """The last line of the job's latest traceback: the exception and its message."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no traceback kept)"


def failed_rows(connection: Redis) -> tuple[list[FailedRow], int]:
    """The newest failed jobs of each queue, newest first, and how many there are in all."""
    rows: list[FailedRow] = []
    total = 0
    for name in QUEUES:
        registry = FailedJobRegistry(name, connection=connection)
        total += registry.count
        ids = registry.get_job_ids(0, REGISTRY_ROWS - 1, desc=True)
        for job in RQJob.fetch_many(ids, connection=connection):
            if job is None:
                continue
            rows.append(
                FailedRow(
                    job_id=job.id,
                    queue=name,
                    function=job.func_name or "?",
                    failed_at=naive_utc(job.ended_at),
                    error=last_error_line(job),
                )
            )
    rows.sort(key=lambda row: row.failed_at or dt.datetime.min, reverse=True)
    return rows[:REGISTRY_ROWS], total


def scheduled_rows(connection: Redis) -> tuple[list[ScheduledRow], int]:
    """The jobs waiting in the scheduled registries, soonest first, and how many in all."""
    rows: list[ScheduledRow] = []
    total = 0
    for name in QUEUES:
        registry = ScheduledJobRegistry(name, connection=connection)
        total += registry.count
        ids = registry.get_job_ids(0, REGISTRY_ROWS - 1)
        for job_id, job in zip(ids, RQJob.fetch_many(ids, connection=connection), strict=True):
            try:
                at = naive_utc(registry.get_scheduled_time(job_id))
            except NoSuchJobError:  # run meanwhile
                continue
            rows.append(ScheduledRow(job_id, name, (job.func_name if job else None) or "?", at))
    rows.sort(key=lambda row: row.at or dt.datetime.max)
    return rows[:REGISTRY_ROWS], total


def record_sweep(connection: Redis, summary: str, now: dt.datetime | None = None) -> None:
    """Keep the last sweep's time, host and summary for the system page (one small key)."""
    at = (now or utcnow()).isoformat(timespec="seconds")
    value = {"at": at, "host": socket.gethostname(), "summary": summary}
    connection.set(LAST_SWEEP_KEY, json.dumps(value), ex=7 * 24 * 3600)


def last_sweep(connection: Redis) -> dict[str, Any] | None:
    """The last sweep's record: `at` (naive UTC), `host` and `summary`; None if none is kept."""
    raw = connection.get(LAST_SWEEP_KEY)
    if raw is None:
        return None
    value = json.loads(raw)
    value["at"] = dt.datetime.fromisoformat(value["at"])
    return dict(value)


def last_maintenance() -> AdminAction | None:
    """The audit row of the last daily maintenance run (its detail says what each part did)."""
    try:
        return db.session.scalar(
            select(AdminAction)
            .where(AdminAction.admin == "scheduler", AdminAction.action == "maintenance")
            .order_by(AdminAction.id.desc())
            .limit(1)
        )
    except SQLAlchemyError:
        db.session.rollback()
        return None


def storage_info(app: Flask) -> StorageInfo:
    """The backend's place, free space (local) and whether it answers now."""
    config = app.config
    if config["STORAGE_BACKEND"] == "s3":
        prefix = f"/{config['S3_PREFIX']}" if config["S3_PREFIX"] else ""
        info = StorageInfo(
            "s3", f"{config['S3_BUCKET']}{prefix}", endpoint=config["S3_ENDPOINT_URL"] or "AWS"
        )
    else:
        info = StorageInfo("local", str(config["STORAGE_DIR"]))
        try:
            usage = shutil.disk_usage(info.location)
            info.free_bytes, info.total_bytes = usage.free, usage.total
        except OSError as exc:
            info.error = f"cannot read {info.location}: {exc.strerror}"
            return info
    try:
        backend(app).check()
    except StorageError as exc:
        info.error = str(exc)
    return info


def database_info() -> DatabaseInfo:
    """Alembic's revision in the database against the head of migrations/."""
    heads = ScriptDirectory(str(PROJECT_ROOT / "migrations")).get_heads()
    head = ", ".join(heads) or None
    try:
        with db.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        return DatabaseInfo(None, head, f"the database is unreachable ({type(exc).__name__})")
    return DatabaseInfo(current, head)
