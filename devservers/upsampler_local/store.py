"""The server's memory: jobs, behaviours (per server and per next job), armed failures, records."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

Obj = dict[str, Any]

JOB_STATUSES = ("IN_QUEUE", "IN_PROGRESS", "SUCCESS", "FAILED")


@dataclass(frozen=True)
class Behaviour:
    """How the server treats a job; the server's default, or set for the next submission(s).

    delay: seconds a job stays IN_PROGRESS before it ends.
    hold: the job stays IN_PROGRESS until `release(job_id)`.
    fail: end the job FAILED with this message (nothing is processed).
    factor_delta: upscale by `upscaleFactor + factor_delta` (e.g. -1: a wrong size).
    size_offset: add this many pixels to the output's width and height (e.g. -10).
    non_image: the result body is not an image (the compressed one too).
    oversize: pad the result body with zero bytes up to this many bytes.
    chunked: serve results streamed, without Content-Length.
    result_status: answer result downloads with this HTTP status (e.g. 404, 500).
    result_host: host name put in result URLs instead of the one the server listens on.
    drop_callback: never call the webhook.
    callback_from: post that other job's body to this job's webhook instead of its own.
    callback_claims_success: the callback says SUCCESS (with result URLs) whatever happened.
    extra_fields: merged into every job object the server answers about this job.
    answer_delay: seconds the answer to the submission takes, the job already created and
        running (a slow answer: a client that gives up or dies meanwhile leaves it behind).
    result_format: write the full-quality result in this format (one of RESULT_FORMATS: tiff,
        gif, heif, vips, svg, matrix, csv) under its usual name: the right size, the wrong kind.
    """

    delay: float = 0.0
    hold: bool = False
    fail: str | None = None
    factor_delta: int = 0
    size_offset: int = 0
    non_image: bool = False
    oversize: int | None = None
    chunked: bool = False
    result_status: int = 200
    result_host: str | None = None
    drop_callback: bool = False
    callback_from: str | None = None
    callback_claims_success: bool = False
    extra_fields: dict[str, Any] = field(default_factory=dict)
    answer_delay: float = 0.0
    result_format: str | None = None

    def to_dict(self) -> Obj:
        """Return the behaviour as JSON-ready fields."""
        return dataclasses.asdict(self)


BEHAVIOUR_FIELDS = tuple(f.name for f in dataclasses.fields(Behaviour))
RESULT_FORMATS = ("tiff", "gif", "heif", "vips", "svg", "matrix", "csv")


def coerce_behaviour(fields: dict[str, Any]) -> dict[str, Any]:
    """Check and convert behaviour overrides given as JSON; raise ValueError on a bad one."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in BEHAVIOUR_FIELDS:
            raise ValueError(f"unknown behaviour {name!r}; known: {', '.join(BEHAVIOUR_FIELDS)}")
        try:
            if name in ("delay", "answer_delay"):
                value = float(value)
                if not math.isfinite(value) or value < 0:
                    raise ValueError
            elif name in ("hold", "non_image", "chunked", "drop_callback"):
                value = _as_bool(value)
            elif name == "callback_claims_success":
                value = _as_bool(value)
            elif name in ("factor_delta", "size_offset", "result_status"):
                value = int(value)
                if name == "result_status" and not 100 <= value <= 599:
                    raise ValueError
            elif name == "oversize":
                value = None if value in (None, "") else int(value)
                if value is not None and value < 0:
                    raise ValueError
            elif name in ("fail", "result_host", "callback_from"):
                value = None if value in (None, "") else str(value)
            elif name == "result_format":
                value = None if value in (None, "") else str(value)
                if value is not None and value not in RESULT_FORMATS:
                    raise ValueError
            elif name == "extra_fields":
                if not isinstance(value, dict):
                    raise ValueError
                value = dict(value)
        except (TypeError, ValueError):
            raise ValueError(f"behaviour {name!r} has an invalid value") from None
        out[name] = value
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean")


@dataclass
class FailureRule:
    """Answer the next `remaining` API calls (optionally only under `path`) with `status`."""

    status: int
    remaining: int
    retry_after: str | None = None
    path: str | None = None
    message: str | None = None

    def to_dict(self) -> Obj:
        """Return the rule as JSON-ready fields."""
        return dataclasses.asdict(self)


@dataclass
class Job:
    """One submitted job and everything the server knows about it."""

    id: str
    input: Obj
    webhook: str | None
    behaviour: Behaviour
    status: str = "IN_QUEUE"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    credit_cost: int | None = None
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    result_ext: str | None = None
    result_type: str | None = None
    result_path: Path | None = None
    compressed_path: Path | None = None
    results_expire_at: float | None = None
    held: bool = False
    released: threading.Event = field(default_factory=threading.Event)

    def summary(self) -> Obj:
        """Return the job for inspection (more than the API shows)."""
        return {
            "id": self.id,
            "status": self.status,
            "input": copy.deepcopy(self.input),
            "webhook": self.webhook,
            "behaviour": self.behaviour.to_dict(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "credit_cost": self.credit_cost,
            "input_size": list(self.input_size) if self.input_size else None,
            "output_size": list(self.output_size) if self.output_size else None,
            "result_type": self.result_type,
            "results_expire_at": self.results_expire_at,
            "held": self.held,
        }


class UpsamplerState:
    """Jobs, behaviours, armed failures and records, shared by the app and the job threads."""

    def __init__(
        self,
        *,
        behaviour: Behaviour | None = None,
        credits_per_megapixel: Decimal = Decimal("0.25"),
        api_key: str | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.api_key = api_key
        self.credits_per_megapixel = Decimal(credits_per_megapixel)
        self.public_url = ""
        self.default_behaviour = behaviour or Behaviour()
        self.next_behaviours: deque[dict[str, Any]] = deque()
        self.failures: list[FailureRule] = []
        self.jobs: dict[str, Job] = {}
        self.submissions: list[Obj] = []
        self.status_calls: list[Obj] = []
        self.callbacks: list[Obj] = []
        self.downloads: list[Obj] = []
        self.busy = 0

    # ------------------------------------------------------------------ behaviours and failures

    def set_behaviour(self, **fields: Any) -> Behaviour:
        """Change the server's default behaviour (fields not given keep their value)."""
        with self.lock:
            self.default_behaviour = dataclasses.replace(self.default_behaviour, **fields)
            return self.default_behaviour

    def arm_next(self, **fields: Any) -> int:
        """Apply these behaviour fields to the next submission only; return how many are armed."""
        with self.lock:
            self.next_behaviours.append(dict(fields))
            return len(self.next_behaviours)

    def take_behaviour(self) -> Behaviour:
        """Return the behaviour for a new job (consuming one armed for the next job, if any)."""
        with self.lock:
            fields = self.next_behaviours.popleft() if self.next_behaviours else {}
            return dataclasses.replace(self.default_behaviour, **fields)

    def arm_failure(
        self,
        status: int,
        count: int,
        *,
        retry_after: str | None = None,
        path: str | None = None,
        message: str | None = None,
    ) -> FailureRule:
        """Make the next `count` API calls (optionally only those under `path`) fail."""
        rule = FailureRule(status, count, retry_after=retry_after, path=path, message=message)
        with self.lock:
            self.failures.append(rule)
        return rule

    def take_failure(self, path: str) -> FailureRule | None:
        """Return (and count down) the armed failure that applies to an API call on `path`."""
        with self.lock:
            for rule in self.failures:
                if rule.remaining > 0 and (rule.path is None or path.startswith(rule.path)):
                    rule.remaining -= 1
                    self.failures = [r for r in self.failures if r.remaining > 0]
                    return dataclasses.replace(rule)
        return None

    # ------------------------------------------------------------------ jobs

    def new_job(self, input_: Obj, webhook: str | None) -> Job:
        """Record a new IN_QUEUE job with the behaviour meant for it."""
        job = Job(
            id=str(uuid.uuid4()), input=input_, webhook=webhook, behaviour=self.take_behaviour()
        )
        with self.lock:
            self.jobs[job.id] = job
            self.changed.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        """Return a job by id, or None."""
        with self.lock:
            return self.jobs.get(job_id)

    def update(self, job: Job, **changes: Any) -> None:
        """Change a job's fields and wake whoever waits on state changes."""
        with self.lock:
            for name, value in changes.items():
                setattr(job, name, value)
            self.changed.notify_all()

    def credits_for(self, width: int, height: int) -> int:
        """Credits for an output of width x height: ceil(megapixels x credits_per_megapixel)."""
        megapixels = Decimal(width * height) / Decimal(1_000_000)
        return max(1, math.ceil(megapixels * self.credits_per_megapixel))

    def result_base(self, behaviour: Behaviour) -> str:
        """The base of result URLs for a job (its `result_host` swapped in, port kept)."""
        base = self.public_url
        if behaviour.result_host:
            parts = urlsplit(base)
            host = behaviour.result_host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            netloc = f"{host}:{parts.port}" if parts.port else host
            base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return base.rstrip("/")

    def job_object(self, job: Job) -> Obj:
        """Return the job as the API and the webhook show it."""
        with self.lock:
            body: Obj = {"id": job.id, "status": job.status}
            if job.status == "SUCCESS":
                base = self.result_base(job.behaviour)
                body["imageUrl"] = f"{base}/results/{job.id}.{job.result_ext}"
                body["compressedImageUrl"] = f"{base}/results/{job.id}-compressed.jpg"
                body["creditCost"] = job.credit_cost
            elif job.status == "FAILED":
                body["error"] = job.error
            body.update(copy.deepcopy(job.behaviour.extra_fields))
            return body

    # ------------------------------------------------------------------ records

    def record(self, kind: str, entry: Obj) -> None:
        """Append to one of the records: submissions, status_calls, callbacks, downloads."""
        entry = {"at": time.time(), **entry}
        with self.lock:
            getattr(self, kind).append(entry)
            self.changed.notify_all()

    def requests_snapshot(self) -> Obj:
        """Return copies of every record."""
        with self.lock:
            return copy.deepcopy(
                {
                    "submissions": self.submissions,
                    "status_calls": self.status_calls,
                    "callbacks": self.callbacks,
                    "downloads": self.downloads,
                }
            )

    def snapshot(self) -> Obj:
        """Return jobs, configuration and records for inspection (never the API key)."""
        with self.lock:
            return {
                "jobs": [job.summary() for job in self.jobs.values()],
                "behaviour": self.default_behaviour.to_dict(),
                "next_job": [dict(b) for b in self.next_behaviours],
                "failures": [rule.to_dict() for rule in self.failures],
                "api_key_set": bool(self.api_key),
                "credits_per_megapixel": str(self.credits_per_megapixel),
                **self.requests_snapshot(),
            }

    def reset(self) -> None:
        """Forget jobs, records, armed failures and next-job behaviours; keep the defaults."""
        with self.lock:
            for job in self.jobs.values():
                job.released.set()
            self.jobs.clear()
            self.next_behaviours.clear()
            self.failures.clear()
            self.submissions.clear()
            self.status_calls.clear()
            self.callbacks.clear()
            self.downloads.clear()
            self.changed.notify_all()
