"""Where the shop's time goes in a webhook burst: cProfile inside the gunicorn workers.

    .venv/bin/python bench/webhook_profile.py [--database postgresql] [--deliveries 1000]
                                              [--concurrency 50] [--workers 4] [--clock cpu|wall]
                                              [--top 30] [--save FILE.pstats]

It starts what `webhook_ratio_bench.py` starts for the shop (a fresh SQLite database or a
throwaway PostgreSQL one, its own `redis-server`, gunicorn `-k gthread --threads 4`), serving
`bench.profiled_wsgi:app`, sends a warm-up of 50 sessions (not profiled), then one burst of
`--deliveries` (a fifth duplicates) with every request profiled in its worker thread, by the
thread's CPU time (default) or the wall clock. It checks the burst as the ratio bench does, stops
gunicorn, adds up the workers' profiles and prints: the CPU (or wall) time per request, a few
areas of the webhook path (signature, event handling, commit, enqueueing, metrics, logging, …)
as a share of the requests' time, and the functions with the most cumulative and own time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.processes import ThrowawayPostgres, free_port, stop  # noqa: E402
from bench.webhook_bench import (  # noqa: E402
    app_settings,
    build_deliveries,
    count_results,
    seed_sales,
    start_redis,
    upgrade_schema,
)
from bench.webhook_ratio_bench import (  # noqa: E402
    WARM_UP_SESSIONS,
    deliver_to_shop,
    start_gunicorn,
)

# (label, file name ending, function name): a function's cumulative time, as a share of all.
AREAS = (
    ("request, whole (Flask.__call__)", "flask/app.py", "__call__"),
    ("signature check (verify_header)", "stripe/_webhook.py", "verify_header"),
    ("handle_event", "storefront/jobs/stripe_events.py", "handle_event"),
    ("  fulfil_checkout_session", "storefront/jobs/stripe_events.py", "fulfil_checkout_session"),
    ("  transactions.commit (with after-commit)", "storefront/transactions.py", "commit"),
    ("    Session.commit", "sqlalchemy/orm/scoping.py", "commit"),
    ("    enqueue_processing", "storefront/jobs/queueing.py", "enqueue_processing"),
    ("      processing_timeout", "storefront/jobs/queueing.py", "processing_timeout"),
    ("    hand_over (email)", "storefront/jobs/queueing.py", "hand_over"),
    ("    _enqueue_once (both)", "storefront/jobs/queueing.py", "_enqueue_once"),
    ("metrics._write (Redis)", "storefront/jobs/metrics.py", "_write"),
    ("logging (Logger.callHandlers)", "logging/__init__.py", "callHandlers"),
    ("SQL executed (Connection._execute_context)", "sqlalchemy/engine/base.py", "_execute_context"),
    ("  SQL compiled (compile)", "sqlalchemy/sql/elements.py", "_compile_w_cache"),
    ("Redis commands (Redis.execute_command)", "redis/client.py", "execute_command"),
    ("Redis pipelines (Pipeline.execute)", "redis/client.py", "execute"),
    ("pin_versions (before_request)", "storefront/queues.py", "pin_versions"),
    ("json.loads", "json/__init__.py", "loads"),
)


def area_rows(
    stats: pstats.Stats, areas: tuple[tuple[str, str, str], ...] = AREAS
) -> list[tuple[str, float, int]]:
    """(label, cumulative seconds, calls) of each area; 0 when the function never ran."""
    raw = stats.stats  # type: ignore[attr-defined]
    rows = []
    for label, ending, name in areas:
        seconds, calls = 0.0, 0
        for (filename, _line, function), (_cc, nc, _tt, ct, _callers) in raw.items():
            if function == name and filename.endswith(ending):
                seconds += ct
                calls += nc
        rows.append((label, seconds, calls))
    return rows


def run(args: argparse.Namespace, scratch: Path) -> bool:
    """Start, burst, stop, report; True when the burst was exactly correct."""
    duplicates = args.deliveries // 5
    redis_port, shop_port = free_port(), free_port()
    settings = app_settings(
        scratch, f"sqlite:///{scratch / 'bench.db'}", f"redis://127.0.0.1:{redis_port}/0", shop_port
    )
    profiles = scratch / "profiles"
    profiles.mkdir()
    os.environ["SMI_PROFILE_DIR"] = str(profiles)
    os.environ["SMI_PROFILE_CLOCK"] = args.clock
    processes: list[subprocess.Popen[bytes]] = []
    postgres: ThrowawayPostgres | None = None
    load_before = os.getloadavg()
    try:
        if args.database == "postgresql":
            postgres = ThrowawayPostgres("smi-webhook-pg-", durable=True).start()
            settings["DATABASE_URL"] = postgres.create_database("webhook_profile")
        upgrade_schema(settings)
        processes.append(start_redis(scratch, redis_port))
        shop = start_gunicorn(
            "bench.profiled_wsgi:app", shop_port, args.workers, settings, scratch / "shop.log"
        )
        processes.append(shop)
        url = f"http://127.0.0.1:{shop_port}/webhooks/stripe"
        rng = random.Random(args.seed)
        sales = seed_sales(settings, WARM_UP_SESSIONS)
        deliver_to_shop(url, build_deliveries(sales, 0, rng), args.concurrency)
        batch = seed_sales(settings, args.deliveries - duplicates, first=len(sales) + 1)
        sales += batch
        (profiles / "on").touch()
        rate, note, unresolved = deliver_to_shop(
            url, build_deliveries(batch, duplicates, rng), args.concurrency
        )
        (profiles / "on").unlink()
        checks = count_results(settings, sales)
        stop(shop)  # the workers write their last profiles as they exit
        processes.remove(shop)
    finally:
        for process in reversed(processes):
            stop(process)
        if postgres is not None:
            postgres.stop()
    wrong = [f"{c.name} {c.found}/{c.expected}" for c in checks if not c.passed]
    files = sorted(profiles.glob("*.pstats"))
    stats = pstats.Stats(*(str(path) for path in files))
    rows = area_rows(stats)
    total, requests = rows[0][1], rows[0][2]
    clock = "CPU" if args.clock == "cpu" else "wall"
    print(
        f"{args.deliveries} deliveries, {args.database}, {rate:.1f}/s while profiled ({note}; "
        f"{'all correct' if not wrong else 'WRONG: ' + '; '.join(wrong)}); {len(files)} workers; "
        f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{clock} time in requests: {total:.2f} s over {requests} requests, "
        f"{1000 * total / max(requests, 1):.2f} ms each"
    )
    print(f"{'area':<46}{'ms/request':>11}{'share':>8}{'calls':>8}")
    for label, seconds, calls in rows:
        share = seconds / total if total else 0.0
        print(f"{label:<46}{1000 * seconds / max(requests, 1):>11.2f}{share:>8.1%}{calls:>8}")
    if args.save:
        stats.dump_stats(args.save)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return not wrong and not unresolved


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run in a temporary directory, and delete it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1000, help="POSTs profiled")
    parser.add_argument("--concurrency", type=int, default=50, help="senders at once (default 50)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the duplicates and order")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    parser.add_argument("--save", help="also write the added-up profile to this pstats file")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="smi-webhook-profile-"))
    try:
        passed = run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
