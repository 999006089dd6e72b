"""In-memory Stripe state and its operations: sessions, payments, refunds, disputes, events."""

from __future__ import annotations

import copy
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import currencies, promotions
from .errors import StripeApiError, missing_param, no_such
from .params import Params, as_bool, as_dict, as_int, as_list, as_str, check_url, metadata

Obj = dict[str, Any]
EventListener = Callable[[str, str], None]

# The API version stamped on events until a client tells us its own (the SDK sends Stripe-Version).
DEFAULT_API_VERSION = "2026-10-28.endive"

MIN_SESSION_SECONDS = 30 * 60
MAX_SESSION_SECONDS = 24 * 60 * 60
# expires_at is computed by the client a moment before we see it; allow that much clock slack.
EXPIRES_AT_SLACK_SECONDS = 5

REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
DISPUTE_REASONS = (
    "fraudulent",
    "duplicate",
    "product_not_received",
    "product_unacceptable",
    "subscription_canceled",
    "unrecognized",
    "credit_not_processed",
    "general",
)

# Stripe's test card numbers that fail, and how.
DECLINING_CARDS: dict[str, tuple[str, str]] = {
    "4000000000000002": ("generic_decline", "Your card was declined."),
    "4000000000009995": ("insufficient_funds", "Your card has insufficient funds."),
    "4000000000009987": ("lost_card", "Your card was declined."),
    "4000000000000069": ("expired_card", "Your card has expired."),
}
DEFAULT_CARD = "4242424242424242"
DEFAULT_EMAIL = "buyer@example.com"
BILLING_ADDRESS: Obj = {
    "city": None,
    "country": "US",
    "line1": None,
    "line2": None,
    "postal_code": "10001",
    "state": None,
}

_ALPHABET = string.ascii_letters + string.digits
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def new_id(prefix: str, length: int = 24) -> str:
    """Return a random Stripe-looking id such as `pi_3Qx…`."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    """Return the current Unix time in whole seconds, as Stripe timestamps are."""
    return int(time.time())


class CardDeclined(StripeApiError):
    """A payment attempt the card network refused; nothing is charged and the session stays open."""

    def __init__(self, decline_code: str, message: str) -> None:
        super().__init__(
            message,
            status=402,
            type="card_error",
            code="card_declined" if decline_code != "expired_card" else "expired_card",
            extra={"decline_code": decline_code},
        )


@dataclass
class IdempotentResult:
    """A saved answer to an idempotent POST, replayed when the same key comes again."""

    endpoint: str
    fingerprint: tuple[tuple[str, str], ...]
    status: int
    body: bytes


@dataclass
class FailureRule:
    """An armed "Stripe is down" switch: the next `remaining` API calls answer `status`."""

    status: int
    remaining: int
    path: str | None = None
    message: str | None = None

    def matches(self, path: str) -> bool:
        """Tell whether this rule applies to an API call on `path`."""
        return self.remaining > 0 and (self.path is None or path.startswith(self.path))

    def error(self) -> StripeApiError:
        """Return the error this rule answers with, shaped like Stripe's for that status."""
        kinds: dict[int, tuple[str, str | None, str]] = {
            400: ("invalid_request_error", None, "Simulated invalid request."),
            401: ("invalid_request_error", None, "Invalid API Key provided: simulated."),
            402: ("card_error", "card_declined", "Your card was declined."),
            403: ("invalid_request_error", None, "Simulated permission error."),
            404: ("invalid_request_error", "resource_missing", "Simulated missing resource."),
            409: ("invalid_request_error", "lock_timeout", "Simulated conflict."),
            429: ("invalid_request_error", "rate_limit", "Simulated rate limit."),
        }
        type_, code, message = kinds.get(
            self.status,
            ("api_error", None, "An unknown error occurred (simulated by the local Stripe)."),
        )
        return StripeApiError(self.message or message, status=self.status, type=type_, code=code)


class StripeState:
    """Every object the server knows, guarded by one re-entrant lock.

    Public attributes are live dicts for inspection from tests; take `lock` (or use `snapshot`)
    when reading them while the server is busy.
    """

    def __init__(self, public_url: str = "", tax_percent: Decimal = Decimal(0)) -> None:
        self.lock = threading.RLock()
        self.public_url = public_url.rstrip("/")
        # The one tax rate of sessions with automatic_tax[enabled]; configuration, kept on reset.
        self.tax_percent = tax_percent
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.api_version = DEFAULT_API_VERSION
        self.listeners: list[EventListener] = []
        self._clear()

    def _clear(self) -> None:
        self.sessions: dict[str, Obj] = {}
        self.line_items: dict[str, list[Obj]] = {}
        self.payment_intents: dict[str, Obj] = {}
        self.charges: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}
        self.disputes: dict[str, Obj] = {}
        self.promotion_codes: dict[str, Obj] = {}
        self.events: dict[str, Obj] = {}
        self.deliveries: list[Obj] = []
        self.declines: dict[str, int] = {}
        self.idempotency: dict[tuple[str, str], IdempotentResult] = {}
        self.failure: FailureRule | None = None
        self._pi_data: dict[str, Obj] = {}
        self._session_of: dict[str, str] = {}
        self._event_stream: dict[str, str] = {}
        # The promotion code applied to each open session (its id), as the pay page applied it.
        self._session_promotion: dict[str, str] = {}

    # ----------------------------------------------------------------- housekeeping

    def reset(self) -> None:
        """Forget every object, event, delivery, idempotency key and armed failure."""
        with self.lock:
            self._clear()

    def set_webhook(self, url: str | None, secret: str | None) -> None:
        """Point deliveries at `url`, signed with `secret`."""
        with self.lock:
            self.webhook_url = url or None
            self.webhook_secret = secret or None

    def webhook_config(self) -> tuple[str | None, str | None]:
        """Return the current webhook URL and secret."""
        with self.lock:
            return self.webhook_url, self.webhook_secret

    def snapshot(self) -> Obj:
        """Return a deep copy of all objects, events and deliveries."""
        with self.lock:
            return copy.deepcopy(
                {
                    "checkout_sessions": list(self.sessions.values()),
                    "payment_intents": list(self.payment_intents.values()),
                    "charges": list(self.charges.values()),
                    "refunds": list(self.refunds.values()),
                    "disputes": list(self.disputes.values()),
                    "promotion_codes": list(self.promotion_codes.values()),
                    "events": list(self.events.values()),
                    "deliveries": self.deliveries,
                    "declines": self.declines,
                }
            )

    def arm_failure(
        self, status: int, count: int, path: str | None = None, message: str | None = None
    ) -> FailureRule:
        """Make the next `count` API calls (optionally only under `path`) fail with `status`."""
        with self.lock:
            self.failure = FailureRule(status=status, remaining=count, path=path, message=message)
            return self.failure

    def take_failure(self, path: str) -> StripeApiError | None:
        """Consume one armed failure for an API call on `path`, if one applies."""
        with self.lock:
            rule = self.failure
            if rule is None or not rule.matches(path):
                return None
            rule.remaining -= 1
            if rule.remaining <= 0:
                self.failure = None
            return rule.error()

    def record_delivery(self, record: Obj) -> None:
        """Append one webhook delivery attempt to the log."""
        with self.lock:
            self.deliveries.append(record)

    def event_stream(self, event_id: str) -> str:
        """Return the ordering key of an event (its Checkout Session, when it has one)."""
        with self.lock:
            return self._event_stream.get(event_id, event_id)

    # ----------------------------------------------------------------- lookups

    def get(self, kind: str, object_id: str, param: str = "id") -> Obj:
        """Return the live object of `kind` (e.g. "payment_intent") or raise Stripe's 404."""
        table = {
            "checkout.session": self.sessions,
            "payment_intent": self.payment_intents,
            "charge": self.charges,
            "refund": self.refunds,
            "dispute": self.disputes,
            "promotion_code": self.promotion_codes,
            "event": self.events,
        }[kind]
        with self.lock:
            obj = table.get(object_id)
            if obj is None:
                raise no_such(kind, object_id, param)
            return obj

    def _lookup(self, object_id: str) -> Obj | None:
        for table in (
            self.sessions,
            self.payment_intents,
            self.charges,
            self.refunds,
            self.disputes,
            self.events,
        ):
            if object_id in table:
                return table[object_id]
        return None

    def expand(self, obj: Obj, paths: list[str]) -> Obj:
        """Return a copy of `obj` with the `expand[]` paths replaced by the objects they name."""
        with self.lock:
            result = copy.deepcopy(obj)
            for path in paths:
                self._expand_path(result, path.split("."), path)
            return result

    def _expand_path(self, node: Obj, parts: list[str], full: str) -> None:
        name = parts[0]
        if node.get("object") == "checkout.session" and name == "line_items":
            node["line_items"] = self.line_items_list(node["id"])
        elif node.get("object") == "charge" and name == "refunds":
            node["refunds"] = self._refunds_list(node["id"])
        elif name not in node:
            raise StripeApiError(f"This property cannot be expanded ({full}).", param="expand")
        value = node[name]
        if isinstance(value, str):
            target = self._lookup(value)
            if target is None:
                raise StripeApiError(f"This property cannot be expanded ({full}).", param="expand")
            value = copy.deepcopy(target)
            node[name] = value
        if len(parts) > 1 and isinstance(value, dict):
            self._expand_path(value, parts[1:], full)

    def line_items_list(self, session_id: str) -> Obj:
        """Return a session's line items as a Stripe list object."""
        with self.lock:
            items = copy.deepcopy(self.line_items.get(session_id, []))
            return {
                "object": "list",
                "data": items,
                "has_more": False,
                "url": f"/v1/checkout/sessions/{session_id}/line_items",
            }

    def _refunds_list(self, charge_id: str) -> Obj:
        refunds = [r for r in self.refunds.values() if r["charge"] == charge_id]
        refunds.sort(key=lambda r: r["created"], reverse=True)
        return {
            "object": "list",
            "data": copy.deepcopy(refunds),
            "has_more": False,
            "total_count": len(refunds),
            "url": f"/v1/charges/{charge_id}/refunds",
        }

    def list_refunds(self, payment_intent: str | None, charge: str | None) -> Obj:
        """Return refunds (newest first), optionally only those of one PaymentIntent or charge."""
        with self.lock:
            found = [
                r
                for r in self.refunds.values()
                if (payment_intent is None or r["payment_intent"] == payment_intent)
                and (charge is None or r["charge"] == charge)
            ]
            found.sort(key=lambda r: r["created"], reverse=True)
            return {
                "object": "list",
                "data": copy.deepcopy(found),
                "has_more": False,
                "url": "/v1/refunds",
            }

    # ----------------------------------------------------------------- events

    def emit(
        self,
        type_: str,
        obj: Obj,
        *,
        stream: str,
        previous: Obj | None = None,
        request: Obj | None = None,
    ) -> Obj:
        """Record an event about `obj` and hand it to the listeners (the webhook dispatcher)."""
        with self.lock:
            data: Obj = {"object": copy.deepcopy(obj)}
            if previous:
                data["previous_attributes"] = previous
            event: Obj = {
                "id": new_id("evt_1"),
                "object": "event",
                "api_version": self.api_version,
                "created": now(),
                "data": data,
                "livemode": False,
                "pending_webhooks": 1 if self.webhook_url else 0,
                "request": request or {"id": None, "idempotency_key": None},
                "type": type_,
            }
            self.events[event["id"]] = event
            self._event_stream[event["id"]] = stream
            for listener in self.listeners:
                listener(event["id"], stream)
            return event

    def resend(self, event_id: str) -> Obj:
        """Hand an existing event to the listeners again (a duplicate delivery)."""
        with self.lock:
            event = self.get("event", event_id)
            for listener in self.listeners:
                listener(event_id, self._event_stream.get(event_id, event_id))
            return event

    # ----------------------------------------------------------------- checkout sessions

    def create_session(self, params: Params, request: Obj | None = None) -> Obj:
        """Validate Checkout Session parameters as Stripe does and create an open session."""
        mode = as_str(params, "mode")
        if mode is None:
            raise missing_param("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise StripeApiError(
                "Invalid mode: must be one of payment, setup, or subscription", param="mode"
            )
        if mode != "payment":
            raise StripeApiError(
                f"The local Stripe server only supports mode=payment, not mode={mode}.",
                param="mode",
            )
        ui_mode = as_str(params, "ui_mode") or "hosted"
        if ui_mode != "hosted":
            raise StripeApiError(
                "The local Stripe server only supports ui_mode=hosted.", param="ui_mode"
            )
        success_url = check_url(as_str(params, "success_url"), "success_url", required=True)
        cancel_url = check_url(as_str(params, "cancel_url"), "cancel_url", required=False)

        created = now()
        expires_at = as_int(params, "expires_at")
        if expires_at is None:
            expires_at = created + MAX_SESSION_SECONDS
        elif expires_at < created + MIN_SESSION_SECONDS - EXPIRES_AT_SLACK_SECONDS:
            raise StripeApiError(
                "The `expires_at` timestamp must be at least 30 minutes from Checkout Session "
                "creation.",
                param="expires_at",
            )
        elif expires_at > created + MAX_SESSION_SECONDS:
            raise StripeApiError(
                "The `expires_at` timestamp must be less than 24 hours from Checkout Session "
                "creation.",
                param="expires_at",
            )

        customer_email = as_str(params, "customer_email") or None
        if customer_email is not None and not _EMAIL.match(customer_email):
            raise StripeApiError(
                f"Invalid email address: {customer_email}",
                param="customer_email",
                code="email_invalid",
            )
        client_reference_id = as_str(params, "client_reference_id") or None
        if client_reference_id is not None and len(client_reference_id) > 200:
            raise StripeApiError(
                "client_reference_id must be at most 200 characters.",
                param="client_reference_id",
            )
        session_metadata = metadata(params.get("metadata"), "metadata")
        pi_params = as_dict(params.get("payment_intent_data"), "payment_intent_data")
        pi_data: Obj = {
            "metadata": metadata(pi_params.get("metadata"), "payment_intent_data[metadata]"),
            "description": as_str(pi_params, "description", "payment_intent_data[description]"),
            "receipt_email": as_str(
                pi_params, "receipt_email", "payment_intent_data[receipt_email]"
            ),
        }

        allow_promotion_codes = as_bool(params, "allow_promotion_codes")
        if params.get("discounts"):
            raise StripeApiError(
                "The local Stripe server does not apply `discounts` given at creation; use "
                "allow_promotion_codes and let the buyer enter a code.",
                param="discounts",
            )
        tax_params = as_dict(params.get("automatic_tax"), "automatic_tax")
        automatic_tax = bool(as_bool(tax_params, "enabled", "automatic_tax[enabled]"))

        session_id = new_id("cs_test_a1", 56)
        items, currency = self._line_items(params.get("line_items"), session_id)
        if automatic_tax and any(i["price"]["tax_behavior"] != "exclusive" for i in items):
            raise StripeApiError(
                "The local Stripe server's automatic tax handles tax-exclusive prices only: set "
                "line_items[][price_data][tax_behavior]=exclusive.",
                param="automatic_tax[enabled]",
            )
        amount = sum(item["amount_total"] for item in items)
        minimum = currencies.MINIMUM_CHARGE[currency]
        if amount < minimum:
            raise StripeApiError(
                "The Checkout Session's total amount due must add up to at least "
                f"{currencies.display(minimum, currency)}"
            )
        if amount > 99_999_999:
            raise StripeApiError(
                "The Checkout Session's total amount due must be no more than "
                f"{currencies.display(99_999_999, currency)}"
            )

        session: Obj = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": allow_promotion_codes,
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": (
                {"enabled": True, "liability": {"type": "self"}, "status": "complete"}
                if automatic_tax
                else {"enabled": False, "liability": None, "status": None}
            ),
            "billing_address_collection": None,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "client_secret": None,
            "consent": None,
            "consent_collection": None,
            "created": created,
            "currency": currency,
            "custom_fields": [],
            "customer": None,
            "customer_creation": "if_required",
            "customer_details": None,
            "customer_email": customer_email,
            "discounts": [],
            "expires_at": expires_at,
            "invoice": None,
            "livemode": False,
            "locale": as_str(params, "locale"),
            "metadata": session_metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "if_required",
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "recovered_from": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": as_str(params, "submit_type"),
            "subscription": None,
            "success_url": success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{self.public_url}/pay/{session_id}",
        }
        promotions.apply_totals(session, items, None, self.tax_percent)
        with self.lock:
            self.sessions[session_id] = session
            self.line_items[session_id] = items
            self._pi_data[session_id] = pi_data
            return session

    def _line_items(self, raw: Any, session_id: str) -> tuple[list[Obj], str]:
        entries = as_list(raw)
        if not entries:
            raise missing_param("line_items")
        items: list[Obj] = []
        currency: str | None = None
        for index, entry in enumerate(entries):
            prefix = f"line_items[{index}]"
            entry = as_dict(entry, prefix)
            if "price" in entry:
                price_id = as_str(entry, "price", f"{prefix}[price]") or ""
                raise no_such("price", price_id, f"{prefix}[price]")
            price_data = as_dict(entry.get("price_data"), f"{prefix}[price_data]")
            if not price_data:
                raise missing_param(f"{prefix}[price_data]")
            item_currency = as_str(price_data, "currency", f"{prefix}[price_data][currency]")
            if not item_currency:
                raise missing_param(f"{prefix}[price_data][currency]")
            item_currency = item_currency.lower()
            if not currencies.is_supported(item_currency):
                raise StripeApiError(
                    f"Invalid currency: {item_currency}. The local Stripe server supports: "
                    + ", ".join(sorted(currencies.MINIMUM_CHARGE))
                    + ".",
                    param=f"{prefix}[price_data][currency]",
                )
            if currency is not None and item_currency != currency:
                raise StripeApiError(
                    "All line items must use the same currency.",
                    param=f"{prefix}[price_data][currency]",
                )
            currency = item_currency
            unit_amount = as_int(price_data, "unit_amount", f"{prefix}[price_data][unit_amount]")
            if unit_amount is None:
                raise missing_param(f"{prefix}[price_data][unit_amount]")
            if unit_amount < 0:
                raise StripeApiError(
                    "This value must be greater than or equal to 0.",
                    param=f"{prefix}[price_data][unit_amount]",
                )
            tax_behavior = as_str(price_data, "tax_behavior", f"{prefix}[price_data][tax_behavior]")
            if tax_behavior not in (None, "exclusive", "inclusive", "unspecified"):
                raise StripeApiError(
                    "Invalid tax_behavior: must be one of exclusive, inclusive, or unspecified",
                    param=f"{prefix}[price_data][tax_behavior]",
                )
            product_data = as_dict(
                price_data.get("product_data"), f"{prefix}[price_data][product_data]"
            )
            name = as_str(product_data, "name", f"{prefix}[price_data][product_data][name]")
            if not name:
                raise missing_param(f"{prefix}[price_data][product_data][name]")
            quantity = as_int(entry, "quantity", f"{prefix}[quantity]")
            if quantity is None:
                raise missing_param(f"{prefix}[quantity]")
            if quantity < 1:
                raise StripeApiError(
                    "This value must be greater than or equal to 1.", param=f"{prefix}[quantity]"
                )
            total = unit_amount * quantity
            items.append(
                {
                    "id": new_id("li_1"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": total,
                    "amount_tax": 0,
                    "amount_total": total,
                    "currency": item_currency,
                    "description": name,
                    "price": {
                        "id": new_id("price_1"),
                        "object": "price",
                        "active": False,
                        "currency": item_currency,
                        "livemode": False,
                        "metadata": {},
                        "product": new_id("prod_"),
                        "tax_behavior": tax_behavior or "unspecified",
                        "type": "one_time",
                        "unit_amount": unit_amount,
                    },
                    "quantity": quantity,
                }
            )
        assert currency is not None
        return items, currency

    def expire_session(self, session_id: str, request: Obj | None = None) -> Obj:
        """Expire an open session (API or Stripe-side expiry); send `checkout.session.expired`."""
        with self.lock:
            session = self.get("checkout.session", session_id, "session")
            if session["status"] != "open":
                raise StripeApiError(
                    'Only Checkout Sessions with a status in ["open"] can be expired. This '
                    f"Checkout Session has a status of `{session['status']}`."
                )
            session["status"] = "expired"
            session["url"] = None
            self.emit("checkout.session.expired", session, stream=session_id, request=request)
            return session

    def expire_due_sessions(self) -> list[str]:
        """Expire every open session whose `expires_at` has passed; return their ids."""
        with self.lock:
            due = [
                s["id"]
                for s in self.sessions.values()
                if s["status"] == "open" and s["expires_at"] <= now()
            ]
            for session_id in due:
                self.expire_session(session_id)
            return due

    def decline(self, session_id: str, reason: str = "generic_decline") -> str:
        """Record a declined payment attempt; the session stays open and nothing is charged."""
        with self.lock:
            session = self._open_session(session_id)
            self.declines[session["id"]] = self.declines.get(session["id"], 0) + 1
            for code, message in DECLINING_CARDS.values():
                if code == reason:
                    return message
            return "Your card was declined."

    def _open_session(self, session_id: str) -> Obj:
        session = self.get("checkout.session", session_id, "session")
        if session["status"] != "open":
            raise StripeApiError(
                f"This Checkout Session is no longer open (status `{session['status']}`).",
                code="checkout_session_not_open",
            )
        return session

    def pay(self, session_id: str, email: str | None = None, card: str | None = None) -> Obj:
        """Pay an open session as the hosted page's Pay button does, and send the completion event.

        Creates a succeeded PaymentIntent with one charge, completes the session, and emits
        `checkout.session.completed`. A declining test card raises `CardDeclined` instead. A
        session whose promotion code brought the total to zero completes with no PaymentIntent
        and `payment_status` `no_payment_required`, as Stripe's does.
        """
        with self.lock:
            session = self._open_session(session_id)
            # A customer_email given at creation is shown locked on the page, so it wins.
            email = (session["customer_email"] or email or DEFAULT_EMAIL).strip()
            if not _EMAIL.match(email):
                raise StripeApiError(
                    "Your email address is invalid.", param="email", code="email_invalid"
                )
            self._check_applied_code(session)
            if session["amount_total"] == 0:
                return self._complete(session, email, None, "no_payment_required")
            digits = re.sub(r"[\s-]", "", card or DEFAULT_CARD)
            if not digits.isdigit() or not 12 <= len(digits) <= 19:
                raise StripeApiError(
                    "Your card number is incomplete.", param="card", code="incomplete_number"
                )
            if not _luhn_ok(digits):
                raise StripeApiError(
                    "Your card number is invalid.", param="card", code="invalid_number"
                )
            if digits in DECLINING_CARDS:
                code, message = DECLINING_CARDS[digits]
                self.decline(session_id, code)
                raise CardDeclined(code, message)

            created = now()
            amount = session["amount_total"]
            currency = session["currency"]
            pi_data = self._pi_data.get(session_id, {})
            pi_id = new_id("pi_3")
            charge_id = new_id("ch_3")
            pm_id = new_id("pm_1")
            billing: Obj = {
                "address": dict(BILLING_ADDRESS),
                "email": email,
                "name": None,
                "phone": None,
            }
            self.payment_intents[pi_id] = {
                "id": pi_id,
                "object": "payment_intent",
                "amount": amount,
                "amount_capturable": 0,
                "amount_details": {"tip": {}},
                "amount_received": amount,
                "application": None,
                "application_fee_amount": None,
                "automatic_payment_methods": None,
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": "automatic_async",
                "client_secret": f"{pi_id}_secret_{new_id('', 25)}",
                "confirmation_method": "automatic",
                "created": created,
                "currency": currency,
                "customer": None,
                "description": pi_data.get("description"),
                "last_payment_error": None,
                "latest_charge": charge_id,
                "livemode": False,
                "metadata": dict(pi_data.get("metadata", {})),
                "next_action": None,
                "on_behalf_of": None,
                "payment_method": pm_id,
                "payment_method_types": ["card"],
                "processing": None,
                "receipt_email": pi_data.get("receipt_email"),
                "review": None,
                "setup_future_usage": None,
                "shipping": None,
                "statement_descriptor": None,
                "statement_descriptor_suffix": None,
                "status": "succeeded",
                "transfer_data": None,
                "transfer_group": None,
            }
            self.charges[charge_id] = {
                "id": charge_id,
                "object": "charge",
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": 0,
                "application": None,
                "application_fee": None,
                "application_fee_amount": None,
                "balance_transaction": new_id("txn_3"),
                "billing_details": billing,
                "calculated_statement_descriptor": "LOCAL STRIPE",
                "captured": True,
                "created": created,
                "currency": currency,
                "customer": None,
                "description": pi_data.get("description"),
                "disputed": False,
                "failure_balance_transaction": None,
                "failure_code": None,
                "failure_message": None,
                "fraud_details": {},
                "livemode": False,
                "metadata": dict(pi_data.get("metadata", {})),
                "on_behalf_of": None,
                "outcome": {
                    "network_status": "approved_by_network",
                    "reason": None,
                    "risk_level": "normal",
                    "risk_score": 12,
                    "seller_message": "Payment complete.",
                    "type": "authorized",
                },
                "paid": True,
                "payment_intent": pi_id,
                "payment_method": pm_id,
                "payment_method_details": {
                    "card": {
                        "brand": _brand(digits),
                        "country": "US",
                        "exp_month": 12,
                        "exp_year": 2034,
                        "funding": "credit",
                        "last4": digits[-4:],
                        "network": _brand(digits),
                    },
                    "type": "card",
                },
                "receipt_email": pi_data.get("receipt_email"),
                "receipt_number": None,
                "receipt_url": None,
                "refunded": False,
                "review": None,
                "shipping": None,
                "source_transfer": None,
                "statement_descriptor": None,
                "statement_descriptor_suffix": None,
                "status": "succeeded",
                "transfer_data": None,
                "transfer_group": None,
            }
            self._session_of[pi_id] = session_id
            self._session_of[charge_id] = session_id
            return self._complete(session, email, pi_id, "paid")

    def _complete(
        self, session: Obj, email: str, intent_id: str | None, payment_status: str
    ) -> Obj:
        """Close a session paid (or free), count its code's redemption, and send the event."""
        session_id = session["id"]
        promotion_id = self._session_promotion.pop(session_id, None)
        if promotion_id is not None:
            promotion = self.promotion_codes[promotion_id]
            promotion["times_redeemed"] += 1
            promotion["coupon"]["times_redeemed"] += 1
        session.update(
            {
                "status": "complete",
                "payment_status": payment_status,
                "payment_intent": intent_id,
                "url": None,
                "customer_details": {
                    "address": dict(BILLING_ADDRESS),
                    "email": email,
                    "name": None,
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                },
            }
        )
        self.emit("checkout.session.completed", session, stream=session_id)
        return session

    # ----------------------------------------------------------------- promotion codes

    def create_promotion_code(
        self,
        code: str,
        *,
        percent_off: Decimal | None = None,
        amount_off: int | None = None,
        currency: str | None = None,
        max_redemptions: int | None = None,
        active: bool = True,
    ) -> Obj:
        """Create a coupon and the customer-facing promotion code that redeems it."""
        if not promotions.CODE_PATTERN.match(code or ""):
            raise StripeApiError("A code is 1 to 200 letters, digits, '-' or '_'.", param="code")
        if (percent_off is None) == (amount_off is None):
            raise StripeApiError(
                "Give exactly one of percent_off or amount_off.", param="percent_off"
            )
        if amount_off is not None:
            if amount_off <= 0:
                raise StripeApiError("This value must be greater than 0.", param="amount_off")
            currency = (currency or "").lower()
            if not currencies.is_supported(currency):
                raise StripeApiError("amount_off needs a supported currency.", param="currency")
        if max_redemptions is not None and max_redemptions < 1:
            raise StripeApiError(
                "This value must be greater than or equal to 1.", param="max_redemptions"
            )
        with self.lock:
            taken = [
                p
                for p in self.promotion_codes.values()
                if p["active"] and p["code"].lower() == code.lower()
            ]
            if taken and active:
                raise StripeApiError(
                    f"An active promotion code with `code: {code}` already exists.",
                    param="code",
                    code="resource_already_exists",
                )
            created = now()
            coupon: Obj = {
                "id": new_id("", 8),
                "object": "coupon",
                "amount_off": amount_off,
                "created": created,
                "currency": currency if amount_off is not None else None,
                "duration": "once",
                "livemode": False,
                "max_redemptions": None,
                "metadata": {},
                "name": None,
                "percent_off": float(percent_off) if percent_off is not None else None,
                "times_redeemed": 0,
                "valid": True,
            }
            promotion: Obj = {
                "id": new_id("promo_1"),
                "object": "promotion_code",
                "active": active,
                "code": code,
                "coupon": coupon,
                "created": created,
                "customer": None,
                "expires_at": None,
                "livemode": False,
                "max_redemptions": max_redemptions,
                "metadata": {},
                "restrictions": {
                    "first_time_transaction": False,
                    "minimum_amount": None,
                    "minimum_amount_currency": None,
                },
                "times_redeemed": 0,
            }
            self.promotion_codes[promotion["id"]] = promotion
            return promotion

    def set_promotion_code_active(self, code: str, active: bool) -> Obj:
        """Turn a promotion code (by its code, any case) on or off."""
        with self.lock:
            for promotion in reversed(list(self.promotion_codes.values())):
                if promotion["code"].lower() == code.lower():
                    promotion["active"] = active
                    return promotion
            raise no_such("promotion code", code, "code")

    def apply_promotion_code(self, session_id: str, code: str) -> Obj:
        """Apply a code the buyer typed to an open session that allows codes; new totals."""
        with self.lock:
            session = self._open_session(session_id)
            if not session["allow_promotion_codes"]:
                raise StripeApiError(
                    "This Checkout Session does not accept promotion codes.",
                    param="promotion_code",
                )
            wanted = code.strip().lower()
            found = [p for p in self.promotion_codes.values() if p["code"].lower() == wanted]
            if not wanted or not found:
                raise StripeApiError(
                    "This code is invalid.", param="promotion_code", code="promotion_code_invalid"
                )
            # An active code wins over an old, inactive one of the same name.
            promotion = sorted(found, key=lambda p: (p["active"], p["created"]))[-1]
            promotions.check_redeemable(promotion, session["currency"])
            items = self.line_items[session_id]
            trial = copy.deepcopy(session)
            promotions.apply_totals(
                trial, copy.deepcopy(items), promotion["coupon"], self.tax_percent
            )
            promotions.check_minimum(trial)
            self._session_promotion[session_id] = promotion["id"]
            self._retotal(session)
            return session

    def remove_promotion_code(self, session_id: str) -> Obj:
        """Take the applied code off an open session."""
        with self.lock:
            session = self._open_session(session_id)
            self._session_promotion.pop(session_id, None)
            self._retotal(session)
            return session

    def applied_promotion_code(self, session_id: str) -> Obj | None:
        """The promotion code applied to a session that is still open, if any."""
        with self.lock:
            promotion_id = self._session_promotion.get(session_id)
            return self.promotion_codes.get(promotion_id) if promotion_id else None

    def _retotal(self, session: Obj) -> None:
        promotion = self.applied_promotion_code(session["id"])
        coupon = promotion["coupon"] if promotion else None
        promotions.apply_totals(session, self.line_items[session["id"]], coupon, self.tax_percent)
        session["discounts"] = (
            [{"coupon": coupon["id"], "promotion_code": promotion["id"]}]
            if promotion and coupon
            else []
        )

    def _check_applied_code(self, session: Obj) -> None:
        """At Pay: a code deactivated or used up since it was applied comes off, and Pay fails."""
        promotion = self.applied_promotion_code(session["id"])
        if promotion is None:
            return
        try:
            promotions.check_redeemable(promotion, session["currency"])
        except StripeApiError:
            self._session_promotion.pop(session["id"], None)
            self._retotal(session)
            raise StripeApiError(
                f"The code {promotion['code']} is no longer available and has been removed; "
                "check the new total.",
                code="promotion_code_inactive",
            ) from None

    # ----------------------------------------------------------------- refunds and disputes

    def _stream_of(self, charge: Obj) -> str:
        charge_id = str(charge["id"])
        return self._session_of.get(charge_id, charge_id)

    def _charge_for(self, object_id: str, param: str) -> Obj:
        if object_id.startswith("pi_"):
            intent = self.get("payment_intent", object_id, param)
            if not intent.get("latest_charge"):
                raise StripeApiError(
                    "This PaymentIntent does not have a successful charge to refund.",
                    param=param,
                    code="charge_not_refundable",
                )
            return self.charges[intent["latest_charge"]]
        return self.get("charge", object_id, param)

    def create_refund(self, params: Params, request: Obj | None = None) -> Obj:
        """Refund a charge (by `payment_intent` or `charge`), fully or partly; emit the events."""
        with self.lock:
            intent_id = as_str(params, "payment_intent")
            charge_id = as_str(params, "charge")
            if intent_id and charge_id:
                raise StripeApiError(
                    "You can only specify one of these parameters: charge, payment_intent.",
                    param="charge",
                )
            if not intent_id and not charge_id:
                raise StripeApiError(
                    "One of the following params should be provided for this request: "
                    "payment_intent or charge."
                )
            if intent_id:
                charge = self._charge_for(intent_id, "payment_intent")
            else:
                charge = self._charge_for(charge_id or "", "charge")
            currency = charge["currency"]
            if charge["disputed"]:
                raise StripeApiError(
                    f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                    code="charge_disputed",
                )
            remaining = charge["amount_captured"] - charge["amount_refunded"]
            if remaining <= 0:
                raise StripeApiError(
                    f"Charge {charge['id']} has already been refunded.",
                    code="charge_already_refunded",
                )
            amount = as_int(params, "amount")
            if amount is None:
                amount = remaining
            elif amount <= 0:
                raise StripeApiError(
                    "Invalid positive integer", param="amount", code="parameter_invalid_integer"
                )
            elif amount > remaining:
                raise StripeApiError(
                    f"Refund amount ({currencies.display_short(amount, currency)}) is greater "
                    "than unrefunded amount on charge "
                    f"({currencies.display_short(remaining, currency)})",
                    param="amount",
                )
            reason = as_str(params, "reason") or None
            if reason is not None and reason not in REFUND_REASONS:
                raise StripeApiError(
                    "Invalid reason: must be one of duplicate, fraudulent, or "
                    "requested_by_customer",
                    param="reason",
                )
            refund_metadata = metadata(params.get("metadata"), "metadata")
            refund: Obj = {
                "id": new_id("re_3"),
                "object": "refund",
                "amount": amount,
                "balance_transaction": new_id("txn_3"),
                "charge": charge["id"],
                "created": now(),
                "currency": currency,
                "destination_details": {
                    "card": {
                        "reference_status": "pending",
                        "reference_type": "acquirer_reference_number",
                        "type": "refund",
                    },
                    "type": "card",
                },
                "metadata": refund_metadata,
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "succeeded",
                "transfer_reversal": None,
            }
            self.refunds[refund["id"]] = refund
            previous: Obj = {"amount_refunded": charge["amount_refunded"]}
            charge["amount_refunded"] += amount
            if charge["amount_refunded"] >= charge["amount_captured"]:
                previous["refunded"] = charge["refunded"]
                charge["refunded"] = True
            stream = self._stream_of(charge)
            # Current API versions no longer expand `refunds` on a charge; the event carries them
            # anyway so a handler can see which refund it is about, but `amount_refunded` and
            # `refunded` are the fields a handler should rely on.
            event_charge = dict(charge, refunds=self._refunds_list(charge["id"]))
            self.emit(
                "charge.refunded", event_charge, stream=stream, previous=previous, request=request
            )
            self.emit("refund.created", refund, stream=stream, request=request)
            return refund

    def dispute(self, object_id: str, reason: str = "fraudulent", amount: int | None = None) -> Obj:
        """Open a dispute on a charge (or its PaymentIntent); send `charge.dispute.created`."""
        with self.lock:
            charge = self._charge_for(object_id, "charge")
            if charge["disputed"]:
                raise StripeApiError(f"Charge {charge['id']} is already disputed.")
            if reason not in DISPUTE_REASONS:
                raise StripeApiError(
                    "Invalid reason: must be one of " + ", ".join(DISPUTE_REASONS), param="reason"
                )
            created = now()
            dispute: Obj = {
                "id": new_id("dp_1"),
                "object": "dispute",
                "amount": amount if amount is not None else charge["amount"],
                "balance_transactions": [],
                "charge": charge["id"],
                "created": created,
                "currency": charge["currency"],
                "evidence": {},
                "evidence_details": {
                    "due_by": created + 7 * 24 * 3600,
                    "has_evidence": False,
                    "past_due": False,
                    "submission_count": 0,
                },
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "status": "needs_response",
            }
            self.disputes[dispute["id"]] = dispute
            charge["disputed"] = True
            stream = self._stream_of(charge)
            self.emit("charge.dispute.created", dispute, stream=stream)
            return dispute


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _brand(digits: str) -> str:
    if digits.startswith("4"):
        return "visa"
    if digits[:2] in {"51", "52", "53", "54", "55"} or digits[:1] == "2":
        return "mastercard"
    if digits[:2] in {"34", "37"}:
        return "amex"
    return "unknown"
