"""How an upscale ends: the one output writer, and completion that never loses a delivered file."""

from __future__ import annotations

import pytest
from flask import Flask

from storefront.extensions import db
from storefront.jobs.delivery import delivery_path
from storefront.jobs.outcomes import complete_job
from storefront.jobs.state import get_job
from storefront.models import Job
from storefront.storage import backend, work_dir
from tests.admin_helpers import completed_job
from tests.factories import make_attachment, make_job, resolve, write_test_image
from worker.output import WrongSize, write_output


def _processing_job(app: Flask, **fields: object) -> Job:
    attachment = make_attachment(app, width=40, height=30)
    job = make_job(attachment, status="processing", payment_status="paid", **fields)
    db.session.commit()
    return job


def test_the_writer_moves_a_checked_output_into_the_jobs_place(app: Flask) -> None:
    job = _processing_job(app)
    final = write_output(job, ".jpg", lambda out: write_test_image(out, 160, 120))
    assert final.key == delivery_path(job, ".jpg")
    path = resolve(app, final.key)
    assert path.name == f"{job.post.slug}-{job.attachment_id}-4x.jpg"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert final.size == path.stat().st_size
    assert list(work_dir(app).iterdir()) == []  # the work file became the stored one


def test_the_writer_refuses_a_wrong_size_and_leaves_nothing(app: Flask) -> None:
    job = _processing_job(app)
    with pytest.raises(WrongSize, match="expected 160×120"):
        write_output(job, ".jpg", lambda out: write_test_image(out, 161, 120))
    assert backend(app).stat(delivery_path(job, ".jpg")) is None
    assert list(backend(app).objects("deliveries/")) == []
    assert list(work_dir(app).iterdir()) == []


def test_a_size_within_the_tolerance_passes(app: Flask) -> None:
    job = _processing_job(app)
    final = write_output(
        job, ".png", lambda out: write_test_image(out, 161, 119, "png"), tolerance=1
    )
    assert resolve(app, final.key).is_file()


def test_an_attempt_that_lost_the_race_keeps_the_winners_file(app: Flask) -> None:
    # Two attempts of one job write the same path; the first completes the job, the second
    # finds it completed already and must not delete what the first recorded.
    job = completed_job(app)
    recorded = resolve(app, job.upscaled_file_path or "")
    stored = backend(app).stat(job.upscaled_file_path or "")
    assert stored is not None
    assert complete_job(job, stored) == "discarded"
    assert recorded.read_bytes() == b"upscaled image bytes"
    fresh = get_job(job.job_id)
    assert fresh is not None and fresh.status == "completed"
    assert fresh.upscaled_file_path == job.upscaled_file_path


def test_a_job_refunded_while_it_was_upscaled_is_not_delivered(app: Flask) -> None:
    job = _processing_job(app)
    output = write_output(job, ".jpg", lambda out: write_test_image(out, 160, 120))
    db.session.execute(
        Job.__table__.update().where(Job.id == job.id).values(payment_status="refunded")
    )
    db.session.commit()
    assert complete_job(job, output) == "discarded"
    assert not resolve(app, output.key).exists()
    fresh = get_job(job.job_id)
    assert fresh is not None and fresh.status == "processing" and fresh.upscaled_file_path is None
