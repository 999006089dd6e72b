"""The periodic work: the sweeper and the daily maintenance run once per slot, whether
`python -m worker.cron` (or `rq cron worker.cron`) or `python -m worker` triggers them, however
many of either run, and after Redis restarts."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq import Queue, SimpleWorker
from rq.cron import CronScheduler
from rq.job import Job
from rq.registry import FinishedJobRegistry, ScheduledJobRegistry
from sqlalchemy import func, select

from storefront.extensions import db
from storefront.models import AdminAction
from tests.chaos_harness import RedisServer
from tests.conftest import WorkerProcess, wait_until
from worker.context import use_app
from worker.schedule import maintenance_cron, maintenance_slot_key, next_run, sweep_slot_key
from worker.tasks import run_maintenance, sweep

RQ = (sys.executable, "-m", "rq.cli")  # the `rq` command, run from this checkout
PLAIN_WORKER = (*RQ, "worker", "--with-scheduler", "upscale", "default")
RQ_CRON = (*RQ, "cron", "worker.cron")
CRON = (sys.executable, "-m", "worker.cron")  # RQ's cron, waiting out Redis's absence
INTERVAL = 5  # the smallest SWEEP_INTERVAL_SECONDS allowed
SWEPT = re.compile(r"swept smi:slot:sweep:(\d+): ")
SKIPPED = re.compile(r"skipped: smi:slot:sweep:(\d+) was taken")


@dataclass
class SweepRuns:
    """What the finished `worker.tasks.sweep` jobs in a Redis did."""

    slots: Counter[int]  # runs that swept, by slot
    skipped: int  # runs that found their slot taken
    jobs: dict[str, Job]  # the runs that swept, by the slot key they claimed

    def consecutive(self) -> bool:
        """Whether the swept slots follow one another without a gap."""
        return max(self.slots) - min(self.slots) + 1 == len(self.slots)


def sweep_runs(redis_url: str) -> SweepRuns:
    """The finished sweeps in the `default` queue's registry, read from their return values."""
    connection = Redis.from_url(redis_url)
    try:
        registry = FinishedJobRegistry(queue=Queue("default", connection=connection))
        jobs = [j for j in Job.fetch_many(registry.get_job_ids(), connection=connection) if j]
        runs = SweepRuns(Counter(), 0, {})
        for job in jobs:
            if job.func_name != "worker.tasks.sweep":
                continue
            result = str(job.return_value())
            if swept := SWEPT.match(result):
                runs.slots[int(swept.group(1))] += 1
                runs.jobs[f"smi:slot:sweep:{swept.group(1)}"] = job
            elif SKIPPED.match(result):
                runs.skipped += 1
        return runs
    finally:
        connection.close()


def slot_claims(redis_url: str, kind: str) -> dict[str, str]:
    """The claims of one kind (`sweep`, `maintenance`) in Redis: key, and the RQ job holding it."""
    connection = Redis.from_url(redis_url, decode_responses=True)
    try:
        return {key: str(connection.get(key)) for key in connection.scan_iter(f"smi:slot:{kind}:*")}
    finally:
        connection.close()


def worker_waits_on_its_queues(redis_url: str) -> bool:
    """Whether an RQ worker is blocked in BLPOP on its queues: the one step of RQ's worker loop
    that waits out a lost Redis (a Redis error anywhere else stops the worker; its unit restarts
    it in production)."""
    connection = Redis.from_url(redis_url)
    try:
        clients = connection.client_list()
        return any(c["cmd"] == "blpop" and "b" in c["flags"] for c in clients)
    finally:
        connection.close()


def assert_alive(*processes: WorkerProcess) -> None:
    """Each process still runs (none was restarted or died)."""
    for process in processes:
        assert process.process.poll() is None, process.log()


# The claims, in-process --------------------------------------------------------------------


def test_slot_keys_name_the_interval_and_the_nearest_day() -> None:
    at = dt.datetime(2026, 5, 1, 10, 0, 2, tzinfo=dt.UTC)
    assert sweep_slot_key(300, at) == f"smi:slot:sweep:{int(at.timestamp()) // 300}"
    assert sweep_slot_key(300, at + dt.timedelta(seconds=297)) == sweep_slot_key(300, at)
    assert sweep_slot_key(300, at + dt.timedelta(seconds=298)) != sweep_slot_key(300, at)
    # A run a little late or early claims the day of the run it was meant to be, even at midnight.
    late = dt.datetime(2026, 5, 2, 0, 3, tzinfo=dt.UTC)
    early = dt.datetime(2026, 5, 1, 23, 58, tzinfo=dt.UTC)
    assert maintenance_slot_key("23:59", late) == "smi:slot:maintenance:2026-05-01"
    assert maintenance_slot_key("00:01", early) == "smi:slot:maintenance:2026-05-02"
    assert maintenance_slot_key("03:30", at) == "smi:slot:maintenance:2026-05-01"


def test_maintenance_cron_is_its_utc_time_in_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = dt.datetime(2026, 5, 1, 10, 0, tzinfo=dt.UTC)
    with monkeypatch.context() as patched:
        patched.setenv("TZ", "UTC")
        time.tzset()
        assert maintenance_cron("03:30", now) == "30 3 * * *"
        patched.setenv("TZ", "SMI-5:30")  # POSIX for UTC+05:30
        time.tzset()
        assert maintenance_cron("03:30", now) == "0 9 * * *"
        assert maintenance_cron("20:15", now) == "45 1 * * *"
    time.tzset()


def test_a_second_sweep_in_the_same_slot_returns_at_once(
    app: Flask, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app.config["SWEEP_INTERVAL_SECONDS"] = 86400  # both calls fall in one slot
    use_app(app)
    try:
        first = sweep()
        second = sweep()
    finally:
        use_app(None)
    key = sweep_slot_key(86400)
    assert first.startswith(f"swept {key}: queued 0")
    assert second == f"skipped: {key} was taken"
    assert f"{key}: slot taken by another run, skipped" in caplog.text
    assert set(slot_claims(redis_url, "sweep")) == {key}


def test_the_days_maintenance_runs_once_however_often_it_is_triggered(
    app: Flask, redis_url: str
) -> None:
    use_app(app)
    try:
        summaries = [run_maintenance() for _ in range(3)]
    finally:
        use_app(None)
    key = maintenance_slot_key(app.config["MAINTENANCE_AT"])
    assert "expired files (did)" in summaries[0]
    assert summaries[1:] == [f"skipped: {key} was taken"] * 2
    runs = select(func.count()).select_from(AdminAction).where(AdminAction.action == "maintenance")
    assert db.session.scalar(runs) == 1
    assert set(slot_claims(redis_url, "maintenance")) == {key}
    # Called outside `rq cron`, each run keeps `python -m worker`'s schedule going: one next run.
    registry = ScheduledJobRegistry(queue=Queue("default", connection=Redis.from_url(redis_url)))
    assert registry.get_job_ids() == [f"maintenance-{next_run('03:30'):%Y-%m-%d}"]


def test_a_run_that_starts_late_claims_the_slot_it_was_triggered_in(
    app: Flask, redis_url: str
) -> None:
    app.config["SWEEP_INTERVAL_SECONDS"] = 60
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    late = queue.enqueue(sweep, job_id="late")
    triggered = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)  # a slot ago: a busy worker
    late.enqueued_at = triggered
    late.save()
    use_app(app)
    try:
        SimpleWorker([queue], connection=connection).work(burst=True)
        on_time = queue.enqueue(sweep, job_id="on-time")
        SimpleWorker([queue], connection=connection).work(burst=True)
    finally:
        use_app(None)
    key = sweep_slot_key(60, triggered)
    assert str(late.return_value()).startswith(f"swept {key}: ")
    # The trigger of the slot it started in still sweeps: its slot was not taken.
    assert str(on_time.return_value()).startswith("swept smi:slot:sweep:")
    assert set(slot_claims(redis_url, "sweep")) == {key, sweep_slot_key(60, on_time.enqueued_at)}
    assert len(slot_claims(redis_url, "sweep")) == 2
    connection.close()


def test_a_failed_run_gives_its_slot_back(
    app: Flask, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storefront.jobs import recovery

    def database_gone(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database gone")

    app.config["SWEEP_INTERVAL_SECONDS"] = 86400
    use_app(app)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(recovery, "sweep", database_gone)
            with pytest.raises(RuntimeError, match="database gone"):
                sweep()
            assert slot_claims(redis_url, "sweep") == {}
        assert sweep().startswith("swept ")  # the next trigger in the slot does the work
    finally:
        use_app(None)


# Real processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_plain_rq_workers_and_two_crons_sweep_once_per_slot(
    start_worker: Callable[..., WorkerProcess],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = {"SWEEP_INTERVAL_SECONDS": INTERVAL, "MAINTENANCE_AT": "03:30"}
    worker = start_worker(*PLAIN_WORKER, **settings)
    crons = []
    # Ours and RQ's own command; the second runs in UTC+05:30.
    for command, zone in ((CRON, "UTC"), (RQ_CRON, "SMI-5:30")):
        with monkeypatch.context() as patched:
            patched.setenv("TZ", zone)
            crons.append(start_worker(*command, **settings))

    runs = wait_until(lambda: (r := sweep_runs(redis_url)) and len(r.slots) >= 3 and r, timeout=30)
    assert set(runs.slots.values()) == {1}, runs.slots  # one run per slot
    assert runs.consecutive(), runs.slots
    assert runs.skipped >= 1  # the other cron's sweeps came, and were turned away
    # Each claim still alive (they expire after two slots) is held by the run that swept.
    claims = slot_claims(redis_url, "sweep")
    assert f"smi:slot:sweep:{max(runs.slots)}" in claims
    assert all(runs.jobs[key].id == job_id for key, job_id in claims.items() if key in runs.jobs)
    assert all(job.meta.get("smi_trigger") == "rq cron" for job in runs.jobs.values())

    # Each cron registered the day's maintenance for 03:30 UTC, in its own local time.
    connection = Redis.from_url(redis_url)
    schedulers = CronScheduler.all(connection)
    connection.close()
    maintenance = [
        job
        for scheduler in schedulers
        for job in scheduler.get_jobs()
        if job.func_name == "worker.tasks.run_maintenance"
    ]
    assert sorted(job.cron or "" for job in maintenance) == ["0 9 * * *", "30 3 * * *"]
    assert {job.next_enqueue_time for job in maintenance} == {next_run("03:30")}
    assert_alive(worker, *crons)


@pytest.mark.slow
def test_python_m_worker_alone_still_sweeps(
    start_worker: Callable[..., WorkerProcess], redis_url: str
) -> None:
    worker = start_worker(SWEEP_INTERVAL_SECONDS=INTERVAL, MAINTENANCE_AT="off")
    runs = wait_until(lambda: (r := sweep_runs(redis_url)) and len(r.slots) >= 2 and r, timeout=20)
    assert set(runs.slots.values()) == {1} and runs.consecutive(), runs.slots
    # Its own schedule: each run was the RQ job named after its slot, and scheduled the next.
    assert sorted(job.id for job in runs.jobs.values()) == [
        f"sweep-{n}" for n in sorted(runs.slots)
    ]
    assert_alive(worker)


@pytest.mark.slow
def test_after_redis_restarts_cron_puts_the_sweep_back(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        settings = {"REDIS_URL": redis.url, "SWEEP_INTERVAL_SECONDS": INTERVAL}
        worker = start_worker(*PLAIN_WORKER, **settings)
        cron = start_worker(*CRON, **settings)
        wait_until(
            lambda: sweep_runs(redis.url).slots and worker_waits_on_its_queues(redis.url),
            timeout=30,
        )

        redis.crash()  # no persistence: the restarted Redis is empty
        # Redis stays away until the cron has failed to reach it after redis-py's retries: the
        # moment `rq cron` exits at.
        wait_until(lambda: "cron: Redis unreachable (ConnectionError" in cron.log(), timeout=30)
        assert_alive(cron)
        redis.start()
        assert sweep_runs(redis.url).slots == Counter()
        runs = wait_until(
            lambda: (r := sweep_runs(redis.url)) and len(r.slots) >= 2 and r, timeout=60
        )
        assert set(runs.slots.values()) == {1} and runs.consecutive(), runs.slots
        assert_alive(worker, cron)  # neither was restarted
        assert "cron: Redis answers again after" in cron.log()

        # Told to stop while Redis is away, it stops at once and cleanly.
        redis.crash()
        cron.process.terminate()
        assert cron.process.wait(timeout=20) == 0, cron.log()
        assert "cron: SIGTERM, stopping" in cron.log()
    finally:
        redis.stop()
