"""`python -m devservers.stripe_local promo …`: promotion codes on a running local Stripe server.

It talks to the server's `/_local/promotion_codes` endpoints (the codes live in the server's
memory), at `--server`, else $STRIPE_API_BASE, else http://127.0.0.1:$STRIPE_LOCAL_PORT (12111).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import requests


def _default_server() -> str:
    env = os.environ
    return env.get("STRIPE_API_BASE") or f"http://127.0.0.1:{env.get('STRIPE_LOCAL_PORT', '12111')}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Read `promo create|list|activate|deactivate` and their options."""
    parser = argparse.ArgumentParser(
        prog="python -m devservers.stripe_local promo",
        description="Create and list promotion codes on a running local Stripe server.",
    )
    parser.add_argument("--server", default=_default_server(), help="the server's base URL")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a code buyers may enter at checkout")
    create.add_argument("code", help="what the buyer types, e.g. SAVE20 (any case)")
    off = create.add_mutually_exclusive_group(required=True)
    off.add_argument("--percent-off", help="percentage off the subtotal, e.g. 20 or 12.5")
    off.add_argument("--amount-off", type=int, help="minor units off, e.g. 500 (with --currency)")
    create.add_argument("--currency", help="currency of --amount-off, e.g. usd")
    create.add_argument("--max-redemptions", type=int, help="how many purchases may use it")
    create.add_argument("--inactive", action="store_true", help="create it switched off")
    commands.add_parser("list", help="list the codes with their use")
    for name in ("activate", "deactivate"):
        command = commands.add_parser(name, help=f"{name} a code")
        command.add_argument("code")
    args = parser.parse_args(argv)
    if args.command == "create" and args.amount_off is not None and not args.currency:
        parser.error("--amount-off needs --currency")
    return args


def describe(promotion: dict[str, Any]) -> str:
    """One line about a code: its id, what it takes off, its use and state."""
    coupon = promotion["coupon"]
    if coupon.get("percent_off") is not None:
        off = f"{coupon['percent_off']:g}% off"
    else:
        off = f"{coupon['amount_off']} {str(coupon['currency']).upper()} minor units off"
    limit = promotion.get("max_redemptions")
    used = f"used {promotion['times_redeemed']}" + (f" of {limit}" if limit else "")
    state = "active" if promotion["active"] else "inactive"
    return f"{promotion['code']} ({promotion['id']}): {off}, {used}, {state}"


def main(argv: Sequence[str]) -> int:
    """Run one promo command; 0 on success, 1 with Stripe's message when refused."""
    args = parse_args(argv)
    base = args.server.rstrip("/") + "/_local/promotion_codes"
    try:
        if args.command == "create":
            body: dict[str, Any] = {"code": args.code, "active": not args.inactive}
            for name in ("percent_off", "amount_off", "currency", "max_redemptions"):
                if getattr(args, name) is not None:
                    body[name] = getattr(args, name)
            response = requests.post(base, json=body, timeout=10)
        elif args.command == "list":
            response = requests.get(base, timeout=10)
        else:
            active = args.command == "activate"
            response = requests.post(f"{base}/{args.code}", json={"active": active}, timeout=10)
    except requests.RequestException as exc:
        print(f"cannot reach the local Stripe server at {args.server}: {exc}", file=sys.stderr)
        return 1
    data = response.json()
    if response.status_code != 200:
        print(data.get("error", {}).get("message", response.text), file=sys.stderr)
        return 1
    if args.command == "list":
        for promotion in data["data"]:
            print(describe(promotion))
    else:
        print(("Created " if args.command == "create" else "Updated ") + describe(data))
    return 0
