"""The local Stripe server's promotion codes and automatic tax: the pay page, the API's totals, and
the `promo` command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
import stripe

from devservers.stripe_local import LocalStripe, start_server
from tests import test_stripe_local
from tests.test_stripe_local import REPO_ROOT, WEBHOOK_SECRET, WebhookReceiver, session_params

receiver = test_stripe_local.receiver
client = test_stripe_local.client


@pytest.fixture
def server(receiver: WebhookReceiver) -> Iterator[LocalStripe]:
    """The local Stripe server with a 19 % tax rate for sessions with automatic tax."""
    with start_server(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        retry_scale=0.01,
        tax_percent=Decimal(19),
    ) as local:
        yield local


def _promo(server: LocalStripe, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devservers.stripe_local", "promo", "--server", server.url, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _session(client: stripe.StripeClient, amount: int = 1000, **extra: object) -> str:
    params = session_params(**extra)
    params["line_items"][0]["price_data"]["unit_amount"] = amount
    if extra.get("automatic_tax"):
        params["line_items"][0]["price_data"]["tax_behavior"] = "exclusive"
    return client.v1.checkout.sessions.create(params=params).id  # type: ignore[arg-type]


def _apply(server: LocalStripe, session_id: str, code: str) -> requests.Response:
    return requests.post(
        f"{server.url}/pay/{session_id}",
        data={"action": "apply_code", "promotion_code": code},
        timeout=10,
    )


def test_a_code_made_on_the_command_line_discounts_the_session_it_is_entered_in(
    server: LocalStripe, client: stripe.StripeClient, receiver: WebhookReceiver
) -> None:
    made = _promo(server, "create", "SAVE20", "--percent-off", "20", "--max-redemptions", "5")
    assert made.returncode == 0, made.stderr
    assert "SAVE20" in made.stdout and "20% off" in made.stdout and "used 0 of 5" in made.stdout
    session_id = _session(client, allow_promotion_codes=True)
    page = requests.get(f"{server.url}/pay/{session_id}", timeout=10).text
    assert "Promotion code" in page and ">Apply</button>" in page

    applied = _apply(server, session_id, "save20")  # codes are matched in any case
    assert applied.status_code == 200 and applied.history[0].status_code == 303
    assert "Promotion code SAVE20 applied." in applied.text
    assert "Discount (SAVE20)" in applied.text and "−2.00 USD" in applied.text
    assert '<td class="amount" id="total">8.00 USD</td>' in applied.text

    session = client.v1.checkout.sessions.retrieve(session_id)
    assert (session.amount_subtotal, session.amount_total) == (1000, 800)
    assert (
        session.total_details.amount_discount == 800 // 4 and session.total_details.amount_tax == 0
    )
    (discount,) = session.discounts
    assert discount.promotion_code.startswith("promo_")

    server.pay(session_id)
    (event,) = receiver.wait_for(1)
    paid = event.data.object
    assert (paid.payment_status, paid.amount_total, paid.total_details.amount_discount) == (
        "paid",
        800,
        200,
    )
    intent = client.v1.payment_intents.retrieve(paid.payment_intent)
    assert intent.amount == 800
    listed = _promo(server, "list")
    assert "SAVE20" in listed.stdout and "used 1 of 5" in listed.stdout


def test_an_unknown_or_used_up_code_is_refused_with_a_clear_message_and_changes_nothing(
    server: LocalStripe, client: stripe.StripeClient
) -> None:
    server.create_promotion_code("ONCE", amount_off=300, currency="usd", max_redemptions=1)
    session_id = _session(client, allow_promotion_codes=True)
    refused = _apply(server, session_id, "NOPE")
    assert refused.status_code == 400
    assert '<p class="error" role="alert">This code is invalid.</p>' in refused.text
    assert server.state.sessions[session_id]["amount_total"] == 1000

    assert _apply(server, session_id, "ONCE").status_code == 200
    server.pay(session_id)
    second = _session(client, allow_promotion_codes=True)
    used_up = _apply(server, second, "ONCE")
    assert used_up.status_code == 400 and "used the most times" in used_up.text
    assert server.state.sessions[second]["amount_total"] == 1000


def test_a_session_without_allow_promotion_codes_has_no_code_field_and_takes_none(
    server: LocalStripe, client: stripe.StripeClient
) -> None:
    server.create_promotion_code("SAVE20", percent_off=20)
    session_id = _session(client)
    assert "Promotion code" not in requests.get(f"{server.url}/pay/{session_id}", timeout=10).text
    assert _apply(server, session_id, "SAVE20").status_code == 400
    assert server.state.sessions[session_id]["amount_total"] == 1000


def test_a_code_that_leaves_less_than_the_minimum_charge_is_refused(
    server: LocalStripe, client: stripe.StripeClient
) -> None:
    server.create_promotion_code("ALMOST", amount_off=980, currency="usd")
    session_id = _session(client, allow_promotion_codes=True)
    refused = _apply(server, session_id, "ALMOST")
    assert refused.status_code == 400 and "below the minimum charge of $0.50 usd" in refused.text


def test_automatic_tax_adds_the_fixed_rate_on_the_discounted_amount(
    server: LocalStripe, client: stripe.StripeClient
) -> None:
    server.create_promotion_code("TEN", percent_off=10)
    session_id = _session(client, 1000, allow_promotion_codes=True, automatic_tax={"enabled": True})
    session = client.v1.checkout.sessions.retrieve(session_id)
    assert (session.amount_subtotal, session.total_details.amount_tax, session.amount_total) == (
        1000,
        190,
        1190,
    )
    assert session.automatic_tax.enabled is True and session.automatic_tax.status == "complete"
    assert "Tax (19 %)" in requests.get(f"{server.url}/pay/{session_id}", timeout=10).text
    _apply(server, session_id, "TEN")
    session = client.v1.checkout.sessions.retrieve(session_id)
    # 10 % off 10.00 is 1.00; 19 % tax on the 9.00 left is 1.71.
    assert (session.total_details.amount_discount, session.total_details.amount_tax) == (100, 171)
    assert session.amount_total == 1000 - 100 + 171


def test_automatic_tax_needs_tax_exclusive_prices(
    server: LocalStripe, client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="tax-exclusive"):
        client.v1.checkout.sessions.create(
            params=session_params(automatic_tax={"enabled": True})  # type: ignore[arg-type]
        )


def test_a_code_that_makes_the_order_free_completes_it_without_a_payment(
    server: LocalStripe, client: stripe.StripeClient, receiver: WebhookReceiver
) -> None:
    server.create_promotion_code("FREE", percent_off=100)
    session_id = _session(client, allow_promotion_codes=True)
    assert _apply(server, session_id, "FREE").status_code == 200
    paid = requests.post(
        f"{server.url}/pay/{session_id}", data={"action": "pay"}, timeout=10, allow_redirects=False
    )
    assert paid.status_code == 303
    (event,) = receiver.wait_for(1)
    session = event.data.object
    assert (session.status, session.payment_status, session.payment_intent) == (
        "complete",
        "no_payment_required",
        None,
    )
    assert (session.amount_total, session.total_details.amount_discount) == (0, 1000)
    assert server.state.payment_intents == {} and server.state.charges == {}


def test_a_code_switched_off_after_it_was_applied_makes_pay_fail_and_comes_off(
    server: LocalStripe, client: stripe.StripeClient
) -> None:
    server.create_promotion_code("GONE", percent_off=50)
    session_id = _session(client, allow_promotion_codes=True)
    _apply(server, session_id, "GONE")
    assert _promo(server, "deactivate", "GONE").returncode == 0
    refused = requests.post(f"{server.url}/pay/{session_id}", data={"action": "pay"}, timeout=10)
    assert refused.status_code == 400 and "GONE is no longer available" in refused.text
    assert server.state.sessions[session_id]["amount_total"] == 1000
    assert server.state.sessions[session_id]["status"] == "open"


def test_the_command_line_refuses_bad_codes_with_stripes_message(server: LocalStripe) -> None:
    assert _promo(server, "create", "SAVE20", "--percent-off", "20").returncode == 0
    again = _promo(server, "create", "SAVE20", "--percent-off", "10")
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = _promo(server, "create", "TOOMUCH", "--percent-off", "120")
    assert bad.returncode == 1 and "at most 100" in bad.stderr
