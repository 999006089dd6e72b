"""Orders per minute with 1, 2 and 4 worker processes, and that each order was done once.

    .venv/bin/python bench/scale_bench.py [--workers 1,2,4] [--orders 40] [--size 1600x1200]

It starts, once, a throwaway PostgreSQL cluster (a unix socket only, as scripts/test.sh does), a
`redis-server` on a unix socket without persistence, a SeaweedFS S3 store and the SMTP sink. For
each worker count N, from a clean state (a new database built by the migrations, a new private
bucket, Redis and the sink emptied), it stores a few photo-like JPEG originals of `--size` (a real
photo enlarged, with film grain, as bench/upscale_bench.py makes them) and creates `--orders` jobs
awaiting payment, then pays each with a `checkout.session.completed` event through the service the
Stripe webhook calls (`handle_event`), so the upscales and the "payment received" emails enter the
queues as real ones do. Then it starts N `python -m worker` processes, each with its own WORK_DIR
(STORAGE_BACKEND=s3: no shared folder), and times from the first worker's start until every job is
completed and its "ready" email accepted by the sink.

Printed per N: seconds, orders per minute, the ratio to N=1, the cores the workers kept busy, the
peak RSS of the worker processes (each worker with its work horses, from the kernel's accounting
when the worker exits), and the check: each order upscaled once (one `completed` event per job,
claimed once, one object under `deliveries/<job>/`, its RQ upscale finished, nothing in RQ's
failed registries) and mailed once (one "ready" message per order in the sink, told by the
order's own buyer address and the subject; a message sent twice counts twice). The exit status
is 0 when every check passes. Everything listens on loopback or a unix socket and is stopped and
deleted at the end, also after an error or Ctrl-C.

No number of workers computes faster than the machine's cores: on 2 cores N=4 can beat N=2 only
by filling the time N=2's workers spend waiting, and the "cores busy" column (the workers' CPU
time over the wall time) shows how close a run came to the cores. The cores are shared with other
work: run it twice before trusting a figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402
from redis import Redis  # noqa: E402
from rq.registry import FailedJobRegistry, FinishedJobRegistry  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.processes import ThrowawayPostgres  # noqa: E402
from bench.upscale_bench import make_photo  # noqa: E402
from bench.webhook_bench import Sale, completed_event  # noqa: E402
from devservers.seaweed import LocalS3, hermetic_aws_environment  # noqa: E402
from devservers.smtp_sink import SinkHandler, start_sink  # noqa: E402
from storefront import create_app  # noqa: E402
from storefront.extensions import db  # noqa: E402
from storefront.jobs.emails import KINDS  # noqa: E402
from storefront.jobs.queueing import processing_rq_id  # noqa: E402
from storefront.jobs.stripe_events import handle_event  # noqa: E402
from storefront.models import Job, JobEvent  # noqa: E402
from storefront.queues import DEFAULT_QUEUE, UPSCALE_QUEUE  # noqa: E402
from storefront.storage import backend  # noqa: E402
from tests.chaos_harness import RedisServer  # noqa: E402
from tests.conftest import config_as_environment  # noqa: E402
from tests.factories import make_attachment, make_job, make_post, store_bytes  # noqa: E402

ORIGINALS = 5  # distinct photos; the orders cycle over them
FACTOR = 4
STOP_SECONDS = 30.0


@dataclass
class RunFigures:
    """One run with `workers` processes: its time, memory and what the check found."""

    workers: int
    orders: int
    seconds: float = 0.0
    peak_rss_kib: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0  # of the workers and their work horses
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def per_minute(self) -> float:
        """Orders per minute."""
        return self.orders * 60 / self.seconds if self.seconds else 0.0

    @property
    def cores_busy(self) -> float:
        """The workers' CPU time over the wall time: how many cores they kept busy."""
        return self.cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def passed(self) -> bool:
        """Whether every order was upscaled once and mailed once."""
        return not self.problems


class Rig:
    """The parts every run shares, started once: PostgreSQL, Redis, SeaweedFS, the SMTP sink.
    A context manager that stops each of them, however it ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.postgres = ThrowawayPostgres("smi-scale-pg-")
        self.redis = RedisServer(workdir)
        self.s3 = LocalS3(workdir / "s3" / "data", workdir / "s3" / "logs")
        self.smtp: SinkHandler | None = None
        self._smtp_controller: Any = None
        self.runs = 0

    def __enter__(self) -> Rig:
        try:
            self.postgres.start()
            self.redis.start()
            self.s3.start()
            self._smtp_controller, self.smtp = start_sink()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything this rig started."""
        if self._smtp_controller is not None:
            self._smtp_controller.stop()
            self._smtp_controller = None
        self.s3.stop(grace=1.0)  # its data is thrown away: no need to wait for a polite stop
        self.redis.stop()
        self.postgres.stop()

    def fresh_config(self, label: str) -> dict[str, Any]:
        """The app's settings on a new database and a new private bucket, Redis and the sink
        emptied."""
        assert self.smtp is not None and self._smtp_controller is not None
        self.runs += 1
        name = f"scale_{self.runs}_{label}"
        database_url = self.postgres.create_database(name)
        bucket = name.replace("_", "-")
        self.s3.create_bucket(bucket)
        connection = Redis.from_url(self.redis.url)
        try:
            connection.flushall()
        finally:
            connection.close()
        self.smtp.clear()
        return {
            "SMI_ENV": "development",
            "SECRET_KEY": f"scale-bench-{uuid.uuid4().hex}",
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis.url,
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
            "WORK_DIR": str(self.workdir / "bench-work"),
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": self._smtp_controller.port,
            "ADMIN_EMAIL": "owner@example.com",
            # Paying through handle_event and upscaling never call Stripe; a closed port
            # makes sure of it.
            "STRIPE_API_BASE": "http://127.0.0.1:9",
            "STRIPE_SECRET_KEY": "sk_test_scale",
            "STRIPE_WEBHOOK_SECRET": "whsec_scale",
            "UPSCALER": "local",
            "MAINTENANCE_AT": "off",
            **self.s3.settings(bucket),
        }


@contextmanager
def app_on(config: dict[str, Any]) -> Iterator[Flask]:
    """An app context on `config`, its connections closed afterwards."""
    app = create_app(config)
    with app.app_context():
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


def place_paid_orders(config: dict[str, Any], orders: int, size: tuple[int, int]) -> dict[str, str]:
    """Build the schema, store the originals, create `orders` jobs and pay each through the
    service the Stripe webhook calls; return each order's buyer address → its job id."""
    from flask_migrate import upgrade

    photo = Path(config["WORK_DIR"]) / "photo.jpg"
    photo.parent.mkdir(parents=True, exist_ok=True)
    with app_on(config) as app:
        upgrade()
        post = make_post(title="Scale bench")
        attachments = []
        for _ in range(ORIGINALS):
            make_photo(size, photo)
            attachment = make_attachment(app, post, width=size[0], height=size[1])
            store_bytes(app, attachment.file_path, photo.read_bytes())
            attachment.file_size = photo.stat().st_size
            attachments.append(attachment)
        sales = []
        for number in range(1, orders + 1):
            sale = Sale(number, str(uuid.uuid4()), f"cs_scale_{number}", f"buyer-{number}@ex.com")
            make_job(
                attachments[number % ORIGINALS],
                job_id=sale.job_id,
                email=sale.email,
                status="awaiting_payment",
                payment_status="pending",
                stripe_checkout_session_id=sale.session_id,
            )
            sales.append(sale)
        db.session.commit()
        created = int(time.time())
        for sale in sales:
            outcome = handle_event(completed_event(sale, created))
            if outcome.note != "paid":
                raise RuntimeError(f"order {sale.number} was not paid: {outcome.note}")
    return {sale.email: sale.job_id for sale in sales}


@dataclass
class Worker:
    """One `python -m worker` process with its own WORK_DIR and log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> tuple[int, float]:
        """SIGTERM its process group (SIGKILL after STOP_SECONDS) and reap it; return the peak
        RSS in KiB and the CPU seconds of the worker and of every work horse it waited for (the
        kernel's accounting, from wait4)."""
        pid = self.process.pid
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_SECONDS
        while True:
            reaped, status, usage = os.wait4(pid, os.WNOHANG)
            if reaped:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                reaped, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.05)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return int(usage.ru_maxrss), usage.ru_utime + usage.ru_stime


def start_workers(config: dict[str, Any], count: int, folder: Path) -> list[Worker]:
    """Start `count` workers configured by `config`, each with a WORK_DIR of its own."""
    workers = []
    for number in range(1, count + 1):
        work_dir = folder / f"worker-{number}"
        work_dir.mkdir(parents=True)
        env = config_as_environment({**config, "WORK_DIR": str(work_dir)})
        env.update(hermetic_aws_environment(folder))
        log_path = folder / f"worker-{number}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append(Worker(process, log_path))
    return workers


def ready_mails(sink: SinkHandler, buyers: dict[str, str]) -> Counter[str]:
    """The "ready" messages the sink accepted, counted by job (each order has its own buyer's
    address); a message sent again under the same Message-ID counts again."""
    subject = str(KINDS["ready"].subject)
    found: Counter[str] = Counter()
    message: EmailMessage
    for message in list(sink.messages):
        job_id = buyers.get(str(message["To"]))
        if job_id is not None and str(message["Subject"]) == subject:
            found[job_id] += 1
    return found


def wait_until_done(
    sink: SinkHandler, buyers: dict[str, str], workers: list[Worker], timeout: float
) -> str:
    """Wait until every job is completed and its ready mail is in the sink; '' then, else why
    not (a job failed, a worker exited, time ran out)."""
    job_ids = list(buyers.values())
    deadline = time.monotonic() + timeout
    while True:
        db.session.expire_all()
        states = Counter(
            db.session.scalars(select(Job.status).where(Job.job_id.in_(job_ids))).all()
        )
        mailed = ready_mails(sink, buyers)
        db.session.rollback()
        if states["completed"] == len(job_ids) and len(mailed) == len(job_ids):
            return ""
        if states["failed"]:
            return f"{states['failed']} jobs failed"
        exited = [w.log_path.name for w in workers if w.process.poll() is not None]
        if exited:
            return f"workers exited: {', '.join(exited)}"
        if time.monotonic() > deadline:
            return f"not done after {timeout:.0f} s: jobs {dict(states)}, {len(mailed)} mailed"
        time.sleep(0.2)


def check(
    app: Flask, config: dict[str, Any], buyers: dict[str, str], sink: SinkHandler
) -> RunFigures:
    """Count what became of the orders; each broken promise is a problem."""
    job_ids = list(buyers.values())
    figures = RunFigures(workers=0, orders=len(job_ids))
    problems = figures.problems
    completions = Counter(
        db.session.scalars(
            select(JobEvent.job_id).where(
                JobEvent.kind == "completed", JobEvent.job_id.in_(job_ids)
            )
        ).all()
    )
    jobs = {job.job_id: job for job in db.session.scalars(select(Job)).all()}
    deliveries: Counter[str] = Counter()
    for stored in backend(app).objects("deliveries/"):
        deliveries[stored.key.split("/")[1]] += 1
    mailed = ready_mails(sink, buyers)
    connection = Redis.from_url(config["REDIS_URL"])
    try:
        finished_upscales = set(
            FinishedJobRegistry(UPSCALE_QUEUE, connection=connection).get_job_ids()
        )
        finished_default = FinishedJobRegistry(DEFAULT_QUEUE, connection=connection).get_job_ids()
        failed = sum(
            FailedJobRegistry(name, connection=connection).count
            for name in (UPSCALE_QUEUE, DEFAULT_QUEUE)
        )
    finally:
        connection.close()
    for job_id in job_ids:
        job = jobs.get(job_id)
        if job is None or job.status != "completed" or not job.email_sent:
            problems.append(f"job {job_id}: {job.status if job else 'missing'}, not mailed")
            continue
        if completions[job_id] != 1:
            problems.append(f"job {job_id}: {completions[job_id]} completed events")
        if job.attempts != 1:
            problems.append(f"job {job_id}: claimed {job.attempts} times")
        if deliveries[job_id] != 1:
            problems.append(f"job {job_id}: {deliveries[job_id]} objects under deliveries/")
        if processing_rq_id(job_id) not in finished_upscales:
            problems.append(f"job {job_id}: its RQ upscale did not finish")
        if mailed[job_id] != 1:
            problems.append(f"job {job_id}: {mailed[job_id]} ready mails")
    if failed:
        problems.append(f"{failed} RQ jobs in the failed registries")
    stray = set(deliveries) - set(job_ids)
    if stray:
        problems.append(f"{len(stray)} delivery folders of no order")
    figures.counts = {
        "completed events": sum(completions.values()),
        "delivery objects": sum(deliveries.values()),
        "RQ upscales finished": len(finished_upscales),
        "RQ emails finished": sum(rq_id.startswith("email-") for rq_id in finished_default),
        "RQ failed": failed,
        "ready mails": sum(mailed.values()),
    }
    return figures


def run_once(
    rig: Rig, workers: int, orders: int, size: tuple[int, int], timeout: float = 900.0
) -> RunFigures:
    """Place `orders` paid orders on a clean state, let `workers` processes do them; the figures."""
    assert rig.smtp is not None
    config = rig.fresh_config(f"n{workers}")
    buyers = place_paid_orders(config, orders, size)
    folder = rig.workdir / f"run-{rig.runs}"
    running: list[Worker] = []
    usage: list[tuple[int, float]] = []
    with app_on(config) as app:
        try:
            started = time.monotonic()
            running = start_workers(config, workers, folder)
            why = wait_until_done(rig.smtp, buyers, running, timeout)
            seconds = time.monotonic() - started
        finally:
            usage = [worker.stop() for worker in running]
        figures = check(app, config, buyers, rig.smtp)
    figures.workers, figures.seconds = workers, seconds
    figures.peak_rss_kib = [peak for peak, _ in usage]
    figures.cpu_seconds = sum(cpu for _, cpu in usage)
    if why:
        figures.problems.insert(0, why)
        tail = running[0].log_path.read_text(errors="replace")[-2000:] if running else ""
        figures.problems.append(f"worker-1's log ends:\n{tail}")
    rig.s3.delete_bucket(config["S3_BUCKET"])
    return figures


def run_scale(
    workdir: Path, counts: list[int], orders: int, size: tuple[int, int]
) -> list[RunFigures]:
    """One run per worker count in `counts`, on parts started once in `workdir`."""
    with Rig(workdir) as rig:
        return [run_once(rig, count, orders, size) for count in counts]


def report(figures: list[RunFigures], size: tuple[int, int]) -> list[str]:
    """The figures as lines for a person: a table, then the checks and what the numbers mean."""
    width, height = size
    cores = os.cpu_count() or 1
    lines = [
        f"{figures[0].orders if figures else 0} paid orders per run; originals {width}x{height} "
        f"({width * height / 1e6:.1f} MP) photo-like JPEGs, {FACTOR}x by the local engine to "
        f"{width * FACTOR}x{height * FACTOR} ({width * height * FACTOR**2 / 1e6:.1f} MP); "
        f"PostgreSQL, Redis, S3 (SeaweedFS); {cores} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; {dt.date.today().isoformat()}",
        "",
        f"{'workers':>7}  {'seconds':>7}  {'orders/min':>10}  {'vs N=1':>6}  "
        f"{'cores busy':>10}  {'peak RSS per worker':>19}  {'sum of peaks':>12}  check",
    ]
    base = figures[0].per_minute if figures and figures[0].workers == 1 else 0.0
    for run in figures:
        ratio = f"{run.per_minute / base:.2f}" if base else "-"
        peak = max(run.peak_rss_kib, default=0) / 1024
        total = sum(run.peak_rss_kib) / 1024
        lines.append(
            f"{run.workers:>7}  {run.seconds:>7.1f}  {run.per_minute:>10.1f}  {ratio:>6}  "
            f"{run.cores_busy:>10.2f}  {peak:>15.0f} MiB  {total:>8.0f} MiB  "
            + ("ok" if run.passed else "FAILED")
        )
    lines.append("")
    for run in figures:
        counts = ", ".join(f"{name} {count}" for name, count in run.counts.items())
        lines.append(f"N={run.workers}: {counts}")
        lines += [f"  PROBLEM: {problem}" for problem in run.problems]
    lines += [
        "",
        f"What the numbers mean: this machine has {cores} cores, shared with other work. "
        f"No number of workers computes faster than {cores} cores, so N={2 * cores} cannot "
        f"be faster than N={cores} except by filling the time N={cores}'s workers spend "
        "waiting (forking a work horse and building the app for each job, PostgreSQL, the "
        "bucket, SMTP); 'cores busy' (the workers' CPU time over the wall time) shows how "
        f"close a run came to {cores}, and each worker costs its memory. Other work on the "
        "same cores, and libvips' own threads in each upscale, keep even N=2 under 2x N=1. "
        "Workers on hosts of their own add their cores.",
    ]
    return lines


def parse_size(text: str) -> tuple[int, int]:
    """`1600x1200` → (1600, 1200)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark in a temporary directory and print it; 0 when every check passes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument("--orders", type=int, default=40, help="paid orders per run (default 40)")
    parser.add_argument("--size", default="1600x1200", help="originals' size (default 1600x1200)")
    parser.add_argument("--keep", action="store_true", help="keep the directory and its logs")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.workers.split(",") if part.strip()]
    size = parse_size(args.size)
    if args.orders < 1 or not counts or min(counts) < 1 or min(size) < 16:
        parser.error("need --orders >= 1, worker counts >= 1 and a size of at least 16x16")
    workdir = Path(tempfile.mkdtemp(prefix="smi-scale-"))
    os.environ.update(hermetic_aws_environment(workdir / "s3"))
    # This process's log lines (the migrations', the payments') go to a file, not between the
    # figures.
    log_file = logging.FileHandler(workdir / "bench.log")
    for name in ("smi", "rq", "alembic"):
        logger = logging.getLogger(name)
        logger.addHandler(log_file)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    started = time.monotonic()
    try:
        figures = run_scale(workdir, counts, args.orders, size)
    except KeyboardInterrupt:
        print("interrupted: every process stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report(figures, size)))
    print(f"\nwall time of the whole bench: {time.monotonic() - started:.0f} s")
    return 0 if all(run.passed for run in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
