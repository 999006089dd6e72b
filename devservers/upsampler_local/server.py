"""The app factory and the in-process server: `start_server()` returns a `LocalUpsampler`."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Response

from devservers.common import QuietHandler, ServerThread, register_request_log, url_host

from . import api, control
from .context import EXTENSION, Runtime
from .processing import JobRunner
from .store import Behaviour, Obj, UpsamplerState, coerce_behaviour

log = logging.getLogger("devservers.upsampler_local")


def create_app(state: UpsamplerState, runner: JobRunner) -> Flask:
    """Build the Flask app serving the API, the result files and the control surface."""
    app = Flask(__name__)
    app.extensions[EXTENSION] = Runtime(state=state, runner=runner)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.results_bp)
    app.register_blueprint(control.bp)
    _register_errors(app)
    register_request_log(app, log)
    return app


def _register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response | HTTPException:
        if request.path.startswith(("/api/", "/_local/", "/results/")):
            return api.error_response(
                api.ApiError(error.description or error.name, error.code or 500)
            )
        return error


class LocalUpsampler:
    """A running local Upsampler server: its URLs, state, control methods, and `stop()`."""

    def __init__(
        self,
        *,
        state: UpsamplerState,
        runner: JobRunner,
        server: BaseWSGIServer,
        url: str,
        result_dir: Path,
        owns_result_dir: bool,
    ) -> None:
        self.state = state
        self.runner = runner
        self.url = url
        self.host = server.host
        self.port = server.port
        self.result_dir = result_dir
        self._owns_result_dir = owns_result_dir
        self._stopped = threading.Event()
        self._serving = ServerThread(server, name=f"upsampler-local-{self.port}")

    def _start(self) -> None:
        self._serving.start()

    # ----------------------------------------------------------------- configuration

    @property
    def api_base(self) -> str:
        """The value for `UPSAMPLER_API_BASE`: `<url>/api/v1`."""
        return f"{self.url}/api/v1"

    @property
    def behaviour(self) -> Behaviour:
        """The behaviour every job gets unless one is armed for it."""
        return self.state.default_behaviour

    def set_behaviour(self, **fields: Any) -> Behaviour:
        """Change the default behaviour of every later job (see `Behaviour` for the fields)."""
        return self.state.set_behaviour(**coerce_behaviour(fields))

    def next_job(self, **fields: Any) -> None:
        """Apply these behaviour fields to the next submission only (calls queue up)."""
        self.state.arm_next(**coerce_behaviour(fields))

    def fail_next(
        self,
        status: int = 500,
        count: int = 1,
        *,
        retry_after: int | str | None = None,
        path: str | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next `count` API calls (optionally only under `path`, e.g. `/status`)
        answer `status`; a 429 carries `Retry-After: retry_after` (default 1)."""
        self.state.arm_failure(
            status,
            count,
            retry_after=str(retry_after) if retry_after is not None else None,
            path=path,
            message=message,
        )

    # ----------------------------------------------------------------- driving jobs

    def release(self, job_id: str) -> None:
        """Let a job held by the `hold` behaviour finish."""
        job = self.state.get(job_id)
        if job is None:
            raise KeyError(job_id)
        job.released.set()

    def expire_results(self, job_id: str) -> None:
        """Make a job's result URLs answer 404 from now on."""
        job = self.state.get(job_id)
        if job is None:
            raise KeyError(job_id)
        self.state.update(job, results_expire_at=0.0)

    def send_callback(
        self,
        job_id: str,
        *,
        to_job: str | None = None,
        url: str | None = None,
        body: Obj | None = None,
        overrides: Obj | None = None,
    ) -> Obj:
        """Post a callback about `job_id` now (its body, or `body`, with `overrides`) to its
        webhook, to job `to_job`'s webhook, or to `url`; return the delivery record."""
        return self.runner.send_callback(
            job_id, to_job=to_job, url=url, body=body, overrides=overrides
        )

    # ----------------------------------------------------------------- inspection

    def job(self, job_id: str) -> Obj:
        """Return the job object the API would answer for `job_id`."""
        job = self.state.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return self.state.job_object(job)

    def jobs(self) -> list[Obj]:
        """Return every job's summary, oldest first."""
        with self.state.lock:
            return [job.summary() for job in self.state.jobs.values()]

    def submissions(self) -> list[Obj]:
        """Return the recorded submissions (every POST, with its answer's status)."""
        return self.state.requests_snapshot()["submissions"]

    def status_calls(self) -> list[Obj]:
        """Return the recorded status calls."""
        return self.state.requests_snapshot()["status_calls"]

    def callbacks(self, job_id: str | None = None) -> list[Obj]:
        """Return the recorded callback attempts, optionally about one job."""
        found = self.state.requests_snapshot()["callbacks"]
        return [c for c in found if job_id in (None, c["job_id"])]

    def downloads(self) -> list[Obj]:
        """Return the recorded result downloads."""
        return self.state.requests_snapshot()["downloads"]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no job is queued, running or delivering; return False on timeout."""
        return self.runner.wait_idle(timeout)

    def wait_for(
        self,
        job_id: str,
        statuses: Iterable[str] = ("SUCCESS", "FAILED"),
        timeout: float = 10.0,
    ) -> Obj:
        """Wait until job `job_id` reaches one of `statuses`; return its job object."""
        wanted = tuple(statuses)
        with self.state.changed:
            ok = self.state.changed.wait_for(
                lambda: (job := self.state.jobs.get(job_id)) is not None and job.status in wanted,
                timeout,
            )
        if not ok:
            raise TimeoutError(f"job {job_id} did not reach {'/'.join(wanted)} in {timeout}s")
        return self.job(job_id)

    def reset(self) -> None:
        """Forget every job, record, armed failure and next-job behaviour; keep the defaults."""
        self.state.reset()

    # ----------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop serving and processing, release the port, and delete the results it made."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._serving.stop()
        self.runner.stop()
        if self._owns_result_dir:
            shutil.rmtree(self.result_dir, ignore_errors=True)

    def __enter__(self) -> LocalUpsampler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalUpsampler {self.url}>"


def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    *,
    public_url: str | None = None,
    behaviour: Behaviour | None = None,
    credits_per_megapixel: Decimal | str | float = Decimal("0.25"),
    output_format: str = "png",
    result_ttl: float = 3 * 3600,
    result_dir: Path | None = None,
    workers: int = 2,
    max_input_bytes: int = 100 * 1024 * 1024,
    callback_attempts: int = 3,
    callback_retry_delay: float = 0.5,
    callback_timeout: float = 10.0,
) -> LocalUpsampler:
    """Start a local Upsampler server in background threads and return it (port 0: a free one).

    Without `api_key` any (or no) Bearer key is accepted. Result URLs start with `public_url`
    (default: the listening URL). `output_format` is `png` (like the real full-quality result)
    or `source` (the input's format). Credits are ceil(output megapixels x credits_per_megapixel).
    """
    state = UpsamplerState(
        behaviour=behaviour,
        credits_per_megapixel=Decimal(str(credits_per_megapixel)),
        api_key=api_key or None,
    )
    owns_result_dir = result_dir is None
    directory = (
        Path(tempfile.mkdtemp(prefix="upsampler-local-")) if result_dir is None else result_dir
    )
    directory.mkdir(parents=True, exist_ok=True)
    runner = JobRunner(
        state,
        directory,
        workers=workers,
        output_format=output_format,
        result_ttl=result_ttl,
        max_input_bytes=max_input_bytes,
        callback_attempts=callback_attempts,
        callback_retry_delay=callback_retry_delay,
        callback_timeout=callback_timeout,
    )
    app = create_app(state, runner)
    try:
        server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)
    except BaseException:
        if owns_result_dir:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    url = f"http://{url_host(host)}:{server.port}"
    state.public_url = (public_url or url).rstrip("/")
    local = LocalUpsampler(
        state=state,
        runner=runner,
        server=server,
        url=url,
        result_dir=directory,
        owns_result_dir=owns_result_dir,
    )
    local._start()
    return local
