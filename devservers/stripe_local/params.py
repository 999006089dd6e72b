"""Decoding of Stripe's form-encoded parameters (`a[b][0][c]=v`) and typed readers over them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from .errors import StripeApiError, invalid_integer

Params = dict[str, Any]

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def decode(pairs: Iterable[tuple[str, str]]) -> Params:
    """Turn flat `(key, value)` pairs with bracketed keys into nested dicts.

    Lists arrive as `k[0]=a&k[1]=b` (what the SDK sends) or `k[]=a&k[]=b` (what curl users
    write); both become dicts keyed by position here, and `as_list` reads them back in order.
    """
    root: Params = {}
    for raw_key, value in pairs:
        head, _, rest = raw_key.partition("[")
        parts = [head] + (_KEY_PART.findall("[" + rest) if rest else [])
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if depth == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return root


def fingerprint(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Return an order-independent fingerprint of the request parameters (for idempotency)."""
    return tuple(sorted(pairs))


def as_list(value: Any) -> list[Any]:
    """Read a decoded list parameter (a dict keyed by position, a bare value, or nothing)."""
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        return [value[k] for k in keys]
    if isinstance(value, list):
        return value
    return [value]


def as_dict(value: Any, param: str) -> Params:
    """Read a hash parameter; an empty string (Stripe's "unset") gives an empty dict."""
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise StripeApiError(f"Invalid object: {param} must be a hash.", param=param)
    return value


def as_str(params: Params, name: str, param: str | None = None) -> str | None:
    """Read a string parameter, refusing a hash where a string was expected."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StripeApiError(
            f"Invalid string: {param or name} must be a string.", param=param or name
        )
    return value


def as_int(params: Params, name: str, param: str | None = None) -> int | None:
    """Read an integer parameter, refusing anything that is not a whole number."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value.strip()):
        raise invalid_integer(param or name, str(value))
    return int(value)


def as_bool(params: Params, name: str, param: str | None = None) -> bool | None:
    """Read a boolean parameter (`true` or `false`, as the SDK sends them)."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if value not in ("true", "false"):
        raise StripeApiError(
            f"Invalid boolean: {value}", param=param or name, code="parameter_invalid_boolean"
        )
    return value == "true"


def metadata(value: Any, param: str) -> dict[str, str]:
    """Read a metadata hash within Stripe's limits (50 keys, keys <= 40 and values <= 500 chars)."""
    data = as_dict(value, param)
    if len(data) > 50:
        raise StripeApiError(
            "You can only specify up to 50 metadata keys.", param=param, code="parameter_invalid"
        )
    result: dict[str, str] = {}
    for key, item in data.items():
        if not isinstance(item, str):
            raise StripeApiError(
                f"Invalid value for {param}[{key}]: must be a string.", param=f"{param}[{key}]"
            )
        if len(key) > 40:
            raise StripeApiError(
                f"Metadata keys can have up to 40 characters: {param}[{key}].",
                param=f"{param}[{key}]",
            )
        if len(item) > 500:
            raise StripeApiError(
                f"Metadata values can have up to 500 characters, but you passed in a value that "
                f"is {len(item)} characters: {param}[{key}].",
                param=f"{param}[{key}]",
            )
        if item != "":
            result[key] = item
    return result


def check_url(value: str | None, param: str, *, required: bool) -> str | None:
    """Check a redirect URL the way Checkout does: absolute http(s), at most 5000 characters."""
    if value is None or value == "":
        if required:
            raise StripeApiError(
                f"Missing required param: {param}.", param=param, code="parameter_missing"
            )
        return None
    if len(value) > 5000:
        raise StripeApiError(
            "Invalid URL: URL must be 5000 characters or less.", param=param, code="url_invalid"
        )
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StripeApiError("Not a valid URL", param=param, code="url_invalid")
    return value
