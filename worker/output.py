"""The one output writer: every engine and the Upsampler collection write a delivered file here.

The file is made in this worker's WORK_DIR, its pixel size is checked, and only then is it put in
storage (renamed into place on a disk, or uploaded in parts to a bucket, where the object appears
when its last part is in), so a delivered key never names a partial or wrong file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import current_app

from storefront.jobs.delivery import delivery_path
from storefront.models import Job
from storefront.storage import StoredObject, backend, temporary_path
from worker.engines.base import PermanentUpscaleError
from worker.engines.imaging import image_size

MIME_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


class WrongSize(PermanentUpscaleError):
    """The output's pixel size is not the original's times the factor."""


def write_output(
    job: Job, suffix: str, produce: Callable[[Path], object], *, tolerance: int = 0
) -> StoredObject:
    """Run `produce(temporary_path)`, check the result's size, and store it as the job's file.

    The size must be the original's times the job's factor, within `tolerance` pixels a side.
    A storage failure (StorageError) is transient: RQ tries again, and the last try refunds.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    temporary = temporary_path(app, suffix)
    try:
        produce(temporary)
        expected = ((job.image_width or 0) * job.factor, (job.image_height or 0) * job.factor)
        actual = image_size(temporary)
        if any(abs(a - e) > tolerance for a, e in zip(actual, expected, strict=True)):
            raise WrongSize(
                f"the output is {actual[0]}×{actual[1]}, expected {expected[0]}×{expected[1]}"
            )
        content_type = MIME_TYPES.get(suffix.lower(), "application/octet-stream")
        return backend(app).put_file(delivery_path(job, suffix), temporary, content_type)
    finally:
        temporary.unlink(missing_ok=True)
