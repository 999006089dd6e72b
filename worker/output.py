"""The one output writer: every engine and the Upsampler collection write a delivered file here.

The file is made under a temporary name beside its final place, its pixel size is checked, and only
then is it renamed into place, so a delivered path never names a partial or wrong file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from flask import current_app

from storefront.jobs.delivery import delivery_path
from storefront.models import Job
from storefront.storage import resolve
from worker.engines.base import PermanentUpscaleError
from worker.engines.imaging import image_size


class WrongSize(PermanentUpscaleError):
    """The output's pixel size is not the original's times the factor."""


def write_output(
    job: Job, suffix: str, produce: Callable[[Path], object], *, tolerance: int = 0
) -> Path:
    """Run `produce(temporary_path)`, check the result's size, and move it to the job's place.

    The size must be the original's times the job's factor, within `tolerance` pixels a side.
    """
    final = resolve(current_app._get_current_object(), delivery_path(job, suffix))  # type: ignore[attr-defined]
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".tmp-{uuid.uuid4().hex}{suffix}")
    try:
        produce(temporary)
        expected = ((job.image_width or 0) * job.factor, (job.image_height or 0) * job.factor)
        actual = image_size(temporary)
        if any(abs(a - e) > tolerance for a, e in zip(actual, expected, strict=True)):
            raise WrongSize(
                f"the output is {actual[0]}×{actual[1]}, expected {expected[0]}×{expected[1]}"
            )
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return final
