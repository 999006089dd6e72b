"""A small HTTP client for Upsampler.com's Precise Upscale API, and a guarded result downloader.

What is known of the API (public integrations and the service's own page; no formal reference):

* `POST {base}/precise-upscale` with `{"input": {"imageUrl", "inputImageType", "upscaleFactor",
  "globalCreativity", "detail"}, "webhook": url}` and `Authorization: Bearer <key>`; the answer is
  the job object (`id`, a UUID, and `status`).
  There is no idempotency key, no client reference and no way to list one's jobs: a submission
  whose answer was lost cannot be found again (only its webhook, which names our job, would say).
* `GET {base}/status/<id>` answers the job object: `status` is `IN_QUEUE`, `IN_PROGRESS`,
  `SUCCESS` or `FAILED`; on success `imageUrl`, `compressedImageUrl` and `creditCost`; on failure
  `error` (e.g. "Failed to process image due to an internal error. Your credits have been
  refunded."). The webhook receives the same object when the job ends. Result URLs live about
  3 hours. Errors come as `{"error": "..."}` with a 4xx/5xx status; 429 carries `Retry-After`.

The client is tolerant of what it does not know (unknown fields are ignored) and strict about
what it needs (a missing `id`, an unknown `status`, a SUCCESS without `imageUrl` are errors).
The API key is sent only in the Authorization header of API calls: never to result hosts, never
in an exception message, a log line or a repr.

Results are fetched only from listed hosts, and only from public addresses: each host name is
resolved once, every address it resolves to is checked, and the connection goes to those very
addresses (the URL keeps the name, for the Host header, SNI and the certificate check).
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://upsampler.com/api/v1"
JOB_STATUSES = ("IN_QUEUE", "IN_PROGRESS", "SUCCESS", "FAILED")
FINAL_STATUSES = ("SUCCESS", "FAILED")
# Values seen in public integrations for `inputImageType`; not enforced (the API may add more).
INPUT_IMAGE_TYPES = ("realism", "anime", "universal")
MAX_RETRY_AFTER = 120.0
USER_AGENT = "sell-my-images/0.1 (+upsampler client)"
_CHUNK = 64 * 1024
_MAX_REDIRECTS = 3
_MAX_MESSAGE = 300
# Answers to a submission that say it was turned away before any work: safe to send again.
_NOT_TAKEN = (429, 503)

Timeout = float | tuple[float, float]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Resolves a host name for a port to its addresses (socket.getaddrinfo by default).
Resolver = Callable[[str, int], Sequence[str]]


# ----------------------------------------------------------------------------- errors


class UpsamplerError(Exception):
    """Anything that went wrong talking to Upsampler or fetching its result."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class UpsamplerTransientError(UpsamplerError):
    """A failure a later attempt may mend: retries exhausted on 429, 5xx or the network."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class UpsamplerOutcomeUnknown(UpsamplerTransientError):
    """A submission was sent (or may have been) but no answer says what became of it.

    Upsampler has no idempotency key: sending it again could start, and charge, a second job.
    """


class UpsamplerRequestError(UpsamplerError):
    """Upsampler refused the request (4xx other than 429: a bad key, a bad request, no such job)."""


class UpsamplerProtocolError(UpsamplerError):
    """Upsampler answered something this client cannot read (not JSON, a field missing)."""


class UpsamplerResultRejected(UpsamplerError):
    """A result URL or body refused for good: host or scheme not allowed, too large, HTTP error."""


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class UpsamplerJob:
    """One Upsampler job as the API describes it."""

    id: str
    status: str
    image_url: str | None = None
    compressed_image_url: str | None = None
    credit_cost: Decimal | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job has ended, one way or the other."""
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """Whether the job ended with a result."""
        return self.status == "SUCCESS"

    @property
    def failed(self) -> bool:
        """Whether the job ended without a result."""
        return self.status == "FAILED"


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UpsamplerProtocolError(f"Upsampler job field {name!r} is not a string")
    return value


def _credit_cost(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UpsamplerProtocolError("Upsampler job field 'creditCost' is not a number")
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        raise UpsamplerProtocolError("Upsampler job field 'creditCost' is not a number") from None
    if not cost.is_finite() or cost < 0:
        raise UpsamplerProtocolError("Upsampler job field 'creditCost' is not a valid amount")
    return cost


def _error_text(value: Any) -> str | None:
    """Return a readable message from an `error` field that may be a string or an object."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        inner = value.get("message") or value.get("error") or value.get("detail")
        if inner is not None:
            return _error_text(inner)
    return _shorten(str(value))


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def parse_job(data: Any, *, default_status: str | None = None) -> UpsamplerJob:
    """Read a job object (an API answer or a webhook body); unknown fields are ignored.

    Raises `UpsamplerProtocolError` when `id` or `status` is missing, the status is not one of
    `JOB_STATUSES`, or a SUCCESS carries no `imageUrl`. `default_status` stands in for a missing
    `status` (the submit answer may omit it).
    """
    if not isinstance(data, Mapping):
        raise UpsamplerProtocolError("Upsampler job is not a JSON object")
    raw_id = data.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id.strip():
        raise UpsamplerProtocolError("Upsampler job has no 'id'")
    status = data.get("status", default_status)
    if status is None:
        raise UpsamplerProtocolError("Upsampler job has no 'status'")
    if status not in JOB_STATUSES:
        shown = _shorten(str(status))[:40]
        raise UpsamplerProtocolError(
            f"Upsampler job has an unknown status {shown!r}; expected one of "
            + ", ".join(JOB_STATUSES)
        )
    image_url = _optional_str(data, "imageUrl")
    if status == "SUCCESS" and image_url is None:
        raise UpsamplerProtocolError("Upsampler job is SUCCESS but has no 'imageUrl'")
    error = _error_text(data.get("error"))
    if status == "FAILED" and error is None:
        error = "Upsampler reported a failure without a message"
    return UpsamplerJob(
        id=raw_id.strip(),
        status=str(status),
        image_url=image_url,
        compressed_image_url=_optional_str(data, "compressedImageUrl"),
        credit_cost=_credit_cost(data.get("creditCost")),
        error=error if status == "FAILED" else None,
    )


# ----------------------------------------------------------------------------- the API client


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the wait a `Retry-After` header asks for (seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT; a naive one is read as such
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class _Failure:
    """Why one request failed in a way another try may mend."""

    reason: str
    status_code: int | None = None
    retry_after: float | None = None


class UpsamplerClient:
    """Talks to Upsampler's API over one `requests.Session`, retrying what is worth retrying.

    429, 5xx, connection errors and timeouts are retried `max_retries` times with exponential
    backoff (`backoff`, 2 x `backoff`, 4 x …; a 429's or 503's `Retry-After` wins), each wait
    capped at `max_retry_after` seconds; other 4xx answers are never retried. A submission is
    sent again only when it surely never reached Upsampler's work (no connection was made, or a
    429 or 503 turned it away): Upsampler has no idempotency key, and a second POST could start
    and charge a second job. A read timeout, a connection broken after sending, or another 5xx
    raises `UpsamplerOutcomeUnknown` at once.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_API_BASE,
        *,
        timeout: Timeout = (5, 30),
        max_retries: int = 4,
        backoff: float = 1.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        if not api_key:
            raise ValueError("an Upsampler API key is required")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("the Upsampler API base must be an http(s) URL")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()

    # ------------------------------------------------------------------------- API calls

    def submit(
        self,
        image_url: str,
        factor: int,
        input_type: str,
        webhook_url: str | None,
        *,
        creativity: float = 0,
        detail: float = 0,
    ) -> UpsamplerJob:
        """Start a Precise Upscale of `image_url` by `factor`; return the queued job.

        The answer may already say FAILED (with `error`): the caller decides what that means.
        """
        if not image_url:
            raise ValueError("image_url is required")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError("factor must be a positive integer")
        if not input_type:
            raise ValueError("input_type is required")
        body: dict[str, Any] = {
            "input": {
                "imageUrl": image_url,
                "inputImageType": input_type,
                "upscaleFactor": factor,
                "globalCreativity": creativity,
                "detail": detail,
            }
        }
        if webhook_url:
            body["webhook"] = webhook_url
        data = self._request("POST", "/precise-upscale", json_body=body, idempotent=False)
        job = parse_job(data, default_status="IN_QUEUE")
        log.info("upsampler job %s submitted (%s, %dx)", job.id, job.status, factor)
        return job

    def status(self, provider_id: str) -> UpsamplerJob:
        """Return what Upsampler says now about job `provider_id`."""
        if not provider_id or not provider_id.strip():
            raise ValueError("provider_id is required")
        data = self._request("GET", "/status/" + quote(provider_id.strip(), safe=""))
        if isinstance(data, Mapping) and "id" not in data:
            # The status answer is about the job we named; some answers may leave it out.
            data = {**data, "id": provider_id.strip()}
        job = parse_job(data)
        if job.id != provider_id.strip():
            raise UpsamplerProtocolError(
                "Upsampler answered about another job than the one asked for"
            )
        return job

    # ------------------------------------------------------------------------- plumbing

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> Any:
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            outcome = self._attempt(method, path, json_body, idempotent)
            if not isinstance(outcome, _Failure):
                return outcome
            wait = self._wait(attempt, outcome.retry_after)
            if attempt == attempts:
                raise UpsamplerTransientError(
                    self._scrub(
                        f"Upsampler {method} {path} failed after {attempts} attempts: "
                        f"{outcome.reason}"
                    ),
                    status_code=outcome.status_code,
                    retry_after=outcome.retry_after,
                )
            log.warning(
                "upsampler %s %s: %s; retry %d/%d in %.1fs",
                method,
                path,
                self._scrub(outcome.reason),
                attempt,
                self.max_retries,
                wait,
            )
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self, method: str, path: str, json_body: Mapping[str, Any] | None, idempotent: bool
    ) -> Any:
        """One request: the answer read, or a _Failure worth another try."""
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        try:
            with self._session.request(
                method,
                self.base_url + path,
                json=json_body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                status_code = response.status_code
                if status_code != 429 and status_code < 500:
                    return self._read(response, method, path)
                reason = f"HTTP {status_code}"
                if not idempotent and status_code not in _NOT_TAKEN:
                    raise UpsamplerOutcomeUnknown(
                        f"Upsampler answered {method} {path} with {reason}; the job may or may "
                        "not have been created, so it is not sent again",
                        status_code=status_code,
                    )
                detail = _answer_message(response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return _Failure(
                    f"{reason}: {detail}" if detail else reason, status_code, retry_after
                )
        except requests.ReadTimeout:
            if not idempotent:
                raise UpsamplerOutcomeUnknown(
                    f"Upsampler did not answer {method} {path} in time; the job may or may "
                    "not have been created, so it is not sent again"
                ) from None
            return _Failure("the read timed out")
        except (requests.ConnectionError, requests.Timeout) as exc:
            if not idempotent and not _never_sent(exc):
                raise UpsamplerOutcomeUnknown(
                    f"the connection broke during {method} {path} ({type(exc).__name__}); the "
                    "job may or may not have been created, so it is not sent again"
                ) from None
            return _Failure(f"network error ({type(exc).__name__})")

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.backoff * 2 ** (attempt - 1), self.max_retry_after)

    def _read(self, response: requests.Response, method: str, path: str) -> Any:
        status = response.status_code
        if 400 <= status < 500:
            detail = _answer_message(response) or response.reason or "refused"
            raise UpsamplerRequestError(
                self._scrub(f"Upsampler refused {method} {path}: HTTP {status}: {detail}"),
                status_code=status,
            )
        if not 200 <= status < 300:
            raise UpsamplerProtocolError(
                f"Upsampler answered {method} {path} with unexpected HTTP {status}",
                status_code=status,
            )
        try:
            return response.json()
        except ValueError:
            raise UpsamplerProtocolError(
                f"Upsampler answered {method} {path} with a body that is not JSON",
                status_code=status,
            ) from None

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    # ------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the HTTP session (only one this client made itself)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> UpsamplerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UpsamplerClient {self.base_url}>"


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether a request failed before any byte of it could reach the server."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # Refused, unreachable, or a name that does not resolve (NameResolutionError is one).
    return isinstance(reason, NewConnectionError)


def _answer_message(response: requests.Response) -> str | None:
    """Return the message of an error answer (`{"error": ...}` or `{"message": ...}`), if any."""
    try:
        data = response.json()
    except ValueError:
        text = (response.text or "").strip()
        # A short plain-text reason is worth showing; an HTML error page is not.
        return _shorten(text[:120]) if text and not text.startswith("<") else None
    if isinstance(data, Mapping):
        return _error_text(data.get("error")) or _error_text(data.get("message"))
    return None


# ----------------------------------------------------------------------------- results


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if _is_ip(host):
        return str(ipaddress.ip_address(host))
    return host


def _listed_entry(host: str, allowed_hosts: Collection[str]) -> str | None:
    """The allow-list entry `host` falls under (itself, or a parent name), normalised; or None."""
    host = _normalise_host(host)
    if not host:
        return None
    for entry in allowed_hosts:
        listed = _normalise_host(entry)
        if not listed:
            continue
        if host == listed:
            return listed
        if not _is_ip(listed) and not _is_ip(host) and host.endswith("." + listed):
            return listed
    return None


def host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Whether `host` is on the allow-list: a listed name or a subdomain of one; IPs exactly."""
    return _listed_entry(host, allowed_hosts) is not None


def address_refusal(address: str, *, loopback_allowed: bool = False) -> str | None:
    """Why results may not come from IP `address` (None when they may: a public address).

    Refused: private, loopback (unless `loopback_allowed`), link-local, multicast, reserved,
    unspecified and other non-global addresses, IPv4 and IPv6; an IPv4-mapped IPv6 address is
    judged as the IPv4 address it maps, and 6to4 and Teredo addresses by the one they carry too.
    """
    try:
        parsed: IPAddress = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    candidates: list[IPAddress] = [parsed]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            candidates = [parsed.ipv4_mapped]
        else:
            candidates += [a for a in (parsed.sixtofour, (parsed.teredo or (None, None))[1]) if a]
    for candidate in candidates:
        if candidate.is_loopback:
            if loopback_allowed:
                continue
            return "a loopback address"
        for kind, flagged in (
            ("an unspecified", candidate.is_unspecified),
            ("a link-local", candidate.is_link_local),
            ("a multicast", candidate.is_multicast),
            ("a private", candidate.is_private),
            ("a reserved", candidate.is_reserved),
            ("a non-public", not candidate.is_global),
        ):
            if flagged:
                return f"{kind} address"
    return None


def check_result_url(url: str, allowed_hosts: Collection[str]) -> str:
    """Return `url` if results may be fetched from it, else raise `UpsamplerResultRejected`.

    Rules: https only, except plain http to a loopback host (127.0.0.0/8, ::1, localhost); no
    `user@` part; the host (compared lowercase, trailing dot dropped) must be listed in
    `allowed_hosts` or be a subdomain of a listed name (`upsampler.com` admits
    `cdn.upsampler.com`, never `evilupsampler.com`); an IP-literal host must be listed itself
    and be public (or loopback, when listed as such). Loopback relaxes only the scheme, never
    the list. Where a name resolves to is checked when it is fetched (`fetch_result`).
    """
    if not isinstance(url, str) or not url:
        raise UpsamplerResultRejected("result URL is empty")
    if any(ord(ch) <= 0x20 or ch == "\\" or ord(ch) == 0x7F for ch in url):
        raise UpsamplerResultRejected("result URL contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UpsamplerResultRejected("result URL must be https")
    if "@" in parts.netloc:
        raise UpsamplerResultRejected("result URL must not carry a user name or password")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise UpsamplerResultRejected("result URL has an invalid port") from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UpsamplerResultRejected("result URL has no host")
    if not host.isascii():
        raise UpsamplerResultRejected("result URL host is not plain ASCII")
    if scheme == "http" and not _is_loopback(_normalise_host(host)):
        raise UpsamplerResultRejected("result URL must be https (http only for loopback hosts)")
    if not host_allowed(host, allowed_hosts):
        raise UpsamplerResultRejected(f"result host {host!r} is not on the allow-list")
    if _is_ip(_normalise_host(host)):
        _check_addresses(url, [_normalise_host(host)], allowed_hosts)
    return url


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (one DNS lookup), in the resolver's order."""
    found: list[str] = []
    for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        if family in (socket.AF_INET, socket.AF_INET6) and str(sockaddr[0]) not in found:
            found.append(str(sockaddr[0]))
    return found


def _check_addresses(url: str, addresses: Sequence[str], allowed_hosts: Collection[str]) -> None:
    """Refuse `url` unless every address its host resolved to may serve results.

    Loopback is admitted only when the allow-list entry the host falls under is loopback itself
    (a local Upsampler-compatible server); plain http only ever to loopback.
    """
    parts = urlsplit(url)
    host = _normalise_host(parts.hostname or "")
    entry = _listed_entry(host, allowed_hosts)
    loopback_allowed = entry is not None and _is_loopback(entry)
    if not addresses:
        raise UpsamplerTransientError(f"result host {host!r} resolves to no address")
    for address in addresses:
        refusal = address_refusal(address, loopback_allowed=loopback_allowed)
        if refusal is None and parts.scheme.lower() == "http" and not _is_loopback(address):
            refusal = "an address off loopback (plain http is for loopback only)"
        if refusal is not None:
            where = f"is {refusal}" if host == address else f"resolves to {refusal} ({address})"
            raise UpsamplerResultRejected(
                f"result host {host!r} {where}; results are fetched only from public addresses"
            )


class _PinnedMixin:
    """A urllib3 connection that connects only to addresses checked beforehand: no DNS lookup
    of its own, so a second answer (DNS rebinding) can never send it elsewhere."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def __init__(self, *args: Any, addresses: Sequence[str] = (), **kwargs: Any) -> None:
        self._addresses = tuple(addresses)
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        failure: Exception = NewConnectionError(self, "no checked address to connect to")  # type: ignore[arg-type]
        for address in self._addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                failure = ConnectTimeoutError(self, f"connecting to {address} timed out: {exc}")
            except OSError as exc:
                failure = NewConnectionError(self, f"could not connect to {address}: {exc}")  # type: ignore[arg-type]
        raise failure


class _PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    """Plain http to checked addresses only."""


class _PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    """https to checked addresses only; SNI and the certificate check use the URL's name."""


class _PinnedPoolManager(PoolManager):
    """Gives each host's connection pool the addresses checked for that host, or refuses."""

    def __init__(self, pins: Mapping[tuple[str, str, int], tuple[str, ...]], **kwargs: Any):
        super().__init__(**kwargs)
        self._pins = pins

    def _new_pool(
        self,
        scheme: str,
        host: str,
        port: int,
        request_context: dict[str, Any] | None = None,
    ) -> HTTPConnectionPool:
        addresses = self._pins.get((scheme, _normalise_host(host), port))
        if not addresses:
            raise UpsamplerResultRejected(f"result host {host!r} was not checked before use")
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        pool.conn_kw = {**pool.conn_kw, "addresses": addresses}
        return pool


class _PinnedAdapter(HTTPAdapter):
    """A requests transport over `_PinnedPoolManager`."""

    def __init__(self, pins: Mapping[tuple[str, str, int], tuple[str, ...]]) -> None:
        self._pins = pins
        super().__init__(max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Build the pool manager that connects only to checked addresses."""
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PinnedPoolManager(
            self._pins, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )


def _pin(
    url: str,
    allowed_hosts: Collection[str],
    pins: dict[tuple[str, str, int], tuple[str, ...]],
    resolver: Resolver,
) -> None:
    """Resolve `url`'s host once, check every address, and keep them for the connection."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = _normalise_host(parts.hostname or "")
    port = parts.port or (443 if scheme == "https" else 80)
    if (scheme, host, port) in pins:
        return  # checked already (a redirect back to the same host): never looked up twice
    try:
        addresses = [host] if _is_ip(host) else [str(a) for a in resolver(host, port)]
    except (OSError, UnicodeError) as exc:
        raise UpsamplerTransientError(
            f"result host {host!r} could not be resolved ({type(exc).__name__})"
        ) from None
    _check_addresses(url, addresses, allowed_hosts)
    pins[(scheme, host, port)] = tuple(addresses)


def fetch_result(
    url: str,
    dest: Path,
    *,
    allowed_hosts: Collection[str],
    max_bytes: int,
    timeout: Timeout = (5, 60),
    verify: bool | str = True,
    resolver: Resolver = resolve_host,
) -> int:
    """Download a result to `dest` (via a temp file and a rename); return the bytes written.

    The URL must pass `check_result_url`, and its host must resolve only to addresses results
    may come from (`address_refusal`); the connection goes to those addresses, never to a later
    answer. Redirects (at most 3) are followed only to URLs that pass the same checks. The size
    cap holds for a declared Content-Length and while streaming. `verify` is requests' (True,
    or a CA bundle); the certificate is checked against the URL's host name. Raises
    `UpsamplerResultRejected` for anything no retry mends (a refused URL or address, too large,
    empty, a 4xx or other non-200 answer) and `UpsamplerTransientError` for network errors, a
    name that does not resolve, 429 and 5xx.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    dest = Path(dest)
    pins: dict[tuple[str, str, int], tuple[str, ...]] = {}
    with requests.Session() as http:
        http.trust_env = False  # no proxy from the environment: it would do its own lookup
        adapter = _PinnedAdapter(pins)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            current = check_result_url(current, allowed_hosts)
            _pin(current, allowed_hosts, pins, resolver)
            location = _download(
                http, current, dest, max_bytes=max_bytes, timeout=timeout, verify=verify
            )
            if isinstance(location, int):
                return location
            current = urljoin(current, location)
        raise UpsamplerResultRejected("result URL redirects too many times")


def _download(
    http: requests.Session,
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: Timeout,
    verify: bool | str,
) -> int | str:
    """Stream one URL to `dest`; return bytes written, or the Location of a redirect."""
    try:
        with http.get(
            url,
            stream=True,
            timeout=timeout,
            verify=verify,
            allow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*, */*;q=0.5"},
        ) as response:
            status = response.status_code
            if status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise UpsamplerResultRejected(
                        f"result redirect (HTTP {status}) without a target"
                    )
                return location
            if status == 429 or status >= 500:
                raise UpsamplerTransientError(
                    f"result host answered HTTP {status}",
                    status_code=status,
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            if status != 200:
                raise UpsamplerResultRejected(
                    f"result host answered HTTP {status}", status_code=status
                )
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
                raise UpsamplerResultRejected(
                    f"result is {int(declared)} bytes, more than the {max_bytes} allowed"
                )
            return _stream_to(response, dest, max_bytes)
    except (requests.exceptions.ContentDecodingError, requests.TooManyRedirects) as exc:
        raise UpsamplerResultRejected(f"result could not be read ({type(exc).__name__})") from None
    except requests.RequestException as exc:
        raise UpsamplerTransientError(
            f"network error fetching the result ({type(exc).__name__})"
        ) from None


def _stream_to(response: requests.Response, dest: Path, max_bytes: int) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise UpsamplerResultRejected(
                        f"result is larger than the {max_bytes} bytes allowed"
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if written == 0:
            raise UpsamplerResultRejected("result body is empty")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
