"""Command line: `python -m devservers.stripe_local --port 12111 --webhook-url URL ...` serves;
`python -m devservers.stripe_local promo create SAVE20 --percent-off 20` (see promo_cli) manages
the promotion codes of a running server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from types import FrameType

from . import promo_cli
from .server import start_server


def _tax_percent(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value.is_finite() or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percentage from 0 to 100")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the options (STRIPE_LOCAL_PORT, STRIPE_WEBHOOK_URL, STRIPE_WEBHOOK_SECRET,
    STRIPE_LOCAL_TAX_PERCENT: defaults)."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m devservers.stripe_local",
        description="A local server speaking the subset of Stripe's API this project uses.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env.get("STRIPE_LOCAL_PORT", "12111")))
    parser.add_argument(
        "--webhook-url",
        default=env.get("STRIPE_WEBHOOK_URL") or None,
        help="where to POST events (default: $STRIPE_WEBHOOK_URL; none: events are only stored)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=env.get("STRIPE_WEBHOOK_SECRET") or None,
        help="whsec_… used to sign deliveries (default: $STRIPE_WEBHOOK_SECRET)",
    )
    parser.add_argument(
        "--public-url",
        default=env.get("STRIPE_LOCAL_PUBLIC_URL") or None,
        help="base of the hosted page URLs handed to browsers (default: the listening URL)",
    )
    parser.add_argument(
        "--retry-scale",
        type=float,
        default=1.0,
        help="multiplies the webhook retry delays 0.5 s, 1 s, 2 s, … (e.g. 0.01 in tests)",
    )
    parser.add_argument("--max-attempts", type=int, default=8, help="delivery attempts per event")
    parser.add_argument(
        "--unordered",
        action="store_true",
        help="deliver events independently instead of in order per Checkout Session",
    )
    parser.add_argument(
        "--tax-percent",
        type=_tax_percent,
        default=env.get("STRIPE_LOCAL_TAX_PERCENT") or "0",
        help="the rate automatic tax adds on top of tax-exclusive prices, e.g. 19 "
        "(default: $STRIPE_LOCAL_TAX_PERCENT, else 0)",
    )
    args = parser.parse_args(argv)
    if args.webhook_url and not args.webhook_secret:
        parser.error("--webhook-secret (or STRIPE_WEBHOOK_SECRET) is required with --webhook-url")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM (or run a `promo` command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["promo"]:
        return promo_cli.main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s stripe-local %(message)s",
    )
    local = start_server(
        args.host,
        args.port,
        args.webhook_url,
        args.webhook_secret,
        public_url=args.public_url,
        retry_scale=args.retry_scale,
        max_attempts=args.max_attempts,
        ordered=not args.unordered,
        tax_percent=args.tax_percent,
    )
    log = logging.getLogger("devservers.stripe_local")
    log.info(
        "listening on %s (API base for STRIPE_API_BASE); webhooks -> %s",
        local.url,
        args.webhook_url or "nowhere (events are stored only)",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stop.wait()
    finally:
        local.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
