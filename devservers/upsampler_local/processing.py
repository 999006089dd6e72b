"""Background work: fetch the input, upscale it with libvips, keep the results, call the webhook."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyvips
import requests

from .store import Behaviour, Job, Obj, UpsamplerState

log = logging.getLogger("devservers.upsampler_local")

USER_AGENT = "Upsampler-Local/1.0 (development server)"
NOT_AN_IMAGE = b"<!doctype html><title>Not an image</title><p>This is not the image you wanted.\n"
OUTPUT_FORMATS = ("png", "source")
# Savers for the full-quality result, by file extension.
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"compression": 1},
    "jpg": {"Q": 95},
    "webp": {"Q": 95},
}
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def _where(url: str) -> str:
    """The scheme and host of a webhook URL, for logs (its path may carry a signature)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."


class JobFailure(Exception):
    """A job ends FAILED with this message (what the real service would say)."""


def content_type(ext: str) -> str:
    """The Content-Type of a result file extension."""
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


def resize_to(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Resize `image` to exactly width x height with the lanczos3 kernel."""
    out = image.resize(width / image.width, vscale=height / image.height, kernel="lanczos3")
    if out.width > width or out.height > height:
        out = out.crop(0, 0, min(out.width, width), min(out.height, height))
    if out.width < width or out.height < height:
        out = out.embed(0, 0, width, height, extend="copy")
    return out


def foreign_result(image: pyvips.Image, result_format: str) -> bytes:
    """`image` as a file of `result_format` (see RESULT_FORMATS): what a storefront must refuse."""
    if result_format == "svg":
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{image.width}" '
            f'height="{image.height}"><rect width="100%" height="100%" fill="#36c"/></svg>\n'
        ).encode()
    if result_format in ("matrix", "csv"):
        suffix = ".mat" if result_format == "matrix" else ".csv"
        return bytes(image.extract_band(0).write_to_buffer(suffix))
    if result_format == "vips":  # libvips writes its own format to files only
        with tempfile.TemporaryDirectory(prefix="upsampler-local-") as tmp:
            path = Path(tmp) / "result.v"
            image.write_to_file(str(path))
            return path.read_bytes()
    suffix = {"tiff": ".tif", "gif": ".gif", "heif": ".avif"}[result_format]
    return bytes(image.write_to_buffer(suffix))


def _source_ext(image: pyvips.Image) -> str:
    loader = ""
    if "vips-loader" in image.get_fields():
        loader = str(image.get("vips-loader"))
    if loader.startswith("jpeg"):
        return "jpg"
    if loader.startswith("webp"):
        return "webp"
    return "png"


class JobRunner:
    """Runs each job in its own thread (at most `workers` at once) and delivers its callback."""

    def __init__(
        self,
        state: UpsamplerState,
        result_dir: Path,
        *,
        workers: int = 2,
        output_format: str = "png",
        result_ttl: float = 3 * 3600,
        max_input_bytes: int = 100 * 1024 * 1024,
        fetch_timeout: tuple[float, float] = (5, 30),
        callback_attempts: int = 3,
        callback_retry_delay: float = 0.5,
        callback_timeout: float = 10.0,
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
        self.state = state
        self.result_dir = result_dir
        self.output_format = output_format
        self.result_ttl = result_ttl
        self.max_input_bytes = max_input_bytes
        self.fetch_timeout = fetch_timeout
        self.callback_attempts = max(1, callback_attempts)
        self.callback_retry_delay = callback_retry_delay
        self.callback_timeout = callback_timeout
        self._slots = threading.BoundedSemaphore(max(1, workers))
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, job: Job) -> None:
        """Process `job` in a background thread."""
        thread = threading.Thread(
            target=self._run, args=(job,), name=f"upsampler-local-job-{job.id[:8]}", daemon=True
        )
        with self.state.lock:
            self.state.busy += 1
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop waiting and delivering; wait for the job threads to end."""
        self._stopping.set()
        with self.state.lock:
            for job in self.state.jobs.values():
                job.released.set()
        with self._threads_lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the server stops meanwhile."""
        self._stopping.wait(seconds)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no job is queued, running or delivering its callback; False on timeout."""
        with self.state.changed:
            return self.state.changed.wait_for(lambda: self.state.busy == 0, timeout)

    # ------------------------------------------------------------------ one job

    def _run(self, job: Job) -> None:
        try:
            while not self._slots.acquire(timeout=0.05):
                if self._stopping.is_set():
                    return
            try:
                finished = self._work(job)
            finally:
                self._slots.release()
            if finished and not self._stopping.is_set():
                self.deliver(job)
        except Exception:  # a bug here must not kill the server silently
            log.exception("job %s: unexpected error", job.id)
        finally:
            with self.state.lock:
                self.state.busy -= 1
                self.state.changed.notify_all()

    def _work(self, job: Job) -> bool:
        """Take the job to SUCCESS or FAILED; return False if the server stopped meanwhile."""
        behaviour = job.behaviour
        started = time.monotonic()
        self.state.update(job, status="IN_PROGRESS", started_at=time.time())
        error: str | None = behaviour.fail
        if error is None:
            try:
                self._process(job, behaviour)
            except JobFailure as failure:
                error = str(failure)
        remaining = behaviour.delay - (time.monotonic() - started)
        if remaining > 0 and self._stopping.wait(remaining):
            return False
        if behaviour.hold:
            self.state.update(job, held=True)  # done with the work, waiting for `release()`
            while not job.released.wait(0.05):
                if self._stopping.is_set():
                    return False
            self.state.update(job, held=False)
            if self._stopping.is_set() or self.state.get(job.id) is not job:
                return False
        now = time.time()
        if error is not None:
            self.state.update(job, status="FAILED", error=error, finished_at=now)
            log.info("job %s FAILED: %s", job.id, error)
        else:
            self.state.update(
                job, status="SUCCESS", finished_at=now, results_expire_at=now + self.result_ttl
            )
            log.info(
                "job %s SUCCESS: %sx%s, %s credits",
                job.id,
                *(job.output_size or ("?", "?")),
                job.credit_cost,
            )
        return True

    def _process(self, job: Job, behaviour: Behaviour) -> None:
        data = self._fetch(str(job.input["imageUrl"]))
        try:
            image = pyvips.Image.new_from_buffer(data, "")
            width, height = image.width, image.height
            if image.interpretation == "cmyk":
                image = image.colourspace("srgb")
        except pyvips.Error:
            raise JobFailure(
                "The input image could not be read. Supported formats: JPEG, PNG, WebP."
            ) from None
        factor = float(job.input["upscaleFactor"]) + behaviour.factor_delta
        out_w = max(1, round(width * factor) + behaviour.size_offset)
        out_h = max(1, round(height * factor) + behaviour.size_offset)
        ext = _source_ext(image) if self.output_format == "source" else "png"
        result = self.result_dir / f"{job.id}.{ext}"
        compressed = self.result_dir / f"{job.id}-compressed.jpg"
        if behaviour.non_image:
            result.write_bytes(NOT_AN_IMAGE)
            compressed.write_bytes(NOT_AN_IMAGE)
        else:
            try:
                upscaled = resize_to(image, out_w, out_h)
                if behaviour.result_format:
                    result.write_bytes(foreign_result(upscaled, behaviour.result_format))
                else:
                    upscaled.write_to_file(str(result), **_SAVE_OPTIONS[ext])
                flat = upscaled.flatten(background=255) if upscaled.hasalpha() else upscaled
                flat.write_to_file(str(compressed), Q=80)
            except pyvips.Error as exc:
                log.warning("job %s: libvips failed: %s", job.id, str(exc).splitlines()[0])
                raise JobFailure(
                    "Failed to process image due to an internal error. "
                    "Your credits have been refunded."
                ) from None
        if behaviour.oversize is not None and result.stat().st_size < behaviour.oversize:
            os.truncate(result, behaviour.oversize)
        self.state.update(
            job,
            input_size=(width, height),
            output_size=(out_w, out_h),
            credit_cost=self.state.credits_for(out_w, out_h),
            result_ext=ext,
            result_type=content_type(ext),
            result_path=result,
            compressed_path=compressed,
        )

    def _fetch(self, url: str) -> bytes:
        """Download the input image (the storefront's URL), refusing bodies over the cap."""
        chunks: list[bytes] = []
        total = 0
        try:
            with requests.get(
                url, stream=True, timeout=self.fetch_timeout, headers={"User-Agent": USER_AGENT}
            ) as response:
                if response.status_code != 200:
                    raise JobFailure(
                        f"Failed to download the input image (HTTP {response.status_code})."
                    )
                for chunk in response.iter_content(64 * 1024):
                    total += len(chunk)
                    if total > self.max_input_bytes:
                        raise JobFailure("The input image is too large.")
                    chunks.append(chunk)
        except requests.RequestException as exc:
            raise JobFailure(
                f"Failed to download the input image ({type(exc).__name__})."
            ) from None
        return b"".join(chunks)

    # ------------------------------------------------------------------ callbacks

    def callback_body(self, job: Job) -> Obj:
        """The body the webhook of `job` receives, bent as its behaviour says."""
        behaviour = job.behaviour
        if behaviour.callback_from:
            other = self.state.get(behaviour.callback_from)
            if other is not None:
                return self.state.job_object(other)
            log.warning("job %s: callback_from %s: no such job", job.id, behaviour.callback_from)
        body = self.state.job_object(job)
        if behaviour.callback_claims_success and job.status != "SUCCESS":
            base = self.state.result_base(behaviour)
            body.pop("error", None)
            body.update(
                status="SUCCESS",
                imageUrl=f"{base}/results/{job.id}.png",
                compressedImageUrl=f"{base}/results/{job.id}-compressed.jpg",
                creditCost=job.credit_cost or 1,
            )
        return body

    def deliver(self, job: Job) -> None:
        """POST the job's callback to its webhook, retrying a few times on failure."""
        if not job.webhook:
            return
        if job.behaviour.drop_callback:
            self.state.record(
                "callbacks",
                {"job_id": job.id, "url": job.webhook, "dropped": True, "attempt": 0, "ok": False},
            )
            log.info("job %s: callback dropped on purpose", job.id)
            return
        body = self.callback_body(job)
        for attempt in range(1, self.callback_attempts + 1):
            record = self.post(job.id, job.webhook, body, attempt=attempt)
            if record["ok"] or attempt == self.callback_attempts:
                return
            if self._stopping.wait(self.callback_retry_delay * 2 ** (attempt - 1)):
                return

    def post(
        self, job_id: str, url: str, body: Obj, *, attempt: int = 1, manual: bool = False
    ) -> Obj:
        """POST one callback body to `url`, record the attempt, and return the record."""
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            with requests.post(
                url,
                json=body,
                timeout=self.callback_timeout,
                headers={"User-Agent": USER_AGENT},
            ) as response:
                status = response.status_code
        except requests.RequestException as exc:
            error = type(exc).__name__
        record: Obj = {
            "job_id": job_id,
            "url": url,
            "attempt": attempt,
            "manual": manual,
            "body": body,
            "status": status,
            "ok": status is not None and 200 <= status < 300,
            "error": error,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        self.state.record("callbacks", record)
        log.info(
            "callback %s -> %s %s (attempt %d)",
            job_id,
            _where(url),
            status if status is not None else f"error: {error}",
            attempt,
        )
        return record

    def send_callback(
        self,
        job_id: str,
        *,
        to_job: str | None = None,
        url: str | None = None,
        body: Obj | None = None,
        overrides: Obj | None = None,
    ) -> Obj:
        """Post a callback about `job_id` once, now: its current body (or `body`), with
        `overrides` merged in, to its webhook, the webhook of job `to_job`, or `url`."""
        job = self.state.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        target = url
        if target is None:
            owner = self.state.get(to_job) if to_job else job
            if owner is None:
                raise LookupError(f"no job {to_job}")
            target = owner.webhook
        if not target:
            raise ValueError("that job has no webhook URL; give `url`")
        payload = dict(body) if body is not None else self.state.job_object(job)
        payload.update(overrides or {})
        return self.post(job_id, target, payload, manual=True)
