"""Chaos loses nothing: paid orders on real parts while workers die, Redis restarts and more.

    .venv/bin/python bench/chaos.py [--orders 100] [--upsampler-orders 25] [--workers 3]
                                    [--seed 1] [--keep]

In a temporary directory it builds a fresh SQLite database (`flask db upgrade`), starts its own
`redis-server` on a unix socket without persistence, the SMTP sink, the local Stripe server and the
local Upsampler server, gunicorn on a loopback port the kernel picks, and `--workers` RQ worker
processes (`python -m worker`). It then places `--orders` paid orders half a second apart, as
buyers do (the image page, Buy, pay at Stripe, half of them back on the order page), the last
`--upsampler-orders` of them with the shop restarted on `UPSCALER=upsampler`; every eighth order's
original is not an image, so it must fail and be refunded. All the while it SIGKILLs a busy worker
every few seconds (worker and horse, the horse alone, or the worker alone), crashes Redis and
starts it again empty, makes SMTP refuse a few mails and Stripe answer 500 a few times, and holds
every webhook, sends it a second time and releases them shuffled every second. The sweeper runs
every two seconds with its clock pushed forward (tests/chaos_harness.py says by how much, and why).

Printed: orders, faults injected by kind, completed, failed and refunded, lost, duplicate
completions, mails, refunds at Stripe, the recovery work seen, wall time, and every problem. The
exit status is 0 when every paid order completed with one ready mail, or failed and was refunded
once with one refund mail, and refunds equal failed orders. Everything listens on loopback (or a
unix socket) and is stopped and deleted at the end, also after an error or Ctrl-C (`--keep` keeps
the directory, with the logs of gunicorn and the workers).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.chaos_harness import ChaosPlan, run_chaos  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the chaos and print its figures; 0 when nothing was lost or doubled."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=100, help="paid orders (default 100)")
    parser.add_argument(
        "--upsampler-orders", type=int, default=25, help="of them through Upsampler (default 25)"
    )
    parser.add_argument("--workers", type=int, default=3, help="RQ worker processes (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--keep", action="store_true", help="keep the directory and its logs")
    args = parser.parse_args(argv)
    if not 0 <= args.upsampler_orders <= args.orders or args.workers < 2:
        parser.error("need 0 <= --upsampler-orders <= --orders and --workers >= 2")
    plan = ChaosPlan(
        orders=args.orders,
        upsampler_orders=args.upsampler_orders,
        workers=args.workers,
        seed=args.seed,
    )
    workdir = Path(tempfile.mkdtemp(prefix="smi-chaos-"))
    # This process's log lines (the sweeper's, RQ's) go to a file, not between the figures.
    log_file = logging.FileHandler(workdir / "harness.log")
    for name in ("smi", "rq"):
        logger = logging.getLogger(name)
        logger.addHandler(log_file)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        figures = run_chaos(workdir, plan)
    except KeyboardInterrupt:
        print("interrupted: every process stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(figures.lines()))
    return 0 if not figures.problems and not figures.lost else 1


if __name__ == "__main__":
    sys.exit(main())
