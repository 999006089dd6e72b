"""Stripe-shaped API errors: the exception the handlers raise and the JSON body the SDK reads."""

from __future__ import annotations

from typing import Any


class StripeApiError(Exception):
    """An error answered as Stripe does: an HTTP status and an `{"error": {...}}` body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """Return the JSON body Stripe would send for this error."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = "https://stripe.com/docs/error-codes/" + self.code.replace("_", "-")
        error.update(self.extra)
        return {"error": error}


def missing_param(param: str) -> StripeApiError:
    """Return Stripe's error for a required parameter that was not sent."""
    return StripeApiError(
        f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def no_such(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    """Return Stripe's 404 for an object id that does not exist."""
    return StripeApiError(
        f"No such {kind}: '{object_id}'", status=404, param=param, code="resource_missing"
    )


def invalid_integer(param: str, value: str) -> StripeApiError:
    """Return Stripe's error for a parameter that should have been an integer."""
    return StripeApiError(
        f"Invalid integer: {value}", param=param, code="parameter_invalid_integer"
    )
