"""Maintenance: expired files, leftovers, the archive and its export, the schedule, the buttons."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from redis import Redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select

from storefront.buyers.sign_in import request_sign_in
from storefront.extensions import db
from storefront.jobs.delivery import LinkState, find_link, new_token
from storefront.jobs.state import record_event
from storefront.maintenance import archive, cleanup
from storefront.maintenance import operations as maintenance
from storefront.maintenance.report import MaintenanceError
from storefront.models import (
    AdminAction,
    BuyerSignIn,
    DownloadLog,
    EmailOutbox,
    Job,
    JobEvent,
    utcnow,
)
from storefront.storage import backend
from tests import admin_helpers
from tests.admin_helpers import completed_job, fresh, text
from tests.factories import make_attachment, make_job, resolve
from worker.context import use_app
from worker.schedule import next_run, schedule_maintenance
from worker.tasks import run_maintenance

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def _age(path: Path, by: dt.timedelta) -> None:
    """Make a file look `by` old."""
    then = time.time() - by.total_seconds()
    os.utime(path, (then, then))


def _snapshot(app: Flask) -> tuple[list[tuple[Any, ...]], list[str]]:
    rows = [tuple(row) for row in db.session.execute(select(*Job.__table__.columns))]
    files = sorted(found.key for found in backend(app).objects(""))
    return rows, files


def _downloadable(app: Flask) -> dict[str, Path]:
    """The files behind every link that works right now, from real tokens."""
    working: dict[str, Path] = {}
    for job in db.session.scalars(select(Job).where(Job.upscaled_file_path.is_not(None))):
        token, digest = new_token()
        job.download_token = digest
        db.session.flush()
        if find_link(token).state is LinkState.READY:
            working[job.job_id] = resolve(app, job.upscaled_file_path or "")
    db.session.rollback()
    return working


# Expired files --------------------------------------------------------------------------------


@pytest.fixture
def deliveries(app: Flask) -> dict[str, Job]:
    """Delivered files at every stage of their links' lives."""
    attachment = make_attachment(app)
    jobs = {
        "live": completed_job(app, attachment, expires_in=HOUR),
        "just_expired": completed_job(app, attachment, expires_in=-HOUR),
        "long_expired": completed_job(app, attachment, expires_in=-3 * DAY),
        "refunded": completed_job(app, attachment, expires_in=HOUR),
    }
    refunded = jobs["refunded"]
    refunded.payment_status = "refunded"
    refunded.refunded_at = utcnow() - 3 * DAY
    refunded.download_token = None
    refunded.download_expires_at = None
    db.session.commit()
    return jobs


def test_cleanup_dry_run_counts_and_changes_nothing(app: Flask, deliveries: dict[str, Job]) -> None:
    before = _snapshot(app)
    report = cleanup.cleanup_expired_files(dry_run=True)
    assert report.counts == {"files": 2}
    assert set(report.sample) == {deliveries["long_expired"].job_id, deliveries["refunded"].job_id}
    assert report.bytes == 2 * len(b"upscaled image bytes")
    assert _snapshot(app) == before


def test_cleanup_removes_expired_files_after_the_grace_period_only(
    app: Flask, deliveries: dict[str, Job]
) -> None:
    downloadable = _downloadable(app)
    assert set(downloadable) == {deliveries["live"].job_id}
    paths = {name: resolve(app, job.upscaled_file_path or "") for name, job in deliveries.items()}
    report = cleanup.cleanup_expired_files(dry_run=False)
    assert report.counts == {"files": 2}
    assert not paths["long_expired"].exists() and not paths["refunded"].exists()
    assert not paths["long_expired"].parent.exists()
    assert paths["live"].exists() and paths["just_expired"].exists()
    assert fresh(deliveries["long_expired"].job_id).upscaled_file_path is None
    assert fresh(deliveries["just_expired"].job_id).upscaled_file_path is not None
    assert all(path.exists() for path in downloadable.values())
    events = db.session.scalars(select(JobEvent).where(JobEvent.kind == "file_removed")).all()
    assert {e.job_id for e in events} == {
        deliveries["long_expired"].job_id,
        deliveries["refunded"].job_id,
    }
    # A grace of zero takes the just-expired one too, never the live one.
    cleanup.cleanup_expired_files(dry_run=False, grace_hours=0)
    assert not paths["just_expired"].exists() and paths["live"].exists()


def test_a_link_extended_meanwhile_keeps_its_file(
    app: Flask, deliveries: dict[str, Job], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = deliveries["long_expired"]
    measure = cleanup._file_size

    def extend_first(app: Flask, relative: str) -> int:
        # An admin extends the link after the cleanup chose the file, before it clears it.
        db.session.execute(
            Job.__table__.update()
            .where(Job.id == job.id)
            .values(download_expires_at=utcnow() + DAY)
        )
        return measure(app, relative)

    monkeypatch.setattr(cleanup, "_file_size", extend_first)
    report = cleanup.cleanup_expired_files(dry_run=False)
    assert job.job_id not in report.sample
    assert resolve(app, job.upscaled_file_path or "").exists()
    assert fresh(job.job_id).upscaled_file_path == job.upscaled_file_path


def test_cleanup_command(runner: FlaskCliRunner, app: Flask, deliveries: dict[str, Job]) -> None:
    dry = runner.invoke(args=["smi", "cleanup", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "expired files (would): files 2" in dry.output
    assert fresh(deliveries["long_expired"].job_id).upscaled_file_path is not None
    real = runner.invoke(args=["smi", "cleanup"])
    assert real.exit_code == 0, real.output
    assert "expired files (did): files 2" in real.output
    assert fresh(deliveries["long_expired"].job_id).upscaled_file_path is None


# Leftovers ------------------------------------------------------------------------------------


def test_leftovers_removes_failed_outputs_partials_and_old_temporary_files(app: Flask) -> None:
    attachment = make_attachment(app)
    kept = completed_job(app, attachment)
    failed = completed_job(app, attachment, status="failed", failed_at=utcnow() - 2 * DAY)
    failed_path = resolve(app, failed.upscaled_file_path or "")
    kept_path = resolve(app, kept.upscaled_file_path or "")
    old_partial = kept_path.with_name(".tmp-0123.jpg")
    new_partial = kept_path.with_name(".tmp-4567.jpg")
    orphan = resolve(app, "deliveries/no-such-job/left.jpg")
    old_preview_tmp = resolve(app, "previews/thumb/.tmp-9.jpg")
    for path in (old_partial, new_partial, orphan, old_preview_tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    for path in (old_partial, orphan, old_preview_tmp, kept_path, failed_path):
        _age(path, 2 * DAY)
    _age(orphan.parent, 2 * DAY)

    before = _snapshot(app)
    dry = cleanup.remove_leftovers(dry_run=True)
    assert dry.counts == {
        "failed job files": 1,
        "partial outputs": 1,
        "orphan files": 1,
        "temporary files": 1,
    }
    assert _snapshot(app) == before

    report = cleanup.remove_leftovers(dry_run=False)
    assert report.counts == dry.counts
    assert not failed_path.exists() and fresh(failed.job_id).upscaled_file_path is None
    assert not old_partial.exists() and not orphan.exists() and not orphan.parent.exists()
    assert not old_preview_tmp.exists()
    assert new_partial.exists() and kept_path.exists()
    assert fresh(kept.job_id).upscaled_file_path == kept.upscaled_file_path


# Archive --------------------------------------------------------------------------------------


@pytest.fixture
def history(app: Flask) -> dict[str, Job]:
    """Jobs old and new, finished and not."""
    attachment = make_attachment(app)
    old = utcnow() - dt.timedelta(days=400)

    def job(**fields: Any) -> Job:
        return make_job(attachment, created_at=old, **fields)

    jobs = {
        "completed": job(
            status="completed",
            payment_status="paid",
            email='ada, "the buyer" <ada@example.com>',
            download_expires_at=old,
            completed_at=old,
        ),
        "failed_refunded": job(
            status="failed", payment_status="refunded", refunded_at=old, failed_at=old
        ),
        "abandoned": job(status="abandoned"),
        "owed_refund": job(status="failed", payment_status="paid", failed_at=old),
        "waiting": job(status="pending", payment_status="paid"),
        "recent": make_job(attachment, status="completed", payment_status="paid"),
    }
    jobs["with_file"] = completed_job(app, attachment, created_at=old, expires_in=-3 * DAY)
    for name in ("completed", "recent"):
        record_event(jobs[name].job_id, "note", "a timeline line")
        db.session.add(DownloadLog(job_id=jobs[name].job_id, ip="198.51.100.7"))
    db.session.commit()
    return jobs


def _remaining() -> set[str]:
    return set(db.session.scalars(select(Job.job_id)))


def test_archive_dry_run_counts_and_changes_nothing(
    app: Flask, history: dict[str, Job], tmp_path: Path
) -> None:
    before = _snapshot(app)
    report = archive.archive_jobs(older_than_days=365, export_path=tmp_path / "a.csv", dry_run=True)
    assert report.counts == {"jobs": 2}
    assert set(report.sample) == {history["completed"].job_id, history["failed_refunded"].job_id}
    assert _snapshot(app) == before
    assert not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_archive_exports_every_row_then_deletes_it(
    app: Flask, history: dict[str, Job], tmp_path: Path, suffix: str
) -> None:
    ids = {name: job.job_id for name, job in history.items()}
    originals = {
        job.job_id: {c.name: getattr(job, c.key) for c in Job.__table__.columns}
        for job in history.values()
    }
    target = tmp_path / f"archive{suffix}"
    report = archive.archive_jobs(
        older_than_days=365, export_path=target, include_abandoned=True, dry_run=False
    )
    archived = {ids[name] for name in ("completed", "failed_refunded", "abandoned")}
    assert report.counts == {"jobs": 3, "exported": 3}
    assert _remaining() == set(ids.values()) - archived
    if suffix == ".csv":
        with target.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert {row["job_id"] for row in rows} == archived
    assert set(rows[0]) == {column.name for column in Job.__table__.columns}
    exported = {row["job_id"]: row for row in rows}
    completed = exported[ids["completed"]]
    assert completed["email"] == originals[ids["completed"]]["email"]
    assert completed["amount_charged"] == "0.50"
    assert str(completed["id"]) == str(originals[ids["completed"]]["id"])
    # Its timeline and download log went with it; the recent job's stay.
    assert db.session.scalars(select(JobEvent.job_id)).all() == [ids["recent"]]
    assert db.session.scalars(select(DownloadLog.job_id)).all() == [ids["recent"]]
    assert not list(tmp_path.glob(".tmp-*"))


def test_abandoned_checkouts_are_kept_for_the_funnel_by_default(
    app: Flask, history: dict[str, Job], tmp_path: Path
) -> None:
    ids = {name: job.job_id for name, job in history.items()}
    archive.archive_jobs(older_than_days=365, export_path=tmp_path / "a.jsonl", dry_run=False)
    assert ids["abandoned"] in _remaining()
    assert ids["completed"] not in _remaining()


def test_nothing_is_deleted_when_the_export_fails(
    app: Flask, history: dict[str, Job], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(app)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive.os, "fsync", disk_full)
    exports = tmp_path / "exports"
    exports.mkdir()
    with pytest.raises(MaintenanceError, match="nothing was deleted"):
        archive.archive_jobs(older_than_days=365, export_path=exports / "a.csv", dry_run=False)
    assert _snapshot(app)[0] == before[0]
    assert list(exports.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("archive.xlsx", "name it .csv or .jsonl"),
        ("missing/archive.csv", "does not exist"),
        ("exists.csv", "exists already"),
    ],
)
def test_archive_refuses_a_bad_export_target(
    app: Flask, history: dict[str, Job], tmp_path: Path, name: str, message: str
) -> None:
    (tmp_path / "exists.csv").write_text("keep me")
    with pytest.raises(MaintenanceError, match=message):
        archive.archive_jobs(older_than_days=365, export_path=tmp_path / name, dry_run=False)
    assert len(_remaining()) == len(history)
    assert (tmp_path / "exists.csv").read_text() == "keep me"


def test_archive_command(
    runner: FlaskCliRunner, app: Flask, history: dict[str, Job], tmp_path: Path
) -> None:
    target = tmp_path / "jobs.jsonl"
    missing = runner.invoke(args=["smi", "archive", "--older-than", "365"])
    assert missing.exit_code != 0 and "--export FILE is required" in missing.output
    dry = runner.invoke(args=["smi", "archive", "--older-than", "365", "--dry-run"])
    assert "archive (would): jobs 2" in dry.output
    result = runner.invoke(
        args=[
            "smi",
            "archive",
            "--older-than",
            "365",
            "--export",
            str(target),
            "--include-abandoned",
        ]
    )
    assert result.exit_code == 0, result.output
    assert f"archive (did): jobs 3, exported 3, export {target}" in result.output
    assert len(target.read_text().splitlines()) == 3
    again = runner.invoke(args=["smi", "archive", "--older-than", "365", "--export", str(target)])
    assert again.exit_code != 0 and "exists already" in again.output


# The daily run and its schedule ---------------------------------------------------------------


def test_scheduled_run_does_everything_and_logs_it(
    app: Flask, deliveries: dict[str, Job], history: dict[str, Job], tmp_path: Path
) -> None:
    app.config.update(ARCHIVE_AFTER_DAYS=365, ARCHIVE_DIR=str(tmp_path / "archives"))
    reports = maintenance.run_scheduled()
    assert [r.operation for r in reports] == [
        "expired files",
        "leftovers",
        "sign-in links",
        "archive",
    ]
    assert reports[0].counts["files"] == 3  # two from `deliveries`, one from `history`
    (export,) = (tmp_path / "archives").iterdir()
    assert export.suffix == ".jsonl"
    # `with_file` lost its file first in the same run, so it is archived with the other two.
    assert reports[3].counts["jobs"] == 3
    assert db.session.scalar(select(AdminAction).where(AdminAction.action == "maintenance"))


def test_maintenance_is_scheduled_once_a_day(redis_url: str) -> None:
    now = dt.datetime(2026, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert next_run("03:30", now) == dt.datetime(2026, 5, 2, 3, 30, tzinfo=dt.UTC)
    assert next_run("23:00", now) == dt.datetime(2026, 5, 1, 23, 0, tzinfo=dt.UTC)
    assert schedule_maintenance(redis_url, "03:30") is True
    assert schedule_maintenance(redis_url, "03:30") is False  # a second worker starting
    assert schedule_maintenance(redis_url, "off") is False
    connection = Redis.from_url(redis_url)
    registry = ScheduledJobRegistry(queue=Queue("default", connection=connection))
    (job_id,) = registry.get_job_ids()
    assert job_id == f"maintenance-{next_run('03:30'):%Y-%m-%d}"


def test_the_task_runs_maintenance_and_schedules_the_next(
    app: Flask, deliveries: dict[str, Job], redis_url: str
) -> None:
    use_app(app)
    try:
        summary = run_maintenance()
    finally:
        use_app(None)
    assert "expired files (did): files 2" in summary
    assert fresh(deliveries["long_expired"].job_id).upscaled_file_path is None
    registry = ScheduledJobRegistry(queue=Queue("default", connection=Redis.from_url(redis_url)))
    assert len(registry.get_job_ids()) == 1


# The buttons ----------------------------------------------------------------------------------


def test_maintenance_button_shows_a_dry_run_then_runs_once(
    app: Flask, admin_client: FlaskClient, deliveries: dict[str, Job]
) -> None:
    before = _snapshot(app)
    assert admin_client.get("/admin/maintenance").status_code == 200
    preview = admin_client.get("/admin/maintenance/cleanup")
    assert preview.status_code == 200
    assert "Nothing has changed yet" in text(preview) and "2 files" in text(preview)
    assert _snapshot(app) == before
    form = {"request_id": admin_helpers.request_id(text(preview))}
    first = admin_client.post("/admin/maintenance/cleanup", data=form)
    assert first.status_code == 303
    assert fresh(deliveries["long_expired"].job_id).upscaled_file_path is None
    second = admin_client.post("/admin/maintenance/cleanup", data=form)
    assert second.status_code == 303
    assert "This was done already" in text(admin_client.get("/admin/maintenance"))
    runs = db.session.scalars(
        select(AdminAction).where(AdminAction.action == "maintenance_cleanup")
    ).all()
    assert [run.admin for run in runs] == [admin_helpers.ADMIN_NAME]


def test_archive_button_writes_an_export_to_download(
    app: Flask, admin_client: FlaskClient, history: dict[str, Job], tmp_path: Path
) -> None:
    app.config["ARCHIVE_DIR"] = str(tmp_path / "archives")
    completed_id = history["completed"].job_id
    preview = text(admin_client.get("/admin/maintenance/archive?older_than=365&format=csv"))
    assert "2 jobs" in preview
    response = admin_client.post(
        "/admin/maintenance/archive",
        data={
            "request_id": admin_helpers.request_id(preview),
            "older_than": "365",
            "format": "csv",
        },
    )
    assert response.status_code == 303
    (export,) = (tmp_path / "archives").iterdir()
    assert export.suffix == ".csv"
    page = text(admin_client.get("/admin/maintenance"))
    assert export.name in page
    download = admin_client.get(f"/admin/maintenance/archives/{export.name}")
    assert download.status_code == 200
    assert completed_id in download.get_data(as_text=True)
    download.close()
    assert admin_client.get("/admin/maintenance/archives/..%2Fsecret").status_code == 404


def test_the_daily_run_forgets_my_orders_sign_ins_once_their_sessions_are_over(
    app: Flask,
) -> None:
    for email in ("old@example.com", "recent@example.com"):
        request_sign_in(email)
    rows = {row.email: row for row in db.session.scalars(select(BuyerSignIn))}
    rows["old@example.com"].expires_at = utcnow() - dt.timedelta(days=8, minutes=1)
    rows["recent@example.com"].expires_at = utcnow() - dt.timedelta(days=7, hours=23)
    old_outbox, recent_outbox = (
        rows[e].outbox_id for e in ("old@example.com", "recent@example.com")
    )
    db.session.commit()

    (dry,) = [r for r in maintenance.run_scheduled(dry_run=True) if r.operation == "sign-in links"]
    assert dry.counts == {"sign-in links forgotten": 1}
    assert db.session.scalar(select(func.count(BuyerSignIn.id))) == 2

    (done,) = [r for r in maintenance.run_scheduled() if r.operation == "sign-in links"]
    assert done.counts == {"sign-in links forgotten": 1}
    db.session.expire_all()
    assert [row.email for row in db.session.scalars(select(BuyerSignIn))] == ["recent@example.com"]
    assert db.session.get(EmailOutbox, old_outbox) is None
    assert db.session.get(EmailOutbox, recent_outbox) is not None
