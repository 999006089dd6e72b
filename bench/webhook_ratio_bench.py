"""The webhook burst against its floor, alternately in one run: the shop's /webhooks/stripe, then a
bare Flask route that only verifies the signature (`bench/webhook_floor.py`), under the same
gunicorn settings.

    .venv/bin/python bench/webhook_ratio_bench.py [--pairs 5] [--deliveries 1000] [--concurrency 50]
                                                  [--workers 4] [--seed 1]
                                                  [--database sqlite|postgresql]

It sets up what `webhook_bench.py` does (a fresh SQLite database, its own `redis-server`, gunicorn
`-k gthread --threads 4` on free loopback ports) plus the floor's gunicorn. With `--database
postgresql` the shop's database is instead a new one in a throwaway PostgreSQL cluster on a unix
socket (as scripts/test.sh starts one; fsync on, so a commit waits for the disk as in production),
built by the migrations; PostgreSQL must be installed (scripts/setup.sh test). Each pair seeds a new
batch of jobs awaiting payment (four fifths of `--deliveries`), POSTs their signed
`checkout.session.completed` events plus a fifth of duplicates, shuffled, from `--concurrency`
threads to the shop (A), re-sends what was not 2xx as Stripe would, checks that every job of every
batch so far is paid once, has its `stripe_events` row, one upscale and one "paid" email queued;
then POSTs the same deliveries, freshly signed, to the floor (B). A warm-up of 50 sessions goes to
both first and is not timed.

Printed: each pair's deliveries per second (shop, floor) and their ratio; the median ratio with its
min–max; each server's peak memory (the largest VmHWM of its gunicorn processes, and their sum);
the load average before and after (the machine is shared: ratios measured in one run are what
counts). The exit status is 0 when every check of every pair passed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.processes import ThrowawayPostgres, free_port, stop  # noqa: E402
from bench.webhook_bench import (  # noqa: E402
    GUNICORN_THREADS,
    RETRY_PAUSE_SECONDS,
    RETRY_ROUNDS,
    VENV_BIN,
    Delivery,
    Sale,
    app_settings,
    build_deliveries,
    child_env,
    count_results,
    seed_sales,
    send_round,
    start_redis,
    upgrade_schema,
    wait_until,
)

WARM_UP_SESSIONS = 50


def start_gunicorn(
    app: str, port: int, workers: int, settings: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """gunicorn serving `app` on 127.0.0.1:`port`, with the settings both servers share."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-k", "gthread"]
        + ["--threads", str(GUNICORN_THREADS), "-b", f"127.0.0.1:{port}", app],
        cwd=ROOT,
        env=child_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, app, process
        )
    except BaseException as exc:
        stop(process)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{exc}; its log ends:\n{tail}") from exc
    return process


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants that are running now."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue  # ended meanwhile
        found.append(current)
        pending.extend(int(child) for child in children)
    return found


def peak_memory_kib(pid: int) -> tuple[int, int]:
    """The largest VmHWM (peak RSS) among `pid` and its descendants, and their sum, in KiB."""
    peaks: list[int] = []
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]))
    return (max(peaks, default=0), sum(peaks))


def cpu_seconds(*roots: int) -> float:
    """CPU time (user + system) used so far by the roots and their descendants, those that
    ended included (as far as their parents waited for them)."""
    total = 0
    for root in roots:
        for current in process_tree(root):
            try:
                fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime, stime, cutime, cstime: fields 14-17 of proc(5), the state being field 3.
            total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def deliver_to_shop(
    url: str, deliveries: list[Delivery], concurrency: int
) -> tuple[float, str, int]:
    """The timed pass, then Stripe's re-sending of what failed; the rate, a note, and how many
    deliveries were still not 2xx at the end."""
    answers, wall = send_round(url, deliveries, concurrency)
    failed = [answer.delivery for answer in answers if not answer.ok]
    note = f"{len(failed)} not 2xx" if failed else "all 2xx"
    rounds = 0
    while failed and rounds < RETRY_ROUNDS:
        rounds += 1
        time.sleep(RETRY_PAUSE_SECONDS)
        retried, _ = send_round(url, failed, concurrency)
        failed = [answer.delivery for answer in retried if not answer.ok]
    if rounds:
        note += f", {len(failed)} after {rounds} re-sends"
    return len(answers) / wall, note, len(failed)


def deliver_to_floor(url: str, deliveries: list[Delivery], concurrency: int) -> float:
    """The timed pass to the floor, every answer 200."""
    answers, wall = send_round(url, deliveries, concurrency)
    refused = [answer for answer in answers if not answer.ok]
    if refused:
        raise RuntimeError(f"the floor refused {len(refused)} deliveries: {refused[0]}")
    return len(answers) / wall


def run(args: argparse.Namespace, scratch: Path) -> bool:
    """Both servers, the pairs, the summary; True when every check passed."""
    duplicates = args.deliveries // 5
    distinct = args.deliveries - duplicates
    redis_port, shop_port, floor_port = free_port(), free_port(), free_port()
    settings = app_settings(
        scratch,
        f"sqlite:///{scratch / 'bench.db'}",
        f"redis://127.0.0.1:{redis_port}/0",
        shop_port,
    )
    shop_url = f"http://127.0.0.1:{shop_port}/webhooks/stripe"
    floor_url = f"http://127.0.0.1:{floor_port}/webhooks/stripe"
    rng = random.Random(args.seed)
    processes: list[subprocess.Popen[bytes]] = []
    load_before = os.getloadavg()
    postgres: ThrowawayPostgres | None = None
    try:
        if args.database == "postgresql":
            postgres = ThrowawayPostgres("smi-webhook-pg-", durable=True).start()
            settings["DATABASE_URL"] = postgres.create_database("webhook_bench")
        upgrade_schema(settings)
        redis = start_redis(scratch, redis_port)
        processes.append(redis)
        services = [redis.pid] + ([postgres.postmaster_pid()] if postgres is not None else [])
        shop = start_gunicorn("wsgi:app", shop_port, args.workers, settings, scratch / "shop.log")
        processes.append(shop)
        floor = start_gunicorn(
            "bench.webhook_floor:app", floor_port, args.workers, settings, scratch / "floor.log"
        )
        processes.append(floor)

        sales: list[Sale] = seed_sales(settings, WARM_UP_SESSIONS)
        warm_up = build_deliveries(sales, 0, rng)
        deliver_to_shop(shop_url, warm_up, args.concurrency)
        deliver_to_floor(floor_url, warm_up, args.concurrency)

        print(
            f"{args.pairs} pairs of {args.deliveries} deliveries ({distinct} distinct events, "
            f"{duplicates} duplicates) from {args.concurrency} senders; gunicorn {args.workers} "
            f"workers x {GUNICORN_THREADS} threads each; {args.database}; "
            f"load average {load_before[0]:.2f}",
            flush=True,
        )
        print(
            f"{'pair':<6}{'shop/s':>9}{'floor/s':>10}{'ratio':>8}{'CPU ms/delivery: shop':>23}"
            f"{'+ services':>11}{'floor':>7}  shop answers, checks"
        )
        ratios: list[float] = []
        cpu_rows: list[tuple[float, float, float]] = []
        all_passed = True
        for pair in range(1, args.pairs + 1):
            batch = seed_sales(settings, distinct, first=len(sales) + 1)
            sales += batch
            deliveries = build_deliveries(batch, duplicates, rng)
            shop_cpu, services_cpu = cpu_seconds(shop.pid), cpu_seconds(*services)
            shop_rate, note, unresolved = deliver_to_shop(shop_url, deliveries, args.concurrency)
            shop_cpu, services_cpu = (
                cpu_seconds(shop.pid) - shop_cpu,
                cpu_seconds(*services) - services_cpu,
            )
            checks = count_results(settings, sales)
            wrong = [f"{c.name} {c.found}/{c.expected}" for c in checks if not c.passed]
            floor_cpu = cpu_seconds(floor.pid)
            floor_rate = deliver_to_floor(floor_url, deliveries, args.concurrency)
            floor_cpu = cpu_seconds(floor.pid) - floor_cpu
            ratios.append(shop_rate / floor_rate)
            cpu_rows.append(
                tuple(1000 * s / len(deliveries) for s in (shop_cpu, services_cpu, floor_cpu))  # type: ignore[misc]
            )
            verdict = "all correct" if not wrong else "WRONG: " + "; ".join(wrong)
            print(
                f"{pair:<6}{shop_rate:>9.1f}{floor_rate:>10.1f}{ratios[-1]:>8.3f}"
                f"{cpu_rows[-1][0]:>23.1f}{cpu_rows[-1][1]:>11.1f}{cpu_rows[-1][2]:>7.1f}  "
                f"{note}; {verdict}",
                flush=True,
            )
            all_passed = all_passed and not wrong and not unresolved
        shop_peak, shop_sum = peak_memory_kib(shop.pid)
        floor_peak, floor_sum = peak_memory_kib(floor.pid)
        load_after = os.getloadavg()
        print(
            f"ratio shop/floor      median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
        medians = [statistics.median(row[i] for row in cpu_rows) for i in range(3)]
        print(
            f"CPU ms per delivery   median shop {medians[0]:.1f} + services (Redis"
            f"{', PostgreSQL' if postgres is not None else ''}) {medians[1]:.1f}, "
            f"floor {medians[2]:.1f}"
        )
        print(
            f"peak memory           shop: largest process {shop_peak / 1024:.0f} MiB, all "
            f"{shop_sum / 1024:.0f} MiB; floor: {floor_peak / 1024:.0f} MiB, all "
            f"{floor_sum / 1024:.0f} MiB"
        )
        print(f"load average          before {load_before[0]:.2f}, after {load_after[0]:.2f}")
        print("PASS" if all_passed else "FAIL")
        return all_passed
    finally:
        for process in reversed(processes):
            stop(process)
        if postgres is not None:
            postgres.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run in a temporary directory, and delete it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="shop/floor pairs (default 5)")
    parser.add_argument("--deliveries", type=int, default=1000, help="POSTs a pass (default 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="senders at once (default 50)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the duplicates and order")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the shop's database: a fresh SQLite file (default) or a throwaway PostgreSQL",
    )
    args = parser.parse_args(argv)
    if args.deliveries < 5 or args.concurrency < 1 or args.workers < 1 or args.pairs < 1:
        parser.error("--deliveries must be at least 5; the others at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="smi-webhook-ratio-"))
    try:
        passed = run(args, scratch)
    except KeyboardInterrupt:
        print("interrupted: the servers were stopped", file=sys.stderr)
        passed = False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
