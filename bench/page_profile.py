"""Where the shop's time goes on a buyer's page: cProfile inside the gunicorn workers under wrk.

    .venv/bin/python bench/page_profile.py [--page image|catalog|post] [--seconds 10]
                                           [--connections 20] [--clock cpu|wall] [--top 30]
                                           [--save FILE.pstats]

It starts what `page_bench.py` starts for the shop (a fresh SQLite database with the demo
catalog, its own `redis-server`, gunicorn `-k sync -w 2` with the project's gunicorn.conf.py),
serving `bench.profiled_wsgi:app`, warms the page up for 2 s (not profiled), then profiles every
request of one wrk run of `--seconds` in its worker, by the thread's CPU time (default) or the
wall clock. It stops gunicorn, adds up the workers' profiles and prints: the CPU (or wall) time
per request, the parts of a page request (hooks, Redis, session, locale, rate limiter, template,
forms, offers, samples, the funnel view) as a share of the requests' time, and the functions
with the most cumulative and own time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.page_bench import (  # noqa: E402
    GUNICORN_FLAGS,
    PAGES,
    VENV_BIN,
    flask,
    shop_environment,
    start,
    start_redis,
    wrk,
)
from bench.processes import free_port, stop  # noqa: E402
from bench.webhook_profile import area_rows  # noqa: E402

# (label, file name ending, function name): a function's cumulative time, as a share of all.
AREAS = (
    ("request, whole (Flask.__call__)", "flask/app.py", "__call__"),
    ("before_request hooks (preprocess_request)", "flask/app.py", "preprocess_request"),
    ("  version pins (versions: Redis MGET)", "storefront/queues.py", "versions"),
    ("  rate limiter", "flask_limiter/_extension.py", "_check_request_limit"),
    ("  locale refresh (flask_babel.refresh)", "flask_babel/__init__.py", "refresh"),
    ("session opened (open_session)", "flask/sessions.py", "open_session"),
    ("session saved (save_session)", "flask/sessions.py", "save_session"),
    ("view (dispatch_request)", "flask/app.py", "dispatch_request"),
    ("  funnel view (record_image_view)", "storefront/funnel.py", "record_image_view"),
    ("  image_offers", "storefront/jobs/offers.py", "image_offers"),
    ("  page_samples", "storefront/jobs/samples.py", "page_samples"),
    ("  render_template", "flask/templating.py", "render_template"),
    ("    context processors", "flask/app.py", "update_template_context"),
    ("      settings.current", "storefront/settings.py", "current"),
    ("    Jinja render (Template.render)", "jinja2/environment.py", "render"),
    ("    CSRF token (generate_csrf)", "flask_wtf/csrf.py", "generate_csrf"),
    ("    form widgets (Field.__call__)", "wtforms/fields/core.py", "__call__"),
    ("    url_for", "flask/helpers.py", "url_for"),
    ("    gettext (flask_babel.gettext)", "flask_babel/__init__.py", "gettext"),
    ("    get_locale (flask_babel)", "flask_babel/__init__.py", "get_locale"),
    ("  form built (FlaskForm meta __call__)", "wtforms/form.py", "__call__"),
    ("after_request hooks (process_response)", "flask/app.py", "process_response"),
    ("  limiter headers (__inject_headers)", "flask_limiter/_extension.py", "__inject_headers"),
    ("teardown (do_teardown_request)", "flask/app.py", "do_teardown_request"),
    ("Redis commands (Redis.execute_command)", "redis/client.py", "execute_command"),
    ("Redis pipelines (Pipeline.execute)", "redis/client.py", "execute"),
    ("SQL executed (Connection._execute_context)", "sqlalchemy/engine/base.py", "_execute_context"),
    ("metrics (prometheus inc)", "prometheus_client/metrics.py", "inc"),
    ("metrics (prometheus observe)", "prometheus_client/metrics.py", "observe"),
    ("logging (Logger.callHandlers)", "logging/__init__.py", "callHandlers"),
)


def run(args: argparse.Namespace, scratch: Path) -> None:
    """Start, warm up, profile one wrk run, stop, report."""
    profiles = scratch / "profiles"
    profiles.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    load_before = os.getloadavg()
    try:
        redis_port, shop_port = free_port(), free_port()
        processes.append(start_redis(scratch, redis_port))
        env = shop_environment(scratch, redis_port, shop_port)
        env["SMI_PROFILE_DIR"] = str(profiles)
        env["SMI_PROFILE_CLOCK"] = args.clock
        flask(env, "db", "upgrade")
        flask(env, "smi", "seed-demo")
        url = f"http://127.0.0.1:{shop_port}"
        shop = start(
            [str(VENV_BIN / "gunicorn"), *GUNICORN_FLAGS, "-b", f"127.0.0.1:{shop_port}"]
            + ["bench.profiled_wsgi:app"],
            scratch / "shop.log",
            env,
            "the shop's gunicorn",
            url + "/",
        )
        processes.append(shop)
        wrk(url + PAGES[args.page], 2, args.connections)
        (profiles / "on").touch()
        result = wrk(url + PAGES[args.page], args.seconds, args.connections)
        (profiles / "on").unlink()
        stop(shop)  # the workers write their last profiles as they exit
        processes.remove(shop)
    finally:
        for process in reversed(processes):
            stop(process)
    files = sorted(profiles.glob("*.pstats"))
    stats = pstats.Stats(*(str(path) for path in files))
    rows = area_rows(stats, AREAS)
    total, requests = rows[0][1], rows[0][2]
    clock = "CPU" if args.clock == "cpu" else "wall"
    print(
        f"{args.page} page {PAGES[args.page]}: {result.rate:.0f} req/s while profiled, "
        f"p99 {result.p99_ms:.0f} ms; {len(files)} workers; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{clock} time in requests: {total:.2f} s over {requests} requests, "
        f"{1000 * total / max(requests, 1):.2f} ms each"
    )
    print(f"{'area':<46}{'ms/request':>11}{'share':>8}{'calls':>8}")
    for label, seconds, calls in rows:
        share = seconds / total if total else 0.0
        print(f"{label:<46}{1000 * seconds / max(requests, 1):>11.3f}{share:>8.1%}{calls:>8}")
    if args.save:
        stats.dump_stats(args.save)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run in a temporary directory, and delete it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--page", choices=tuple(PAGES), default="image")
    parser.add_argument("--seconds", type=int, default=10, help="profiled wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    parser.add_argument("--save", help="also write the added-up profile to this pstats file")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="smi-page-profile-"))
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
