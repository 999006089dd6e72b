"""The buyer's pages (image, catalog, post) against a bare Flask route, under the same gunicorn.

    .venv/bin/python bench/page_bench.py [--pairs 5] [--seconds 5] [--connections 20]
                                         [--pages image,catalog,post]

Needs `wrk` (Debian: `apt-get install wrk`) and `redis-server`. In a temporary directory it
builds a SQLite database with `flask db upgrade` and `flask smi seed-demo` (the demo catalog),
starts its own `redis-server` and two gunicorns with the project's gunicorn.conf.py and the same
flags (`-k sync -w 2 --threads 1`, access log to a file): the shop (`wsgi:app`) and
`bench/bare_app.py`, whose route answers as many bytes as the page it is compared with. No RQ
worker runs: image views stay in their Redis buffer, as between two sweeps.

For each page, `--pairs` pairs of wrk runs (`--connections` connections, 2 threads,
`--seconds` each, a browser's User-Agent so that each image view is a person's and is counted),
alternating shop, bare, shop, bare… so that both see the same load from other work on the
machine. Printed: each run's requests/s and p99, then per page the medians, the median ratio
shop/bare of requests/s with its min–max over the pairs, the p99 ratio, the CPU milliseconds
per request of the shop's gunicorn (master and workers), of its Redis and of the bare app's
gunicorn (from /proc, unprofiled; the steadier figure on a shared machine), and the peak RSS of
the shop's and the bare app's workers. Every answer must be a 200 (wrk's non-2xx count is checked),
and the dashboard's image-view count must equal the image requests wrk saw answered (give or take
the connections still open when a run stops). Everything listens on 127.0.0.1 and is stopped and
deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.processes import free_port, stop  # noqa: E402
from bench.webhook_ratio_bench import cpu_seconds  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
START_TIMEOUT_SECONDS = 30.0
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GUNICORN_FLAGS = ["-c", "gunicorn.conf.py", "-k", "sync", "-w", "2", "--threads", "1"]
PAGES = {"image": "/images/1", "catalog": "/", "post": "/posts/space"}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Run:
    """One wrk run: requests/s, the 99th percentile latency (ms) and the requests answered."""

    rate: float
    p99_ms: float
    requests: int


def measured(
    url: str, seconds: int, connections: int, *servers: subprocess.Popen[bytes]
) -> tuple[Run, list[float]]:
    """One wrk run, and the CPU milliseconds per request each of `servers` (with its children)
    spent meanwhile."""
    before = [cpu_seconds(server.pid) for server in servers]
    run = wrk(url, seconds, connections)
    after = [cpu_seconds(server.pid) for server in servers]
    return run, [1000 * (b - a) / max(run.requests, 1) for a, b in zip(before, after, strict=True)]


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    """Poll `ready` until it holds; fail if `process` exits or START_TIMEOUT_SECONDS pass."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        try:
            if ready():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {START_TIMEOUT_SECONDS:.0f} s")


def fetch(url: str) -> bytes:
    """The body of a GET that must answer 200."""
    request = urllib.request.Request(url, headers={"User-Agent": BROWSER})
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
        body: bytes = response.read()
        return body


def start(
    command: list[str], log: Path, env: dict[str, str], what: str, url: str
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, logging to `log`, and wait until `url` answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: bool(fetch(url)), what, process)
    except BaseException:
        stop(process)
        raise
    return process


def start_redis(scratch: Path, port: int) -> subprocess.Popen[bytes]:
    """A `redis-server` on 127.0.0.1:`port` that keeps nothing on disk."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(scratch)]
    with (scratch / "redis.log").open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")

    wait_until(answers, "redis-server", process)
    return process


def shop_environment(scratch: Path, redis_port: int, web_port: int) -> dict[str, str]:
    """The environment the shop's commands and gunicorn run with."""
    storage = scratch / "storage"
    storage.mkdir()
    return {
        **os.environ,
        "FLASK_APP": "wsgi",
        "SMI_ENV": "development",
        "SECRET_KEY": secrets.token_hex(32),
        "DATABASE_URL": f"sqlite:///{scratch / 'shop.db'}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "STORAGE_DIR": str(storage),
        "WORK_DIR": str(scratch / "work"),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
        "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics-shop"),
    }


def flask(env: dict[str, str], *args: str) -> None:
    """Run `flask …` for the shop; fail with its output."""
    done = subprocess.run(
        [str(VENV_BIN / "flask"), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def wrk(url: str, seconds: int, connections: int) -> Run:
    """One wrk run against `url`; every answer must be a 2xx."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    output = subprocess.run(
        [*command, "-H", f"User-Agent: {BROWSER}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output and "timeout 0" not in output:
        raise RuntimeError(f"wrk saw failures at {url}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return Run(rate, float(value) * UNITS[unit], requests)


def workers_peak_rss(master: subprocess.Popen[bytes]) -> int:
    """The largest peak resident set (VmHWM, bytes) among a gunicorn master's workers."""
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    peak = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def counted_image_views(env: dict[str, str]) -> int:
    """Image views as the admin dashboard counts them (today, exact)."""
    from storefront import create_app
    from storefront.reports.dashboard import DateRange, funnel_steps

    keys = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "STORAGE_DIR", "WORK_DIR")
    app = create_app({key: env[key] for key in keys} | {"SMI_ENV": "development"})
    with app.app_context():
        today = DateRange.last_days(1)
        return funnel_steps(today.since, today.until)[0].count


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--pages", default=",".join(PAGES))
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    scratch = Path(tempfile.mkdtemp(prefix="smi-page-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_port, shop_port, bare_port = free_port(), free_port(), free_port()
        redis = start_redis(scratch, redis_port)
        processes.append(redis)
        env = shop_environment(scratch, redis_port, shop_port)
        flask(env, "db", "upgrade")
        flask(env, "smi", "seed-demo")
        gunicorn = [str(VENV_BIN / "gunicorn"), *GUNICORN_FLAGS]
        shop_url, bare_url = f"http://127.0.0.1:{shop_port}", f"http://127.0.0.1:{bare_port}"
        shop = start(
            [*gunicorn, "-b", f"127.0.0.1:{shop_port}", "wsgi:app"],
            scratch / "shop.log",
            env,
            "the shop's gunicorn",
            shop_url + "/",
        )
        processes.append(shop)
        bare_env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics-bare")}
        bare = start(
            [*gunicorn, "-b", f"127.0.0.1:{bare_port}", "--pythonpath", "bench", "bare_app:app"],
            scratch / "bare.log",
            bare_env,
            "the bare app's gunicorn",
            bare_url + "/1",
        )
        processes.append(bare)
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()}")
        print(
            f"gunicorn {' '.join(GUNICORN_FLAGS[2:])}; wrk -t2 -c{options.connections} "
            f"-d{options.seconds}s, {options.pairs} pairs shop/bare per page"
        )
        image_requests = 0
        summary = []
        for name in options.pages.split(","):
            path = PAGES[name]
            size = len(fetch(shop_url + path))
            warm = wrk(shop_url + path, 1, options.connections)  # warm up both
            wrk(f"{bare_url}/{size}", 1, options.connections)
            if name == "image":
                image_requests += 1 + warm.requests
            pairs = []
            cpu: list[tuple[float, float, float]] = []
            for number in range(1, options.pairs + 1):
                mine, (shop_ms, redis_ms) = measured(
                    shop_url + path, options.seconds, options.connections, shop, redis
                )
                floor, (bare_ms,) = measured(
                    f"{bare_url}/{size}", options.seconds, options.connections, bare
                )
                pairs.append((mine, floor))
                cpu.append((shop_ms, redis_ms, bare_ms))
                if name == "image":
                    image_requests += mine.requests
                print(
                    f"{name:8} pair {number}: shop {mine.rate:8.0f} req/s p99 {mine.p99_ms:6.1f} ms"
                    f" | bare {floor.rate:8.0f} req/s p99 {floor.p99_ms:6.1f} ms"
                    f" | ratio {mine.rate / floor.rate:.2f} | CPU ms/request: shop {shop_ms:.2f}"
                    f" + its Redis {redis_ms:.2f}, bare {bare_ms:.2f}"
                )
            ratios = [mine.rate / floor.rate for mine, floor in pairs]
            p99s = [mine.p99_ms / floor.p99_ms for mine, floor in pairs]
            summary.append(
                f"{name:8} {path:14} {size:6} B: shop "
                f"{statistics.median(m.rate for m, _ in pairs):6.0f} req/s p99 "
                f"{statistics.median(m.p99_ms for m, _ in pairs):5.1f} ms, bare "
                f"{statistics.median(f.rate for _, f in pairs):6.0f} req/s p99 "
                f"{statistics.median(f.p99_ms for _, f in pairs):5.1f} ms; ratio "
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}), "
                f"p99 ratio {statistics.median(p99s):.2f} ({min(p99s):.2f}-{max(p99s):.2f}); "
                f"CPU ms/request shop {statistics.median(c[0] for c in cpu):.2f} + Redis "
                f"{statistics.median(c[1] for c in cpu):.2f}, bare "
                f"{statistics.median(c[2] for c in cpu):.2f}"
            )
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print("\n".join(summary))
        print(
            f"peak RSS of a worker: shop {workers_peak_rss(shop) / 2**20:.0f} MiB, "
            f"bare {workers_peak_rss(bare) / 2**20:.0f} MiB"
        )
        if "image" in options.pages.split(","):
            time.sleep(1)  # the last requests of the last run may still be answered
            views = counted_image_views(env)
            print(f"image views counted by the dashboard: {views} (wrk saw {image_requests})")
        return 0
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
