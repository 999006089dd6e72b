"""Access logs never carry download tokens, signed original URLs or callback signatures."""

from __future__ import annotations

import logging

import pytest
import requests

from storefront.redaction import SECRET_PATTERNS, redact
from tests.conftest import LiveApp


def test_secret_url_parts_are_replaced() -> None:
    token = "ab" * 32
    line = (
        f'"GET /download/{token}/file HTTP/1.1" "GET /originals/eyJhbGciOi.abc.def HTTP/1.1" '
        '"POST /webhooks/upsampler/job-1/Zm9vYmFy HTTP/1.1" "GET /orders/j?session_id=cs_test_1"'
    )
    cleaned = redact(line)
    assert token not in cleaned and "eyJhbGciOi" not in cleaned and "Zm9vYmFy" not in cleaned
    assert "cs_test_1" not in cleaned
    assert (
        "/download/[token]/file" in cleaned and "/webhooks/upsampler/job-1/[signature]" in cleaned
    )


def test_the_served_app_logs_requests_without_the_token(
    live_app: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    token = "cd" * 32
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        assert requests.get(f"{live_app.url}/download/{token}", timeout=5).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any("/download/[token]" in line for line in lines)
    assert all(token not in line for line in lines)


@pytest.mark.parametrize(
    "text",
    [
        "GET /download/" + "ef" * 32 + "/file HTTP/1.1",
        "GET /my-orders/InR0ZXN0Ig.abc HTTP/1.1",
        "GET /originals/eyJhbGciOi.abc.def HTTP/1.1",
        "POST /webhooks/upsampler/job-1/Zm9vYmFy HTTP/1.1",
        "GET /orders/j?x=1&session_id=cs_live_abc",
        "Referer: https://shop.test/admin/jobs?q=cs_test_a1B2",
        "stripe.error: Invalid API Key provided: sk_live_51Habc",
        "configured rk_test_abc and whsec_0123abcdef",
        "Stripe-Signature t=1700000000,v1=" + "0a" * 32,
        "connecting to redis://:hunter2@cache:6379/0",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9",
        'payload {"api_key": "k3y-value", "password"=pw1}',
        "the TOKEN: s3cr3t and X-Auth-Token=abc",
    ],
)
def test_one_search_finds_whatever_each_replacement_would(text: str) -> None:
    by_each = text
    for pattern, replacement in SECRET_PATTERNS:
        by_each = pattern.sub(replacement, by_each)
    assert by_each != text  # the example holds a secret
    assert redact(text) == by_each


def test_text_without_a_secret_is_returned_as_it_is() -> None:
    for text in ("200", "5568", "[02/Dec/2026:04:56:28 +0000]", "GET /images/1 HTTP/1.1", "-"):
        assert redact(text) is text
