"""Chaos on real parts, shared by tests/test_chaos.py and bench/chaos.py.

Paid orders go through gunicorn, RQ worker processes (`python -m worker`), Redis, the SMTP sink,
the local Stripe server and, for a share of them, the local Upsampler server, while workers are
SIGKILLed mid-job, Redis restarts empty, SMTP refuses mail, Stripe answers 500 and every webhook
comes twice and out of order. Then it counts what became of every order.

Where the shop waits long on purpose, time is pushed forward, as tests/test_fulfilment.py does: the
sweeper runs every SWEEP_PERIOD seconds with `now` ahead by SWEEP_LEAD, so a job counts as abandoned
after STALE_AFTER of processing instead of PROCESSING_TIMEOUT_MINUTES plus the sweeper's grace. RQ's
own maintenance, which each worker runs every ten minutes, runs as often and sees a dead worker at
once: a job of a worker that died (leaving no horse running it) is retried or failed as RQ does
once its heartbeat runs out (90 s), and a dead scheduler's lock runs out at once (61 s in RQ),
after which one scheduler pass runs while no scheduler holds the lock (RQ starts a new one only in
a worker's maintenance).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from PIL import Image
from redis import Redis
from rq import Worker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.utils import as_text
from sqlalchemy import func, select

from devservers.smtp_sink import SinkHandler, start_sink
from devservers.stripe_local import LocalStripe
from devservers.stripe_local import start_server as start_stripe
from devservers.upsampler_local import LocalUpsampler
from devservers.upsampler_local import start_server as start_upsampler
from storefront import create_app
from storefront.catalog.pricing import to_minor_units
from storefront.extensions import db
from storefront.jobs.emails import KINDS
from storefront.jobs.recovery import STALE_GRACE, sweep
from storefront.models import EmailOutbox, Job, JobEvent, utcnow
from storefront.queues import DEFAULT_QUEUE, UPSCALE_QUEUE
from tests.conftest import config_as_environment, empty_tables, wait_for_redis
from tests.factories import make_attachment, make_post, resolve

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "whsec_chaos"
UPSAMPLER_KEY = "up_chaos_key"
QUEUES = (UPSCALE_QUEUE, DEFAULT_QUEUE)
PROCESSING_TIMEOUT_MINUTES = 1
# A job processing this long counts as its worker's death (the sweeper's clock is pushed forward).
STALE_AFTER = dt.timedelta(seconds=15)
SWEEP_LEAD = dt.timedelta(minutes=PROCESSING_TIMEOUT_MINUTES) + STALE_GRACE - STALE_AFTER
SWEEP_PERIOD = 2.0
KILL_MODES = ("worker and horse", "horse only", "worker only")
KILL_WEIGHTS = (2, 1, 1)
PERIODIC_RQ_JOBS = ("sweep-", "maintenance-")
RQ_WORKER_NAME = re.compile(r"Worker (\w+): started with PID")
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
CHECKOUT_TRIES = 20
IMAGE_SIZES = ((96, 72), (160, 120), (240, 180), (320, 240))


@dataclass(frozen=True)
class ChaosPlan:
    """How many orders, how they are spread, and how often each fault strikes (seconds between
    two of a kind, drawn from a range)."""

    orders: int = 100
    upsampler_orders: int = 25
    broken_every: int = 8  # every n-th order's original is not an image: it must end refunded
    order_gap: float = 0.5
    buyers: int = 3
    returning_share: float = 0.5  # buyers who come back from Stripe to the order page
    workers: int = 3
    kill_gap: tuple[float, float] = (1.5, 4.0)
    redis_gap: tuple[float, float] = (12.0, 20.0)
    redis_down: float = 0.5
    smtp_gap: tuple[float, float] = (4.0, 8.0)
    smtp_refusals: tuple[int, int] = (1, 3)
    stripe_gap: tuple[float, float] = (5.0, 10.0)
    stripe_failures: tuple[int, int] = (2, 5)
    webhook_batch: float = 1.0
    # Wait for the local phase's upscales before the shop restarts on Upsampler; else an order
    # left over is upscaled by whichever engine the workers then have.
    drain_between_phases: bool = True
    phase_timeout: float = 120.0
    settle_timeout: float = 240.0
    seed: int = 1


@dataclass
class Order:
    """One purchase as the buyer made it, and what it became."""

    number: int
    phase: str
    email: str
    attachment_id: int
    broken: bool
    returning: bool
    session_id: str | None = None
    job_id: str | None = None
    paid: bool = False
    checkout_tries: int = 0
    problem: str = ""


@dataclass
class ChaosFigures:
    """What a chaos run did and found; `problems` lists every broken promise."""

    orders: int = 0
    orders_by_phase: Counter[str] = field(default_factory=Counter)
    not_placed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    failed_refunded: int = 0
    lost: list[str] = field(default_factory=list)
    duplicate_completions: int = 0
    ready_mails: int = 0
    failed_mails: int = 0
    paid_mails: int = 0
    resent_mails: int = 0
    doubled_mails: Counter[str] = field(default_factory=Counter)
    refunds: int = 0
    refunded_good_orders: int = 0
    upscales_retried: int = 0
    recovery: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[str, float]] = field(default_factory=list)
    waits: list[tuple[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The figures, one per line, for a person to read."""
        phases = ", ".join(
            f"{name} {count}" for name, count in sorted(self.orders_by_phase.items())
        )
        faults = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items()))
        recovery = ", ".join(f"{kind} {count}" for kind, count in sorted(self.recovery.items()))
        lines = [
            f"orders paid:              {self.orders} ({phases}); not placed {self.not_placed}",
            f"faults injected:          {faults or 'none'}",
            f"completed:                {self.completed}",
            f"failed and refunded:      {self.failed_refunded} "
            f"({self.refunded_good_orders} of them with a good original)",
            f"lost:                     {len(self.lost)}",
            f"duplicate completions:    {self.duplicate_completions}",
            f"ready mails:              {self.ready_mails}",
            f"refund mails:             {self.failed_mails}",
            f"payment mails:            {self.paid_mails}",
            f"sent again after a crash: {self.resent_mails} (same Message-ID, counted once)",
            "mails sent twice:         "
            + (", ".join(f"{k} {n}" for k, n in sorted(self.doubled_mails.items())) or "none"),
            f"refunds at Stripe:        {self.refunds}",
            f"upscales retried:         {self.upscales_retried}",
            f"recovery work seen:       {recovery or 'none'}",
            f"wall time:                {self.wall_seconds:.1f} s",
            "timeline:                 "
            + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in self.timeline),
        ]
        lines += [f"settling waited {seconds:.1f} s for {why}" for why, seconds in self.waits]
        lines += [f"lost order: {entry}" for entry in self.lost]
        lines += [f"PROBLEM: {problem}" for problem in self.problems]
        return lines


# ---------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    """A process known by its pid and its start time, so a later process with the same pid is
    never mistaken for it."""

    pid: int
    pgrp: int
    started: int

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie does not)."""
        now = proc_of(self.pid)
        return now is not None and now.started == self.started

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` if this very process still runs."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def proc_of(pid: int) -> Proc | None:
    """The running (not zombie) process `pid`, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return Proc(pid=pid, pgrp=int(fields[2]), started=int(fields[19]))


def children_of(pid: int) -> list[Proc]:
    """The running children of `pid`."""
    pids: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids += [int(child) for child in listing.read_text().split()]
        except OSError:
            continue
    return [proc for child in pids if (proc := proc_of(child)) is not None]


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> list[Proc]:
    """SIGTERM a process started in its own session, SIGKILL it if it lingers; return the
    children it had (an RQ work horse has its own process group and outlives a group kill)."""
    children = children_of(process.pid) if process.poll() is None else []
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            process.wait(timeout=timeout)
    return children


class RedisServer:
    """A redis-server on a unix socket, without persistence: a restart loses everything."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket_path = workdir / "redis.sock"
        self.url = f"unix://{self.socket_path}?db=0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.socket_path)]
            + ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_redis(self.url, self.process)

    def crash(self) -> None:
        """SIGKILL it, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop it for good."""
        if self.process is not None:
            stop_process_group(self.process)


class WebServer:
    """gunicorn serving `wsgi:app` from a loopback socket bound here once, on a port the kernel
    picks: its URL is known before gunicorn starts, and a restart keeps it."""

    def __init__(self, workdir: Path) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.log_path = workdir / "gunicorn.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], timeout: float = 30.0) -> None:
        """Start gunicorn (2 workers of 4 threads) and wait until /healthz answers."""
        fd = self.listener.fileno()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", "--workers", "2"]
                + ["--worker-class", "gthread", "--threads", "4", "--graceful-timeout", "5"]
                + ["wsgi:app"],
                cwd=ROOT,
                env=env,
                pass_fds=(fd,),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gunicorn did not start: {log_tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop gunicorn; the socket stays bound for the next start."""
        if self.process is not None:
            stop_process_group(self.process, timeout=15)
            self.process = None

    def close(self) -> None:
        """Stop gunicorn and release the port."""
        self.stop()
        self.listener.close()


@dataclass
class WorkerProcess:
    """One `python -m worker` process, and every work horse it was seen with."""

    number: int
    process: subprocess.Popen[bytes]
    log_path: Path
    horses: list[Proc] = field(default_factory=list)
    name: str = ""

    def rq_name(self) -> str:
        """The name RQ knows the worker by (from the first line it logs)."""
        if not self.name:
            found = RQ_WORKER_NAME.search(self.log_path.read_text(errors="replace"))
            self.name = found.group(1) if found else ""
        return self.name


class WorkerPool:
    """RQ worker processes, kept at a given number the way a supervisor restarts what dies."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env: dict[str, str] = {}
        self.live: list[WorkerProcess] = []
        self.every: list[WorkerProcess] = []
        self.exited_alone = 0
        self.lock = threading.RLock()

    def start(self, env: dict[str, str], size: int) -> None:
        """Start `size` workers with the environment `env`."""
        with self.lock:
            self.env = env
            for _ in range(size):
                self._spawn()

    def _spawn(self) -> WorkerProcess:
        log_path = self.workdir / f"worker-{len(self.every) + 1}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(len(self.every) + 1, process, log_path)
        self.live.append(worker)
        self.every.append(worker)
        return worker

    def watch(self) -> list[tuple[WorkerProcess, Proc]]:
        """The workers running a job now, each with its work horse (the child that called
        setpgrp: its process group is its own); every horse seen is remembered, so that one
        its worker's death leaves running is known."""
        with self.lock:
            found = []
            for worker in self.live:
                if worker.process.poll() is None:
                    for child in children_of(worker.process.pid):
                        if child.pgrp == child.pid:
                            found.append((worker, child))
                            if child not in worker.horses:
                                worker.horses.append(child)
            return found

    def crash(self, worker: WorkerProcess, horse: Proc, mode: str) -> None:
        """SIGKILL the worker and its horse, the horse alone, or the worker alone (its horse
        finishes on its own), and start a new worker for a dead one."""
        with self.lock:
            if mode == "worker and horse":
                # The worker's process group (the worker, its scheduler), then the horse.
                os.killpg(worker.process.pid, signal.SIGKILL)
                horse.kill()
            elif mode == "horse only":
                horse.kill()
            else:
                worker.process.kill()
            if mode != "horse only":
                worker.process.wait(timeout=10)
                self.live.remove(worker)
                self._spawn()

    def supervise(self) -> int:
        """Start a new worker for each that exited on its own; how many did."""
        with self.lock:
            dead = [worker for worker in self.live if worker.process.poll() is not None]
            for worker in dead:
                self.live.remove(worker)
                self._spawn()
            self.exited_alone += len(dead)
            return len(dead)

    def dead_names(self) -> set[str]:
        """RQ names of the workers that died and left no horse of theirs running."""
        with self.lock:
            return {
                worker.rq_name()
                for worker in self.every
                if worker.process.poll() is not None
                and not any(horse.alive() for horse in worker.horses)
            }

    def stop(self) -> None:
        """Stop every worker, and every horse a worker's death left running."""
        with self.lock:
            leftovers: list[Proc] = []
            for worker in self.live:
                leftovers += stop_process_group(worker.process)
            self.live = []
            for worker in self.every:
                leftovers += worker.horses
            for proc in leftovers:
                proc.kill()

    def logs(self) -> str:
        """Every worker's output so far."""
        return "\n".join(worker.log_path.read_text(errors="replace") for worker in self.every)


class Loop(threading.Thread):
    """Call `step` every `period` seconds until stopped; count what it raises by type."""

    def __init__(self, name: str, period: float, step: Callable[[], None], errors: Counter[str]):
        super().__init__(name=name, daemon=True)
        self.period = period
        self.step = step
        self.errors = errors
        self.stopping = threading.Event()

    def run(self) -> None:
        """The loop."""
        while not self.stopping.wait(self.period):
            try:
                self.step()
            except Exception as exc:  # a fault may break one step; the next one tries again
                self.errors[f"{self.name}: {type(exc).__name__}"] += 1

    def stop(self) -> None:
        """Stop after the current step."""
        self.stopping.set()
        self.join(timeout=60)


# ---------------------------------------------------------------------------- the run


class Chaos:
    """The shop on real parts in `workdir`, and the faults thrown at it; a context manager that
    stops every process and server it started, however it ends."""

    def __init__(self, workdir: Path, plan: ChaosPlan, database_url: str = "") -> None:
        self.workdir = workdir
        self.plan = plan
        # A PostgreSQL URL, emptied first; by default a fresh SQLite file in `workdir`.
        self.database_url = database_url or f"sqlite:///{workdir / 'smi.db'}"
        self.rng = random.Random(plan.seed)
        self.faults: Counter[str] = Counter()
        self.recovery: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.orders: list[Order] = []
        self.redis = RedisServer(workdir)
        self.web = WebServer(workdir)
        self.workers = WorkerPool(workdir)
        self.redis_lock = threading.Lock()
        self.loops: list[Loop] = []
        self.monkey: Loop | None = None
        self.stripe: LocalStripe | None = None
        self.upsampler: LocalUpsampler | None = None
        self.smtp: SinkHandler | None = None
        self.resent_mails = 0  # the same message sent again after a crash (same Message-ID)
        self._smtp_controller: Any = None
        self.app: Flask | None = None
        self.config: dict[str, Any] = {}
        self.resent: set[str] = set()
        self.released_batches = 0
        self.smtp_armed = 0
        self.stripe_armed = 0
        self.next_fault: dict[str, float] = {}
        self.timeline: list[tuple[str, float]] = []
        self.waits: list[tuple[str, float]] = []
        self.kills: list[str] = []
        self.settled = ""
        self._lap = time.monotonic()

    # ------------------------------------------------------------------ setting up

    def __enter__(self) -> Chaos:
        try:
            self._start_servers()
            self._prepare_database()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _mark(self, step: str) -> None:
        """Note how long `step` took, for the figures."""
        now = time.monotonic()
        self.timeline.append((step, now - self._lap))
        self._lap = now

    def _start_servers(self) -> None:
        self.redis.start()
        self._smtp_controller, self.smtp = start_sink()
        self.stripe = start_stripe(
            webhook_url=f"{self.web.url}/webhooks/stripe",
            webhook_secret=WEBHOOK_SECRET,
            retry_scale=0.25,
        )
        self.stripe.dispatcher.hold()
        self.upsampler = start_upsampler(api_key=UPSAMPLER_KEY, callback_retry_delay=0.2)
        self.upsampler.set_behaviour(delay=0.5)
        self.config = {
            "SMI_ENV": "development",
            "SECRET_KEY": "chaos-secret-key",
            "DATABASE_URL": self.database_url,
            "STORAGE_DIR": str(self.workdir / "storage"),
            "REDIS_URL": self.redis.url,
            "PUBLIC_BASE_URL": self.web.url,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": self._smtp_controller.port,
            "ADMIN_EMAIL": "owner@example.com",
            "STRIPE_API_BASE": self.stripe.url,
            "STRIPE_SECRET_KEY": "sk_test_chaos",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "UPSCALER": "local",
            "UPSAMPLER_API_KEY": UPSAMPLER_KEY,
            "UPSAMPLER_API_BASE": self.upsampler.api_base,
            "UPSAMPLER_RESULT_HOSTS": ("127.0.0.1",),
            "UPSAMPLER_POLL_SECONDS": 1,
            "PROCESSING_TIMEOUT_MINUTES": PROCESSING_TIMEOUT_MINUTES,
            "CHECKOUT_RATE_LIMIT": "100000/minute",
            "MAINTENANCE_AT": "off",
        }

    def _prepare_database(self) -> None:
        from flask_migrate import upgrade

        self.app = create_app(self.config)
        with self.app.app_context():
            upgrade()
            if not self.database_url.startswith("sqlite"):
                empty_tables()

    def close(self) -> None:
        """Stop every loop, process and server this run started."""
        for loop in [*self.loops, *([self.monkey] if self.monkey else [])]:
            loop.stop()
        self.loops = []
        self.monkey = None
        self.workers.stop()
        self.web.close()
        if self.stripe is not None:
            self.stripe.stop()
        if self.upsampler is not None:
            self.upsampler.stop()
        if self._smtp_controller is not None:
            self._smtp_controller.stop()
            self._smtp_controller = None
        self.redis.stop()
        if self.app is not None:
            with self.app.app_context():
                db.engine.dispose()
            http_client = self.app.extensions.get("smi_stripe_http")
            if http_client is not None:
                http_client.close()
            self.app = None

    @contextmanager
    def context(self) -> Iterator[Flask]:
        """An app context on the run's database (its own session, for any thread)."""
        assert self.app is not None
        with self.app.app_context():
            yield self.app

    def _catalog(self) -> tuple[list[int], list[int]]:
        """Good originals of a few sizes, and a few that are not images at all."""
        with self.context() as app:
            post = make_post(title="Chaos")
            good = [make_attachment(app, post, width=w, height=h) for w, h in IMAGE_SIZES]
            broken = [make_attachment(app, post, width=120, height=90) for _ in range(2)]
            for attachment in broken:
                resolve(app, attachment.file_path).write_bytes(b"this is not an image any more")
            db.session.commit()
            return [a.id for a in good], [a.id for a in broken]

    def _start_shop(self, upscaler: str) -> None:
        self.config["UPSCALER"] = upscaler
        env = config_as_environment(self.config)
        self.web.start(env)
        self.workers.start(env, self.plan.workers)

    def _stop_shop(self) -> None:
        self.workers.stop()
        self.web.stop()

    # ------------------------------------------------------------------ the run

    def run(self) -> ChaosFigures:
        """Place the plan's orders under chaos, let everything settle, and count."""
        started = time.monotonic()
        good, broken = self._catalog()
        self._mark("servers and database")
        plan = self.plan
        phases = [
            ("local", plan.orders - plan.upsampler_orders),
            ("upsampler", plan.upsampler_orders),
        ]
        self.loops = [
            Loop("sweeper", SWEEP_PERIOD, self._sweep, self.errors),
            Loop("webhooks", plan.webhook_batch, self._shuffle_webhooks, self.errors),
            Loop("supervisor", 0.2, self._supervise, self.errors),
        ]
        for loop in self.loops:
            loop.start()
        phases = [(phase, count) for phase, count in phases if count > 0]
        number = 0
        for index, (phase, count) in enumerate(phases):
            self._start_shop(phase)
            self._mark(f"{phase}: shop started")
            self._start_monkey()
            orders = []
            for _ in range(count):
                number += 1
                broken_one = plan.broken_every > 0 and number % plan.broken_every == 0
                attachment_id = self.rng.choice(broken if broken_one else good)
                returning = self.rng.random() < plan.returning_share
                email = f"buyer-{number}@example.com"
                orders.append(Order(number, phase, email, attachment_id, broken_one, returning))
            self.orders += orders
            self._place_all(orders)
            self._mark(f"{phase}: orders placed")
            self._until_a_worker_was_killed()
            self._stop_monkey()
            if plan.drain_between_phases:
                self._wait_for_upscales(orders)
                self._mark(f"{phase}: upscales done")
            if index < len(phases) - 1:
                self._stop_shop()  # UPSCALER is one setting for all: the next phase restarts
        self._wait_until_settled()
        self._mark("settled")
        for loop in self.loops:
            loop.stop()
        self.loops = []
        assert self.stripe is not None
        self.stripe.dispatcher.release()
        figures = self._figures()
        figures.wall_seconds = time.monotonic() - started
        figures.timeline = self.timeline
        figures.waits = self.waits
        return figures

    def _place_all(self, orders: list[Order]) -> None:
        """Place orders `order_gap` apart, at most `buyers` at once."""
        with ThreadPoolExecutor(max_workers=self.plan.buyers) as pool:
            futures = []
            for order in orders:
                futures.append(pool.submit(self._place, order))
                time.sleep(self.plan.order_gap)
            for future in futures:
                future.result()

    def _place(self, order: Order) -> None:
        """Buy as a browser does (the image page, then Buy), pay at Stripe, and maybe come back."""
        assert self.stripe is not None
        with requests.Session() as http:
            answer = self._check_out(http, order)
            if answer is None:
                return
            order.session_id = answer.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
            with self.stripe.state.lock:
                order.job_id = self.stripe.state.sessions[order.session_id]["client_reference_id"]
            self.stripe.pay(order.session_id)
            order.paid = True
            if order.returning:
                try:
                    http.get(
                        f"{self.web.url}/orders/{order.job_id}",
                        params={"session_id": order.session_id},
                        allow_redirects=False,
                        timeout=30,
                    )
                except requests.RequestException:
                    pass  # the webhook pays it anyway

    def _check_out(self, http: requests.Session, order: Order) -> requests.Response | None:
        """The image page, then Buy, until the shop sends the buyer to Stripe (a 303); None if it
        never does (why is in `order.problem`)."""
        for attempt in range(1, CHECKOUT_TRIES + 1):
            order.checkout_tries = attempt
            try:
                page = http.get(f"{self.web.url}/images/{order.attachment_id}", timeout=30)
                token = CSRF.search(page.text)
                data = {
                    "attachment_id": str(order.attachment_id),
                    "resolution": "4x",
                    "email": order.email,
                    "csrf_token": token.group(1) if token else "",
                }
                answer = http.post(
                    f"{self.web.url}/checkout", data=data, allow_redirects=False, timeout=30
                )
            except requests.RequestException as exc:
                order.problem = f"checkout: {type(exc).__name__}"
            else:
                if answer.status_code == 303:
                    order.problem = ""
                    return answer
                order.problem = f"checkout answered {answer.status_code}"
            time.sleep(0.5)  # Stripe failing: the buyer tries again a little later
        return None

    # ------------------------------------------------------------------ faults

    def _start_monkey(self) -> None:
        now = time.monotonic()
        plan = self.plan
        # The first fault of each kind comes sooner than the gap: a short phase gets each one.
        self.next_fault = {
            kind: now + self.rng.uniform(0.2, 1.0) * gap[0]
            for kind, gap in (
                ("kill", plan.kill_gap),
                ("redis", plan.redis_gap),
                ("smtp", plan.smtp_gap),
                ("stripe", plan.stripe_gap),
            )
        }
        self.monkey = Loop("monkey", 0.05, self._strike, self.errors)
        self.monkey.start()

    def _until_a_worker_was_killed(self, timeout: float = 20.0) -> None:
        """Keep the monkey on past the orders until it has caught a worker mid-job once: on a
        busy machine the orders may all be placed before any horse was seen running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(
            kind.startswith("kill ") for kind in self.faults
        ):
            time.sleep(0.1)

    def _stop_monkey(self) -> None:
        if self.monkey is not None:
            self.monkey.stop()
            self.monkey = None

    def _supervise(self) -> None:
        """What systemd's Restart=always does: a worker that exited is started again."""
        self.recovery["workers that exited on their own"] += self.workers.supervise()

    def _strike(self) -> None:
        """One tick of the monkey: whatever fault is due."""
        busy = self.workers.watch()
        now = time.monotonic()
        plan = self.plan
        due = self.next_fault
        if now >= due["kill"] and self._kill_one(busy):
            due["kill"] = now + self.rng.uniform(*plan.kill_gap)
        if now >= due["redis"]:
            with self.redis_lock:
                self.redis.crash()
                time.sleep(plan.redis_down)
                self.redis.start()
            self.faults["redis restarted empty"] += 1
            due["redis"] = time.monotonic() + self.rng.uniform(*plan.redis_gap)
        # SMTP and Stripe are armed anew only once the last refusals are used up, so that the
        # count of refusals served is exact (the sink only counts down from a positive number).
        assert self.smtp is not None and self.stripe is not None
        if now >= due["smtp"] and self.smtp.refuse_next == 0:
            refusals = self.rng.randint(*plan.smtp_refusals)
            self.smtp.refuse_next = refusals
            self.smtp_armed += refusals
            due["smtp"] = now + self.rng.uniform(*plan.smtp_gap)
        if now >= due["stripe"] and self.stripe.state.failure is None:
            failures = self.rng.randint(*plan.stripe_failures)
            self.stripe.fail_next(500, count=failures)
            self.stripe_armed += failures
            due["stripe"] = now + self.rng.uniform(*plan.stripe_gap)

    def _kill_one(self, busy: list[tuple[WorkerProcess, Proc]]) -> bool:
        """SIGKILL a worker in the middle of a job, one of three ways; False if none is busy."""
        if not busy:
            return False
        worker, horse = self.rng.choice(busy)
        mode = self.rng.choices(KILL_MODES, weights=KILL_WEIGHTS)[0]
        task = self._task_of(worker.process.pid)
        self.kills.append(f"{time.strftime('%H:%M:%S')} worker-{worker.number} {mode} ({task})")
        self.workers.crash(worker, horse, mode)
        self.faults[f"kill {mode}"] += 1
        self.recovery[f"killed during {task}"] += 1
        return True

    def _task_of(self, pid: int) -> str:
        """The RQ function the worker `pid` is running, as RQ says."""
        try:
            connection = Redis.from_url(self.redis.url, socket_timeout=1)
            try:
                for worker in Worker.all(connection=connection):
                    if worker.pid == pid:
                        job = worker.get_current_job()
                        return (job.func_name or "?").rsplit(".", 1)[-1] if job else "no job yet"
            finally:
                connection.close()
        except Exception as exc:  # Redis restarting: the kill goes on regardless
            return f"unknown ({type(exc).__name__})"
        return "unknown"

    def _shuffle_webhooks(self) -> None:
        """Deliver every webhook twice and out of order: each new event is sent again, then all
        held deliveries go out in a shuffled order."""
        assert self.stripe is not None
        with self.stripe.state.lock:
            new = [event_id for event_id in self.stripe.state.events if event_id not in self.resent]
        for event_id in new:
            self.stripe.resend(event_id)
            self.resent.add(event_id)
        if self.stripe.dispatcher.held():
            self.released_batches += 1
            self.stripe.dispatcher.release(self.rng.randrange(1 << 30), keep_holding=True)

    # ------------------------------------------------------------------ recovery

    def _sweep(self) -> None:
        """The sweeper, its clock SWEEP_LEAD ahead; then RQ's maintenance, sooner than RQ's."""
        with self.context():
            report = sweep(now=utcnow() + SWEEP_LEAD)
        for kind, items in vars(report).items():
            if items:
                self.recovery[f"sweeper {kind}"] += len(items)
        with self.redis_lock:
            self._rq_maintenance()

    def _rq_maintenance(self) -> None:
        """What RQ's maintenance does, sooner: retry the jobs of dead workers, and run the
        scheduler when none is alive."""
        connection = Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            self._retry_jobs_of_dead_workers(connection)
            self._schedule_without_a_scheduler(connection)
        finally:
            connection.close()

    def _retry_jobs_of_dead_workers(self, connection: Redis) -> None:
        """See `retry_jobs_of`; here for the workers that died and left no horse running."""
        retried = retry_jobs_of(connection, self.workers.dead_names())
        if retried:
            self.recovery["rq jobs of dead workers retried"] += retried

    def _schedule_without_a_scheduler(self, connection: Redis) -> None:
        """RQ's scheduler runs in one worker, under a lock good for 61 s; when that worker dies,
        another starts a scheduler only in its maintenance, every ten minutes. Here a dead
        scheduler's lock runs out at once, and one pass of a scheduler runs while none holds it."""
        for name in QUEUES:
            holder = connection.get(RQScheduler.get_locking_key(name))
            if holder is None:
                continue
            pid = connection.hget(SCHEDULER_KEY_TEMPLATE % as_text(holder), "pid")
            if pid is not None and proc_of(int(pid)) is None:
                connection.delete(RQScheduler.get_locking_key(name))
        scheduler = RQScheduler(list(QUEUES), connection=connection)
        try:
            if scheduler.acquire_locks():
                try:
                    scheduler.enqueue_scheduled_jobs()
                finally:
                    scheduler.release_locks()
                self.recovery["rq scheduler passes with no scheduler alive"] += 1
        finally:
            scheduler.connection.close()

    # ------------------------------------------------------------------ waiting

    def _wait_for_upscales(self, orders: list[Order]) -> None:
        """Wait until no order of this phase waits for payment or an upscale."""
        job_ids = [order.job_id for order in orders if order.paid and order.job_id]
        deadline = time.monotonic() + self.plan.phase_timeout
        while time.monotonic() < deadline:
            with self.context():
                waiting = db.session.scalar(
                    select(func.count(Job.id)).where(
                        Job.job_id.in_(job_ids),
                        Job.status.in_(["awaiting_payment", "pending", "processing"]),
                    )
                )
            if not waiting:
                return
            time.sleep(0.25)

    def _unsettled(self) -> str:
        """What is still on its way ('' when nothing is): jobs, emails, webhooks, RQ jobs."""
        assert self.stripe is not None
        job_ids = [order.job_id for order in self.orders if order.paid and order.job_id]
        with self.context():
            db.session.expire_all()
            jobs = db.session.scalars(select(Job).where(Job.job_id.in_(job_ids))).all()
            open_jobs = [
                f"{job.job_id} {job.status}/{job.payment_status}/mail {job.email_sent}"
                for job in jobs
                if not (job.status == "completed" and job.email_sent)
                and not (job.status == "failed" and job.payment_status == "refunded")
            ]
            unsent = db.session.scalar(
                select(func.count(EmailOutbox.id)).where(EmailOutbox.finished_at.is_(None))
            )
        if len(jobs) < len(job_ids):
            return f"{len(job_ids) - len(jobs)} paid orders have no job"
        if open_jobs:
            first = open_jobs[0].split()[0]
            return f"{len(open_jobs)} jobs not finished: {open_jobs[0]}; rq {self._rq_about(first)}"
        if unsent:
            with self.context():
                row = db.session.scalars(
                    select(EmailOutbox).where(EmailOutbox.finished_at.is_(None))
                ).first()
            about = (
                f"{row.kind} of {row.job_id}, row {row.id}, handed {row.handovers} times; "
                f"rq {self._rq_about(row.job_id)}"
                if row is not None
                else ""
            )
            return f"{unsent} emails not sent: {about}"
        if not self.stripe.wait_idle(0) or self.stripe.dispatcher.held():
            return "webhooks on their way"
        live = self._live_rq_jobs()
        if live:
            return f"{len(live)} RQ jobs still to run: {live[:3]}"
        return ""

    def _rq_about(self, job_id: str) -> list[str]:
        """The RQ jobs about a shop job, with their states (for the reason a run waits)."""
        connection = Redis.from_url(self.redis.url)
        try:
            prefix = RQJob.redis_job_namespace_prefix
            ids = [key.decode().removeprefix(prefix) for key in connection.scan_iter(f"{prefix}*")]
            ids = [i for i in ids if ":" not in i and job_id in i]
            jobs = RQJob.fetch_many(ids, connection=connection)
            return [f"{job.id.split(job_id)[0]} {job.get_status()}" for job in jobs if job]
        finally:
            connection.close()

    def _live_rq_jobs(self) -> list[str]:
        """Ids of RQ jobs not ended yet, the periodic ones aside."""
        connection = Redis.from_url(self.redis.url)
        try:
            prefix = RQJob.redis_job_namespace_prefix
            ids = [key.decode().removeprefix(prefix) for key in connection.scan_iter(f"{prefix}*")]
            ids = [i for i in ids if ":" not in i and not i.startswith(PERIODIC_RQ_JOBS)]
            jobs = RQJob.fetch_many(ids, connection=connection)
            ended = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
            return [job.id for job in jobs if job is not None and job.get_status() not in ended]
        finally:
            connection.close()

    def _wait_until_settled(self) -> None:
        """Wait until nothing is on its way; note each reason it waited for, and how long."""
        started = time.monotonic()
        deadline = started + self.plan.settle_timeout
        self.settled, since = "", started
        while time.monotonic() < deadline:
            try:
                reason = self._unsettled()
            except Exception as exc:  # a Redis hiccup: ask again
                reason = type(exc).__name__
            if reason.split(":")[0] != self.settled.split(":")[0]:
                if self.settled:
                    self.waits.append((self.settled, time.monotonic() - since))
                since = time.monotonic()
            self.settled = reason
            if not reason:
                return
            time.sleep(0.5)
        self.waits.append((self.settled, time.monotonic() - since))

    # ------------------------------------------------------------------ counting

    def _figures(self) -> ChaosFigures:
        assert self.stripe is not None and self.smtp is not None
        figures = ChaosFigures(faults=self._fault_counts(), recovery=self.recovery + self.errors)
        paid = [order for order in self.orders if order.paid]
        figures.orders = len(paid)
        figures.orders_by_phase = Counter(order.phase for order in paid)
        figures.not_placed = len(self.orders) - len(paid)
        figures.problems += [
            f"order {o.number} not placed: {o.problem}" for o in self.orders if not o.paid
        ]
        pressed_again = sum(order.checkout_tries > 1 for order in self.orders)
        if pressed_again:
            figures.recovery["buyers who pressed Buy again (Stripe 500)"] = pressed_again
        mails = self._mails_by_buyer()
        refunds = self._refunds_by_intent()
        figures.refunds = sum(len(found) for found in refunds.values())
        figures.ready_mails = sum(kinds["ready"] for kinds in mails.values())
        figures.resent_mails = self.resent_mails
        figures.failed_mails = sum(kinds["failed"] for kinds in mails.values())
        figures.paid_mails = sum(kinds["paid"] for kinds in mails.values())
        figures.doubled_mails = Counter(
            kind for order in paid for kind, count in mails[order.email].items() if count > 1
        )
        with self.context():
            for order in paid:
                self._judge(order, figures, mails[order.email], refunds)
        if figures.refunds != figures.failed_refunded:
            figures.problems.append(
                f"{figures.refunds} refunds at Stripe for {figures.failed_refunded} failed orders"
            )
        if self.settled:
            figures.problems.append(f"not settled at the end: {self.settled}")
        return figures

    def _fault_counts(self) -> Counter[str]:
        assert self.stripe is not None and self.smtp is not None
        faults = Counter(self.faults)
        with self.stripe.state.lock:
            left = self.stripe.state.failure.remaining if self.stripe.state.failure else 0
        faults["stripe answered 500"] = self.stripe_armed - left
        faults["smtp refused a mail"] = self.smtp_armed - self.smtp.refuse_next
        faults["webhooks sent twice"] = len(self.resent)
        faults["shuffled webhook batches"] = self.released_batches
        return +faults

    def _judge(
        self,
        order: Order,
        figures: ChaosFigures,
        mails: Counter[str],
        refunds: dict[str, list[int]],
    ) -> None:
        """Count one paid order, and note each promise it broke."""
        job = db.session.scalars(select(Job).where(Job.job_id == order.job_id)).one_or_none()
        name = f"order {order.number} ({order.phase}, job {order.job_id})"
        if job is None:
            figures.lost.append(f"{name}: no job")
            return
        completions = (
            db.session.scalar(
                select(func.count(JobEvent.id)).where(
                    JobEvent.job_id == job.job_id, JobEvent.kind == "completed"
                )
            )
            or 0
        )
        if completions > 1:
            figures.duplicate_completions += 1
            figures.problems.append(f"{name} completed {completions} times")
        if job.attempts > 1:
            figures.upscales_retried += 1
        charged = to_minor_units(job.amount_charged or Decimal(0), job.currency)
        refunded = refunds.get(job.stripe_payment_intent_id or "", [])
        if job.status == "completed" and job.payment_status == "paid":
            figures.completed += 1
            expected = {"ready": 1, "failed": 0}
            if order.broken:
                figures.problems.append(f"{name}: a broken original was delivered")
            delivered = self._delivered_size(job)
            if delivered != (4 * (job.image_width or 0), 4 * (job.image_height or 0)):
                figures.problems.append(f"{name}: the file delivered is {delivered}")
            if refunded:
                figures.problems.append(f"{name}: completed, yet refunded {refunded}")
        elif job.status == "failed" and job.payment_status == "refunded":
            figures.failed_refunded += 1
            figures.refunded_good_orders += not order.broken
            expected = {"ready": 0, "failed": 1}
            if refunded != [charged]:
                figures.problems.append(f"{name}: refunds {refunded} for a charge of {charged}")
        else:
            figures.lost.append(f"{name}: {job.status}/{job.payment_status}")
            return
        for kind, count in expected.items():
            if mails[kind] != count:
                figures.problems.append(f"{name}: {mails[kind]} {kind} mails, not {count}")

    def _delivered_size(self, job: Job) -> tuple[int, int] | None:
        """The pixel size of a completed job's file, or None when it is not there."""
        assert self.app is not None
        path = resolve(self.app, job.upscaled_file_path or "")
        if not job.upscaled_file_path or not path.is_file():
            return None
        with Image.open(path) as image:
            return image.size

    def _mails_by_buyer(self) -> dict[str, Counter[str]]:
        """Each recipient's mails, counted by kind (known by subject), a message sent again after a
        crash (the same Message-ID, which mail clients show once) counted once."""
        assert self.smtp is not None
        kinds = {str(spec.subject): kind for kind, spec in KINDS.items()}
        found: defaultdict[str, Counter[str]] = defaultdict(Counter)
        seen: set[str] = set()
        message: EmailMessage
        for message in list(self.smtp.messages):
            message_id = str(message["Message-ID"])
            if message_id in seen:
                self.resent_mails += 1
                continue
            seen.add(message_id)
            found[str(message["To"])][kinds.get(str(message["Subject"]), "other")] += 1
        return found

    def _refunds_by_intent(self) -> dict[str, list[int]]:
        """The amounts refunded at Stripe, by PaymentIntent."""
        assert self.stripe is not None
        found: dict[str, list[int]] = {}
        with self.stripe.state.lock:
            for refund in self.stripe.state.refunds.values():
                found.setdefault(str(refund["payment_intent"]), []).append(int(refund["amount"]))
        return found

    def diagnostics(self) -> str:
        """The kills, the horses left running, and where the logs are, for a failure message."""
        horses = [
            f"worker-{worker.number}: {horse.pid}"
            for worker in self.workers.every
            for horse in worker.horses
            if horse.alive()
        ]
        return "\n".join(
            [
                "--- kills",
                *self.kills,
                f"--- horses still running: {horses or 'none'}",
                f"--- logs of gunicorn and of each worker in {self.workdir}",
            ]
        )


def retry_jobs_of(connection: Redis, dead_workers: set[str]) -> int:
    """What RQ does with the jobs a dead worker was running once its heartbeat for them runs out
    (90 s later, seen by a worker's maintenance, which runs every ten minutes), done at once:
    each is retried if it has retries left, else failed. Returns how many there were."""
    retried = 0
    for name in QUEUES:
        registry = StartedJobRegistry(name, connection=connection)
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            execution = Execution(execution_id, job_id, connection=connection)
            owner = connection.hget(execution.key, "worker_name")
            if owner is not None and as_text(owner) in dead_workers:
                connection.zadd(registry.key, {execution.composite_key: 0})
        abandoned = registry.get_expired_job_ids()
        if abandoned:
            registry.cleanup()
            retried += len(abandoned)
    return retried


def run_chaos(workdir: Path, plan: ChaosPlan, database_url: str = "") -> ChaosFigures:
    """Run `plan` in `workdir` and return the figures; every process is stopped afterwards."""
    with Chaos(workdir, plan, database_url) as chaos:
        return chaos.run()
