"""The local Stripe-compatible server, driven through the real stripe SDK and plain HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from devservers.stripe_local import LocalStripe, start_server

API_KEY = "sk_test_local_4eC39HqLyjWDarjtT1zdp7dc"
WEBHOOK_SECRET = "whsec_test_local_secret"
SUCCESS_URL = "http://shop.test/orders/job-1?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://shop.test/images/7"
REPO_ROOT = Path(__file__).resolve().parents[1]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class WebhookReceiver:
    """A tiny webhook endpoint in a thread: records each POST, answers scripted statuses."""

    def __init__(self) -> None:
        from devservers.common import ServerThread

        self.received: list[tuple[bytes, str]] = []
        self._statuses: deque[int] = deque()
        self._cond = threading.Condition()
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self._server.port}/webhooks/stripe"
        self._serving = ServerThread(self._server, name="webhook-receiver")
        self._serving.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        body = request.get_data()
        with self._cond:
            status = self._statuses.popleft() if self._statuses else 200
            self.received.append((body, request.headers.get("Stripe-Signature", "")))
            self._cond.notify_all()
        return Response("ok", status=status)(environ, start_response)

    def answer_next(self, *statuses: int) -> None:
        """Answer the next deliveries with these statuses (then 200)."""
        with self._cond:
            self._statuses.extend(statuses)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[stripe.Event]:
        """Wait for `count` deliveries and return them verified as the SDK verifies them."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.received) >= count, timeout), (
                f"expected {count} deliveries, got {len(self.received)}"
            )
            received = list(self.received)
        return [
            stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
            for body, signature in received
        ]

    def close(self) -> None:
        """Stop the endpoint."""
        self._serving.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook endpoint the server delivers to."""
    endpoint = WebhookReceiver()
    yield endpoint
    endpoint.close()


@pytest.fixture
def server(receiver: WebhookReceiver) -> Iterator[LocalStripe]:
    """The local Stripe server, in process on a free port, with fast retries."""
    with start_server(
        webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, retry_scale=0.01
    ) as local:
        yield local


def make_client(api_base: str, api_key: str = API_KEY) -> tuple[stripe.StripeClient, Any]:
    """Return a StripeClient pointed at the local server, and its HTTP client to close."""
    http_client = stripe.RequestsClient()
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base},
        http_client=http_client,
        max_network_retries=0,
    )
    return client, http_client


@pytest.fixture
def client(server: LocalStripe) -> Iterator[stripe.StripeClient]:
    """The real SDK pointed at the local server."""
    sdk, http_client = make_client(server.url)
    yield sdk
    http_client.close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """Plain HTTP, for the hosted page and the control endpoints."""
    with requests.Session() as session:
        yield session


def session_params(**overrides: Any) -> dict[str, Any]:
    """Return the Checkout Session parameters the storefront sends, with overrides."""
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 192,
                    "product_data": {"name": "Sunset over the bay (4x)"},
                },
                "quantity": 1,
            }
        ],
        "customer_email": "ada@example.com",
        "client_reference_id": "job-1",
        "metadata": {"job_id": "job-1"},
        "payment_intent_data": {"metadata": {"job_id": "job-1"}},
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "expires_at": int(time.time()) + 3600,
    }
    params.update(overrides)
    return params


def paid_session(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> stripe.checkout.Session:
    """Create a session and pay it through the control endpoint."""
    created = client.v1.checkout.sessions.create(params=session_params())
    response = http.post(f"{server.url}/_local/checkout/sessions/{created.id}/pay")
    assert response.status_code == 200
    return client.v1.checkout.sessions.retrieve(created.id)


# ----------------------------------------------------------------------------- sessions


def test_create_returns_an_open_stripe_shaped_session(
    client: stripe.StripeClient, server: LocalStripe
) -> None:
    expires_at = int(time.time()) + 3600
    session = client.v1.checkout.sessions.create(params=session_params(expires_at=expires_at))

    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert session.livemode is False
    assert session.status == "open"
    assert session.payment_status == "unpaid"
    assert session.amount_total == 192
    assert session.currency == "usd"
    assert session.expires_at == expires_at
    assert session.metadata.to_dict() == {"job_id": "job-1"}
    assert session.client_reference_id == "job-1"
    assert session.customer_email == "ada@example.com"
    assert session.customer_details is None
    assert session.payment_intent is None
    assert session.success_url == SUCCESS_URL
    assert session.url == f"{server.url}/pay/{session.id}"


def test_retrieve_returns_the_same_session_and_expands_harmlessly(
    client: stripe.StripeClient,
) -> None:
    created = client.v1.checkout.sessions.create(params=session_params())

    fetched = client.v1.checkout.sessions.retrieve(
        created.id, params={"expand": ["payment_intent", "line_items"]}
    )

    assert fetched.id == created.id
    assert fetched.payment_intent is None
    assert fetched.line_items.data[0].description == "Sunset over the bay (4x)"
    assert fetched.line_items.data[0].amount_total == 192


def test_unknown_session_is_a_missing_resource(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.retrieve("cs_test_nope")

    assert raised.value.http_status == 404
    assert raised.value.code == "resource_missing"
    assert "No such checkout.session: 'cs_test_nope'" in str(raised.value.user_message)


def test_expire_sends_the_expired_event_and_refuses_a_second_expire(
    client: stripe.StripeClient, server: LocalStripe, receiver: WebhookReceiver
) -> None:
    created = client.v1.checkout.sessions.create(params=session_params())

    expired = client.v1.checkout.sessions.expire(created.id)

    assert expired.status == "expired"
    assert expired.url is None
    (event,) = receiver.wait_for(1)
    assert event.type == "checkout.session.expired"
    assert event.data.object.id == created.id
    assert event.data.object.status == "expired"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.expire(created.id)
    assert 'Only Checkout Sessions with a status in ["open"] can be expired' in str(
        raised.value.user_message
    )
    assert "status of `expired`" in str(raised.value.user_message)


def test_stripe_side_expiry_via_control_endpoint(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    created = client.v1.checkout.sessions.create(params=session_params())

    response = http.post(f"{server.url}/_local/checkout/sessions/{created.id}/expire")

    assert response.status_code == 200
    assert response.json()["status"] == "expired"
    (event,) = receiver.wait_for(1)
    assert event.type == "checkout.session.expired"


def test_a_session_past_expires_at_expires_by_itself(
    client: stripe.StripeClient, server: LocalStripe, receiver: WebhookReceiver
) -> None:
    created = client.v1.checkout.sessions.create(params=session_params())
    with server.state.lock:
        server.state.sessions[created.id]["expires_at"] = int(time.time()) - 1

    fetched = client.v1.checkout.sessions.retrieve(created.id)

    assert fetched.status == "expired"
    assert [e.type for e in receiver.wait_for(1)] == ["checkout.session.expired"]


def _line_item(**price_data: Any) -> list[dict[str, Any]]:
    """Return one line item with these price_data overrides."""
    data: dict[str, Any] = {
        "currency": "usd",
        "unit_amount": 192,
        "product_data": {"name": "Photo"},
    }
    data.update(price_data)
    return [{"price_data": data, "quantity": 1}]


@pytest.mark.parametrize(
    ("overrides", "param", "message"),
    [
        ({"line_items": None}, "line_items", "Missing required param: line_items."),
        (
            {"line_items": _line_item(unit_amount=49)},
            None,
            "total amount due must add up to at least $0.50 usd",
        ),
        (
            {"line_items": _line_item(currency="gbp", unit_amount=29)},
            None,
            "at least £0.30 gbp",
        ),
        (
            {"expires_at": int(time.time()) + 29 * 60},
            "expires_at",
            "must be at least 30 minutes",
        ),
        (
            {"expires_at": int(time.time()) + 25 * 3600},
            "expires_at",
            "must be less than 24 hours",
        ),
        ({"success_url": "/orders/1"}, "success_url", "Not a valid URL"),
        ({"success_url": None}, "success_url", "Missing required param: success_url."),
        ({"cancel_url": "images/7"}, "cancel_url", "Not a valid URL"),
        ({"mode": "rental"}, "mode", "Invalid mode"),
        ({"mode": "subscription"}, "mode", "only supports mode=payment"),
        (
            {"line_items": _line_item(currency="xyz")},
            "line_items[0][price_data][currency]",
            "Invalid currency: xyz",
        ),
        (
            {"line_items": [{"price_data": _line_item()[0]["price_data"]}]},
            "line_items[0][quantity]",
            "Missing required param",
        ),
        ({"customer_email": "not-an-email"}, "customer_email", "Invalid email address"),
    ],
)
def test_invalid_session_parameters_are_refused_like_stripe(
    client: stripe.StripeClient,
    server: LocalStripe,
    overrides: dict[str, Any],
    param: str | None,
    message: str,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.create(params=session_params(**overrides))

    assert raised.value.http_status == 400
    assert raised.value.param == param
    assert message in str(raised.value.user_message)
    assert raised.value.error is not None
    assert raised.value.error.type == "invalid_request_error"
    assert server.state.sessions == {}


def test_a_live_or_missing_api_key_is_refused(server: LocalStripe, http: requests.Session) -> None:
    live, http_client = make_client(server.url, api_key="sk_live_abcdefghijklmnop")
    try:
        with pytest.raises(stripe.AuthenticationError) as raised:
            live.v1.checkout.sessions.create(params=session_params())
    finally:
        http_client.close()
    assert raised.value.http_status == 401
    assert "sk_live_abcdefghijklmnop" not in str(raised.value.user_message)

    response = http.post(f"{server.url}/v1/checkout/sessions", data={"mode": "payment"})
    assert response.status_code == 401
    assert "You did not provide an API key" in response.json()["error"]["message"]
    assert server.state.sessions == {}


# ----------------------------------------------------------------------------- idempotency


def test_same_idempotency_key_and_params_replays_the_first_answer(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    params = session_params()
    options: stripe.RequestOptions = {"idempotency_key": "checkout-job-1"}

    first = client.v1.checkout.sessions.create(params=params, options=options)
    second = client.v1.checkout.sessions.create(params=params, options=options)

    assert second.id == first.id
    assert len(server.state.sessions) == 1
    raw = {"mode": "payment", "success_url": "http://shop.test/ok"}
    raw.update(
        {
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "500",
            "line_items[0][price_data][product_data][name]": "Photo",
            "line_items[0][quantity]": "1",
        }
    )
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "raw-1"}
    one = http.post(f"{server.url}/v1/checkout/sessions", data=raw, headers=headers)
    two = http.post(f"{server.url}/v1/checkout/sessions", data=raw, headers=headers)
    assert one.status_code == two.status_code == 200
    assert "Idempotent-Replayed" not in one.headers
    assert two.headers["Idempotent-Replayed"] == "true"
    assert two.json()["id"] == one.json()["id"]


def test_same_idempotency_key_with_other_params_is_an_idempotency_error(
    client: stripe.StripeClient, server: LocalStripe
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "checkout-job-2"}
    client.v1.checkout.sessions.create(params=session_params(), options=options)

    with pytest.raises(stripe.IdempotencyError) as raised:
        client.v1.checkout.sessions.create(
            params=session_params(client_reference_id="job-2"), options=options
        )

    assert raised.value.http_status == 400
    assert str(raised.value.user_message).startswith(
        "Keys for idempotent requests can only be used with the same parameters they were "
        "first used with."
    )
    assert len(server.state.sessions) == 1


def test_a_refused_request_saves_no_idempotent_result(
    client: stripe.StripeClient, server: LocalStripe
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "checkout-job-3"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(params=session_params(mode="rental"), options=options)

    session = client.v1.checkout.sessions.create(params=session_params(), options=options)

    assert session.status == "open"


# ----------------------------------------------------------------------------- paying


def test_pay_via_control_endpoint_completes_and_sends_a_signed_event(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    session = paid_session(client, server, http)

    assert session.status == "complete"
    assert session.payment_status == "paid"
    assert session.customer_details.email == "ada@example.com"
    assert session.payment_intent.startswith("pi_")
    (event,) = receiver.wait_for(1)
    assert event.type == "checkout.session.completed"
    assert event.id.startswith("evt_")
    assert event.livemode is False
    assert event.api_version == stripe.api_version
    assert event.data.object.id == session.id
    assert event.data.object.payment_status == "paid"
    assert event.data.object.payment_intent == session.payment_intent
    assert event.data.object.metadata.to_dict() == {"job_id": "job-1"}

    intent = client.v1.payment_intents.retrieve(session.payment_intent)
    assert intent.status == "succeeded"
    assert intent.amount == intent.amount_received == 192
    assert intent.currency == "usd"
    assert intent.latest_charge.startswith("ch_")
    assert intent.metadata.to_dict() == {"job_id": "job-1"}


def test_signature_does_not_verify_with_another_secret(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    paid_session(client, server, http)
    receiver.wait_for(1)
    body, signature = receiver.received[0]

    assert signature.startswith("t=") and ",v1=" in signature
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_someone_else")


def test_hosted_page_shows_the_order_with_prefilled_fields_and_three_buttons(
    client: stripe.StripeClient, http: requests.Session
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params())

    page = http.get(session.url)

    assert page.status_code == 200
    assert "Sunset over the bay (4x)" in page.text
    assert "1.92 USD" in page.text
    assert 'value="ada@example.com"' in page.text
    assert 'value="4242 4242 4242 4242"' in page.text
    for name in ("pay", "decline", "cancel"):
        assert f'<button type="submit" name="action" value="{name}"' in page.text


def test_hosted_page_without_customer_email_offers_an_editable_default(
    client: stripe.StripeClient, http: requests.Session
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params(customer_email=None))

    page = http.get(session.url)

    assert 'value="buyer@example.com"' in page.text
    assert "readonly" not in page.text


def test_hosted_pay_button_redirects_to_the_success_url_and_sends_the_event(
    client: stripe.StripeClient, receiver: WebhookReceiver, http: requests.Session
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params(customer_email=None))

    response = http.post(
        session.url,
        data={"action": "pay", "email": "grace@example.com", "card": "4242 4242 4242 4242"},
        allow_redirects=False,
    )

    assert response.status_code == 303
    assert response.headers["Location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session.id)
    (event,) = receiver.wait_for(1)
    assert event.type == "checkout.session.completed"
    assert event.data.object.customer_details.email == "grace@example.com"
    assert client.v1.checkout.sessions.retrieve(session.id).status == "complete"


def test_hosted_decline_button_shows_the_decline_and_charges_nothing(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params())

    response = http.post(session.url, data={"action": "decline"}, allow_redirects=False)

    assert response.status_code == 200
    assert "Your card was declined." in response.text
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert server.state.payment_intents == {}
    assert server.events() == []
    assert server.state.declines == {session.id: 1}


def test_a_declining_test_card_fails_on_pay(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params())

    response = http.post(
        session.url, data={"action": "pay", "card": "4000 0000 0000 9995"}, allow_redirects=False
    )

    assert response.status_code == 200
    assert "Your card has insufficient funds." in response.text
    assert server.state.payment_intents == {}


def test_hosted_cancel_button_goes_back_to_the_cancel_url(
    client: stripe.StripeClient, http: requests.Session
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params())

    response = http.post(session.url, data={"action": "cancel"}, allow_redirects=False)

    assert response.status_code == 303
    assert response.headers["Location"] == CANCEL_URL
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


def test_hosted_page_of_a_finished_session_says_so(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    completed = paid_session(client, server, http)
    expired = client.v1.checkout.sessions.create(params=session_params())
    client.v1.checkout.sessions.expire(expired.id)

    completed_page = http.get(f"{server.url}/pay/{completed.id}")
    expired_page = http.get(f"{server.url}/pay/{expired.id}")
    pay_again = http.post(f"{server.url}/pay/{completed.id}", data={"action": "pay"})

    assert "This payment is complete" in completed_page.text
    assert "<button" not in completed_page.text
    assert "This checkout session has expired" in expired_page.text
    assert pay_again.status_code == 409
    assert len(server.state.payment_intents) == 1
    assert http.get(f"{server.url}/pay/cs_test_unknown").status_code == 404


# ----------------------------------------------------------------------------- deliveries


def test_a_failed_delivery_is_retried_until_the_endpoint_answers_2xx(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    receiver.answer_next(500, 503)

    paid_session(client, server, http)

    events = receiver.wait_for(3)
    assert {e.id for e in events} == {events[0].id}
    assert server.wait_idle(5)
    deliveries = http.get(f"{server.url}/_local/deliveries").json()["data"]
    assert [(d["type"], d["attempt"], d["status"]) for d in deliveries] == [
        ("checkout.session.completed", 1, 500),
        ("checkout.session.completed", 2, 503),
        ("checkout.session.completed", 3, 200),
    ]


def test_an_unreachable_endpoint_is_retried_up_to_max_attempts() -> None:
    # Bound for the whole test and never listening: connections to it are refused, and nobody
    # else can start listening there meanwhile.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
        with start_server(
            webhook_url=dead_url, webhook_secret=WEBHOOK_SECRET, retry_scale=0.01, max_attempts=3
        ) as local:
            sdk, http_client = make_client(local.url)
            try:
                session = sdk.v1.checkout.sessions.create(params=session_params())
            finally:
                http_client.close()
            local.expire(session.id)

            assert local.wait_idle(5)
            attempts = local.deliveries()
    assert [(d["attempt"], d["status"], d["ok"]) for d in attempts] == [
        (1, None, False),
        (2, None, False),
        (3, None, False),
    ]
    assert all(d["error"] for d in attempts)


def test_events_of_one_session_arrive_in_order_even_when_retried(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    receiver.answer_next(500, 500)
    session = paid_session(client, server, http)

    client.v1.refunds.create(params={"payment_intent": session.payment_intent})

    events = receiver.wait_for(5)
    assert [e.type for e in events] == [
        "checkout.session.completed",
        "checkout.session.completed",
        "checkout.session.completed",
        "charge.refunded",
        "refund.created",
    ]


def test_resend_delivers_the_same_event_again(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    paid_session(client, server, http)
    (first,) = receiver.wait_for(1)

    response = http.post(f"{server.url}/_local/events/{first.id}/resend")

    assert response.status_code == 202
    events = receiver.wait_for(2)
    assert [e.id for e in events] == [first.id, first.id]
    assert receiver.received[0][0] == receiver.received[1][0]


def test_set_webhook_redirects_later_deliveries(
    client: stripe.StripeClient, server: LocalStripe, receiver: WebhookReceiver
) -> None:
    server.set_webhook(None)
    silent = client.v1.checkout.sessions.create(params=session_params())
    server.expire(silent.id)
    assert server.wait_idle(5)
    assert receiver.received == []

    server.set_webhook(receiver.url, WEBHOOK_SECRET)
    loud = client.v1.checkout.sessions.create(params=session_params())
    server.expire(loud.id)

    (event,) = receiver.wait_for(1)
    assert event.data.object.id == loud.id


# ----------------------------------------------------------------------------- refunds


def test_a_full_refund_sends_charge_refunded_and_a_second_is_refused(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    session = paid_session(client, server, http)
    intent = client.v1.payment_intents.retrieve(session.payment_intent)

    refund = client.v1.refunds.create(
        params={
            "payment_intent": intent.id,
            "reason": "requested_by_customer",
            "metadata": {"job_id": "job-1"},
        }
    )

    assert refund.id.startswith("re_")
    assert refund.amount == 192
    assert refund.status == "succeeded"
    assert refund.payment_intent == intent.id
    assert refund.charge == intent.latest_charge
    assert client.v1.refunds.retrieve(refund.id).amount == 192
    events = receiver.wait_for(3)
    refunded = next(e for e in events if e.type == "charge.refunded")
    charge = refunded.data.object
    assert charge.object == "charge"
    assert charge.id == intent.latest_charge
    assert charge.payment_intent == intent.id
    assert charge.amount == 192
    assert charge.amount_refunded == 192
    assert charge.refunded is True
    assert [r.id for r in charge.refunds.data] == [refund.id]
    assert refunded.data.previous_attributes.amount_refunded == 0
    created = next(e for e in events if e.type == "refund.created")
    assert created.data.object.id == refund.id
    listed = http.get(f"{server.url}/_local/refunds").json()["data"]
    assert [r["id"] for r in listed] == [refund.id]

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"payment_intent": intent.id})
    assert raised.value.code == "charge_already_refunded"
    assert f"Charge {intent.latest_charge} has already been refunded." in str(
        raised.value.user_message
    )


def test_partial_refunds_never_exceed_what_remains(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    session = paid_session(client, server, http)
    intent_id = session.payment_intent

    client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 100})
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 100})
    client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 92})

    assert raised.value.param == "amount"
    assert str(raised.value.user_message) == (
        "Refund amount ($1.00) is greater than unrefunded amount on charge ($0.92)"
    )
    events = receiver.wait_for(5)
    refunded = [e.data.object for e in events if e.type == "charge.refunded"]
    assert [(c.amount_refunded, c.refunded) for c in refunded] == [(100, False), (192, True)]
    assert len(server.state.refunds) == 2


def test_refund_honours_idempotency_keys(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    session = paid_session(client, server, http)
    params = {"payment_intent": session.payment_intent, "amount": 50}
    options: stripe.RequestOptions = {"idempotency_key": "refund-job-1"}

    first = client.v1.refunds.create(params=params, options=options)
    second = client.v1.refunds.create(params=params, options=options)

    assert first.id == second.id
    assert len(server.state.refunds) == 1


def test_refund_of_an_unknown_payment_intent_is_a_missing_resource(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"payment_intent": "pi_nope"})

    assert raised.value.http_status == 404
    assert raised.value.param == "payment_intent"


def test_dispute_sends_charge_dispute_created_and_blocks_refunds(
    client: stripe.StripeClient,
    server: LocalStripe,
    receiver: WebhookReceiver,
    http: requests.Session,
) -> None:
    session = paid_session(client, server, http)

    response = http.post(f"{server.url}/_local/charges/{session.payment_intent}/dispute")

    assert response.status_code == 200
    events = receiver.wait_for(2)
    assert events[1].type == "charge.dispute.created"
    assert events[1].data.object.payment_intent == session.payment_intent
    assert events[1].data.object.amount == 192
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"payment_intent": session.payment_intent})
    assert raised.value.code == "charge_disputed"


# ----------------------------------------------------------------------------- control


def test_fail_next_makes_api_calls_fail_like_stripe_being_down(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    armed = http.post(f"{server.url}/_local/fail-next", json={"status": 500, "count": 2})
    assert armed.json()["count"] == 2

    for _ in range(2):
        with pytest.raises(stripe.APIError) as raised:
            client.v1.checkout.sessions.create(params=session_params())
        assert raised.value.http_status == 500
    assert client.v1.checkout.sessions.create(params=session_params()).status == "open"

    server.fail_next(402, path="/v1/refunds")
    session = paid_session(client, server, http)
    with pytest.raises(stripe.CardError):
        client.v1.refunds.create(params={"payment_intent": session.payment_intent})
    assert client.v1.refunds.create(params={"payment_intent": session.payment_intent}).amount


def test_sdk_retry_after_a_500_creates_one_session(server: LocalStripe) -> None:
    server.fail_next(500)
    http_client = stripe.RequestsClient()
    sdk = stripe.StripeClient(
        API_KEY, base_addresses={"api": server.url}, http_client=http_client, max_network_retries=1
    )
    try:
        session = sdk.v1.checkout.sessions.create(params=session_params())
    finally:
        http_client.close()

    assert list(server.state.sessions) == [session.id]


def test_reset_forgets_everything(
    client: stripe.StripeClient, server: LocalStripe, http: requests.Session
) -> None:
    paid_session(client, server, http)
    assert server.wait_idle(5)

    response = http.post(f"{server.url}/_local/reset")

    assert response.status_code == 200
    state = http.get(f"{server.url}/_local/state").json()
    assert state["checkout_sessions"] == [] and state["events"] == []
    assert state["deliveries"] == [] and state["payment_intents"] == []
    assert http.get(f"{server.url}/_local/webhook").json()["secret_set"] is True


def test_in_process_server_without_a_secret_makes_one_up() -> None:
    with start_server(webhook_url="http://127.0.0.1:9/hook") as local:
        assert local.webhook_secret is not None
        assert local.webhook_secret.startswith("whsec_")
        assert local.url.startswith("http://127.0.0.1:")


def test_command_line_serves_and_never_logs_the_secret() -> None:
    from tests.conftest import read_listening_url

    secret = "whsec_cli_never_printed"
    env = dict(os.environ, STRIPE_WEBHOOK_SECRET=secret, PYTHONUNBUFFERED="1")
    command = [
        sys.executable,
        "-m",
        "devservers.stripe_local",
        "--port",
        "0",
        "--webhook-url",
        "http://127.0.0.1:9/hook",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base, started = read_listening_url(process)
        with requests.Session() as http:
            health = http.get(f"{base}/_local/health", timeout=5)
            config = http.get(f"{base}/_local/webhook").json()
            created = http.post(
                f"{base}/v1/checkout/sessions",
                headers={"Authorization": f"Bearer {API_KEY}"},
                data={
                    "mode": "payment",
                    "success_url": "http://shop.test/ok",
                    "line_items[0][price_data][currency]": "eur",
                    "line_items[0][price_data][unit_amount]": "250",
                    "line_items[0][price_data][product_data][name]": "Photo",
                    "line_items[0][quantity]": "1",
                },
            )
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=10)
    output = started.decode() + rest

    assert health.json() == {"ok": True}
    assert config == {"url": "http://127.0.0.1:9/hook", "secret_set": True}
    assert created.status_code == 200
    assert json.loads(created.text)["url"].startswith(f"{base}/pay/cs_test_")
    assert "GET /_local/health 200" in output
    assert "POST /v1/checkout/sessions 200" in output
    assert secret not in output
    assert API_KEY not in output
    assert process.returncode == 0
