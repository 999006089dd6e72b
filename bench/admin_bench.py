"""Admin benchmark: 100,000 jobs in the table, then the time of the dashboard and the job list.

Builds a throwaway database with the migrations, bulk-inserts the jobs (spread over 90 days, in a
realistic mix of states and money) with their funnel events, signs in through the test client and
times each page: cold (the first request of a fresh app, with a new connection pool) and warm (the
median of several requests after that). Redis is a temporary `redis-server` when one is installed.

    .venv/bin/python bench/admin_bench.py [--jobs N] [--runs N] [--postgres URL] [--skip-sqlite]

`--postgres` (or SMI_BENCH_DATABASE_URL) also runs it on PostgreSQL; the database is emptied first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from storefront import create_app  # noqa: E402
from storefront.extensions import db  # noqa: E402
from storefront.models import Attachment, FunnelEvent, Job, Post, utcnow  # noqa: E402

PASSWORD = "benchmark password"
OPTIONAL_COLUMNS = (
    "stripe_payment_intent_id",
    "paid_at",
    "processing_started_at",
    "completed_at",
    "failed_at",
    "refunded_at",
    "refund_amount",
    "refund_reason",
    "error_message",
    "download_expires_at",
    "download_token",
    "upscaled_file_path",
    "upscaled_file_size",
)
PRICES = [
    (Decimal("0.50"), Decimal("0.04"), 1),
    (Decimal("0.96"), Decimal("0.32"), 8),
    (Decimal("1.92"), Decimal("0.64"), 16),
    (Decimal("3.84"), Decimal("1.28"), 32),
    (Decimal("7.68"), Decimal("2.56"), 64),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server, or a closed port (the dashboard then says Redis is down)."""
    binary = shutil.which("redis-server")
    port = _free_port()
    if binary is None:
        yield f"redis://127.0.0.1:{port}/0"
        return
    workdir = tempfile.mkdtemp(prefix="smi-bench-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def make_app(url: str, storage: Path, redis_url: str) -> Flask:
    """An app on the benchmark database, CSRF off as in the tests, logging warnings only."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "bench",
            "DATABASE_URL": url,
            "STORAGE_DIR": str(storage),
            "REDIS_URL": redis_url,
            "WTF_CSRF_ENABLED": False,
            "ADMIN_EMAIL": "bench@shop.test",
            "ADMIN_PASSWORD": PASSWORD,
            "SERVER_NAME": None,
        }
    )
    logging.getLogger("smi").setLevel(logging.WARNING)
    return app


def _job_row(
    rng: random.Random, now: dt.datetime, post_of: dict[int, int], images: list[int]
) -> dict[str, Any]:
    created = now - dt.timedelta(seconds=rng.uniform(0, 90 * 86400))
    attachment_id = rng.choice(images)
    price, cost, credits = rng.choice(PRICES)
    roll = rng.random()
    row: dict[str, Any] = {
        "job_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "post_id": post_of[attachment_id],
        "attachment_id": attachment_id,
        "image_url": f"https://shop.example/images/{attachment_id}",
        "image_width": 1500,
        "image_height": 1000,
        "resolution": rng.choice(("4x", "4x", "8x")),
        "email": f"buyer{rng.randrange(30000)}@example.com",
        "amount_charged": price,
        "amount_cost": cost,
        "credits_used": credits,
        "currency": "usd",
        "created_at": created,
        "updated_at": created,
        "stripe_checkout_session_id": f"cs_test_{uuid.UUID(int=rng.getrandbits(128)).hex}",
        "status": "abandoned",
        "payment_status": "pending",
        "download_count": 0,
        "attempts": 0,
        "email_sent": False,
    }
    # executemany needs the same keys in every row.
    row |= dict.fromkeys(OPTIONAL_COLUMNS)
    if roll < 0.16:  # abandoned checkouts
        return row
    if roll < 0.18 and created > now - dt.timedelta(hours=2):
        row["status"] = "awaiting_payment"
        return row
    paid = created + dt.timedelta(minutes=rng.uniform(1, 10))
    row.update(
        payment_status="paid",
        paid_at=paid,
        stripe_payment_intent_id=f"pi_{uuid.UUID(int=rng.getrandbits(128)).hex}",
        attempts=1,
    )
    if roll < 0.20:  # failed, refunded automatically
        row.update(
            status="failed",
            failed_at=paid + dt.timedelta(minutes=5),
            payment_status="refunded",
            refund_amount=price,
            refunded_at=paid + dt.timedelta(minutes=6),
            error_message="Upscaling failed after retries: TimeoutError",
        )
        return row
    if created > now - dt.timedelta(minutes=30) and roll < 0.21:
        row.update(status=rng.choice(("pending", "processing")))
        return row
    completed = paid + dt.timedelta(minutes=rng.uniform(1, 20))
    expires = completed + dt.timedelta(hours=24)
    row.update(
        status="completed",
        completed_at=completed,
        processing_started_at=paid + dt.timedelta(seconds=30),
        download_expires_at=expires,
        download_token=uuid.UUID(int=rng.getrandbits(128)).hex * 2,
        download_count=rng.choice((0, 1, 1, 1, 2, 3)),
        email_sent=True,
        upscaled_file_size=rng.randrange(5_000_000, 80_000_000),
    )
    if expires > now - dt.timedelta(days=2):
        row["upscaled_file_path"] = f"deliveries/{row['job_id']}/image-{attachment_id}.jpg"
    if roll > 0.97:
        row.update(refund_amount=(price / 2).quantize(Decimal("0.01")), refunded_at=completed)
        row["refund_reason"] = "partial refund"
    elif roll > 0.96:
        row.update(refund_amount=price, refunded_at=completed, payment_status="refunded")
    return row


def fill(app: Flask, jobs: int, seed: int = 7) -> None:
    """Bulk-insert the catalog, `jobs` jobs over 90 days and their funnel events."""
    rng = random.Random(seed)
    now = utcnow()
    with app.app_context():
        posts = [Post(slug=f"post-{n}", title=f"Post {n}", body="") for n in range(20)]
        db.session.add_all(posts)
        db.session.flush()
        attachments = [
            Attachment(
                post_id=posts[n % 20].id,
                file_path=f"originals/post-{n % 20}/image-{n}.jpg",
                original_filename=f"image-{n}.jpg",
                mime_type="image/jpeg",
                width=1500,
                height=1000,
                file_size=500_000,
                title=f"Image {n}",
                alt_text=f"Image {n}",
            )
            for n in range(100)
        ]
        db.session.add_all(attachments)
        db.session.commit()
        post_of = {a.id: a.post_id for a in attachments}
        images = list(post_of)
        batch: list[dict[str, Any]] = []
        funnel: list[dict[str, Any]] = []
        for _ in range(jobs):
            row = _job_row(rng, now, post_of, images)
            batch.append(row)
            base = {"post_id": row["post_id"], "attachment_id": row["attachment_id"]}
            for _view in range(rng.choice((2, 3, 3, 4))):
                seen = row["created_at"] - dt.timedelta(minutes=rng.uniform(1, 30))
                funnel.append({"kind": "image_viewed", "created_at": seen, **base})
            funnel.append({"kind": "checkout_started", "created_at": row["created_at"], **base})
            if row.get("paid_at"):
                funnel.append({"kind": "paid", "created_at": row["paid_at"], **base})
            if len(batch) >= 5000:
                db.session.execute(insert(Job.__table__), batch)
                db.session.execute(insert(FunnelEvent.__table__), funnel)
                batch, funnel = [], []
        if batch:
            db.session.execute(insert(Job.__table__), batch)
            db.session.execute(insert(FunnelEvent.__table__), funnel)
        db.session.commit()
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # What autovacuum does on a live database: statistics, and the visibility map that lets
        # index-only scans skip the table.
        with app.app_context(), db.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE")
            )


def _empty_postgres(app: Flask) -> None:
    with app.app_context():
        tables = ", ".join(t.name for t in db.metadata.sorted_tables)
        db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        db.session.commit()


def pages(app: Flask) -> list[tuple[str, str]]:
    """The pages to time: (what, URL)."""
    today = utcnow().date()
    with app.app_context():
        email = db.session.scalar(
            db.select(Job.email).where(Job.status == "completed").order_by(Job.id).limit(1)
        )
        intent = db.session.scalar(
            db.select(Job.stripe_payment_intent_id)
            .where(Job.stripe_payment_intent_id.is_not(None))
            .order_by(Job.id.desc())
            .limit(1)
        )
        job_id = db.session.scalar(db.select(Job.job_id).order_by(Job.id.desc()).limit(1))
    month = (today - dt.timedelta(days=29)).isoformat()
    quarter = (today - dt.timedelta(days=89)).isoformat()
    return [
        ("dashboard, last 30 days", "/admin/"),
        ("dashboard, 90 days", f"/admin/?from={quarter}&to={today}"),
        ("jobs, no filter", "/admin/jobs"),
        ("jobs ?status=completed", "/admin/jobs?status=completed"),
        (
            "jobs completed+paid, 30 days, by amount, page 5",
            f"/admin/jobs?status=completed&payment_status=paid&from={month}&to={today}"
            "&sort=amount&order=desc&page=5",
        ),
        ("jobs ?status=failed, page 3", "/admin/jobs?status=failed&page=3"),
        ("jobs search by email", f"/admin/jobs?q={email}"),
        ("jobs search by PaymentIntent", f"/admin/jobs?q={intent}"),
        ("jobs search, part of an email", "/admin/jobs?q=buyer123"),
        ("job page", f"/admin/jobs/{job_id}"),
        ("jobs CSV ?status=failed (~4,000 rows)", "/admin/jobs.csv?status=failed"),
    ]


def _time(client: Any, url: str) -> float:
    started = time.perf_counter()
    response = client.get(url)
    response.get_data()
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    response.close()
    return elapsed * 1000


def _signed_in(app: Flask) -> Any:
    client = app.test_client()
    response = client.post("/admin/login", data={"email": "bench@shop.test", "password": PASSWORD})
    if response.status_code != 303:
        raise SystemExit(f"sign-in failed: {response.status_code}")
    return client


def measure(url: str, storage: Path, redis_url: str, runs: int, label: str) -> None:
    """Time every page cold and warm, and print a table."""
    print(f"\n{label}")
    print(f"{'page':<52}{'cold ms':>10}{'warm median ms':>16}{'warm min':>10}")
    probe = make_app(url, storage, redis_url)
    targets = pages(probe)
    with probe.app_context():
        db.engine.dispose()
    for what, target in targets:
        colds = []
        for _ in range(3):
            app = make_app(url, storage, redis_url)
            client = _signed_in(app)
            with app.app_context():
                db.engine.dispose()  # a new connection: nothing cached by this app
            colds.append(_time(client, target))
            warms = [_time(client, target) for _ in range(runs)]
            with app.app_context():
                db.engine.dispose()
        print(
            f"{what:<52}{statistics.median(colds):>10.1f}"
            f"{statistics.median(warms):>16.1f}{min(warms):>10.1f}"
        )


def run(url: str, jobs: int, runs: int, label: str, redis_url: str) -> None:
    """Migrate, fill and measure one database."""
    from flask_migrate import upgrade

    storage = Path(tempfile.mkdtemp(prefix="smi-bench-storage-"))
    try:
        app = make_app(url, storage, redis_url)
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
        if url.startswith("postgresql"):
            _empty_postgres(app)
        started = time.perf_counter()
        fill(app, jobs)
        with app.app_context():
            count = db.session.scalar(db.select(db.func.count(Job.id)))
            funnel = db.session.scalar(db.select(db.func.count(FunnelEvent.id)))
            db.engine.dispose()
        print(
            f"{label}: {count:,} jobs and {funnel:,} funnel events inserted "
            f"in {time.perf_counter() - started:.1f} s"
        )
        measure(url, storage, redis_url, runs, label)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark on SQLite, and on PostgreSQL when a URL is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7, help="warm requests per page")
    parser.add_argument("--postgres", default=os.environ.get("SMI_BENCH_DATABASE_URL", ""))
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args(argv)
    with redis_server() as redis_url:
        if not args.skip_sqlite:
            folder = Path(tempfile.mkdtemp(prefix="smi-bench-"))
            try:
                run(f"sqlite:///{folder / 'bench.db'}", args.jobs, args.runs, "SQLite", redis_url)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if args.postgres:
            run(args.postgres, args.jobs, args.runs, "PostgreSQL", redis_url)


if __name__ == "__main__":
    main()
