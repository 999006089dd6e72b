"""Signed Stripe webhook deliveries per second through gunicorn, with duplicates, applied once.

    .venv/bin/python bench/webhook_bench.py [--deliveries 1000] [--concurrency 50] [--workers 4]
                                            [--database-url URL] [--seed 1]

In a temporary directory it builds a fresh SQLite database with `flask db upgrade` (or upgrades the
given `--database-url`, e.g. a throwaway PostgreSQL database, which must hold no jobs yet: rows are
counted, and the benchmark's rows stay there), starts its own `redis-server` without persistence and
gunicorn (`-k gthread --threads 4`) on free loopback ports, and inserts one post, one attachment and
one job awaiting payment per Checkout Session (four fifths of `--deliveries`). It then POSTs one
`checkout.session.completed` event per session to /webhooks/stripe plus the remaining fifth as
duplicates (the same event ids and bodies again), shuffled, each signed just before it is sent,
from `--concurrency` threads with one HTTP session each.

Printed: deliveries, wall time and deliveries per second of the first pass, latency p50/p95/max,
answers by status code and by the app's `result`, then, as Stripe would, every non-2xx delivery
re-sent (at most 5 rounds) and the rounds that took; finally the checks, each of which must equal
the number of distinct sessions: jobs now pending and paid, rows in `stripe_events`, entries of the
`upscale` RQ queue (exactly one `upscale-<job_id>` per job) and of the `default` queue (the
"payment received" emails). The exit status is 0 when every check passes. No RQ worker runs, so
the queues only fill. Everything listens on 127.0.0.1 and is stopped and deleted at the end, also
after an error or Ctrl-C. The machine's cores are shared with other work: run twice before trusting
a rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.processes import free_port, stop  # noqa: E402
from devservers.stripe_local.store import DEFAULT_API_VERSION  # noqa: E402
from devservers.stripe_local.webhooks import USER_AGENT, sign  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
WEBHOOK_SECRET = "whsec_bench"
GUNICORN_THREADS = 4
RETRY_ROUNDS = 5
RETRY_PAUSE_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 60.0
START_TIMEOUT_SECONDS = 30.0
PRICE = Decimal("0.50")
PRICE_MINOR_UNITS = 50
CURRENCY = "usd"


@dataclass(frozen=True)
class Sale:
    """One job awaiting payment and the Checkout Session it is waiting on."""

    number: int
    job_id: str
    session_id: str
    email: str


@dataclass(frozen=True)
class Delivery:
    """One POST Stripe would make: an event id and the exact body it signs."""

    event_id: str
    body: str


@dataclass(frozen=True)
class Answer:
    """What one delivery got back: a status (None when no HTTP answer came), time and note."""

    delivery: Delivery
    status: int | None
    seconds: float
    note: str

    @property
    def ok(self) -> bool:
        """Whether Stripe would count the delivery as done."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Check:
    """One equality the run must end with."""

    name: str
    found: int
    expected: int
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the equality holds."""
        return self.found == self.expected


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    """Poll `ready` until it holds; fail if `process` exits or START_TIMEOUT_SECONDS pass."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        try:
            if ready():
                return
        except (OSError, RedisError, requests.RequestException):
            pass  # not listening yet
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {START_TIMEOUT_SECONDS:.0f} s")


def start_redis(scratch: Path, port: int) -> subprocess.Popen[bytes]:
    """A `redis-server` on 127.0.0.1:`port` that keeps nothing on disk."""
    log = (scratch / "redis.log").open("wb")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(scratch)]
    # Its own session: Ctrl-C reaches only this script, whose `finally` stops the children.
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        wait_until(lambda: bool(client.ping()), "redis-server", process)
    except BaseException:
        stop(process)
        raise
    finally:
        client.close()
    return process


def app_settings(scratch: Path, database_url: str, redis_url: str, web_port: int) -> dict[str, str]:
    """The settings the app is started with, as environment variables."""
    storage = scratch / "storage"
    storage.mkdir()
    return {
        "SMI_ENV": "development",
        "SECRET_KEY": secrets.token_hex(32),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STORAGE_DIR": str(storage),
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # Fulfilling a Checkout Session never calls Stripe; a closed port makes sure of it.
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
    }


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment with the app's settings on top."""
    return {**os.environ, **settings, "FLASK_APP": "wsgi"}


def upgrade_schema(settings: dict[str, str]) -> None:
    """Build or update the schema with the project's migrations, as a release would."""
    upgrade = subprocess.run(
        [str(VENV_BIN / "flask"), "db", "upgrade"],
        cwd=ROOT,
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if upgrade.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")


def seed_sales(settings: dict[str, str], count: int, first: int = 1) -> list[Sale]:
    """Insert one post, one attachment and `count` jobs awaiting payment, each with a session.

    Sales are numbered from `first`; only the first batch (`first` 1) needs an empty database.
    """
    from sqlalchemy import func, insert, select

    from storefront import create_app
    from storefront.extensions import db
    from storefront.models import Attachment, Job, Post, StripeEvent, utcnow

    app = create_app(settings)
    with app.app_context():
        for model in (Job, StripeEvent) if first == 1 else ():
            rows = db.session.scalar(select(func.count()).select_from(model))
            if rows:
                raise SystemExit(f"{model.__tablename__} already has {rows} rows: use an empty db")
        post = Post(slug=f"webhook-bench-{first}", title="Webhook bench", body="")
        db.session.add(post)
        db.session.flush()
        # The row only; fulfilment never opens the file.
        attachment = Attachment(
            post_id=post.id,
            file_path="originals/webhook-bench/photo.jpg",
            original_filename="photo.jpg",
            mime_type="image/jpeg",
            width=1200,
            height=800,
            file_size=250_000,
            title="Webhook bench photo",
        )
        db.session.add(attachment)
        db.session.flush()
        now = utcnow()
        sales = [
            Sale(n, str(uuid.uuid4()), f"cs_bench_{n}", f"buyer{n}@example.com")
            for n in range(first, first + count)
        ]
        rows_to_insert: list[dict[str, Any]] = [
            {
                "job_id": sale.job_id,
                "post_id": post.id,
                "attachment_id": attachment.id,
                "image_url": f"{settings['PUBLIC_BASE_URL']}/images/{attachment.id}",
                "image_width": attachment.width,
                "image_height": attachment.height,
                "resolution": "4x",
                "email": sale.email,
                "status": "awaiting_payment",
                "payment_status": "pending",
                "amount_charged": PRICE,
                "amount_cost": Decimal("0.04"),
                "credits_used": 1,
                "currency": CURRENCY,
                "stripe_checkout_session_id": sale.session_id,
                "checkout_expires_at": now + dt.timedelta(hours=1),
                "created_at": now,
                "updated_at": now,
            }
            for sale in sales
        ]
        db.session.execute(insert(Job), rows_to_insert)
        db.session.commit()
        db.engine.dispose()
    return sales


def completed_event(sale: Sale, created: int) -> dict[str, Any]:
    """`checkout.session.completed` for a paid session, shaped as Stripe sends it."""
    session = {
        "id": sale.session_id,
        "object": "checkout.session",
        "amount_subtotal": PRICE_MINOR_UNITS,
        "amount_total": PRICE_MINOR_UNITS,
        "cancel_url": "http://127.0.0.1/images/1?cancelled=1",
        "client_reference_id": sale.job_id,
        "created": created - 60,
        "currency": CURRENCY,
        "customer": None,
        "customer_details": {
            "address": {"country": "US", "postal_code": "94107"},
            "email": sale.email,
            "name": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": sale.email,
        "expires_at": created + 3600,
        "livemode": False,
        "metadata": {"job_id": sale.job_id},
        "mode": "payment",
        "payment_intent": f"pi_bench_{sale.number}",
        "payment_method_types": ["card"],
        "payment_status": "paid",
        "status": "complete",
        "success_url": f"http://127.0.0.1/orders/{sale.job_id}?session_id={sale.session_id}",
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": None,
    }
    return {
        "id": f"evt_bench_{sale.number}",
        "object": "event",
        "api_version": DEFAULT_API_VERSION,
        "created": created,
        "data": {"object": session},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
    }


def build_deliveries(sales: list[Sale], duplicates: int, rng: random.Random) -> list[Delivery]:
    """One delivery per sale plus `duplicates` repeats of some of them, shuffled."""
    created = int(time.time())
    distinct = [
        Delivery(f"evt_bench_{sale.number}", json.dumps(completed_event(sale, created), indent=2))
        for sale in sales
    ]
    deliveries = distinct + rng.sample(distinct, duplicates)
    rng.shuffle(deliveries)
    return deliveries


def send_round(
    url: str, deliveries: list[Delivery], concurrency: int
) -> tuple[list[Answer], float]:
    """POST every delivery from `concurrency` threads; return the answers and the wall time."""
    local = threading.local()
    sessions: list[requests.Session] = []
    sessions_lock = threading.Lock()

    def post(delivery: Delivery) -> Answer:
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:
            session = requests.Session()
            local.session = session
            with sessions_lock:
                sessions.append(session)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": sign(delivery.body, WEBHOOK_SECRET),
        }
        started = time.perf_counter()
        try:
            response = session.post(
                url, data=delivery.body.encode(), headers=headers, timeout=REQUEST_TIMEOUT_SECONDS
            )
        except requests.RequestException as exc:
            return Answer(delivery, None, time.perf_counter() - started, type(exc).__name__)
        seconds = time.perf_counter() - started
        try:
            body = response.json()
            note = str(body.get("result") or body.get("error") or "")
        except ValueError:
            note = f"HTTP {response.status_code} page"
        return Answer(delivery, response.status_code, seconds, note)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stripe")
    started = time.perf_counter()
    finished = False
    try:
        answers = list(pool.map(post, deliveries))
        finished = True
    finally:
        # After Ctrl-C, do not wait for queued deliveries: the server is about to be stopped.
        pool.shutdown(wait=finished, cancel_futures=True)
        for session in sessions:
            session.close()
    return answers, time.perf_counter() - started


def percentile(sorted_values: list[float], percent: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def tally(counts: Iterable[tuple[Any, int]]) -> str:
    """`key: n, key: n` from the most frequent down."""
    return ", ".join(f"{key}: {count}" for key, count in counts) or "none"


def status_counts(answers: list[Answer]) -> str:
    """Answers by status code; a missing answer is shown by its error."""
    return tally(Counter(str(a.status or a.note) for a in answers).most_common())


def count_results(settings: dict[str, str], sales: list[Sale]) -> list[Check]:
    """What the database and Redis hold now, as the checks the run must pass."""
    from sqlalchemy import func, select

    from storefront import create_app
    from storefront.extensions import db
    from storefront.jobs.queueing import processing_rq_id
    from storefront.models import Job, StripeEvent
    from storefront.queues import DEFAULT_QUEUE, UPSCALE_QUEUE

    expected = len(sales)
    app = create_app(settings)
    with app.app_context():
        paid = db.session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status == "pending", Job.payment_status == "paid")
        )
        events = db.session.scalar(select(func.count()).select_from(StripeEvent))
        db.engine.dispose()
    redis = Redis.from_url(settings["REDIS_URL"])
    try:
        upscale_ids = Queue(UPSCALE_QUEUE, connection=redis).get_job_ids()
        default_ids = Queue(DEFAULT_QUEUE, connection=redis).get_job_ids()
    finally:
        redis.close()
    wanted = {processing_rq_id(sale.job_id) for sale in sales}
    stray = len(set(upscale_ids) - wanted)
    missing = len(wanted - set(upscale_ids))
    repeated = len(upscale_ids) - len(set(upscale_ids))
    emails = sum(1 for rq_id in default_ids if rq_id.startswith("email-paid-"))
    return [
        Check("jobs pending+paid", paid or 0, expected),
        Check("stripe_events rows", events or 0, expected),
        Check(
            "upscale queue",
            len(upscale_ids),
            expected,
            f"{missing} jobs missing, {repeated} repeated, {stray} unknown ids",
        ),
        Check("email-paid queued", emails, expected, f"of {len(default_ids)} on default"),
    ]


def server_log_summary(log_path: Path) -> str:
    """Tracebacks and lock errors in the gunicorn log, with the kinds of exception seen."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = text.splitlines()
    kinds: Counter[str] = Counter()
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            # The exception line is the first unindented line after the traceback.
            end = next(
                (
                    later
                    for later in lines[index + 1 :]
                    if later and not later.startswith((" ", "\t", "Traceback"))
                ),
                "?",
            )
            kinds[end[:160]] += 1
    summary = (
        f"{sum(kinds.values())} tracebacks, "
        f"{text.count('database is locked')} 'database is locked', "
        f"{text.count('WORKER TIMEOUT')} worker timeouts"
    )
    for kind, count in kinds.most_common(5):
        summary += f"\n    {count} x {kind}"
    return summary


def run(args: argparse.Namespace, scratch: Path) -> bool:
    """Set everything up in `scratch`, deliver, print the report; True when every check passes."""
    duplicates = args.deliveries // 5
    distinct = args.deliveries - duplicates
    database_url = args.database_url or f"sqlite:///{scratch / 'bench.db'}"
    redis_port, web_port = free_port(), free_port()
    settings = app_settings(scratch, database_url, f"redis://127.0.0.1:{redis_port}/0", web_port)
    base = settings["PUBLIC_BASE_URL"]
    redis_process: subprocess.Popen[bytes] | None = None
    web_process: subprocess.Popen[bytes] | None = None
    web_log_path = scratch / "gunicorn.log"
    try:
        upgrade_schema(settings)
        sales = seed_sales(settings, distinct)
        deliveries = build_deliveries(sales, duplicates, random.Random(args.seed))
        redis_process = start_redis(scratch, redis_port)
        web_log = web_log_path.open("wb")
        web_process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-w", str(args.workers), "-k", "gthread"]
            + ["--threads", str(GUNICORN_THREADS), "-b", f"127.0.0.1:{web_port}", "wsgi:app"],
            cwd=ROOT,
            env=child_env(settings),
            stdout=web_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        web_log.close()
        try:
            wait_until(
                lambda: requests.get(f"{base}/healthz", timeout=1).ok, "gunicorn", web_process
            )
        except RuntimeError as exc:
            tail = web_log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}; its log ends:\n{tail}") from exc

        database = database_url.split(":", 1)[0].split("+", 1)[0]
        print(
            f"{args.deliveries} deliveries ({distinct} distinct events, {duplicates} duplicates) "
            f"from {args.concurrency} senders to gunicorn {args.workers} workers x "
            f"{GUNICORN_THREADS} threads, {database}",
            flush=True,
        )
        answers, wall = send_round(f"{base}/webhooks/stripe", deliveries, args.concurrency)
        latencies = sorted(answer.seconds * 1000 for answer in answers)
        print(f"deliveries            {len(answers)}")
        print(f"wall time             {wall:.2f} s")
        print(f"deliveries/s          {len(answers) / wall:.1f}")
        print(
            f"latency ms            p50 {percentile(latencies, 50):.1f}, "
            f"p95 {percentile(latencies, 95):.1f}, max {latencies[-1]:.1f}"
        )
        print(f"status codes          {status_counts(answers)}")
        print(f"app results           {tally(Counter(a.note for a in answers).most_common())}")

        failed = [answer.delivery for answer in answers if not answer.ok]
        rounds = 0
        while failed and rounds < RETRY_ROUNDS:
            rounds += 1
            time.sleep(RETRY_PAUSE_SECONDS)
            retried, retry_wall = send_round(f"{base}/webhooks/stripe", failed, args.concurrency)
            print(
                f"retry round {rounds}         {len(failed)} re-sent in {retry_wall:.2f} s: "
                f"{status_counts(retried)}; {tally(Counter(a.note for a in retried).most_common())}"
            )
            failed = [answer.delivery for answer in retried if not answer.ok]
        if failed:
            print(f"retries               {len(failed)} still not 2xx after {rounds} rounds")
        else:
            print(f"retries               {rounds} rounds needed")

        checks = count_results(settings, sales)
        for check in checks:
            detail = f" ({check.detail})" if check.detail else ""
            mark = "ok" if check.passed else "WRONG"
            print(f"{check.name:<22}{check.found} / {check.expected} {mark}{detail}")
        print(f"server log            {server_log_summary(web_log_path)}")
        passed = all(check.passed for check in checks) and not failed
        print("PASS" if passed else "FAIL")
        return passed
    finally:
        stop(web_process)
        stop(redis_process)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the benchmark in a temporary directory, and delete it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1000, help="POSTs in all (default 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="senders at once (default 50)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--database-url", help="an empty database instead of a fresh SQLite file")
    parser.add_argument("--seed", type=int, default=1, help="seed of the duplicates and order")
    args = parser.parse_args(argv)
    if args.deliveries < 5 or args.concurrency < 1 or args.workers < 1:
        parser.error("--deliveries must be at least 5, --concurrency and --workers at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="smi-webhook-bench-"))
    try:
        passed = run(args, scratch)
    except KeyboardInterrupt:
        print("interrupted: gunicorn and redis-server stopped", file=sys.stderr)
        passed = False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
