"""Command line: `python -m devservers.upsampler_local --port 12112 [--api-key KEY] ...`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType

from .processing import OUTPUT_FORMATS
from .server import start_server
from .store import Behaviour


def _decimal(value: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the options (UPSAMPLER_LOCAL_PORT, UPSAMPLER_API_KEY give defaults)."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m devservers.upsampler_local",
        description="A local server speaking the part of Upsampler.com's API this project uses.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env.get("UPSAMPLER_LOCAL_PORT", "12112")))
    parser.add_argument(
        "--api-key",
        default=env.get("UPSAMPLER_API_KEY") or None,
        help="the Bearer key to require (default: $UPSAMPLER_API_KEY; none: any key is accepted)",
    )
    parser.add_argument(
        "--public-url",
        default=env.get("UPSAMPLER_LOCAL_PUBLIC_URL") or None,
        help="base of the result URLs handed out (default: the listening URL)",
    )
    parser.add_argument(
        "--credits-per-megapixel",
        type=_decimal,
        default=_decimal(env.get("CREDITS_PER_MEGAPIXEL", "0.25")),
        help="creditCost = ceil(output megapixels x this) (default 0.25)",
    )
    parser.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="png",
        help="full-quality result as PNG (default) or in the input's format",
    )
    parser.add_argument("--result-ttl", type=float, default=3 * 3600, help="seconds results live")
    parser.add_argument("--result-dir", type=Path, default=None, help="keep results here")
    parser.add_argument("--workers", type=int, default=2, help="jobs processed at once")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each job takes at least")
    parser.add_argument("--fail", default=None, help="fail every job with this message")
    parser.add_argument(
        "--result-host", default=None, help="host name in result URLs (e.g. localhost)"
    )
    parser.add_argument("--drop-callbacks", action="store_true", help="never call the webhooks")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s upsampler-local %(message)s",
    )
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips' INFO lines are noise here
    behaviour = Behaviour(
        delay=max(0.0, args.delay),
        fail=args.fail or None,
        result_host=args.result_host or None,
        drop_callback=args.drop_callbacks,
    )
    local = start_server(
        args.host,
        args.port,
        args.api_key,
        public_url=args.public_url,
        behaviour=behaviour,
        credits_per_megapixel=args.credits_per_megapixel,
        output_format=args.output_format,
        result_ttl=args.result_ttl,
        result_dir=args.result_dir,
        workers=args.workers,
    )
    log = logging.getLogger("devservers.upsampler_local")
    log.info(
        "listening on %s; UPSAMPLER_API_BASE=%s; API key %s",
        local.url,
        local.api_base,
        "required" if args.api_key else "not checked",
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
