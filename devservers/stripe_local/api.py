"""The `/v1` subset of Stripe's API: authentication, idempotency, simulated outages, endpoints."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, request

from .context import runtime
from .errors import StripeApiError
from .params import Params, as_list, as_str, decode, fingerprint
from .store import IdempotentResult, Obj, new_id

bp = Blueprint("api", __name__, url_prefix="/v1")

View = Callable[..., Obj]

_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)


def json_response(body: Obj, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Return a JSON response laid out as Stripe's are."""
    return Response(
        json.dumps(body, indent=2) + "\n",
        status=status,
        headers=headers or {},
        mimetype="application/json",
    )


def error_response(error: StripeApiError, headers: dict[str, str] | None = None) -> Response:
    """Return the Stripe-shaped JSON response for an error."""
    return json_response(error.body(), error.status, headers)


def _mask(key: str) -> str:
    return key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "*" * len(key)


def _api_key() -> str:
    """Return the caller's test secret key (Bearer or Basic auth), or raise Stripe's 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credential.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(credential).decode().partition(":")[0]
        except ValueError:
            key = ""
    if not key:
        raise StripeApiError(_NO_KEY, status=401)
    if not key.startswith(("sk_test_", "rk_test_")) or len(key) <= len("sk_test_"):
        # Stripe's 401 body carries type invalid_request_error; the SDK maps any 401 to
        # stripe.AuthenticationError.
        raise StripeApiError(f"Invalid API Key provided: {_mask(key)}", status=401)
    return key


def stripe_endpoint(view: View) -> Callable[..., Response]:
    """Wrap an endpoint with Stripe's request handling.

    In order: authentication, any armed simulated failure, due session expiry, idempotent
    replay (POST), the endpoint itself under the state lock, then `expand[]`.
    """

    @functools.wraps(view)
    def wrapper(**kwargs: Any) -> Response:
        rt = runtime()
        state = rt.state
        request_id = new_id("req_", 14)
        headers = {"Request-Id": request_id}
        try:
            api_key = _api_key()
        except StripeApiError as error:
            return error_response(error, headers)
        version = request.headers.get("Stripe-Version")
        if version:
            headers["Stripe-Version"] = version
            state.api_version = version
        failure = state.take_failure(request.path)
        if failure is not None:
            g.note = "simulated failure"
            return error_response(failure, headers)
        state.expire_due_sessions()

        if request.method == "POST":
            pairs = list(request.form.items(multi=True))
        else:
            pairs = list(request.args.items(multi=True))
        idempotency_key = None
        if request.method == "POST":
            idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key

        with state.lock:
            if idempotency_key:
                saved = state.idempotency.get((api_key, idempotency_key))
                if saved is not None:
                    return _replay(saved, pairs, idempotency_key, headers)
            params = decode(pairs)
            req = {"id": request_id, "idempotency_key": idempotency_key}
            try:
                body = view(params, req, **kwargs)
                paths = [p for p in as_list(params.get("expand")) if isinstance(p, str)]
                if paths:
                    body = state.expand(body, paths)
            except StripeApiError as error:
                # Stripe saves no idempotent result for a request refused before it ran.
                return error_response(error, headers)
            response = json_response(body, 200, headers)
            if idempotency_key:
                state.idempotency[(api_key, idempotency_key)] = IdempotentResult(
                    endpoint=request.path,
                    fingerprint=fingerprint(pairs),
                    status=200,
                    body=response.get_data(),
                )
            return response

    return wrapper


def _replay(
    saved: IdempotentResult,
    pairs: list[tuple[str, str]],
    key: str,
    headers: dict[str, str],
) -> Response:
    if saved.endpoint != request.path:
        return error_response(
            StripeApiError(
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{request.path}' vs '{saved.endpoint}'). Try using a key "
                f"other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            ),
            headers,
        )
    if saved.fingerprint != fingerprint(pairs):
        return error_response(
            StripeApiError(
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            ),
            headers,
        )
    g.note = "idempotent replay"
    return Response(
        saved.body,
        status=saved.status,
        headers={**headers, "Idempotent-Replayed": "true"},
        mimetype="application/json",
    )


@bp.post("/checkout/sessions")
@stripe_endpoint
def create_checkout_session(params: Params, req: Obj) -> Obj:
    """Create a Checkout Session."""
    session = runtime().state.create_session(params, req)
    g.note = session["id"]
    return session


@bp.get("/checkout/sessions/<session_id>")
@stripe_endpoint
def retrieve_checkout_session(params: Params, req: Obj, session_id: str) -> Obj:
    """Retrieve a Checkout Session."""
    return runtime().state.get("checkout.session", session_id, "session")


@bp.get("/checkout/sessions/<session_id>/line_items")
@stripe_endpoint
def list_line_items(params: Params, req: Obj, session_id: str) -> Obj:
    """List a Checkout Session's line items."""
    state = runtime().state
    state.get("checkout.session", session_id, "session")
    return state.line_items_list(session_id)


@bp.post("/checkout/sessions/<session_id>/expire")
@stripe_endpoint
def expire_checkout_session(params: Params, req: Obj, session_id: str) -> Obj:
    """Expire an open Checkout Session."""
    return runtime().state.expire_session(session_id, req)


@bp.get("/payment_intents/<intent_id>")
@stripe_endpoint
def retrieve_payment_intent(params: Params, req: Obj, intent_id: str) -> Obj:
    """Retrieve a PaymentIntent."""
    return runtime().state.get("payment_intent", intent_id, "intent")


@bp.get("/charges/<charge_id>")
@stripe_endpoint
def retrieve_charge(params: Params, req: Obj, charge_id: str) -> Obj:
    """Retrieve a charge."""
    return runtime().state.get("charge", charge_id, "charge")


@bp.post("/refunds")
@stripe_endpoint
def create_refund(params: Params, req: Obj) -> Obj:
    """Refund all or part of a payment."""
    refund = runtime().state.create_refund(params, req)
    g.note = refund["id"]
    return refund


@bp.get("/refunds")
@stripe_endpoint
def list_refunds(params: Params, req: Obj) -> Obj:
    """List refunds, optionally of one PaymentIntent or charge."""
    return runtime().state.list_refunds(as_str(params, "payment_intent"), as_str(params, "charge"))


@bp.get("/refunds/<refund_id>")
@stripe_endpoint
def retrieve_refund(params: Params, req: Obj, refund_id: str) -> Obj:
    """Retrieve a refund."""
    return runtime().state.get("refund", refund_id, "refund")


@bp.get("/events/<event_id>")
@stripe_endpoint
def retrieve_event(params: Params, req: Obj, event_id: str) -> Obj:
    """Retrieve an event."""
    return runtime().state.get("event", event_id, "id")


@bp.route("/<path:rest>", methods=["GET", "POST", "DELETE", "PUT", "PATCH"])
@stripe_endpoint
def unrecognized(params: Params, req: Obj, rest: str) -> Obj:
    """Answer any other `/v1` URL as Stripe does."""
    raise StripeApiError(
        f"Unrecognized request URL ({request.method}: {request.path}). Please see "
        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        status=404,
    )
