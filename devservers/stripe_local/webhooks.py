"""Signed webhook deliveries from background threads, retried with growing delays."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
from collections import deque
from typing import Any

import requests

from .store import StripeState

log = logging.getLogger("devservers.stripe_local")

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Return a `Stripe-Signature` header for `payload`, made exactly as Stripe makes it."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retry_delay(attempt: int, scale: float) -> float:
    """Return the wait after failed attempt `attempt` (1-based): 0.5 s, 1 s, 2 s, … times scale."""
    return 0.5 * (2 ** (attempt - 1)) * scale


class WebhookDispatcher:
    """Delivers events to the configured endpoint, one background thread per ordering stream.

    Events of one stream (a Checkout Session and everything that follows from it) go out in
    the order they were created: a later event waits while an earlier one is being retried.
    With `ordered=False` every event is delivered on its own, as real Stripe does.

    `hold()` keeps every delivery back until `release()`, which sends them one after another,
    shuffled if asked: out of order, as a chaos test wants them.
    """

    def __init__(
        self,
        state: StripeState,
        *,
        retry_scale: float = 1.0,
        max_attempts: int = 8,
        timeout: float = 10.0,
        ordered: bool = True,
    ) -> None:
        self.state = state
        self.retry_scale = retry_scale
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.ordered = ordered
        self._cond = threading.Condition()
        self._queues: dict[str, deque[str]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._all_threads: list[threading.Thread] = []
        self._generation = 0
        self._stopping = False
        self._sequence = 0
        self._held: list[str] | None = None

    def enqueue(self, event_id: str, stream: str) -> None:
        """Queue one delivery of `event_id`; never blocks on the network."""
        with self._cond:
            if self._stopping:
                return
            if self._held is not None:
                self._held.append(event_id)
                return
            if not self.ordered:
                self._sequence += 1
                stream = f"{event_id}#{self._sequence}"
            self._start(event_id, stream)

    def hold(self) -> None:
        """Keep every delivery from now on (resends too) until `release`."""
        with self._cond:
            if self._held is None:
                self._held = []

    def held(self) -> list[str]:
        """The event ids of the deliveries held back, in the order they were queued."""
        with self._cond:
            return list(self._held or [])

    def release(self, seed: int | None = None, *, keep_holding: bool = False) -> list[str]:
        """Send the held deliveries one after another in one stream (shuffled by `seed`, else in
        the order they were queued) and stop holding unless `keep_holding`; return their ids in
        the order they go out."""
        with self._cond:
            held = list(self._held or [])
            self._held = [] if keep_holding else None
            if seed is not None:
                random.Random(seed).shuffle(held)
            self._sequence += 1
            stream = f"released#{self._sequence}"
            for event_id in held:
                if not self._stopping:
                    self._start(event_id, stream)
            return held

    def _start(self, event_id: str, stream: str) -> None:
        """Queue `event_id` on `stream`, starting the stream's thread if it has none; the caller
        holds the condition's lock."""
        self._queues.setdefault(stream, deque()).append(event_id)
        if stream not in self._workers:
            worker = threading.Thread(
                target=self._run,
                args=(stream, self._generation),
                name=f"stripe-local-webhook-{stream[:24]}",
                daemon=True,
            )
            self._workers[stream] = worker
            self._all_threads = [t for t in self._all_threads if t.is_alive()]
            self._all_threads.append(worker)
            worker.start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no delivery is queued or in flight; return False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._workers, timeout)

    def reset(self) -> None:
        """Drop every queued delivery and stop retrying those in flight."""
        with self._cond:
            self._generation += 1
            self._queues.clear()
            self._workers.clear()
            if self._held is not None:
                self._held = []
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering and wait for the delivery threads to end."""
        with self._cond:
            self._stopping = True
            self._queues.clear()
            self._held = None
            self._cond.notify_all()
            threads = list(self._all_threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _cancelled(self, generation: int) -> bool:
        return self._stopping or generation != self._generation

    def _run(self, stream: str, generation: int) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                queue = self._queues.get(stream) if not self._cancelled(generation) else None
                if not queue:
                    if self._workers.get(stream) is me:
                        del self._workers[stream]
                        self._queues.pop(stream, None)
                    self._cond.notify_all()
                    return
                event_id = queue.popleft()
            self._deliver(event_id, generation)

    def _deliver(self, event_id: str, generation: int) -> None:
        for attempt in range(1, self.max_attempts + 1):
            with self._cond:
                if self._cancelled(generation):
                    return
            url, secret = self.state.webhook_config()
            with self.state.lock:
                event = self.state.events.get(event_id)
                payload = json.dumps(event, indent=2) if event is not None else None
            if url is None or payload is None or event is None:
                log.info("webhook %s not sent: no webhook URL configured", event_id)
                return
            status, error, elapsed = self._post(url, secret or "", payload)
            ok = status is not None and 200 <= status < 300
            self.state.record_delivery(
                {
                    "event_id": event_id,
                    "type": event["type"],
                    "attempt": attempt,
                    "url": url,
                    "status": status,
                    "ok": ok,
                    "error": error,
                    "at": time.time(),
                    "duration_ms": round(elapsed * 1000, 1),
                }
            )
            log.info(
                "webhook %s %s -> %s %s (attempt %d/%d)",
                event_id,
                event["type"],
                url,
                status if status is not None else f"error: {error}",
                attempt,
                self.max_attempts,
            )
            if ok or attempt == self.max_attempts:
                return
            delay = retry_delay(attempt, self.retry_scale)
            with self._cond:
                if self._cond.wait_for(lambda: self._cancelled(generation), delay):
                    return

    def _post(self, url: str, secret: str, payload: str) -> tuple[int | None, str | None, float]:
        headers: dict[str, Any] = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": sign(payload, secret),
        }
        started = time.monotonic()
        try:
            with requests.post(
                url, data=payload.encode(), headers=headers, timeout=self.timeout
            ) as response:
                return response.status_code, None, time.monotonic() - started
        except requests.RequestException as exc:
            return None, type(exc).__name__, time.monotonic() - started
